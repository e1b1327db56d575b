// Package adaptertest makes "trained" task models for tests and benchmarks of
// adapter-ready models: different SPT plans injected into one base model, every
// injected tensor set to random non-zero values, as training would leave them.
package adaptertest

import (
	"math/rand/v2"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

// Task is one task model.
type Task struct {
	Name    string
	Model   *onnxpb.ModelProto
	Classes int
}

// Unit says how one block matrix is tuned in a task: Mode "" leaves it alone.
type Unit struct {
	Mode   string // inject.ModeLoRA, ModeAdapter, ModeSparse, ModeFull
	Rank   int
	Sparse int // sparse entries (with lora / adapter: extra entries beside the module)
}

// Spec describes a task: how the i-th block matrix (surgery's Linears order) and the
// j-th block vector are tuned.
type Spec struct {
	Name        string
	Classes     int // 0: keep the base model's head (and class count)
	ClassToken  bool
	LoRAScaling float64
	Layer       func(i int, l *surgery.Linear) Unit
	Vector      func(j int) (mode string, sparse int)
	Seed        uint64
}

// Specs are three tasks that between them use every kind of slot, overlapping on
// layers in different ways: LoRA of ranks 4 and 2 on the same layers, different
// sparse index sets on the same layers, a LoRA in one task where another trains the
// whole matrix, Adapters of ranks 3 and 2 (one on a fused q/k/v part), vectors whole
// in one task and sparse in another, heads of 5, 12 and the base's classes, LoRA
// scaling 1 and 2, the class token in one task.
func Specs() []Spec {
	return []Spec{
		{Name: "taskA", Classes: 5, ClassToken: true, LoRAScaling: 1, Seed: 1,
			Layer: func(i int, l *surgery.Linear) Unit {
				switch i % 4 {
				case 0:
					u := Unit{Mode: inject.ModeLoRA, Rank: 4}
					if l.Block == 0 {
						u.Sparse = 5
					}
					return u
				case 1:
					return Unit{Mode: inject.ModeSparse, Sparse: 9}
				case 2:
					return Unit{Mode: inject.ModeLoRA, Rank: 2}
				}
				return Unit{}
			},
			Vector: func(j int) (string, int) {
				switch j % 3 {
				case 0:
					return inject.ModeFull, 0
				case 1:
					return inject.ModeSparse, 4
				}
				return "", 0
			}},
		{Name: "taskB", Classes: 12, LoRAScaling: 2, Seed: 2,
			Layer: func(i int, l *surgery.Linear) Unit {
				if l.Name == "blocks.1.fc1" {
					return Unit{Mode: inject.ModeFull}
				}
				switch i % 4 {
				case 0:
					return Unit{Mode: inject.ModeLoRA, Rank: 2, Sparse: 6}
				case 1:
					return Unit{Mode: inject.ModeSparse, Sparse: 7}
				case 3:
					return Unit{Mode: inject.ModeAdapter, Rank: 3}
				}
				return Unit{}
			},
			Vector: func(j int) (string, int) {
				switch j % 3 {
				case 0:
					return inject.ModeSparse, 2
				case 1:
					return inject.ModeFull, 0
				}
				return inject.ModeSparse, 3
			}},
		{Name: "taskC", Classes: 0, LoRAScaling: 1, Seed: 3,
			Layer: func(i int, l *surgery.Linear) Unit {
				if i%4 == 3 {
					return Unit{Mode: inject.ModeAdapter, Rank: 2}
				}
				return Unit{}
			},
			Vector: func(j int) (string, int) { return "", 0 }},
	}
}

// Make injects spec's plan into a copy of base and sets every injected trainable
// tensor to random non-zero values (whole tensors: their value plus noise).
func Make(tb testing.TB, base *onnxpb.ModelProto, spec Spec) Task {
	tb.Helper()
	m := proto.Clone(base).(*onnxpb.ModelProto)
	g := surgery.New(m)
	v, err := surgery.FindViT(g)
	if err != nil {
		tb.Fatal(err)
	}
	opt := inject.DefaultOptions()
	opt.Strategy = inject.Linear
	keep := spec.Classes == 0
	if !keep {
		opt.Classes = spec.Classes
	}
	p, err := inject.Allocate(v, g, nil, opt)
	if err != nil {
		tb.Fatal(err)
	}
	classes := v.Head.Out
	if !keep {
		classes = spec.Classes
	}
	p.Head.Classes, p.Options.Classes = classes, classes
	p.Head.Params = int64(p.Head.In+1) * int64(classes)
	p.Options.LoRAScaling = spec.LoRAScaling
	rng := rand.New(rand.NewPCG(spec.Seed, 99))
	for i, l := range v.Linears() {
		u := spec.Layer(i, l)
		if u.Mode == "" {
			continue
		}
		lp := inject.LayerPlan{Name: l.Name, Block: l.Block, Kind: string(l.Kind), Weight: l.Weight, Layout: l.Layout.String(),
			In: l.In, Out: l.Out, Fused: l.Fused, Offset: l.Offset, Mode: u.Mode, Rank: u.Rank}
		switch u.Mode {
		case inject.ModeLoRA:
			lp.Params = int64(u.Rank * (l.In + l.Out))
		case inject.ModeAdapter:
			lp.Params = int64(2*u.Rank*l.Out + u.Rank + l.Out)
		case inject.ModeFull:
			lp.Params = int64(l.In * l.Out)
		}
		seen := map[int64]bool{}
		for len(lp.Indices) < u.Sparse {
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
		lp.Params += int64(len(lp.Indices))
		p.Layers = append(p.Layers, lp)
	}
	for j, x := range v.Vectors() {
		mode, n := spec.Vector(j)
		if mode == "" {
			continue
		}
		vp := inject.VectorPlan{Name: x.Name, Block: x.Block, Init: x.Init, Offset: x.Offset, Size: x.Size, Mode: mode}
		if mode == inject.ModeFull {
			vp.Params = int64(x.Size)
		} else {
			for _, k := range rng.Perm(x.Size)[:n] {
				vp.Indices = append(vp.Indices, int64(x.Offset+k))
			}
			slices.Sort(vp.Indices)
			vp.Params = int64(n)
		}
		p.Vectors = append(p.Vectors, vp)
	}
	if spec.ClassToken {
		if t := g.Initializer(v.ClassToken); t != nil {
			p.ClassToken = &inject.TensorPlan{Name: "class_token", Init: v.ClassToken, Params: onnxio.NumElements(t.Dims)}
		}
	} else {
		p.ClassToken = nil
	}
	p.Recount()
	if err := inject.Apply(m, p, inject.ApplyOptions{KeepHead: keep, Seed: int64(spec.Seed)}); err != nil {
		tb.Fatalf("%s: %v", spec.Name, err)
	}
	Randomize(tb, m, spec.Seed)
	return Task{Name: spec.Name, Model: m, Classes: classes}
}

// Randomize sets every trainable injected tensor of an injected model to random
// non-zero values: deltas N(0, 0.05²)·, whole tensors their value plus that noise.
func Randomize(tb testing.TB, m *onnxpb.ModelProto, seed uint64) {
	tb.Helper()
	s, _ := onnxio.Metadata(m, meta.KeyPlan)
	p, err := inject.DecodePlan([]byte(s))
	if err != nil {
		tb.Fatal(err)
	}
	g := surgery.New(m)
	rng := rand.New(rand.NewPCG(seed, 1234))
	done := map[string]bool{}
	for _, r := range p.Injected {
		if !r.Trainable || done[r.Init] {
			continue
		}
		done[r.Init] = true
		t := g.Initializer(r.Init)
		x, err := onnxio.Floats(t)
		if err != nil {
			tb.Fatal(err)
		}
		for i := range x {
			d := float32(0.05 * rng.NormFloat64())
			if d == 0 {
				d = 0.01
			}
			x[i] += d
		}
		if err := onnxio.SetFloats(t, x); err != nil {
			tb.Fatal(err)
		}
	}
}

// MakeAll makes the tasks of Specs on base.
func MakeAll(tb testing.TB, base *onnxpb.ModelProto) []Task {
	tb.Helper()
	var out []Task
	for _, s := range Specs() {
		out = append(out, Make(tb, base, s))
	}
	return out
}

// Models are the tasks' models.
func Models(ts []Task) []*onnxpb.ModelProto {
	out := make([]*onnxpb.ModelProto, len(ts))
	for i, t := range ts {
		out[i] = t.Model
	}
	return out
}

// RelDiff is max|a−b| / max|b| (b the reference), +Inf on a length mismatch or NaN.
func RelDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return inf()
	}
	var num, den float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		if d != d {
			return inf()
		}
		num = max(num, abs(d))
		den = max(den, abs(float64(b[i])))
	}
	if den == 0 {
		return num
	}
	return num / den
}

// Columns keeps the first n of each row of a [rows, cols] matrix.
func Columns(x []float32, cols, n int) []float32 {
	if cols <= 0 {
		return nil
	}
	rows := len(x) / cols
	out := make([]float32, 0, rows*n)
	for r := 0; r < rows; r++ {
		out = append(out, x[r*cols:r*cols+n]...)
	}
	return out
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}

func inf() float64 { var z float64; return 1 / z }
