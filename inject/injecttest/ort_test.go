package injecttest

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/sptctl/sptctl/export/ort"
	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/internal/fixture/injected"
	"github.com/sptctl/sptctl/internal/fixture/ortcheck"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

func randomScores(g *surgery.Graph, seed uint64) inject.Scores {
	return fixture.RandomScores(g, rand.New(rand.NewPCG(seed, 1)))
}

// mixedPlan: LoRA, Adapter and sparse layers in turn, vectors whole and sparse in turn.
func mixedPlan(t *testing.T, f fixture.Model) *inject.Plan {
	t.Helper()
	opt := inject.DefaultOptions()
	opt.Strategy = inject.Linear
	p, err := inject.Allocate(f.V, f.G, nil, opt)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(9, 9))
	modes := []string{inject.ModeLoRA, inject.ModeSparse, inject.ModeAdapter, inject.ModeSparse, inject.ModeAdapter, inject.ModeLoRA, inject.ModeSparse}
	injected.Cycle(p, f.V, modes, func(lp inject.LayerPlan, l *surgery.Linear) bool {
		return lp.Mode == inject.ModeSparse || (lp.Mode == inject.ModeLoRA && l.Block == 0) // LoRA + extra sparse entries too
	}, rng)
	return p
}

func run(t *testing.T, m *onnxpb.ModelProto, dir, name string, in ort.Tensor) []float32 {
	t.Helper()
	return ortcheck.SaveAndRun(t, m, filepath.Join(dir, name+".onnx"), in)
}

// plans are the plans every fixture is checked with (all KeepHead-compatible).
func plans(t *testing.T, f fixture.Model) map[string]*inject.Plan {
	t.Helper()
	backbone := inject.BackboneParams(f.V, f.G)
	out := map[string]*inject.Plan{"mixed": mixedPlan(t, f)}
	for name, o := range map[string]inject.Options{
		"lora":    {Type: inject.LoRA, Budget: backbone / 6},
		"adapter": {Type: inject.Adapter, Budget: backbone / 6},
		"sparse":  {Type: inject.LoRA, Budget: backbone / 50},
	} {
		opt := inject.DefaultOptions()
		opt.Type, opt.Budget = o.Type, o.Budget
		p, err := inject.Allocate(f.V, f.G, randomScores(f.G, 5), opt)
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
	ortcheck.Init(t)
	dir := t.TempDir()
	for _, path := range fixture.Paths(t) {
		name := fixture.Name(path)
		t.Run(name, func(t *testing.T) {
			base := fixture.Load(t, path)
			batches := []int64{base.V.Batch}
			if base.V.Batch == 0 {
				batches = []int64{2, 3}
			}
			for _, b := range batches {
				in := ortcheck.Input(t, path, b)
				want := run(t, base.M, dir, name+"_base", in)
				for pname, p := range plans(t, base) {
					for _, dropout := range []float32{0, 0.1} {
						f := fixture.Load(t, path)
						if err := inject.Apply(f.M, p, inject.ApplyOptions{KeepHead: true, Dropout: dropout, Seed: 7}); err != nil {
							t.Fatalf("%s: %v", pname, err)
						}
						got := run(t, f.M, dir, fmt.Sprintf("%s_%s_%g", name, pname, dropout), in)
						if d := fixture.MaxAbsDiff(got, want); d > 1e-6 {
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
		byOf[r.Of][string(r.Tuner)+"/"+string(r.Part)] = r
	}
	changed := map[string][]float32{}
	get := func(name string) []float32 {
		if changed[name] == nil {
			changed[name] = floats(base, name)
		}
		return changed[name]
	}
	for of, rs := range byOf {
		if a, ok := rs["lora/A"]; ok {
			l := layers[of]
			A, B := floats(ig, a.Init), floats(ig, rs["lora/B"].Init)
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
		if sv, ok := rs["sparse/values"]; ok && base.Initializer(sv.Base) != nil && !shared(sv.Base) {
			vals := floats(ig, sv.Init)
			idx, err := onnxio.Int64s(ig.Initializer(rs["sparse/indices"].Init))
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
		for _, wh := range []inject.Injected{rs["whole/whole"], rs["head/weight"], rs["head/bias"]} {
			if wh.Init != "" && wh.Init == wh.Base && base.Initializer(wh.Base) != nil {
				changed[wh.Base] = floats(ig, wh.Init)
			}
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
	ortcheck.Init(t)
	dir := t.TempDir()
	for _, path := range fixture.Paths(t) {
		name := fixture.Name(path)
		t.Run(name, func(t *testing.T) {
			b0 := fixture.Load(t, path)
			ps := plans(t, b0)
			batch := b0.V.Batch
			if batch == 0 {
				batch = 2
			}
			in := ortcheck.Input(t, path, batch)
			for _, pname := range []string{"lora", "sparse", "mixed"} {
				p := ps[pname]
				f := fixture.Load(t, path)
				if err := inject.Apply(f.M, p, inject.ApplyOptions{KeepHead: true, Seed: 3}); err != nil {
					t.Fatal(err)
				}
				// Random values in the trainables that merge into base weights: LoRA, sparse
				// deltas of base initializers, tensors trained in place. (Adapters do not
				// merge; un-shared copies and split pieces have no base initializer of
				// their own to merge into, and keep their base values.)
				shared := func(name string) bool { // de-duplicated in the base: merging would hit every user
					cs := b0.G.Consumers(name)
					return len(cs) != 1 || cs[0].GetOpType() == "Identity"
				}
				randomized := injected.Perturb(t, f.M, rand.New(rand.NewPCG(11, 12)), func(r inject.Injected) bool {
					return r.Tuner == inject.KindLoRA ||
						(r.Tuner == inject.KindSparse && r.Part == inject.PartValues && b0.G.Initializer(r.Base) != nil && !shared(r.Base)) ||
						((r.Tuner == inject.KindWhole || r.Tuner == inject.KindHead) && r.Init == r.Base)
				})
				got := run(t, f.M, dir, name+"_"+pname+"_random", in)
				ref := fixture.Load(t, path)
				merge(t, ref.G, f.M, p, shared)
				want := run(t, ref.M, dir, name+"_"+pname+"_merged", in)
				base := run(t, fixture.Load(t, path).M, dir, name+"_base", in)
				d, moved := fixture.MaxAbsDiff(got, want), fixture.MaxAbsDiff(got, base)
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
	f := fixture.Load(t, fixture.Paths(t)[0])
	p := mixedPlan(t, f)
	if err := inject.Apply(f.M, p, inject.ApplyOptions{KeepHead: true}); err != nil {
		t.Fatal(err)
	}
	s, _ := onnxio.Metadata(f.M, meta.KeyPlan)
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
	ortcheck.Init(t)
	dir := t.TempDir()
	base := fixture.Load(t, path)
	rng := rand.New(rand.NewPCG(1, 1))
	x := make([]float32, 3*224*224)
	for i := range x {
		x[i] = float32(rng.NormFloat64())
	}
	in := ort.Tensor{Shape: []int64{1, 3, 224, 224}, Data: x}
	want := run(t, base.M, dir, "base", in)
	s := randomScores(base.G, 2)
	for _, typ := range []inject.Type{inject.LoRA, inject.Adapter} {
		opt := inject.DefaultOptions()
		opt.Budget, opt.Type = 1500000, typ
		p, err := inject.Allocate(base.V, base.G, s, opt)
		if err != nil {
			t.Fatal(err)
		}
		f := fixture.Load(t, path)
		if err := inject.Apply(f.M, p, inject.ApplyOptions{KeepHead: true, Dropout: 0.1}); err != nil {
			t.Fatal(err)
		}
		n, err := inject.TrainableCount(f.M)
		if err != nil || n != p.Totals.Total {
			t.Fatalf("trainable %d (%v), plan %d", n, err, p.Totals.Total)
		}
		got := run(t, f.M, dir, string(typ), in)
		d := fixture.MaxAbsDiff(got, want)
		t.Logf("%s: %d structured, %d sparse entries; max abs difference %g", typ, len(p.Summary().Structured), p.Totals.SparseEntries, d)
		if d > 1e-5 {
			t.Errorf("%s: max abs difference %g", typ, d)
		}
	}
}
