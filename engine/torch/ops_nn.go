package torch

import (
	"errors"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/sptctl/sptctl/surgery/constfold"
)

// Neural-network ops: reductions, LayerNormalization, Softmax and Dropout.
func opReduce(op string) opFunc {
	return func(c *nodeCtx) (kernel, error) {
		attrAxes, _ := c.ints("axes")
		keep := c.int("keepdims", 1) != 0
		noopEmpty := c.int("noop_with_empty_axes", 0) != 0
		axesInput := (op == "ReduceSum" && c.opset >= 13) || c.opset >= 18
		return func(r *runCtx, in []value) ([]value, error) {
			axes := attrAxes
			if axesInput {
				var err error
				if axes, _, err = optInts(r, in, 1); err != nil {
					return nil, err
				}
			}
			xs, err := r.Shape(in[0])
			if err != nil {
				return nil, err
			}
			x, err := r.T(in[0])
			if err != nil {
				return nil, err
			}
			if len(axes) == 0 {
				if noopEmpty || len(xs) == 0 {
					return clone(x)
				}
				for d := range xs {
					axes = append(axes, int64(d))
				}
			}
			norm := make([]int64, len(axes))
			for k, ax := range axes {
				a, err := constfold.NormAxis(ax, len(xs))
				if err != nil {
					return nil, err
				}
				norm[k] = int64(a)
			}
			if op == "ReduceSum" {
				return one(x.SumDimIntlist(norm, keep, gotch.Invalid, false))
			}
			return one(x.MeanDim(norm, keep, gotch.Invalid, false))
		}, nil
	}
}

func opLayerNorm(c *nodeCtx) (kernel, error) {
	axis := c.int("axis", -1)
	eps := float64(c.float("epsilon", 1e-5))
	stats := c.outputNamed(1) || c.outputNamed(2)
	return func(r *runCtx, in []value) ([]value, error) {
		x, err := r.F32(in[0])
		if err != nil {
			return nil, err
		}
		xs, err := sizeOf(x)
		if err != nil {
			return nil, err
		}
		a, err := constfold.NormAxis(axis, len(xs))
		if err != nil {
			return nil, err
		}
		w, err := r.T(in[1])
		if err != nil {
			return nil, err
		}
		b := ts.None
		if len(in) > 2 && !in[2].none() {
			if b, err = r.T(in[2]); err != nil {
				return nil, err
			}
		}
		if stats {
			y, mean, rstd, err := ts.NativeLayerNorm(x, xs[a:], w, b, eps)
			if err != nil {
				return nil, torchErr(err)
			}
			return []value{{t: y}, {t: mean}, {t: rstd}}, nil
		}
		return one(ts.LayerNorm(x, xs[a:], w, b, eps, false))
	}, nil
}

func opSoftmax(log bool) opFunc {
	return func(c *nodeCtx) (kernel, error) {
		def := int64(-1)
		if c.opset < 13 {
			def = 1
		}
		axis := c.int("axis", def)
		return func(r *runCtx, in []value) ([]value, error) {
			x, err := r.F32(in[0])
			if err != nil {
				return nil, err
			}
			xs, err := sizeOf(x)
			if err != nil {
				return nil, err
			}
			a, err := constfold.NormAxis(axis, len(xs))
			if err != nil {
				return nil, err
			}
			f := func(t *ts.Tensor, dim int64) (*ts.Tensor, error) {
				if log {
					return t.LogSoftmax(dim, gotch.Invalid, false)
				}
				return t.Softmax(dim, gotch.Invalid, false)
			}
			if c.opset >= 13 || a == len(xs)-1 {
				return one(f(x, int64(a)))
			}
			// Before opset 13: softmax over the flattened trailing axes [a, rank).
			flat, err := reshapeT(x, []int64{constfold.Prod(xs[:a]), constfold.Prod(xs[a:])})
			if err != nil {
				return nil, err
			}
			defer flat.Drop()
			y, err := f(flat, 1)
			if err != nil {
				return nil, torchErr(err)
			}
			defer y.Drop()
			return one(reshapeT(y, xs))
		}, nil
	}
}

// opDropout: active only when the Program runs in train mode (and the node's
// training_mode input, if any, is true); otherwise the identity. Train-mode dropout is
// libtorch's (its global generator: see SetSeed), not bit-identical to ONNX Runtime's.
func opDropout(c *nodeCtx) (kernel, error) {
	if c.outputNamed(1) {
		return nil, errors.New("the mask output is not supported")
	}
	attrRatio := float64(c.float("ratio", 0.5))
	return func(r *runCtx, in []value) ([]value, error) {
		ratio := attrRatio
		if c.opset >= 12 {
			ratio = 0.5
			if len(in) > 1 && !in[1].none() {
				h, err := r.H(in[1])
				if err != nil {
					return nil, err
				}
				ratio = h.Floats()[0]
			}
		}
		active := r.train && ratio > 0
		if len(in) > 2 && !in[2].none() {
			h, err := r.H(in[2])
			if err != nil {
				return nil, err
			}
			active = active && h.Ints()[0] != 0
		}
		if in[0].h != nil && !active {
			return []value{{h: in[0].h}}, nil
		}
		x, err := r.T(in[0])
		if err != nil {
			return nil, err
		}
		if !active {
			return clone(x)
		}
		if ratio >= 1 {
			return one(x.ZerosLike(false))
		}
		return one(dropout(x, ratio))
	}, nil
}
