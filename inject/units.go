package inject

import (
	"fmt"
	"strings"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/surgery"
)

// span is the set of flat indices of a stored initializer that one logical matrix or
// vector owns: rows runs of rowLen consecutive entries, stride apart, from start. A
// whole tensor, a fused q/k/v part stored [out, in] (a block of rows) and a vector
// part are one run; a fused part stored [in, out] (a block of columns) is in runs.
type span struct {
	start, rows, rowLen, stride int64
}

func (s span) size() int64 { return s.rows * s.rowLen }

// flat is the flat index of the span's k-th entry (in increasing flat order).
func (s span) flat(k int64) int64 { return s.start + (k/s.rowLen)*s.stride + k%s.rowLen }

// local is the inverse of flat, or -1 if f is not in the span.
func (s span) local(f int64) int64 {
	if f < s.start {
		return -1
	}
	d := f - s.start
	r, c := d/s.stride, d%s.stride
	if r >= s.rows || c >= s.rowLen {
		return -1
	}
	return r*s.rowLen + c
}

// unit is one candidate of the allocation: a logical matrix (q, k, v, proj, fc1, fc2 of
// a block; a fused q/k/v projection gives three) or a block vector (a bias, or its
// q/k/v part, or a LayerNorm scale or shift).
type unit struct {
	name   string // "blocks.3.fc1", "blocks.3.norm1.scale", "blocks.3.q.bias"
	block  int
	matrix bool
	lin    *surgery.Linear // matrices
	vec    surgery.Vector  // vectors
	init   string          // the stored initializer
	dims   []int64         // its shape
	sp     span            // the entries this unit owns
	in     int64           // matrices: input size
	out    int64           // matrices: output size; vectors: size
}

// isBias reports whether a vector unit is a bias (of a linear layer or a LayerNorm
// shift), the set BitFit tunes.
func (u *unit) isBias() bool {
	return !u.matrix && (strings.HasSuffix(u.name, ".bias") || strings.HasSuffix(u.name, ".shift"))
}

// units lists the allocation candidates of v in a fixed order: block by block, the
// six matrices (q, k, v, proj, fc1, fc2) and then the block's vectors in
// surgery.ViT.Vectors order. That order (then the flat index) breaks score ties.
func units(v *surgery.ViT, g *surgery.Graph) ([]unit, error) {
	vecs := v.Vectors()
	var us []unit
	for _, b := range v.Blocks {
		for _, l := range b.Linears {
			if l == nil {
				return nil, fmt.Errorf("block %d: missing linear layer", b.Index)
			}
			t := g.Initializer(l.Weight)
			if t == nil || len(t.Dims) != 2 {
				return nil, fmt.Errorf("%s: weight %q is not a 2-D initializer", l.Name, l.Weight)
			}
			u := unit{name: l.Name, block: l.Block, matrix: true, lin: l, init: l.Weight, dims: t.Dims, in: int64(l.In), out: int64(l.Out)}
			rows, cols := t.Dims[0], t.Dims[1]
			switch {
			case !l.Fused:
				u.sp = span{start: 0, rows: 1, rowLen: rows * cols, stride: rows * cols}
			case l.Layout == surgery.InOut: // [in, 3d]: a block of columns
				u.sp = span{start: int64(l.Offset), rows: rows, rowLen: int64(l.Out), stride: cols}
			default: // [3d, in]: a block of rows
				u.sp = span{start: int64(l.Offset) * cols, rows: 1, rowLen: int64(l.Out) * cols, stride: int64(l.Out) * cols}
			}
			if u.sp.size() != int64(l.In)*int64(l.Out) || u.sp.flat(u.sp.size()-1) >= rows*cols {
				return nil, fmt.Errorf("%s: weight %q of shape %v does not hold a %dx%d matrix at offset %d", l.Name, l.Weight, t.Dims, l.In, l.Out, l.Offset)
			}
			us = append(us, u)
		}
		for _, vec := range vecs {
			if vec.Block != b.Index {
				continue
			}
			t := g.Initializer(vec.Init)
			if t == nil {
				return nil, fmt.Errorf("%s: %q is not an initializer", vec.Name, vec.Init)
			}
			n := onnxio.NumElements(t.Dims)
			if int64(vec.Offset+vec.Size) > n {
				return nil, fmt.Errorf("%s: initializer %q of shape %v has no entries %d..%d", vec.Name, vec.Init, t.Dims, vec.Offset, vec.Offset+vec.Size)
			}
			us = append(us, unit{name: vec.Name, block: vec.Block, vec: vec, init: vec.Init, dims: t.Dims,
				sp: span{start: int64(vec.Offset), rows: 1, rowLen: int64(vec.Size), stride: int64(vec.Size)}, out: int64(vec.Size)})
		}
	}
	return us, nil
}

// structuredCost is the number of parameters of a structured module of type typ and
// rank r on a matrix in→out, as its tuner counts it (tuner_*.go): LoRA r·(in+out); the
// Adapter 2·r·out + r + out (the module actually built, as the SPT reference counts
// it), so that the injected model's trainable count equals the plan's total exactly.
func structuredCost(typ Type, r, in, out int64) int64 { return moduleParams(typ, r, in, out) }
