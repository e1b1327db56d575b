// Package adaptertest makes "trained" task models for tests and benchmarks of
// adapter-ready models: different SPT plans injected into one base model, every
// injected tensor set to random non-zero values, as training would leave them.
package adaptertest

import (
	"math/rand/v2"
	"testing"

	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/internal/fixture/injected"
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
	m := fixture.Clone(base)
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
		lp := injected.Layer(l, u.Mode, u.Rank)
		injected.AddSparse(&lp, l, u.Sparse, rng)
		p.Layers = append(p.Layers, lp)
	}
	for j, x := range v.Vectors() {
		if mode, n := spec.Vector(j); mode != "" {
			p.Vectors = append(p.Vectors, injected.Vector(x, mode, n, rng))
		}
	}
	if !spec.ClassToken {
		p.ClassToken = nil
	} else if ct := injected.ClassToken(g, v); ct != nil {
		p.ClassToken = ct
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
	injected.Perturb(tb, m, rand.New(rand.NewPCG(seed, 1234)), nil)
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
func RelDiff(a, b []float32) float64 { return fixture.RelDiff(a, b) }

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
