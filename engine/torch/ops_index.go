package torch

import (
	"errors"
	"fmt"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/sptctl/sptctl/surgery/constfold"
)

// Indexed writes and generated tensors: ScatterND, Range, Pad, Tile.
// opScatterND (reduction none or add): data[indices[i]] = updates[i], as index_copy /
// index_add on data viewed as [constfold.Prod(shape[:k]), shape[k:]...].
func opScatterND(c *nodeCtx) (kernel, error) {
	red := c.str("reduction", "none")
	if red != "none" && red != "add" {
		return nil, fmt.Errorf("reduction %q is not supported", red)
	}
	return func(r *runCtx, in []value) ([]value, error) {
		data, err := r.T(in[0])
		if err != nil {
			return nil, err
		}
		ds, err := sizeOf(data)
		if err != nil {
			return nil, err
		}
		is, err := r.Shape(in[1])
		if err != nil {
			return nil, err
		}
		if len(is) == 0 {
			return nil, errors.New("indices must have rank >= 1")
		}
		k := int(is[len(is)-1])
		if k > len(ds) {
			return nil, fmt.Errorf("indices of depth %d into data of rank %d", k, len(ds))
		}
		m := constfold.Prod(is[:len(is)-1])
		st := constfold.Strides(ds[:k])
		var lin *ts.Tensor
		if in[1].h != nil {
			idx := in[1].h.Ints()
			l := make([]int64, m)
			for i := int64(0); i < m; i++ {
				for j := 0; j < k; j++ {
					v := idx[i*int64(k)+int64(j)]
					if v < 0 {
						v += ds[j]
					}
					if v < 0 || v >= ds[j] {
						return nil, fmt.Errorf("index %d out of range for axis %d of size %d", v, j, ds[j])
					}
					l[i] += v * st[j]
				}
			}
			if lin, err = tensorFromInt64s(l, []int64{m}); err != nil {
				return nil, err
			}
		} else {
			stT, err := tensorFromInt64s(st, []int64{int64(k)})
			if err != nil {
				return nil, err
			}
			prodT, err := in[1].t.Mul(stT, false)
			stT.Drop()
			if err != nil {
				return nil, torchErr(err)
			}
			summed, err := prodT.SumDimIntlist([]int64{-1}, false, gotch.Int64, true)
			if err != nil {
				return nil, torchErr(err)
			}
			lin, err = reshapeT(summed, []int64{m})
			summed.Drop()
			if err != nil {
				return nil, err
			}
		}
		defer lin.Drop()
		rest := ds[k:]
		flatShape := append([]int64{constfold.Prod(ds[:k])}, rest...)
		df, err := reshapeT(data, flatShape)
		if err != nil {
			return nil, err
		}
		defer df.Drop()
		u, err := r.T(in[2])
		if err != nil {
			return nil, err
		}
		uf, err := reshapeT(u, append([]int64{m}, rest...))
		if err != nil {
			return nil, err
		}
		defer uf.Drop()
		var out *ts.Tensor
		if red == "add" {
			out, err = df.IndexAdd(0, lin, uf, false)
		} else {
			out, err = df.IndexCopy(0, lin, uf, false)
		}
		if err != nil {
			return nil, torchErr(err)
		}
		defer out.Drop()
		return one(reshapeT(out, ds))
	}, nil
}

func opRange(c *nodeCtx) (kernel, error) {
	return func(r *runCtx, in []value) ([]value, error) {
		var hs [3]*constfold.Tensor
		for k := range hs {
			h, err := r.H(in[k])
			if err != nil {
				return nil, err
			}
			hs[k] = h
		}
		return hostOne(constfold.Range(hs[0], hs[1], hs[2]))
	}, nil
}

func opPad(c *nodeCtx) (kernel, error) {
	mode := c.str("mode", "constant")
	if mode != "constant" {
		return nil, fmt.Errorf("mode %q is not supported (constant only)", mode)
	}
	attrPads, _ := c.ints("pads")
	attrValue := float64(c.float("value", 0))
	return func(r *runCtx, in []value) ([]value, error) {
		pads, val := attrPads, attrValue
		var axes []int64
		if c.opset >= 11 {
			var err error
			if pads, _, err = optInts(r, in, 1); err != nil {
				return nil, err
			}
			if len(in) > 2 && !in[2].none() {
				h, err := r.H(in[2])
				if err != nil {
					return nil, err
				}
				val = h.Floats()[0]
			}
			if axes, _, err = optInts(r, in, 3); err != nil {
				return nil, err
			}
		}
		x, err := r.T(in[0])
		if err != nil {
			return nil, err
		}
		xs, err := sizeOf(x)
		if err != nil {
			return nil, err
		}
		if axes == nil {
			for d := range xs {
				axes = append(axes, int64(d))
			}
		}
		if len(pads) != 2*len(axes) {
			return nil, fmt.Errorf("pads %v for %d axes", pads, len(axes))
		}
		begin, end := make([]int64, len(xs)), make([]int64, len(xs))
		for k, ax := range axes {
			a, err := constfold.NormAxis(ax, len(xs))
			if err != nil {
				return nil, err
			}
			begin[a], end[a] = pads[k], pads[k+len(axes)]
		}
		var tp []int64
		for d := len(xs) - 1; d >= 0; d-- {
			tp = append(tp, begin[d], end[d])
		}
		if len(tp) == 0 {
			return clone(x)
		}
		if val == 0 {
			return one(x.ConstantPadNd(tp, false))
		}
		s := floatScalar(val)
		defer s.Drop()
		return one(x.ConstantPadNdWithVal(tp, s, false))
	}, nil
}

func opTile(c *nodeCtx) (kernel, error) {
	return func(r *runCtx, in []value) ([]value, error) {
		rep, err := r.H(in[1])
		if err != nil {
			return nil, err
		}
		x, err := r.T(in[0])
		if err != nil {
			return nil, err
		}
		xs, err := sizeOf(x)
		if err != nil {
			return nil, err
		}
		reps := rep.Ints()
		if len(reps) != len(xs) {
			return nil, fmt.Errorf("repeats %v for rank %d", reps, len(xs))
		}
		if len(reps) == 0 {
			return clone(x)
		}
		return one(x.Repeat(reps, false))
	}, nil
}
