package torch

import (
	"errors"
	"fmt"
	"math"
	"sort"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// The ONNX operators, with their semantics at opsets 13-17 (and the attribute forms of
// earlier opsets where exporters still write them). Each op is compiled once per node
// (attributes parsed) into a kernel. A kernel computes in Go memory when all its inputs
// are host values and it has a host form; otherwise it runs libtorch ops.

// nodeCtx is what an op sees at compile time.
type nodeCtx struct {
	n      *onnxpb.NodeProto
	name   string
	opset  int64
	static []value // inputs known at compile time (zero value otherwise)
}

func (c *nodeCtx) attr(name string) *onnxpb.AttributeProto {
	for _, a := range c.n.GetAttribute() {
		if a.GetName() == name {
			return a
		}
	}
	return nil
}

func (c *nodeCtx) int(name string, def int64) int64 {
	if a := c.attr(name); a != nil {
		return a.GetI()
	}
	return def
}

func (c *nodeCtx) ints(name string) ([]int64, bool) {
	if a := c.attr(name); a != nil {
		return a.GetInts(), true
	}
	return nil, false
}

func (c *nodeCtx) float(name string, def float32) float32 {
	if a := c.attr(name); a != nil {
		return a.GetF()
	}
	return def
}

func (c *nodeCtx) str(name, def string) string {
	if a := c.attr(name); a != nil {
		return string(a.GetS())
	}
	return def
}

// outputUsed reports whether output k is named (consumers are not known yet).
func (c *nodeCtx) outputNamed(k int) bool {
	return k < len(c.n.GetOutput()) && c.n.GetOutput()[k] != ""
}

type opFunc func(c *nodeCtx) (kernel, error)

var ops map[string]opFunc

// SupportedOps lists the ONNX ops the executor runs.
func SupportedOps() []string {
	out := make([]string, 0, len(ops))
	for k := range ops {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func init() {
	ops = map[string]opFunc{
		"Add": binaryOp("Add"), "Sub": binaryOp("Sub"), "Mul": binaryOp("Mul"), "Div": binaryOp("Div"),
		"Pow": opPow, "Equal": binaryOp("Equal"), "Less": binaryOp("Less"), "Greater": binaryOp("Greater"),
		"And": binaryOp("And"), "Or": binaryOp("Or"), "Max": variadic("Max"), "Min": variadic("Min"),
		"Sqrt": unary("Sqrt"), "Erf": unary("Erf"), "Tanh": unary("Tanh"), "Relu": unary("Relu"),
		"Sigmoid": unary("Sigmoid"), "Neg": unary("Neg"), "Exp": unary("Exp"), "Log": unary("Log"),
		"Abs": unary("Abs"), "Reciprocal": unary("Reciprocal"), "Floor": unary("Floor"),
		"Ceil": unary("Ceil"), "Not": unary("Not"),
		"Gelu": opGelu, "MatMul": opMatMul, "Gemm": opGemm, "Conv": opConv,
		"Reshape": opReshape, "Flatten": opFlatten, "Transpose": opTranspose, "Concat": opConcat,
		"Split": opSplit, "Slice": opSlice, "Gather": opGather, "Shape": opShape, "Size": opSize,
		"Unsqueeze": opUnsqueeze, "Squeeze": opSqueeze, "Expand": opExpand, "Where": opWhere,
		"Cast": opCast, "Constant": opConstant, "ConstantOfShape": opConstantOfShape,
		"Identity": opIdentity, "ReduceMean": opReduce("ReduceMean"), "ReduceSum": opReduce("ReduceSum"),
		"LayerNormalization": opLayerNorm, "Softmax": opSoftmax(false), "LogSoftmax": opSoftmax(true),
		"Dropout": opDropout, "ScatterND": opScatterND, "Range": opRange, "Pad": opPad, "Tile": opTile,
	}
}

// ---------------------------------------------------------------- helpers

func one(t *ts.Tensor, err error) ([]value, error) {
	if err != nil {
		return nil, torchErr(err)
	}
	return []value{{t: t}}, nil
}

func hostOne(h *hostT, err error) ([]value, error) {
	if err != nil {
		return nil, err
	}
	return []value{{h: h}}, nil
}

func allHost(in []value) bool {
	for _, v := range in {
		if v.t != nil {
			return false
		}
	}
	return true
}

// optInts reads an optional int64 list input (k) or, when absent, the attribute.
func optInts(r *runCtx, in []value, k int) ([]int64, bool, error) {
	if k >= len(in) || in[k].none() {
		return nil, false, nil
	}
	h, err := r.H(in[k])
	if err != nil {
		return nil, false, err
	}
	return h.ints(), true, nil
}

// reshapeT reshapes (a view when possible); a scalar shape is handled apart because
// gotch's wrappers take the address of the first element of every list.
func reshapeT(t *ts.Tensor, shape []int64) (*ts.Tensor, error) {
	if len(shape) == 0 {
		flat, err := t.Reshape([]int64{1}, false)
		if err != nil {
			return nil, torchErr(err)
		}
		defer flat.Drop()
		out, err := flat.Select(0, 0, false)
		return out, torchErr(err)
	}
	out, err := t.Reshape(shape, false)
	return out, torchErr(err)
}

func clone(t *ts.Tensor) ([]value, error) {
	out, err := t.ShallowClone()
	return one(out, err)
}

func floatScalar(v float64) *ts.Scalar { return ts.FloatScalar(v) }

// ---------------------------------------------------------------- elementwise

func binaryOp(op string) opFunc {
	return func(c *nodeCtx) (kernel, error) {
		return func(r *runCtx, in []value) ([]value, error) {
			if in[0].none() || in[1].none() {
				return nil, errors.New("missing input")
			}
			if in[0].h != nil && in[1].h != nil {
				return hostOne(hostBinaryOp(op, in[0].h, in[1].h))
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

func boolOf(v bool) int64 {
	if v {
		return 1
	}
	return 0
}

func hostBinaryOp(op string, a, b *hostT) (*hostT, error) {
	boolT := int32(onnxpb.TensorProto_BOOL)
	switch op {
	case "Add":
		return hostBinary(a, b, a.dtype, func(x, y int64) int64 { return x + y }, func(x, y float64) float64 { return x + y })
	case "Sub":
		return hostBinary(a, b, a.dtype, func(x, y int64) int64 { return x - y }, func(x, y float64) float64 { return x - y })
	case "Mul":
		return hostBinary(a, b, a.dtype, func(x, y int64) int64 { return x * y }, func(x, y float64) float64 { return x * y })
	case "Div":
		var divErr error
		out, err := hostBinary(a, b, a.dtype, func(x, y int64) int64 {
			if y == 0 {
				divErr = errors.New("integer division by zero")
				return 0
			}
			return x / y
		}, func(x, y float64) float64 { return x / y })
		if err == nil {
			err = divErr
		}
		return out, err
	case "Pow":
		return hostBinary(a, b, a.dtype, func(x, y int64) int64 { return int64(math.Pow(float64(x), float64(y))) }, math.Pow)
	case "Equal":
		return hostBinary(a, b, boolT, func(x, y int64) int64 { return boolOf(x == y) }, func(x, y float64) float64 { return float64(boolOf(x == y)) })
	case "Less":
		return hostBinary(a, b, boolT, func(x, y int64) int64 { return boolOf(x < y) }, func(x, y float64) float64 { return float64(boolOf(x < y)) })
	case "Greater":
		return hostBinary(a, b, boolT, func(x, y int64) int64 { return boolOf(x > y) }, func(x, y float64) float64 { return float64(boolOf(x > y)) })
	case "And":
		return hostBinary(a, b, boolT, func(x, y int64) int64 { return boolOf(x != 0 && y != 0) }, nil)
	case "Or":
		return hostBinary(a, b, boolT, func(x, y int64) int64 { return boolOf(x != 0 || y != 0) }, nil)
	case "Max":
		return hostBinary(a, b, a.dtype, func(x, y int64) int64 { return max(x, y) }, math.Max)
	case "Min":
		return hostBinary(a, b, a.dtype, func(x, y int64) int64 { return min(x, y) }, math.Min)
	}
	return nil, fmt.Errorf("unknown binary op %s", op)
}

func opPow(c *nodeCtx) (kernel, error) {
	return func(r *runCtx, in []value) ([]value, error) {
		if in[0].h != nil && in[1].h != nil {
			return hostOne(hostBinaryOp("Pow", in[0].h, in[1].h))
		}
		a, err := r.T(in[0])
		if err != nil {
			return nil, err
		}
		// A constant scalar exponent (x^2 in decomposed LayerNorm) as a Scalar.
		if in[1].h != nil && in[1].h.numel() == 1 && a.DType() != gotch.Int64 {
			s := floatScalar(in[1].h.floats()[0])
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
				if h, ok := hostUnary(op, in[0].h); ok {
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

func hostUnary(op string, a *hostT) (*hostT, bool) {
	out := newHostLike(a.dtype, a.shape)
	if a.isFloat() {
		var f func(float64) float64
		switch op {
		case "Sqrt":
			f = math.Sqrt
		case "Neg":
			f = func(x float64) float64 { return -x }
		case "Abs":
			f = math.Abs
		case "Exp":
			f = math.Exp
		case "Log":
			f = math.Log
		case "Reciprocal":
			f = func(x float64) float64 { return 1 / x }
		case "Floor":
			f = math.Floor
		case "Ceil":
			f = math.Ceil
		case "Relu":
			f = func(x float64) float64 { return math.Max(x, 0) }
		case "Erf":
			f = math.Erf
		case "Tanh":
			f = math.Tanh
		default:
			return nil, false
		}
		for k, x := range a.f {
			out.f[k] = roundTo(a.dtype, f(x))
		}
		return out, true
	}
	var f func(int64) int64
	switch op {
	case "Neg":
		f = func(x int64) int64 { return -x }
	case "Abs":
		f = func(x int64) int64 {
			if x < 0 {
				return -x
			}
			return x
		}
	case "Relu":
		f = func(x int64) int64 { return max(x, 0) }
	case "Not":
		f = func(x int64) int64 { return boolOf(x == 0) }
	case "Floor", "Ceil":
		f = func(x int64) int64 { return x }
	default:
		return nil, false
	}
	for k, x := range a.i {
		out.i[k] = f(x)
	}
	return out, true
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

// ---------------------------------------------------------------- linear algebra

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

// ---------------------------------------------------------------- shapes

func opReshape(c *nodeCtx) (kernel, error) {
	allowZero := c.int("allowzero", 0) != 0
	var attrShape []int64
	if c.opset < 5 {
		attrShape, _ = c.ints("shape")
	}
	return func(r *runCtx, in []value) ([]value, error) {
		shape := attrShape
		if len(in) > 1 {
			h, err := r.H(in[1])
			if err != nil {
				return nil, err
			}
			shape = h.ints()
		}
		xs, err := r.Shape(in[0])
		if err != nil {
			return nil, err
		}
		target, err := reshapeTarget(xs, shape, allowZero)
		if err != nil {
			return nil, err
		}
		if in[0].h != nil {
			return []value{{h: hostReshape(in[0].h, target)}}, nil
		}
		return one(reshapeT(in[0].t, target))
	}, nil
}

func reshapeTarget(xs, shape []int64, allowZero bool) ([]int64, error) {
	out := make([]int64, len(shape))
	infer := -1
	known := int64(1)
	for k, s := range shape {
		switch {
		case s == 0 && !allowZero:
			if k >= len(xs) {
				return nil, fmt.Errorf("reshape %v to %v: 0 at axis %d beyond the input's rank", xs, shape, k)
			}
			out[k] = xs[k]
		case s == -1:
			if infer >= 0 {
				return nil, fmt.Errorf("reshape %v to %v: two -1", xs, shape)
			}
			infer = k
			continue
		case s < 0:
			return nil, fmt.Errorf("reshape %v to %v: negative dimension", xs, shape)
		default:
			out[k] = s
		}
		known *= out[k]
	}
	total := prod(xs)
	if infer >= 0 {
		if known == 0 || total%known != 0 {
			return nil, fmt.Errorf("cannot reshape %v to %v", xs, shape)
		}
		out[infer] = total / known
	} else if known != total {
		return nil, fmt.Errorf("cannot reshape %v (%d elements) to %v", xs, total, shape)
	}
	return out, nil
}

func opFlatten(c *nodeCtx) (kernel, error) {
	axis := c.int("axis", 1)
	return func(r *runCtx, in []value) ([]value, error) {
		xs, err := r.Shape(in[0])
		if err != nil {
			return nil, err
		}
		a := axis
		if a < 0 {
			a += int64(len(xs))
		}
		if a < 0 || a > int64(len(xs)) {
			return nil, fmt.Errorf("axis %d out of range for rank %d", axis, len(xs))
		}
		target := []int64{prod(xs[:a]), prod(xs[a:])}
		if in[0].h != nil {
			return []value{{h: hostReshape(in[0].h, target)}}, nil
		}
		return one(reshapeT(in[0].t, target))
	}, nil
}

func opTranspose(c *nodeCtx) (kernel, error) {
	perm, hasPerm := c.ints("perm")
	return func(r *runCtx, in []value) ([]value, error) {
		xs, err := r.Shape(in[0])
		if err != nil {
			return nil, err
		}
		p := make([]int, len(xs))
		seen := make([]bool, len(xs))
		for k := range p {
			if hasPerm {
				if len(perm) != len(xs) {
					return nil, fmt.Errorf("perm %v for rank %d", perm, len(xs))
				}
				a, err := normAxis(perm[k], len(xs))
				if err != nil || seen[a] {
					return nil, fmt.Errorf("invalid perm %v", perm)
				}
				seen[a] = true
				p[k] = a
			} else {
				p[k] = len(xs) - 1 - k
			}
		}
		if in[0].h != nil {
			return []value{{h: hostTranspose(in[0].h, p)}}, nil
		}
		if len(p) == 0 {
			return clone(in[0].t)
		}
		p64 := make([]int64, len(p))
		for k, v := range p {
			p64[k] = int64(v)
		}
		return one(in[0].t.Permute(p64, false))
	}, nil
}

func opConcat(c *nodeCtx) (kernel, error) {
	axis := c.int("axis", 0)
	return func(r *runCtx, in []value) ([]value, error) {
		var parts []value
		for _, v := range in {
			if !v.none() {
				parts = append(parts, v)
			}
		}
		if len(parts) == 0 {
			return nil, errors.New("no inputs")
		}
		xs, err := r.Shape(parts[0])
		if err != nil {
			return nil, err
		}
		a, err := normAxis(axis, len(xs))
		if err != nil {
			return nil, err
		}
		if allHost(parts) {
			hs := make([]*hostT, len(parts))
			for k, v := range parts {
				hs[k] = v.h
			}
			return hostOne(hostConcat(hs, a))
		}
		ts_ := make([]*ts.Tensor, len(parts))
		for k, v := range parts {
			if ts_[k], err = r.T(v); err != nil {
				return nil, err
			}
		}
		return one(ts.Cat(ts_, int64(a)))
	}, nil
}

func opSplit(c *nodeCtx) (kernel, error) {
	axis := c.int("axis", 0)
	attrSplit, _ := c.ints("split")
	nOut := len(c.n.GetOutput())
	if c.int("num_outputs", 0) != 0 {
		nOut = int(c.int("num_outputs", 0))
	}
	return func(r *runCtx, in []value) ([]value, error) {
		xs, err := r.Shape(in[0])
		if err != nil {
			return nil, err
		}
		a, err := normAxis(axis, len(xs))
		if err != nil {
			return nil, err
		}
		sizes := attrSplit
		if c.opset >= 13 {
			sizes = nil
			if s, ok, err := optInts(r, in, 1); err != nil {
				return nil, err
			} else if ok {
				sizes = s
			}
		}
		dim := xs[a]
		if len(sizes) == 0 {
			part := (dim + int64(nOut) - 1) / int64(nOut)
			for k := 0; k < nOut; k++ {
				sizes = append(sizes, min(part, dim-int64(k)*part))
			}
		}
		sum := int64(0)
		for _, s := range sizes {
			if s < 0 {
				return nil, fmt.Errorf("negative split %v", sizes)
			}
			sum += s
		}
		if sum != dim || len(sizes) != nOut {
			return nil, fmt.Errorf("split %v of axis %d (size %d) into %d outputs", sizes, a, dim, nOut)
		}
		if in[0].h != nil {
			out := make([]value, nOut)
			off := int64(0)
			for k, s := range sizes {
				first, step, count := make([]int64, len(xs)), make([]int64, len(xs)), append([]int64{}, xs...)
				for d := range step {
					step[d] = 1
				}
				first[a], count[a] = off, s
				out[k] = value{h: hostSlice(in[0].h, first, step, count)}
				off += s
			}
			return out, nil
		}
		parts, err := in[0].t.SplitWithSizes(sizes, int64(a))
		if err != nil {
			return nil, torchErr(err)
		}
		out := make([]value, len(parts))
		for k, t := range parts {
			out[k] = value{t: t}
		}
		return out, nil
	}, nil
}

func opSlice(c *nodeCtx) (kernel, error) {
	aStarts, _ := c.ints("starts")
	aEnds, _ := c.ints("ends")
	aAxes, hasAxes := c.ints("axes")
	return func(r *runCtx, in []value) ([]value, error) {
		starts, ends, axes, steps := aStarts, aEnds, aAxes, []int64(nil)
		if !hasAxes {
			axes = nil
		}
		if c.opset >= 10 {
			var err error
			if starts, _, err = optInts(r, in, 1); err != nil {
				return nil, err
			}
			if ends, _, err = optInts(r, in, 2); err != nil {
				return nil, err
			}
			if axes, _, err = optInts(r, in, 3); err != nil {
				return nil, err
			}
			if steps, _, err = optInts(r, in, 4); err != nil {
				return nil, err
			}
		}
		xs, err := r.Shape(in[0])
		if err != nil {
			return nil, err
		}
		if len(starts) != len(ends) || (axes != nil && len(axes) != len(starts)) || (steps != nil && len(steps) != len(starts)) {
			return nil, fmt.Errorf("starts %v, ends %v, axes %v, steps %v differ in length", starts, ends, axes, steps)
		}
		first := make([]int64, len(xs))
		step := make([]int64, len(xs))
		count := append([]int64{}, xs...)
		for d := range step {
			step[d] = 1
		}
		touched := make([]bool, len(xs))
		for k := range starts {
			ax := int64(k)
			if axes != nil {
				ax = axes[k]
			}
			a, err := normAxis(ax, len(xs))
			if err != nil {
				return nil, err
			}
			if touched[a] {
				return nil, fmt.Errorf("axis %d sliced twice", a)
			}
			touched[a] = true
			st := int64(1)
			if steps != nil {
				st = steps[k]
			}
			if st == 0 {
				return nil, errors.New("step 0")
			}
			first[a], step[a], count[a] = sliceRange(starts[k], ends[k], st, xs[a])
		}
		if in[0].h != nil {
			return []value{{h: hostSlice(in[0].h, first, step, count)}}, nil
		}
		t := in[0].t
		owned := false
		for d := range xs {
			if first[d] == 0 && step[d] == 1 && count[d] == xs[d] {
				continue
			}
			var nt *ts.Tensor
			if step[d] > 0 {
				e := first[d] + (count[d]-1)*step[d] + 1
				if count[d] == 0 {
					e = first[d]
				}
				nt, err = t.Slice(int64(d), []int64{first[d]}, []int64{e}, step[d], false)
			} else {
				idx := make([]int64, count[d])
				for j := range idx {
					idx[j] = first[d] + int64(j)*step[d]
				}
				var it *ts.Tensor
				if it, err = tensorFromInt64s(idx, []int64{count[d]}); err == nil {
					nt, err = t.IndexSelect(int64(d), it, false)
					it.Drop()
				}
			}
			if owned {
				t.Drop()
			}
			if err != nil {
				return nil, torchErr(err)
			}
			t, owned = nt, true
		}
		if !owned {
			return clone(t)
		}
		return []value{{t: t}}, nil
	}, nil
}

func opGather(c *nodeCtx) (kernel, error) {
	axis := c.int("axis", 0)
	return func(r *runCtx, in []value) ([]value, error) {
		xs, err := r.Shape(in[0])
		if err != nil {
			return nil, err
		}
		a, err := normAxis(axis, len(xs))
		if err != nil {
			return nil, err
		}
		if in[0].h != nil && in[1].h != nil {
			return hostOne(hostGather(in[0].h, in[1].h, a))
		}
		x, err := r.T(in[0])
		if err != nil {
			return nil, err
		}
		dim := xs[a]
		if in[1].h != nil {
			idx := in[1].h.ints()
			norm := make([]int64, len(idx))
			for k, j := range idx {
				if j < 0 {
					j += dim
				}
				if j < 0 || j >= dim {
					return nil, fmt.Errorf("index %d out of range for axis %d of size %d", idx[k], a, dim)
				}
				norm[k] = j
			}
			if len(in[1].h.shape) == 0 { // x[:, j]: a view
				return one(x.Select(int64(a), norm[0], false))
			}
			it, err := tensorFromInt64s(norm, []int64{int64(len(norm))})
			if err != nil {
				return nil, err
			}
			defer it.Drop()
			return gatherIndexSelect(x, xs, a, it, in[1].h.shape)
		}
		idx := in[1].t
		is, err := sizeOf(idx)
		if err != nil {
			return nil, err
		}
		s := ts.IntScalar(dim)
		defer s.Drop()
		pos, err := idx.Remainder(s, false) // negative indices count from the end
		if err != nil {
			return nil, torchErr(err)
		}
		defer pos.Drop()
		flat, err := reshapeT(pos, []int64{prod(is)})
		if err != nil {
			return nil, err
		}
		defer flat.Drop()
		return gatherIndexSelect(x, xs, a, flat, is)
	}, nil
}

func gatherIndexSelect(x *ts.Tensor, xs []int64, a int, flat *ts.Tensor, is []int64) ([]value, error) {
	sel, err := x.IndexSelect(int64(a), flat, false)
	if err != nil {
		return nil, torchErr(err)
	}
	if len(is) == 1 {
		return []value{{t: sel}}, nil
	}
	defer sel.Drop()
	shape := append(append(append([]int64{}, xs[:a]...), is...), xs[a+1:]...)
	return one(reshapeT(sel, shape))
}

func opShape(c *nodeCtx) (kernel, error) {
	start, hasStart := c.int("start", 0), c.attr("start") != nil
	end, hasEnd := c.int("end", 0), c.attr("end") != nil
	return func(r *runCtx, in []value) ([]value, error) {
		xs, err := r.Shape(in[0])
		if err != nil {
			return nil, err
		}
		n := int64(len(xs))
		s, e := int64(0), n
		if hasStart {
			s = start
		}
		if hasEnd {
			e = end
		}
		if s < 0 {
			s += n
		}
		if e < 0 {
			e += n
		}
		s, e = clamp(s, 0, n), clamp(e, 0, n)
		if e < s {
			e = s
		}
		out := append([]int64{}, xs[s:e]...)
		return []value{{h: newHostInts([]int64{int64(len(out))}, out)}}, nil
	}, nil
}

func opSize(c *nodeCtx) (kernel, error) {
	return func(r *runCtx, in []value) ([]value, error) {
		xs, err := r.Shape(in[0])
		if err != nil {
			return nil, err
		}
		return []value{{h: newHostInts(nil, []int64{prod(xs)})}}, nil
	}, nil
}

// squeezeAxes reads (Un)Squeeze's axes (an attribute before opset 13, the optional
// second input from 13) and the data's shape.
func squeezeAxes(c *nodeCtx, r *runCtx, in []value, attrAxes []int64) (axes, shape []int64, err error) {
	axes = attrAxes
	if c.opset >= 13 {
		if axes, _, err = optInts(r, in, 1); err != nil {
			return nil, nil, err
		}
	}
	shape, err = r.Shape(in[0])
	return axes, shape, err
}

func opUnsqueeze(c *nodeCtx) (kernel, error) {
	attrAxes, _ := c.ints("axes")
	return func(r *runCtx, in []value) ([]value, error) {
		axes, xs, err := squeezeAxes(c, r, in, attrAxes)
		if err != nil {
			return nil, err
		}
		rank := len(xs) + len(axes)
		norm := make([]int, len(axes))
		isNew := make([]bool, rank)
		for k, ax := range axes {
			a, err := normAxis(ax, rank)
			if err != nil {
				return nil, err
			}
			if isNew[a] {
				return nil, fmt.Errorf("axis %d repeated", ax)
			}
			isNew[a] = true
			norm[k] = a
		}
		shape := make([]int64, 0, rank)
		j := 0
		for d := 0; d < rank; d++ {
			if isNew[d] {
				shape = append(shape, 1)
			} else {
				shape = append(shape, xs[j])
				j++
			}
		}
		if in[0].h != nil {
			return []value{{h: hostReshape(in[0].h, shape)}}, nil
		}
		// Inserting size-1 axes never needs a copy: a reshape is a view.
		return one(reshapeT(in[0].t, shape))
	}, nil
}

func opSqueeze(c *nodeCtx) (kernel, error) {
	attrAxes, _ := c.ints("axes")
	return func(r *runCtx, in []value) ([]value, error) {
		axes, xs, err := squeezeAxes(c, r, in, attrAxes)
		if err != nil {
			return nil, err
		}
		drop := make([]bool, len(xs))
		if len(axes) == 0 {
			for d, s := range xs {
				if s == 1 {
					drop[d] = true
				}
			}
		} else {
			for _, ax := range axes {
				a, err := normAxis(ax, len(xs))
				if err != nil {
					return nil, err
				}
				if xs[a] != 1 {
					return nil, fmt.Errorf("cannot squeeze axis %d of size %d", a, xs[a])
				}
				drop[a] = true
			}
		}
		shape := []int64{}
		for d, s := range xs {
			if !drop[d] {
				shape = append(shape, s)
			}
		}
		if in[0].h != nil {
			return []value{{h: hostReshape(in[0].h, shape)}}, nil
		}
		// Removing size-1 axes never needs a copy: a reshape is a view.
		return one(reshapeT(in[0].t, shape))
	}, nil
}

func opExpand(c *nodeCtx) (kernel, error) {
	return func(r *runCtx, in []value) ([]value, error) {
		sh, err := r.H(in[1])
		if err != nil {
			return nil, err
		}
		xs, err := r.Shape(in[0])
		if err != nil {
			return nil, err
		}
		target, err := broadcastShapes(xs, sh.ints())
		if err != nil {
			return nil, err
		}
		if in[0].h != nil {
			zero := newHostLike(in[0].h.dtype, target)
			return hostOne(hostBinary(in[0].h, zero, in[0].h.dtype,
				func(x, _ int64) int64 { return x }, func(x, _ float64) float64 { return x }))
		}
		if len(target) == 0 {
			return clone(in[0].t)
		}
		return one(in[0].t.Expand(target, false, false))
	}, nil
}

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
				a, err := normAxis(ax, len(xs))
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
		x, err := r.T(in[0])
		if err != nil {
			return nil, err
		}
		xs, err := sizeOf(x)
		if err != nil {
			return nil, err
		}
		a, err := normAxis(axis, len(xs))
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
			x, err := r.T(in[0])
			if err != nil {
				return nil, err
			}
			xs, err := sizeOf(x)
			if err != nil {
				return nil, err
			}
			a, err := normAxis(axis, len(xs))
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
			flat, err := reshapeT(x, []int64{prod(xs[:a]), prod(xs[a:])})
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
				ratio = h.floats()[0]
			}
		}
		active := r.train && ratio > 0
		if len(in) > 2 && !in[2].none() {
			h, err := r.H(in[2])
			if err != nil {
				return nil, err
			}
			active = active && h.ints()[0] != 0
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
		return one(ts.Dropout(x, ratio, true))
	}, nil
}

// opScatterND (reduction none or add): data[indices[i]] = updates[i], as index_copy /
// index_add on data viewed as [prod(shape[:k]), shape[k:]...].
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
		m := prod(is[:len(is)-1])
		st := stridesOf(ds[:k])
		var lin *ts.Tensor
		if in[1].h != nil {
			idx := in[1].h.ints()
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
		flatShape := append([]int64{prod(ds[:k])}, rest...)
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
		var hs [3]*hostT
		for k := 0; k < 3; k++ {
			h, err := r.H(in[k])
			if err != nil {
				return nil, err
			}
			if h.numel() != 1 {
				return nil, errors.New("start, limit and delta must be scalars")
			}
			hs[k] = h
		}
		dt := hs[0].dtype
		if hs[0].isFloat() {
			s, l, d := hs[0].f[0], hs[1].floats()[0], hs[2].floats()[0]
			if d == 0 {
				return nil, errors.New("delta 0")
			}
			n := int64(math.Max(math.Ceil((l-s)/d), 0))
			out := newHostLike(dt, []int64{n})
			for k := range out.f {
				out.f[k] = roundTo(dt, s+float64(k)*d)
			}
			return []value{{h: out}}, nil
		}
		s, l, d := hs[0].i[0], hs[1].ints()[0], hs[2].ints()[0]
		if d == 0 {
			return nil, errors.New("delta 0")
		}
		n := int64(math.Max(math.Ceil(float64(l-s)/float64(d)), 0))
		out := newHostLike(dt, []int64{n})
		for k := range out.i {
			out.i[k] = s + int64(k)*d
		}
		return []value{{h: out}}, nil
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
				val = h.floats()[0]
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
			a, err := normAxis(ax, len(xs))
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
		reps := rep.ints()
		if len(reps) != len(xs) {
			return nil, fmt.Errorf("repeats %v for rank %d", reps, len(xs))
		}
		if len(reps) == 0 {
			return clone(x)
		}
		return one(x.Repeat(reps, false))
	}, nil
}
