package torch

import (
	"errors"
	"fmt"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// Selection, casts and constants: Where, Cast, Constant, ConstantOfShape, Identity.
func opWhere(c *nodeCtx) (kernel, error) {
	return func(r *runCtx, in []value) ([]value, error) {
		if allHost(in) {
			return hostOne(hostWhere(in[0].h, in[1].h, in[2].h))
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

func hostWhere(cond, x, y *hostT) (*hostT, error) {
	s1, err := broadcastShapes(cond.shape, x.shape)
	if err != nil {
		return nil, err
	}
	shape, err := broadcastShapes(s1, y.shape)
	if err != nil {
		return nil, err
	}
	out := newHostLike(x.dtype, shape)
	st := stridesOf(shape)
	for k := int64(0); k < prod(shape); k++ {
		src := y
		if cond.ints()[bIndex(k, shape, st, cond.shape)] != 0 {
			src = x
		}
		j := bIndex(k, shape, st, src.shape)
		if out.isFloat() {
			out.f[k] = src.floats()[j]
		} else {
			out.i[k] = src.ints()[j]
		}
	}
	return out, nil
}

func opCast(c *nodeCtx) (kernel, error) {
	to := int32(c.int("to", 0))
	kind, err := torchType(to)
	if err != nil {
		return nil, fmt.Errorf("cast to %w", err)
	}
	return func(r *runCtx, in []value) ([]value, error) {
		if in[0].h != nil {
			h := in[0].h
			out := newHostLike(to, h.shape)
			if !isFloatType(to) {
				out.dtype = int32(onnxpb.TensorProto_INT64)
				if to == int32(onnxpb.TensorProto_BOOL) {
					out.dtype = to
				}
			}
			switch {
			case out.isFloat():
				for k, v := range h.floats() {
					out.f[k] = roundTo(to, v)
				}
			case to == int32(onnxpb.TensorProto_BOOL):
				for k, v := range h.floats() {
					out.i[k] = boolOf(v != 0)
				}
			default:
				copy(out.i, h.ints())
			}
			return []value{{h: out}}, nil
		}
		return one(in[0].t.Totype(kind, false))
	}, nil
}

func opConstant(c *nodeCtx) (kernel, error) {
	var h *hostT
	switch {
	case c.attr("value") != nil:
		var err error
		if h, err = hostFromProto(c.attr("value").GetT()); err != nil {
			return nil, err
		}
	case c.attr("value_float") != nil:
		h = &hostT{dtype: int32(onnxpb.TensorProto_FLOAT), f: []float64{float64(c.float("value_float", 0))}}
	case c.attr("value_floats") != nil:
		fs := c.attr("value_floats").GetFloats()
		h = &hostT{dtype: int32(onnxpb.TensorProto_FLOAT), shape: []int64{int64(len(fs))}, f: make([]float64, len(fs))}
		for k, v := range fs {
			h.f[k] = float64(v)
		}
	case c.attr("value_int") != nil:
		h = newHostInts(nil, []int64{c.int("value_int", 0)})
	case c.attr("value_ints") != nil:
		v, _ := c.ints("value_ints")
		h = newHostInts([]int64{int64(len(v))}, append([]int64{}, v...))
	default:
		return nil, errors.New("only value, value_float(s) and value_int(s) constants are supported")
	}
	return func(r *runCtx, in []value) ([]value, error) { return []value{{h: h}}, nil }, nil
}

func opConstantOfShape(c *nodeCtx) (kernel, error) {
	fillV := &hostT{dtype: int32(onnxpb.TensorProto_FLOAT), f: []float64{0}}
	if a := c.attr("value"); a != nil {
		var err error
		if fillV, err = hostFromProto(a.GetT()); err != nil {
			return nil, err
		}
		if fillV.numel() != 1 {
			return nil, errors.New("value must hold one element")
		}
	}
	kind, err := torchType(fillV.dtype)
	if err != nil {
		return nil, err
	}
	return func(r *runCtx, in []value) ([]value, error) {
		sh, err := r.H(in[0])
		if err != nil {
			return nil, err
		}
		shape := append([]int64{}, sh.ints()...)
		for _, d := range shape {
			if d < 0 {
				return nil, fmt.Errorf("negative shape %v", shape)
			}
		}
		if !fillV.isFloat() || prod(shape) <= 4096 || len(shape) == 0 {
			out := newHostLike(fillV.dtype, shape)
			for k := range out.i {
				out.i[k] = fillV.i[0]
			}
			for k := range out.f {
				out.f[k] = fillV.f[0]
			}
			return []value{{h: out}}, nil
		}
		s := floatScalar(fillV.f[0])
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
