package injecttest

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sptctl/sptctl/export/ort"
	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/internal/npy"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

type model struct {
	m *onnxpb.ModelProto
	g *surgery.Graph
	v *surgery.ViT
}

func load(t *testing.T, path string) model {
	t.Helper()
	m, err := onnxio.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	g := surgery.New(m)
	v, err := surgery.FindViT(g)
	if err != nil {
		t.Fatal(err)
	}
	return model{m, g, v}
}

func fixtures(t *testing.T) []string {
	t.Helper()
	fs, err := filepath.Glob("../../testdata/*.onnx")
	if err != nil || len(fs) == 0 {
		t.Fatalf("no fixtures: %v", err)
	}
	return fs
}

// randomScores gives every float initializer random scores.
func randomScores(g *surgery.Graph, seed uint64) inject.Scores {
	rng := rand.New(rand.NewPCG(seed, 1))
	s := inject.Scores{}
	for _, t := range g.Proto().GetInitializer() {
		if t.GetDataType() == onnxio.Float {
			x := make([]float32, onnxio.NumElements(t.Dims))
			for i := range x {
				x[i] = rng.Float32()
			}
			s[t.GetName()] = x
		}
	}
	return s
}

// mixedPlan: LoRA, Adapter and sparse layers in turn, vectors whole and sparse in turn.
func mixedPlan(t *testing.T, f model) *inject.Plan {
	t.Helper()
	opt := inject.DefaultOptions()
	opt.Strategy = inject.Linear
	p, err := inject.Allocate(f.v, f.g, nil, opt)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(9, 9))
	modes := []string{inject.ModeLoRA, inject.ModeSparse, inject.ModeAdapter, inject.ModeSparse, inject.ModeAdapter, inject.ModeLoRA, inject.ModeSparse}
	i := 0
	for _, l := range f.v.Linears() {
		lp := inject.LayerPlan{Name: l.Name, Block: l.Block, Kind: string(l.Kind), Weight: l.Weight, Layout: l.Layout.String(),
			In: l.In, Out: l.Out, Fused: l.Fused, Offset: l.Offset, Mode: modes[i%len(modes)]}
		i++
		switch lp.Mode {
		case inject.ModeLoRA:
			lp.Rank, lp.Params = 4, int64(4*(l.In+l.Out))
		case inject.ModeAdapter:
			lp.Rank, lp.Params = 4, int64(2*4*l.Out+4+l.Out)
		}
		if lp.Mode == inject.ModeSparse || (lp.Mode == inject.ModeLoRA && l.Block == 0) { // LoRA + extra sparse entries too
			n := len(lp.Indices)
			seen := map[int64]bool{}
			for len(lp.Indices) < 9 {
				o, in := rng.IntN(l.Out), rng.IntN(l.In)
				var f int64
				if l.Layout == surgery.InOut {
					f = int64(in*l.TotalOut + l.Offset + o)
				} else {
					f = int64((l.Offset+o)*l.In + in)
				}
				if !seen[f] {
					seen[f] = true
					lp.Indices = append(lp.Indices, f)
				}
			}
			slices.Sort(lp.Indices)
			lp.Params += int64(len(lp.Indices) - n)
		}
		p.Layers = append(p.Layers, lp)
	}
	for j, vec := range f.v.Vectors() {
		vp := inject.VectorPlan{Name: vec.Name, Block: vec.Block, Init: vec.Init, Offset: vec.Offset, Size: vec.Size}
		switch j % 3 {
		case 0:
			vp.Mode, vp.Params = inject.ModeFull, int64(vec.Size)
		case 1:
			vp.Mode = inject.ModeSparse
			for _, k := range rng.Perm(vec.Size)[:4] {
				vp.Indices = append(vp.Indices, int64(vec.Offset+k))
			}
			slices.Sort(vp.Indices)
			vp.Params = 4
		default:
			continue
		}
		p.Vectors = append(p.Vectors, vp)
	}
	p.Recount()
	return p
}

func input(t *testing.T, fixture string, batch int64) map[string]ort.Tensor {
	t.Helper()
	a, err := npy.Read(strings.TrimSuffix(fixture, ".onnx") + ".input.npy")
	if err != nil {
		t.Fatal(err)
	}
	per := int64(len(a.Float32)) / a.Shape[0]
	data := make([]float32, 0, batch*per)
	for i := int64(0); i < batch; i++ {
		j := i % a.Shape[0]
		data = append(data, a.Float32[j*per:(j+1)*per]...)
	}
	return map[string]ort.Tensor{"input": {Shape: append([]int64{batch}, a.Shape[1:]...), Data: data}}
}

func run(t *testing.T, m *onnxpb.ModelProto, dir, name string, in map[string]ort.Tensor) []float32 {
	t.Helper()
	path := filepath.Join(dir, name+".onnx")
	if err := onnxio.Save(path, m); err != nil {
		t.Fatal(err)
	}
	out, err := ort.RunFile(path, in)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return out["logits"].Data
}

func maxAbsDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	var m float64
	for i := range a {
		d := math.Abs(float64(a[i]) - float64(b[i]))
		if math.IsNaN(d) {
			return math.Inf(1)
		}
		m = max(m, d)
	}
	return m
}

// plans are the plans every fixture is checked with (all KeepHead-compatible).
func plans(t *testing.T, f model) map[string]*inject.Plan {
	t.Helper()
	backbone := inject.BackboneParams(f.v, f.g)
	out := map[string]*inject.Plan{"mixed": mixedPlan(t, f)}
	for name, o := range map[string]inject.Options{
		"lora":    {Type: inject.LoRA, Budget: backbone / 6},
		"adapter": {Type: inject.Adapter, Budget: backbone / 6},
		"sparse":  {Type: inject.LoRA, Budget: backbone / 50},
	} {
		opt := inject.DefaultOptions()
		opt.Type, opt.Budget = o.Type, o.Budget
		p, err := inject.Allocate(f.v, f.g, randomScores(f.g, 5), opt)
		if err != nil {
			t.Fatal(err)
		}
		out[name] = p
	}
	return out
}

// With B, the Adapter's up projection and the sparse deltas zero, the injected model
// computes the base model's function: ONNX Runtime agrees to 1e-6, static and
// dynamic batch, with and without dropout nodes.
func TestInjectedEqualsBase(t *testing.T) {
	if err := ort.Init(); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	for _, path := range fixtures(t) {
		name := strings.TrimSuffix(filepath.Base(path), ".onnx")
		t.Run(name, func(t *testing.T) {
			base := load(t, path)
			batches := []int64{base.v.Batch}
			if base.v.Batch == 0 {
				batches = []int64{2, 3}
			}
			for _, b := range batches {
				in := input(t, path, b)
				want := run(t, base.m, dir, name+"_base", in)
				for pname, p := range plans(t, base) {
					for _, dropout := range []float32{0, 0.1} {
						f := load(t, path)
						if err := inject.Apply(f.m, p, inject.ApplyOptions{KeepHead: true, Dropout: dropout, Seed: 7}); err != nil {
							t.Fatalf("%s: %v", pname, err)
						}
						got := run(t, f.m, dir, fmt.Sprintf("%s_%s_%g", name, pname, dropout), in)
						if d := maxAbsDiff(got, want); d > 1e-6 {
							t.Errorf("%s, batch %d, dropout %g: max abs difference %g from the base model", pname, b, dropout, d)
						}
					}
				}
			}
		})
	}
}

// merge applies an injected model's LoRA, sparse and in-place whole trainables to a
// copy of the base model's weights, the way an export merges them.
func merge(t *testing.T, base *surgery.Graph, inj *onnxpb.ModelProto, p *inject.Plan, shared func(string) bool) {
	t.Helper()
	s, _ := onnxio.Metadata(inj, meta.KeyPlan)
	stored, err := inject.DecodePlan([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	ig := surgery.New(inj)
	floats := func(g *surgery.Graph, name string) []float32 {
		x, err := onnxio.Floats(g.Initializer(name))
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	layers := map[string]inject.LayerPlan{}
	for _, l := range p.Layers {
		layers[l.Name] = l
	}
	byOf := map[string]map[string]inject.Injected{}
	for _, r := range stored.Injected {
		if byOf[r.Of] == nil {
			byOf[r.Of] = map[string]inject.Injected{}
		}
		byOf[r.Of][r.Role] = r
	}
	changed := map[string][]float32{}
	get := func(name string) []float32 {
		if changed[name] == nil {
			changed[name] = floats(base, name)
		}
		return changed[name]
	}
	for of, rs := range byOf {
		if a, ok := rs["lora_A"]; ok {
			l := layers[of]
			A, B := floats(ig, a.Init), floats(ig, rs["lora_B"].Init)
			w := get(l.Weight)
			dims := base.Initializer(l.Weight).Dims
			r := len(A) / l.In
			for o := 0; o < l.Out; o++ {
				for i := 0; i < l.In; i++ {
					var d float32
					for k := 0; k < r; k++ {
						d += B[o*r+k] * A[k*l.In+i]
					}
					if l.Layout == surgery.InOut.String() {
						w[int64(i)*dims[1]+int64(l.Offset+o)] += d
					} else {
						w[int64(l.Offset+o)*dims[1]+int64(i)] += d
					}
				}
			}
		}
		if sv, ok := rs["sparse_values"]; ok && base.Initializer(sv.Base) != nil && !shared(sv.Base) {
			vals := floats(ig, sv.Init)
			idx, err := onnxio.Int64s(ig.Initializer(rs["sparse_indices"].Init))
			if err != nil {
				t.Fatal(err)
			}
			dims := base.Initializer(sv.Base).Dims
			w := get(sv.Base)
			rank := len(dims)
			for j, v := range vals {
				var f int64
				for d := 0; d < rank; d++ {
					f = f*dims[d] + idx[j*rank+d]
				}
				w[f] += v
			}
		}
		if wh, ok := rs["whole"]; ok && wh.Init == wh.Base && base.Initializer(wh.Base) != nil {
			changed[wh.Base] = floats(ig, wh.Init)
		}
	}
	for name, x := range changed {
		if err := onnxio.SetFloats(base.Initializer(name), x); err != nil {
			t.Fatal(err)
		}
	}
}

// With random values in every LoRA, sparse and whole trainable, the injected model
// equals the base model with those changes merged into its weights (W + B·A,
// W + scatter(δ), the trained vectors): a wrong layout, offset or index would show.
func TestInjectedEqualsMerged(t *testing.T) {
	if err := ort.Init(); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	for _, path := range fixtures(t) {
		name := strings.TrimSuffix(filepath.Base(path), ".onnx")
		t.Run(name, func(t *testing.T) {
			b0 := load(t, path)
			ps := plans(t, b0)
			batch := b0.v.Batch
			if batch == 0 {
				batch = 2
			}
			in := input(t, path, batch)
			for _, pname := range []string{"lora", "sparse", "mixed"} {
				p := ps[pname]
				f := load(t, path)
				if err := inject.Apply(f.m, p, inject.ApplyOptions{KeepHead: true, Seed: 3}); err != nil {
					t.Fatal(err)
				}
				// Random values in the trainables that merge into base weights: LoRA, sparse
				// deltas of base initializers, tensors trained in place. (Adapters do not
				// merge; un-shared copies and split pieces have no base initializer of
				// their own to merge into, and keep their base values.)
				rng := rand.New(rand.NewPCG(11, 12))
				s, _ := onnxio.Metadata(f.m, meta.KeyPlan)
				stored, _ := inject.DecodePlan([]byte(s))
				ig := surgery.New(f.m)
				randomized := 0
				shared := func(name string) bool { // de-duplicated in the base: merging would hit every user
					cs := b0.g.Consumers(name)
					return len(cs) != 1 || cs[0].GetOpType() == "Identity"
				}
				for _, r := range stored.Injected {
					ok := r.Role == "lora_A" || r.Role == "lora_B" ||
						(r.Role == "sparse_values" && b0.g.Initializer(r.Base) != nil && !shared(r.Base)) ||
						(r.Role == "whole" && r.Init == r.Base)
					if !ok || !r.Trainable {
						continue
					}
					tp := ig.Initializer(r.Init)
					x, err := onnxio.Floats(tp)
					if err != nil {
						t.Fatal(err)
					}
					for i := range x {
						x[i] += float32(rng.NormFloat64() * 0.05)
					}
					if err := onnxio.SetFloats(tp, x); err != nil {
						t.Fatal(err)
					}
					randomized++
				}
				got := run(t, f.m, dir, name+"_"+pname+"_random", in)
				ref := load(t, path)
				merge(t, ref.g, f.m, p, shared)
				want := run(t, ref.m, dir, name+"_"+pname+"_merged", in)
				base := run(t, load(t, path).m, dir, name+"_base", in)
				d, moved := maxAbsDiff(got, want), maxAbsDiff(got, base)
				if d > 2e-5 || moved < 1e-3 {
					t.Errorf("%s: injected vs merged max abs difference %g (vs base %g)", pname, d, moved)
				}
				t.Logf("%s: %d trainables randomized; injected vs merged %.2g, vs base %.2g", pname, randomized, d, moved)
			}
		})
	}
}

// The plan stored in metadata round-trips as JSON.
func TestStoredPlan(t *testing.T) {
	f := load(t, fixtures(t)[0])
	p := mixedPlan(t, f)
	if err := inject.Apply(f.m, p, inject.ApplyOptions{KeepHead: true}); err != nil {
		t.Fatal(err)
	}
	s, _ := onnxio.Metadata(f.m, meta.KeyPlan)
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s), &raw); err != nil || raw["injected"] == nil {
		t.Fatalf("stored plan: %v", err)
	}
}

// TestViTB16EqualsBase: a 1.5M SPT plan (LoRA, then Adapter) on vit_b_16
// ($SPTCTL_VIT_B16), keeping its 1000-class head, computes the base model's function.
func TestViTB16EqualsBase(t *testing.T) {
	path := os.Getenv("SPTCTL_VIT_B16")
	if path == "" {
		t.Skip("SPTCTL_VIT_B16 is not set")
	}
	if err := ort.Init(); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	base := load(t, path)
	rng := rand.New(rand.NewPCG(1, 1))
	x := make([]float32, 3*224*224)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	in := map[string]ort.Tensor{"input": {Shape: []int64{1, 3, 224, 224}, Data: x}}
	want := run(t, base.m, dir, "base", in)
	s := randomScores(base.g, 2)
	for _, typ := range []inject.Type{inject.LoRA, inject.Adapter} {
		opt := inject.DefaultOptions()
		opt.Budget, opt.Type = 1500000, typ
		p, err := inject.Allocate(base.v, base.g, s, opt)
		if err != nil {
			t.Fatal(err)
		}
		f := load(t, path)
		if err := inject.Apply(f.m, p, inject.ApplyOptions{KeepHead: true, Dropout: 0.1}); err != nil {
			t.Fatal(err)
		}
		n, err := inject.TrainableCount(f.m)
		if err != nil || n != p.Totals.Total {
			t.Fatalf("trainable %d (%v), plan %d", n, err, p.Totals.Total)
		}
		got := run(t, f.m, dir, string(typ), in)
		d := maxAbsDiff(got, want)
		t.Logf("%s: %d structured, %d sparse entries; max abs difference %g", typ, len(p.Summary().Structured), p.Totals.SparseEntries, d)
		if d > 1e-5 {
			t.Errorf("%s: max abs difference %g", typ, d)
		}
	}
}
