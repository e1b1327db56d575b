package torch

import (
	"fmt"

	"github.com/sugarme/gotch/ts"
)

// Linear algebra: MatMul, Gemm and Conv.

func opMatMul(c *nodeCtx) (kernel, error) {
	return func(r *runCtx, in []value) ([]value, error) {
		a, err := r.T(in[0])
		if err != nil {
			return nil, err
		}
		b, err := r.T(in[1])
		if err != nil {
			return nil, err
		}
		return one(a.Matmul(b, false))
	}, nil
}

func opGemm(c *nodeCtx) (kernel, error) {
	alpha := float64(c.float("alpha", 1))
	beta := float64(c.float("beta", 1))
	transA, transB := c.int("transA", 0) != 0, c.int("transB", 0) != 0
	return func(r *runCtx, in []value) ([]value, error) {
		a, err := r.T(in[0])
		if err != nil {
			return nil, err
		}
		b, err := r.T(in[1])
		if err != nil {
			return nil, err
		}
		var bias *ts.Tensor
		if len(in) > 2 && !in[2].none() && beta != 0 {
			if bias, err = r.T(in[2]); err != nil {
				return nil, err
			}
		}
		// PyTorch's own nn.Linear: y = x Wᵀ + b (addmm), what exporters write as
		// Gemm(transB=1).
		if !transA && transB && alpha == 1 && (bias == nil || beta == 1) {
			if bias == nil {
				bias = ts.None
			}
			return one(ts.Linear(a, b, bias))
		}
		var tmp []*ts.Tensor
		defer func() {
			for _, t := range tmp {
				t.Drop()
			}
		}()
		if transA {
			if a, err = a.Transpose(0, 1, false); err != nil {
				return nil, torchErr(err)
			}
			tmp = append(tmp, a)
		}
		if transB {
			if b, err = b.Transpose(0, 1, false); err != nil {
				return nil, torchErr(err)
			}
			tmp = append(tmp, b)
		}
		y, err := a.Mm(b, false)
		if err != nil {
			return nil, torchErr(err)
		}
		if alpha != 1 {
			s := floatScalar(alpha)
			y2, err := y.MulScalar(s, true)
			s.Drop()
			if err != nil {
				return nil, torchErr(err)
			}
			y = y2
		}
		if bias != nil {
			if beta != 1 {
				s := floatScalar(beta)
				bias, err = bias.MulScalar(s, false)
				s.Drop()
				if err != nil {
					y.Drop()
					return nil, torchErr(err)
				}
				tmp = append(tmp, bias)
			}
			return one(y.Add(bias, true))
		}
		return []value{{t: y}}, nil
	}, nil
}

func opConv(c *nodeCtx) (kernel, error) {
	strides, _ := c.ints("strides")
	pads, _ := c.ints("pads")
	dil, _ := c.ints("dilations")
	group := c.int("group", 1)
	autoPad := c.str("auto_pad", "NOTSET")
	switch autoPad {
	case "NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER":
	default:
		return nil, fmt.Errorf("auto_pad %q is not supported", autoPad)
	}
	return func(r *runCtx, in []value) ([]value, error) {
		x, err := r.T(in[0])
		if err != nil {
			return nil, err
		}
		w, err := r.T(in[1])
		if err != nil {
			return nil, err
		}
		bias := ts.None
		if len(in) > 2 && !in[2].none() {
			if bias, err = r.T(in[2]); err != nil {
				return nil, err
			}
		}
		ws, err := sizeOf(w)
		if err != nil {
			return nil, err
		}
		xs, err := sizeOf(x)
		if err != nil {
			return nil, err
		}
		nd := len(ws) - 2
		if nd < 1 || nd > 3 || len(xs) != nd+2 {
			return nil, fmt.Errorf("conv of input %v with weight %v is not supported (1-3 spatial dims)", xs, ws)
		}
		st, dl := fill(strides, nd, 1), fill(dil, nd, 1)
		begin, end := make([]int64, nd), make([]int64, nd)
		switch autoPad {
		case "NOTSET":
			if len(pads) == 2*nd {
				copy(begin, pads[:nd])
				copy(end, pads[nd:])
			} else if len(pads) != 0 {
				return nil, fmt.Errorf("pads %v for %d spatial dims", pads, nd)
			}
		case "SAME_UPPER", "SAME_LOWER":
			for d := 0; d < nd; d++ {
				in, k := xs[d+2], ws[d+2]
				out := (in + st[d] - 1) / st[d]
				total := max(0, (out-1)*st[d]+(k-1)*dl[d]+1-in)
				if autoPad == "SAME_UPPER" {
					begin[d], end[d] = total/2, total-total/2
				} else {
					begin[d], end[d] = total-total/2, total/2
				}
			}
		}
		sym := true
		for d := range begin {
			sym = sym && begin[d] == end[d]
		}
		padding := begin
		if !sym {
			tp := make([]int64, 0, 2*nd)
			for d := nd - 1; d >= 0; d-- {
				tp = append(tp, begin[d], end[d])
			}
			px, err := x.ConstantPadNd(tp, false)
			if err != nil {
				return nil, torchErr(err)
			}
			defer px.Drop()
			x = px
			padding = make([]int64, nd)
		}
		switch nd {
		case 1:
			return one(ts.Conv1d(x, w, bias, st, padding, dl, group))
		case 2:
			return one(ts.Conv2d(x, w, bias, st, padding, dl, group))
		default:
			return one(ts.Conv3d(x, w, bias, st, padding, dl, group))
		}
	}, nil
}

func fill(v []int64, n int, def int64) []int64 {
	if len(v) == n {
		return v
	}
	out := make([]int64, n)
	for k := range out {
		out[k] = def
	}
	return out
}
