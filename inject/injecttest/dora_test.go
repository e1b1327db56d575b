package injecttest

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/engine/torch"
	"github.com/sptctl/sptctl/export"
	"github.com/sptctl/sptctl/export/adapter"
	"github.com/sptctl/sptctl/export/ort"
	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/internal/fixture/injected"
	"github.com/sptctl/sptctl/internal/fixture/ortcheck"
	"github.com/sptctl/sptctl/internal/npy"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

// doraPlan puts DoRA (rank 2) on block 0's matrices but k (sparse entries there, so a
// fused q/k/v weight has DoRA parts on both sides of a part without), extra sparse
// entries beside the DoRA of fc1 (DoRA then decomposes W + the sparse delta), and a
// LoRA on block 1's q; a new head for 5 classes.
func doraPlan(t *testing.T, f fixture.Model) *inject.Plan {
	t.Helper()
	opt := inject.DefaultOptions()
	opt.Strategy, opt.Classes = inject.Linear, 5
	p, err := inject.Allocate(f.V, f.G, nil, opt)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(4, 4))
	for _, l := range f.V.Linears() {
		switch {
		case l.Block == 0 && l.Kind == surgery.K:
			lp := injected.Layer(l, inject.ModeSparse, 0)
			injected.AddSparse(&lp, l, 5, rng)
			p.Layers = append(p.Layers, lp)
		case l.Block == 0:
			lp := injected.Layer(l, string(inject.KindDoRA), 2)
			if l.Kind == surgery.FC1 {
				injected.AddSparse(&lp, l, 9, rng)
			}
			p.Layers = append(p.Layers, lp)
		case l.Block == 1 && l.Kind == surgery.Q:
			p.Layers = append(p.Layers, injected.Layer(l, inject.ModeLoRA, 2))
		}
	}
	p.Recount()
	return p
}

// doraFixtures cover the weight layouts: a fused q/k/v weight stored [in, 3d] with
// de-duplicated tensors (torchvision, opset 17), one stored [3d, in] behind a
// Transpose (torchvision without constant folding, opset 13), a fused [in, 3d] one
// (timm, opset 14), and separate q, k, v stored [in, out] (Hugging Face).
var doraFixtures = []string{"tv_op17_alias", "tv_op13_nofold", "timm_op14", "hf_op17"}

// TestDoRA checks DoRA on fixtures of every layout: the untrained injected model
// computes the base's function (m = ‖W‖, B = 0); with random trained values, ONNX
// Runtime on the injected model equals ONNX Runtime on the merged model (same nodes as
// the base), and the merged weights equal PyTorch's W' = m·V/‖V‖ (testdata/dora.py);
// the adapter-ready path reproduces the task, and a task without DoRA beside it.
func TestDoRA(t *testing.T) {
	ortcheck.Init(t)
	oracle := doraOracle(t)
	dir := t.TempDir()
	for _, name := range doraFixtures {
		path := fixture.Path(t, name)
		t.Run(name, func(t *testing.T) {
			base := fixture.Load(t, path)
			batch := base.V.Batch
			if batch == 0 {
				batch = 3
			}
			x := ortcheck.Input(t, path, batch)
			p := doraPlan(t, base)
			m := fixture.Clone(base.M)
			injected.Apply(t, m, p, inject.ApplyOptions{KeepHead: false, Seed: 3})
			if n, err := inject.TrainableCount(m); err != nil || n != p.Totals.Total {
				t.Fatalf("trainable count %d (%v), plan total %d", n, err, p.Totals.Total)
			}
			// Untrained: only the new head differs from the base, so the logits equal
			// those of the base graph with the new head merged in.
			untrained := fixture.Clone(m)
			mu := fixture.Clone(untrained)
			if _, err := export.Merge(mu, base.M); err != nil {
				t.Fatal(err)
			}
			if d := fixture.RelDiff(run(t, untrained, dir, name+"_untrained", x), run(t, mu, dir, name+"_untrained_merged", x)); d > 1e-5 {
				t.Errorf("untrained DoRA model differs from the base with its head (rel %.3g)", d)
			}
			injected.Perturb(t, m, rand.New(rand.NewPCG(7, 7)), nil)
			got := run(t, m, dir, name+"_dora", x)
			if moved := fixture.RelDiff(got, run(t, untrained, dir, name+"_untrained", x)); moved < 1e-2 {
				t.Errorf("trained DoRA values did not move the outputs (%.3g)", moved)
			}
			mm := fixture.Clone(m)
			rep, err := export.Merge(mm, base.M)
			if err != nil {
				t.Fatal(err)
			}
			if d := fixture.RelDiff(run(t, mm, dir, name+"_merged", x), got); d > 1e-5 {
				t.Errorf("merged vs injected relative difference %.3g", d)
			}
			if len(rep.Folded[inject.KindDoRA]) != 5 || len(mm.Graph.Node) != len(base.M.Graph.Node) {
				t.Errorf("folded DoRA of %v; merged graph %d nodes, base %d", rep.Folded[inject.KindDoRA], len(mm.Graph.Node), len(base.M.Graph.Node))
			}
			checkFoldedAgainstTorch(t, oracle, filepath.Join(dir, name), base, m, mm, p)
			checkReady(t, dir, name, base, m, p, x, got)
		})
	}
}

// checkFoldedAgainstTorch compares the merged weight of every DoRA layer without
// sparse entries with PyTorch's W' from the trained tensors.
func checkFoldedAgainstTorch(t *testing.T, oracle func(string), dir string, base fixture.Model, m, merged *onnxpb.ModelProto, p *inject.Plan) {
	t.Helper()
	stored := injected.Plan(t, m)
	tg, mg := surgery.New(m), surgery.New(merged)
	var cases []*inject.LayerPlan
	for i := range stored.Layers {
		l := &stored.Layers[i]
		if l.Mode != string(inject.KindDoRA) || len(l.Indices) > 0 {
			continue
		}
		mod, _ := stored.Module(l.Name, inject.KindDoRA)
		W := layerRows(t, base.G, l, l.Weight)
		A, _ := floatsOf(t, tg, mod, inject.PartA)
		B, _ := floatsOf(t, tg, mod, inject.PartB)
		mag, _ := floatsOf(t, tg, mod, inject.PartMagnitude)
		G := make([]float32, len(W)) // unused by the forward check
		writeCase(t, filepath.Join(dir, l.Name), l, W, A, B, mag, G, 1)
		cases = append(cases, l)
	}
	if len(cases) == 0 {
		t.Fatal("no DoRA layer to check")
	}
	oracle(dir)
	for _, l := range cases {
		want := readNpy(t, filepath.Join(dir, l.Name, "Wp.npy"))
		// The merged model reads the layer's weight where the base does: the base
		// initializer or, where the base shared it, a new one at the same site.
		got := mergedLayer(t, base, mg, l)
		if abs, rel := maxRel(got, want); rel > 1e-5 {
			t.Errorf("%s: merged W' vs PyTorch: max abs %.3g, rel %.3g", l.Name, abs, rel)
		}
	}
}

// checkReady builds an adapter-ready model from the DoRA task and a task with only a
// new head and sparse entries on the DoRA layers, and checks that the adapter values
// reproduce both.
func checkReady(t *testing.T, dir, name string, base fixture.Model, task *onnxpb.ModelProto, p *inject.Plan, x ort.Tensor, want []float32) {
	t.Helper()
	q := fixture.Clone(base.M)
	opt := inject.DefaultOptions()
	opt.Strategy, opt.Classes = inject.Linear, 3
	qp, err := inject.Allocate(base.V, base.G, nil, opt)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(5, 5))
	for _, l := range base.V.Linears() {
		if l.Block == 0 && l.Kind == surgery.V {
			lp := injected.Layer(l, inject.ModeSparse, 0)
			injected.AddSparse(&lp, l, 7, rng)
			qp.Layers = append(qp.Layers, lp)
		}
	}
	qp.Recount()
	injected.Apply(t, q, qp, inject.ApplyOptions{Seed: 1})
	injected.Perturb(t, q, rand.New(rand.NewPCG(8, 8)), nil)
	wantQ := run(t, q, dir, name+"_other", x)
	ready, err := adapter.BuildReady(base.M, []*onnxpb.ModelProto{task, q})
	if err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		m    *onnxpb.ModelProto
		want []float32
		c    int
	}{{task, want, 5}, {q, wantQ, 3}} {
		vals, err := adapter.ForTask(ready, tc.m)
		if err != nil {
			t.Fatal(err)
		}
		if err := adapter.Check(ready, vals); err != nil {
			t.Fatal(err)
		}
		r := fixture.Clone(ready)
		g := surgery.New(r)
		for n, v := range vals {
			it := g.Initializer(n)
			if it.GetDataType() != onnxio.Float {
				continue // sparse indices: the union's, their default
			}
			f, err := v.Floats()
			if err != nil {
				t.Fatal(err)
			}
			if err := onnxio.SetFloats(it, f); err != nil {
				t.Fatal(err)
			}
		}
		got := run(t, r, dir, fmt.Sprintf("%s_ready_%d", name, i), x)
		// The ready head has the most classes of the tasks and the base; compare
		// the task's own logits.
		n := len(tc.want) / tc.c
		per := len(got) / n
		var sel []float32
		for k := range n {
			sel = append(sel, got[k*per:k*per+tc.c]...)
		}
		if d := fixture.RelDiff(sel, tc.want); d > 1e-5 {
			t.Errorf("adapter-ready model with task %d's values vs the task: relative difference %.3g", i+1, d)
		}
	}
}

// TestDoRAGradient compares the executor's gradients of DoRA's A, B and magnitude
// with PyTorch's autograd through W' = m·V/‖V‖: the executor gives dL/dW' by
// training the merged model's weight (whose backward TestBackwardParity checks), and
// PyTorch turns it into gradients of A, B and m (testdata/dora.py).
func TestDoRAGradient(t *testing.T) {
	oracle := doraOracle(t)
	dir := t.TempDir()
	for _, fname := range []string{"tv_op17_dynamic", "timm_op17"} {
		t.Run(fname, func(t *testing.T) {
			path := fixture.Path(t, fname)
			base := fixture.Load(t, path)
			p := doraPlan(t, base)
			m := fixture.Clone(base.M)
			injected.Apply(t, m, p, inject.ApplyOptions{Seed: 3})
			injected.Perturb(t, m, rand.New(rand.NewPCG(9, 9)), nil)
			merged := fixture.Clone(m)
			if _, err := export.Merge(merged, base.M); err != nil {
				t.Fatal(err)
			}
			stored := injected.Plan(t, m)
			mg := surgery.New(merged)
			x := fixture.Input(t, path, 4)
			labels := []int64{0, 1, 2, 3}
			var layers []*inject.LayerPlan
			var doraParams, weightParams []string
			for i := range stored.Layers {
				l := &stored.Layers[i]
				if l.Mode != string(inject.KindDoRA) || len(l.Indices) > 0 {
					continue
				}
				mod, _ := stored.Module(l.Name, inject.KindDoRA)
				for _, part := range []inject.Part{inject.PartA, inject.PartB, inject.PartMagnitude} {
					name, _ := mod.Init(part)
					doraParams = append(doraParams, name)
				}
				layers = append(layers, l)
				weightParams = append(weightParams, mg.Source(mergedSlotValue(t, base, mg, l)))
			}
			gotGrads := grads(t, m, doraParams, x, labels)
			weightGrads := grads(t, merged, uniq(weightParams), x, labels)
			tg := surgery.New(m)
			for k, l := range layers {
				mod, _ := stored.Module(l.Name, inject.KindDoRA)
				wname := weightParams[k]
				wt := mg.Initializer(wname)
				Gm, err := inject.MatrixOf(l, weightGrads[wname], wt.Dims)
				if err != nil {
					t.Fatal(err)
				}
				A, _ := floatsOf(t, tg, mod, inject.PartA)
				B, _ := floatsOf(t, tg, mod, inject.PartB)
				mag, _ := floatsOf(t, tg, mod, inject.PartMagnitude)
				writeCase(t, filepath.Join(dir, fname, l.Name), l, layerRows(t, base.G, l, l.Weight), A, B, mag, rows(Gm), 1)
			}
			oracle(filepath.Join(dir, fname))
			for _, l := range layers {
				mod, _ := stored.Module(l.Name, inject.KindDoRA)
				for _, c := range []struct {
					part inject.Part
					file string
				}{{inject.PartA, "gA.npy"}, {inject.PartB, "gB.npy"}, {inject.PartMagnitude, "gm.npy"}} {
					name, _ := mod.Init(c.part)
					want := readNpy(t, filepath.Join(dir, fname, l.Name, c.file))
					if abs, rel := maxRel(gotGrads[name], want); rel > 1e-4 {
						t.Errorf("%s %s: gradient vs PyTorch: max abs %.3g, rel %.3g", l.Name, c.part, abs, rel)
					}
				}
			}
		})
	}
}

// grads runs one forward-backward of m on x with the named initializers trainable and
// returns their gradients.
func grads(t *testing.T, m *onnxpb.ModelProto, names []string, x *npy.Array, labels []int64) map[string][]float32 {
	t.Helper()
	w := torch.NewWorker()
	defer w.Close()
	out := map[string][]float32{}
	err := w.Do(func() error {
		p, err := w.Compile(m, engine.Options{Trainable: names})
		if err != nil {
			return err
		}
		defer p.Close()
		if _, err := p.ForwardBackward(x.Float32, labels, int(x.Shape[0])); err != nil {
			return err
		}
		for _, n := range names {
			g, err := p.Grad(n)
			if err != nil {
				return err
			}
			out[n] = g
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func uniq(xs []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range xs {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

// doraOracle returns a function that runs testdata/dora.py on a folder of cases,
// skipping the test when Debian's python3-torch is missing.
func doraOracle(t *testing.T) func(dir string) {
	t.Helper()
	if err := exec.Command("/usr/bin/python3", "-c", "import torch, numpy").Run(); err != nil {
		t.Skipf("/usr/bin/python3 with torch and numpy is needed for the DoRA oracle: %v", err)
	}
	return func(dir string) {
		t.Helper()
		out, err := exec.Command("/usr/bin/python3", filepath.Join("testdata", "dora.py"), dir).CombinedOutput()
		if err != nil {
			t.Fatalf("dora.py: %v\n%s", err, out)
		}
	}
}

// layerRows is layer l's matrix in initializer init of g, as [out, in] rows.
func layerRows(t *testing.T, g *surgery.Graph, l *inject.LayerPlan, init string) []float32 {
	t.Helper()
	tt := g.Initializer(init)
	v, err := onnxio.Floats(tt)
	if err != nil {
		t.Fatal(err)
	}
	M, err := inject.MatrixOf(l, v, tt.Dims)
	if err != nil {
		t.Fatal(err)
	}
	return rows(M)
}

func rows(M inject.Matrix) []float32 {
	out := make([]float32, 0, M.In*M.Out)
	for o := 0; o < M.Out; o++ {
		for i := 0; i < M.In; i++ {
			out = append(out, M.Data[M.At(o, i)])
		}
	}
	return out
}

// mergedSlotValue is the value the merged model's layer l reads as its weight.
func mergedSlotValue(t *testing.T, base fixture.Model, mg *surgery.Graph, l *inject.LayerPlan) string {
	t.Helper()
	for _, lin := range base.V.Linears() {
		if lin.Name != l.Name {
			continue
		}
		n := lin.Node
		if lin.Transpose != nil {
			n = lin.Transpose
		}
		// The merged graph has the base's nodes, by name.
		for _, mn := range mg.Nodes() {
			if mn.GetName() == n.GetName() {
				for i, x := range n.Input {
					if x == lin.WeightValue {
						return mn.Input[i]
					}
				}
			}
		}
	}
	t.Fatalf("%s: weight not found in the merged model", l.Name)
	return ""
}

func mergedLayer(t *testing.T, base fixture.Model, mg *surgery.Graph, l *inject.LayerPlan) []float32 {
	t.Helper()
	return layerRows(t, mg, l, mg.Source(mergedSlotValue(t, base, mg, l)))
}

func floatsOf(t *testing.T, g *surgery.Graph, mod inject.Module, p inject.Part) ([]float32, []int64) {
	t.Helper()
	name, err := mod.Init(p)
	if err != nil {
		t.Fatal(err)
	}
	tt := g.Initializer(name)
	v, err := onnxio.Floats(tt)
	if err != nil {
		t.Fatal(err)
	}
	return v, tt.Dims
}

func writeCase(t *testing.T, dir string, l *inject.LayerPlan, W, A, B, m, G []float32, scale float64) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	out, in, r := int64(l.Out), int64(l.In), int64(l.Rank)
	for name, a := range map[string]*npy.Array{
		"W.npy": {Shape: []int64{out, in}, Float32: W}, "A.npy": {Shape: []int64{r, in}, Float32: A},
		"B.npy": {Shape: []int64{out, r}, Float32: B}, "m.npy": {Shape: []int64{out}, Float32: m},
		"G.npy": {Shape: []int64{out, in}, Float32: G},
	} {
		if err := npy.Write(filepath.Join(dir, name), a); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "scale.txt"), []byte(strconv.FormatFloat(scale, 'g', -1, 64)), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readNpy(t *testing.T, path string) []float32 {
	t.Helper()
	a, err := npy.Read(path)
	if err != nil {
		t.Fatal(err)
	}
	return a.Float32
}

// maxRel is the largest absolute difference and that over the largest |want|.
func maxRel(got, want []float32) (abs, rel float64) {
	if len(got) != len(want) {
		return math.Inf(1), math.Inf(1)
	}
	var scale float64
	for i := range got {
		abs = math.Max(abs, math.Abs(float64(got[i])-float64(want[i])))
		scale = math.Max(scale, math.Abs(float64(want[i])))
	}
	return abs, abs / math.Max(scale, 1e-30)
}

// allocate --type dora: the module tuners' registry makes DoRA an allocation type that
// the baselines place where they place LoRA, counted r·(in+out) + out; SPT uses the
// same rule with DoRA's larger cost (a matrix gets a module if its sensitive count
// reaches cost/α), so at the same budget its modules are among SPT-LoRA's.
func TestDoRAAllocate(t *testing.T) {
	f := fixture.Load(t, fixture.Path(t, "timm_op14"))
	scores := randomScores(f.G, 3)
	for _, st := range []inject.Strategy{inject.SPT, inject.QV, inject.Uniform} {
		var plans [2]*inject.Plan
		for i, typ := range []inject.Type{inject.LoRA, inject.Type(inject.KindDoRA)} {
			opt := inject.DefaultOptions()
			opt.Strategy, opt.Type, opt.Rank = st, typ, 4
			if st == inject.SPT {
				opt.Budget = inject.BackboneParams(f.V, f.G) / 5
			}
			p, err := inject.Allocate(f.V, f.G, scores, opt)
			if err != nil {
				t.Fatalf("%s %s: %v", st, typ, err)
			}
			plans[i] = p
		}
		lora, dora := plans[0], plans[1]
		var ls, ds []string
		for _, l := range lora.Layers {
			if l.Mode == inject.ModeLoRA {
				ls = append(ls, l.Name)
			}
		}
		for _, l := range dora.Layers {
			if l.Mode != string(inject.KindDoRA) {
				continue
			}
			ds = append(ds, l.Name)
			if want := int64(l.Rank*(l.In+l.Out)+l.Out) + int64(len(l.Indices)); l.Params != want {
				t.Errorf("%s: DoRA of %s counts %d, want %d", st, l.Name, l.Params, want)
			}
		}
		if st == inject.SPT {
			for _, d := range ds {
				if !slices.Contains(ls, d) {
					t.Errorf("spt: DoRA on %s, where SPT-LoRA has no module (LoRA on %v)", d, ls)
				}
			}
		} else if fmt.Sprint(ls) != fmt.Sprint(ds) {
			t.Errorf("%s: DoRA on %v, LoRA on %v", st, ds, ls)
		}
		if len(ds) == 0 {
			t.Errorf("%s: DoRA on %v, LoRA on %v", st, ds, ls)
		}
		m := fixture.Clone(f.M)
		injected.Apply(t, m, dora, inject.ApplyOptions{})
		if n, err := inject.TrainableCount(m); err != nil || n != dora.Totals.Total {
			t.Errorf("%s: %d trainable (%v), plan total %d", st, n, err, dora.Totals.Total)
		}
	}
}
