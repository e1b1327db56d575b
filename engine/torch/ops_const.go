package torch

import (
	"errors"
	"fmt"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/sptctl/sptctl/surgery/constfold"
)

// Selection, casts and constants: Where, Cast, Constant, ConstantOfShape, Identity.
func opWhere(c *nodeCtx) (kernel, error) {
	return func(r *runCtx, in []value) ([]value, error) {
		if allHost(in) {
			return hostOne(constfold.Where(in[0].h, in[1].h, in[2].h))
		}
		cond, err := r.T(in[0])
		if err != nil {
			return nil, err
		}
		x, err := r.T(in[1])
		if err != nil {
			return nil, err
		}
		y, err := r.T(in[2])
		if err != nil {
			return nil, err
		}
		return one(x.WhereSelf(cond, y, false))
	}, nil
}

func opCast(c *nodeCtx) (kernel, error) {
	to := int32(c.int("to", 0))
	kind, err := torchType(to)
	if err != nil {
		return nil, fmt.Errorf("cast to %w", err)
	}
	return func(r *runCtx, in []value) ([]value, error) {
		if in[0].h != nil {
			return hostOne(constfold.Cast(in[0].h, to))
		}
		return one(in[0].t.Totype(kind, false))
	}, nil
}

func opConstant(c *nodeCtx) (kernel, error) {
	var h *constfold.Tensor
	switch {
	case c.attr("value") != nil:
		var err error
		if h, err = constfold.FromProto(c.attr("value").GetT()); err != nil {
			return nil, err
		}
	case c.attr("value_float") != nil:
		h = constfold.Scalar(constfold.Float, float64(c.float("value_float", 0)))
	case c.attr("value_floats") != nil:
		fs := c.attr("value_floats").GetFloats()
		h = constfold.Zeros(constfold.Float, []int64{int64(len(fs))})
		for k, v := range fs {
			h.F[k] = float64(v)
		}
	case c.attr("value_int") != nil:
		h = constfold.Ints64(nil, []int64{c.int("value_int", 0)})
	case c.attr("value_ints") != nil:
		v, _ := c.ints("value_ints")
		h = constfold.Ints64([]int64{int64(len(v))}, append([]int64{}, v...))
	default:
		return nil, errors.New("only value, value_float(s) and value_int(s) constants are supported")
	}
	return func(r *runCtx, in []value) ([]value, error) { return []value{{h: h}}, nil }, nil
}

func opConstantOfShape(c *nodeCtx) (kernel, error) {
	fillV := constfold.Scalar(constfold.Float, 0)
	if a := c.attr("value"); a != nil {
		var err error
		if fillV, err = constfold.FromProto(a.GetT()); err != nil {
			return nil, err
		}
		if fillV.Len() != 1 {
			return nil, errors.New("value must hold one element")
		}
	}
	kind, err := torchType(fillV.DType)
	if err != nil {
		return nil, err
	}
	return func(r *runCtx, in []value) ([]value, error) {
		sh, err := r.H(in[0])
		if err != nil {
			return nil, err
		}
		shape := sh.Ints()
		if !fillV.IsFloat() || constfold.Prod(shape) <= maxFoldedFill || len(shape) == 0 {
			return hostOne(constfold.Fill(fillV, shape))
		}
		for _, d := range shape {
			if d < 0 {
				return nil, fmt.Errorf("negative shape %v", shape)
			}
		}
		s := floatScalar(fillV.F[0])
		defer s.Drop()
		return one(ts.Full(shape, s, kind, gotch.CPU))
	}, nil
}

func opIdentity(c *nodeCtx) (kernel, error) {
	return func(r *runCtx, in []value) ([]value, error) {
		if in[0].h != nil {
			return []value{{h: in[0].h}}, nil
		}
		return clone(in[0].t)
	}, nil
}
