package inject

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"

	"github.com/sptctl/sptctl/internal/fixture"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/surgery"
)

// randomScores gives every float initializer random scores in [0, 1).
func randomScores(g *surgery.Graph, seed uint64) Scores {
	return fixture.RandomScores(g, rand.New(rand.NewPCG(seed, 7)))
}

// zeroScores gives every float initializer zero scores.
func zeroScores(g *surgery.Graph) Scores {
	s := Scores{}
	for _, t := range g.Proto().GetInitializer() {
		if t.GetDataType() == onnxio.Float {
			s[t.GetName()] = make([]float32, onnxio.NumElements(t.Dims))
		}
	}
	return s
}

// synth builds allocation units for a ViT of the given shape without a graph: blocks
// of q, k, v (fused into one [dim, 3·dim] weight when fused), proj, fc1, fc2 stored
// [in, out], and ten vectors per block; with random scores.
func synth(blocks, dim, mlp int, fused bool, seed uint64) ([]unit, Scores) {
	rng := rand.New(rand.NewPCG(seed, 11))
	s := Scores{}
	rnd := func(name string, n int) {
		x := make([]float32, n)
		for i := range x {
			x[i] = rng.Float32()
		}
		s[name] = x
	}
	var us []unit
	for b := 0; b < blocks; b++ {
		qkv := fmt.Sprintf("b%d.qkv", b)
		if fused {
			rnd(qkv, dim*3*dim)
			rnd(qkv+".bias", 3*dim)
		}
		shapes := [6][2]int{{dim, dim}, {dim, dim}, {dim, dim}, {dim, dim}, {dim, mlp}, {mlp, dim}}
		for i, k := range surgery.BlockKinds() {
			in, out := shapes[i][0], shapes[i][1]
			l := &surgery.Linear{Name: fmt.Sprintf("blocks.%d.%s", b, k), Block: b, Kind: k, In: in, Out: out, TotalOut: out, Layout: surgery.InOut}
			u := unit{name: l.Name, block: b, matrix: true, lin: l, in: int64(in), out: int64(out)}
			if fused && i < 3 {
				l.Fused, l.Part, l.Offset, l.TotalOut = true, i, i*dim, 3*dim
				u.init, u.dims = qkv, []int64{int64(dim), int64(3 * dim)}
				u.sp = span{start: int64(i * dim), rows: int64(dim), rowLen: int64(dim), stride: int64(3 * dim)}
			} else {
				u.init, u.dims = l.Name+".weight", []int64{int64(in), int64(out)}
				u.sp = span{start: 0, rows: 1, rowLen: int64(in * out), stride: int64(in * out)}
				rnd(u.init, in*out)
			}
			l.Weight = u.init
			us = append(us, u)
		}
		for _, vn := range []string{"norm1.scale", "norm1.shift", "q.bias", "k.bias", "v.bias", "proj.bias", "norm2.scale", "norm2.shift", "fc1.bias", "fc2.bias"} {
			size := dim
			if vn == "fc1.bias" {
				size = mlp
			}
			name := fmt.Sprintf("blocks.%d.%s", b, vn)
			u := unit{name: name, block: b, out: int64(size), init: name, dims: []int64{int64(size)},
				vec: surgery.Vector{Name: name, Block: b, Init: name, Size: size}, sp: span{0, 1, int64(size), int64(size)}}
			if fused && (vn == "q.bias" || vn == "k.bias" || vn == "v.bias") {
				off := map[string]int{"q.bias": 0, "k.bias": dim, "v.bias": 2 * dim}[vn]
				u.init, u.dims, u.vec.Init, u.vec.Offset = qkv+".bias", []int64{int64(3 * dim)}, qkv+".bias", off
				u.sp.start = int64(off)
			} else {
				rnd(name, size)
			}
			us = append(us, u)
		}
	}
	return us, s
}

// synthPlan is an empty plan with a head for classes classes and a class token.
func synthPlan(dim, classes int, budget int64, opt Options) *Plan {
	return &Plan{Version: PlanVersion, BaseFingerprint: "sha256:synthetic", Budget: budget, Dim: dim,
		Options:    PlanOptions{Strategy: "spt", Type: string(opt.Type), Rank: opt.Rank, Alpha: opt.Alpha, Beta: opt.Beta, Classes: classes, LoRAScaling: 1},
		Head:       HeadPlan{In: dim, Classes: classes, Params: int64(dim+1) * int64(classes)},
		ClassToken: &TensorPlan{Name: "cls", Params: int64(dim)}, Layers: []LayerPlan{}, Vectors: []VectorPlan{}}
}

func jsonMarshal(v any) ([]byte, error)   { return json.Marshal(v) }
func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
