package torch

import (
	"errors"
	"fmt"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/sptctl/sptctl/surgery/constfold"
)

// Elementwise ops: arithmetic, comparisons, logic, unary math and GELU.

func binaryOp(op string) opFunc {
	return func(c *nodeCtx) (kernel, error) {
		return func(r *runCtx, in []value) ([]value, error) {
			if in[0].none() || in[1].none() {
				return nil, errors.New("missing input")
			}
			if in[0].h != nil && in[1].h != nil {
				return hostOne(constfold.BinaryOp(op, in[0].h, in[1].h))
			}
			a, err := r.T(in[0])
			if err != nil {
				return nil, err
			}
			b, err := r.T(in[1])
			if err != nil {
				return nil, err
			}
			switch op {
			case "Add":
				return one(a.Add(b, false))
			case "Sub":
				return one(a.Sub(b, false))
			case "Mul":
				return one(a.Mul(b, false))
			case "Div":
				if a.DType() == gotch.Int64 {
					return one(a.DivTensorMode(b, "trunc", false))
				}
				return one(a.Div(b, false))
			case "Equal":
				return one(a.EqTensor(b, false))
			case "Less":
				return one(a.LtTensor(b, false))
			case "Greater":
				return one(a.GtTensor(b, false))
			case "And":
				return one(a.LogicalAnd(b, false))
			case "Or":
				return one(a.LogicalOr(b, false))
			case "Max":
				return one(a.Maximum(b, false))
			case "Min":
				return one(a.Minimum(b, false))
			}
			return nil, fmt.Errorf("unknown binary op %s", op)
		}, nil
	}
}

// variadic folds a binary op over 1..N inputs (Max, Min).
func variadic(op string) opFunc {
	return func(c *nodeCtx) (kernel, error) {
		bin, _ := binaryOp(op)(c)
		return func(r *runCtx, in []value) ([]value, error) {
			if len(in) == 0 || in[0].none() {
				return nil, errors.New("missing input")
			}
			acc := in[0]
			var owned *ts.Tensor
			for _, v := range in[1:] {
				out, err := bin(r, []value{acc, v})
				if owned != nil {
					owned.Drop()
				}
				if err != nil {
					return nil, err
				}
				acc, owned = out[0], out[0].t
			}
			if owned == nil { // one input
				if acc.h != nil {
					return []value{{h: acc.h}}, nil
				}
				return clone(acc.t)
			}
			return []value{acc}, nil
		}, nil
	}
}

func opPow(c *nodeCtx) (kernel, error) {
	return func(r *runCtx, in []value) ([]value, error) {
		if in[0].h != nil && in[1].h != nil {
			return hostOne(constfold.BinaryOp("Pow", in[0].h, in[1].h))
		}
		a, err := r.T(in[0])
		if err != nil {
			return nil, err
		}
		// A constant scalar exponent (x^2 in decomposed LayerNorm) as a Scalar.
		if in[1].h != nil && in[1].h.Len() == 1 && a.DType() != gotch.Int64 {
			s := floatScalar(in[1].h.Floats()[0])
			defer s.Drop()
			return one(a.PowTensorScalar(s, false))
		}
		b, err := r.T(in[1])
		if err != nil {
			return nil, err
		}
		return one(a.Pow(b, false))
	}, nil
}

func unary(op string) opFunc {
	return func(c *nodeCtx) (kernel, error) {
		return func(r *runCtx, in []value) ([]value, error) {
			if in[0].h != nil {
				if h, ok := constfold.Unary(op, in[0].h); ok {
					return []value{{h: h}}, nil
				}
			}
			a, err := r.T(in[0])
			if err != nil {
				return nil, err
			}
			switch op {
			case "Sqrt":
				return one(a.Sqrt(false))
			case "Erf":
				return one(a.Erf(false))
			case "Tanh":
				return one(a.Tanh(false))
			case "Relu":
				return one(a.Relu(false))
			case "Sigmoid":
				return one(a.Sigmoid(false))
			case "Neg":
				return one(a.Neg(false))
			case "Exp":
				return one(a.Exp(false))
			case "Log":
				return one(a.Log(false))
			case "Abs":
				return one(a.Abs(false))
			case "Reciprocal":
				return one(a.Reciprocal(false))
			case "Floor":
				return one(a.Floor(false))
			case "Ceil":
				return one(a.Ceil(false))
			case "Not":
				return one(a.LogicalNot(false))
			}
			return nil, fmt.Errorf("unknown unary op %s", op)
		}, nil
	}
}

func opGelu(c *nodeCtx) (kernel, error) {
	approx := c.str("approximate", "none")
	if approx != "none" && approx != "tanh" {
		return nil, fmt.Errorf("approximate %q is not supported", approx)
	}
	return func(r *runCtx, in []value) ([]value, error) {
		a, err := r.T(in[0])
		if err != nil {
			return nil, err
		}
		return one(a.Gelu(approx, false))
	}, nil
}
