package constfold

import (
	"errors"
	"fmt"
	"math"
	"slices"
)

func boolOf(v bool) int64 {
	if v {
		return 1
	}
	return 0
}

// copyTo sets element dst of out to element src of t, converted to out's kind.
func (t *Tensor) copyTo(out *Tensor, dst, src int64) {
	switch {
	case out.IsFloat() && t.IsFloat():
		out.F[dst] = t.F[src]
	case out.IsFloat():
		out.F[dst] = float64(t.I[src])
	case t.IsFloat():
		out.I[dst] = int64(t.F[src])
	default:
		out.I[dst] = t.I[src]
	}
}

// Binary applies an elementwise function with broadcasting; the result has type
// outType. fi is used when both operands are integers (or booleans), ff when either
// is floating-point; a nil ff means the operation is defined on integers only.
func Binary(a, b *Tensor, outType int32, fi func(x, y int64) int64, ff func(x, y float64) float64) (*Tensor, error) {
	shape, err := BroadcastShapes(a.Shape, b.Shape)
	if err != nil {
		return nil, err
	}
	useFloat := a.IsFloat() || b.IsFloat()
	if useFloat && ff == nil {
		return nil, fmt.Errorf("%s and %s operands: want integers or booleans", TypeName(a.DType), TypeName(b.DType))
	}
	out := Zeros(outType, shape)
	st := Strides(shape)
	n := Prod(shape)
	var af, bf []float64
	if useFloat {
		af, bf = a.Floats(), b.Floats()
	}
	for k := int64(0); k < n; k++ {
		ia, ib := BroadcastIndex(k, shape, st, a.Shape), BroadcastIndex(k, shape, st, b.Shape)
		if useFloat {
			r := ff(af[ia], bf[ib])
			if out.IsFloat() {
				out.F[k] = RoundTo(outType, r)
			} else {
				out.I[k] = int64(r)
			}
			continue
		}
		r := fi(a.I[ia], b.I[ib])
		if out.IsFloat() {
			out.F[k] = float64(r)
		} else {
			out.I[k] = r
		}
	}
	return out, nil
}

// BinaryOp is the ONNX elementwise operator op (Add, Sub, Mul, Div, Pow, Equal, Less,
// Greater, And, Or, Max, Min) on two tensors, with broadcasting. Arithmetic keeps a's
// type, comparisons and logic give BOOL; integer division truncates toward zero.
func BinaryOp(op string, a, b *Tensor) (*Tensor, error) {
	switch op {
	case "Add":
		return Binary(a, b, a.DType, func(x, y int64) int64 { return x + y }, func(x, y float64) float64 { return x + y })
	case "Sub":
		return Binary(a, b, a.DType, func(x, y int64) int64 { return x - y }, func(x, y float64) float64 { return x - y })
	case "Mul":
		return Binary(a, b, a.DType, func(x, y int64) int64 { return x * y }, func(x, y float64) float64 { return x * y })
	case "Div":
		var divErr error
		out, err := Binary(a, b, a.DType, func(x, y int64) int64 {
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
		return Binary(a, b, a.DType, func(x, y int64) int64 { return int64(math.Pow(float64(x), float64(y))) }, math.Pow)
	case "Equal":
		return Binary(a, b, Bool, func(x, y int64) int64 { return boolOf(x == y) }, func(x, y float64) float64 { return float64(boolOf(x == y)) })
	case "Less":
		return Binary(a, b, Bool, func(x, y int64) int64 { return boolOf(x < y) }, func(x, y float64) float64 { return float64(boolOf(x < y)) })
	case "Greater":
		return Binary(a, b, Bool, func(x, y int64) int64 { return boolOf(x > y) }, func(x, y float64) float64 { return float64(boolOf(x > y)) })
	case "And":
		return Binary(a, b, Bool, func(x, y int64) int64 { return boolOf(x != 0 && y != 0) }, nil)
	case "Or":
		return Binary(a, b, Bool, func(x, y int64) int64 { return boolOf(x != 0 || y != 0) }, nil)
	case "Max":
		return Binary(a, b, a.DType, func(x, y int64) int64 { return max(x, y) }, math.Max)
	case "Min":
		return Binary(a, b, a.DType, func(x, y int64) int64 { return min(x, y) }, math.Min)
	}
	return nil, fmt.Errorf("unknown binary op %s", op)
}

// unaryFloat and unaryInt are the unary operators Unary computes.
var (
	unaryFloat = map[string]func(float64) float64{
		"Sqrt": math.Sqrt, "Abs": math.Abs, "Exp": math.Exp, "Log": math.Log,
		"Floor": math.Floor, "Ceil": math.Ceil, "Erf": math.Erf, "Tanh": math.Tanh,
		"Neg":        func(x float64) float64 { return -x },
		"Reciprocal": func(x float64) float64 { return 1 / x },
		"Relu":       func(x float64) float64 { return math.Max(x, 0) },
	}
	unaryInt = map[string]func(int64) int64{
		"Neg":   func(x int64) int64 { return -x },
		"Abs":   func(x int64) int64 { return max(x, -x) },
		"Relu":  func(x int64) int64 { return max(x, 0) },
		"Not":   func(x int64) int64 { return boolOf(x == 0) },
		"Floor": func(x int64) int64 { return x },
		"Ceil":  func(x int64) int64 { return x },
	}
)

// Unary is the ONNX elementwise operator op on a; ok is false for an operator (or an
// operator and element kind) it does not compute, for the caller to run elsewhere.
func Unary(op string, a *Tensor) (out *Tensor, ok bool) {
	out = Zeros(a.DType, a.Shape)
	if a.IsFloat() {
		f, ok := unaryFloat[op]
		if !ok {
			return nil, false
		}
		for k, x := range a.F {
			out.F[k] = RoundTo(a.DType, f(x))
		}
		return out, true
	}
	f, ok := unaryInt[op]
	if !ok {
		return nil, false
	}
	for k, x := range a.I {
		out.I[k] = f(x)
	}
	return out, true
}

// Where is ONNX Where: x where cond is true, else y, with broadcasting; the result
// has x's type.
func Where(cond, x, y *Tensor) (*Tensor, error) {
	if x.IsFloat() != y.IsFloat() {
		return nil, fmt.Errorf("where of %s and %s", TypeName(x.DType), TypeName(y.DType))
	}
	s1, err := BroadcastShapes(cond.Shape, x.Shape)
	if err != nil {
		return nil, err
	}
	shape, err := BroadcastShapes(s1, y.Shape)
	if err != nil {
		return nil, err
	}
	out := Zeros(x.DType, shape)
	st := Strides(shape)
	c := cond.Ints()
	for k := int64(0); k < Prod(shape); k++ {
		src := y
		if c[BroadcastIndex(k, shape, st, cond.Shape)] != 0 {
			src = x
		}
		src.copyTo(out, k, BroadcastIndex(k, shape, st, src.Shape))
	}
	return out, nil
}

// Cast is ONNX Cast to the element type to (integers other than BOOL become INT64).
func Cast(t *Tensor, to int32) (*Tensor, error) {
	if !IsFloatType(to) && !IsIntType(to) && to != Bool {
		return nil, fmt.Errorf("cast to %s is not supported", TypeName(to))
	}
	out := Zeros(to, t.Shape)
	switch {
	case out.IsFloat():
		for k, v := range t.Floats() {
			out.F[k] = RoundTo(to, v)
		}
	case to == Bool:
		for k, v := range t.Floats() {
			out.I[k] = boolOf(v != 0)
		}
	default:
		copy(out.I, t.Ints())
	}
	return out, nil
}

// Fill is ONNX ConstantOfShape: a tensor of the given shape whose every element is
// value's one element.
func Fill(value *Tensor, shape []int64) (*Tensor, error) {
	if value.Len() != 1 {
		return nil, fmt.Errorf("fill value of %d elements, want 1", value.Len())
	}
	if err := checkShape(shape); err != nil {
		return nil, err
	}
	out := Zeros(value.DType, shape)
	for k := range out.I {
		out.I[k] = value.I[0]
	}
	for k := range out.F {
		out.F[k] = value.F[0]
	}
	return out, nil
}

// Range is ONNX Range: start, start+delta, … up to limit (excluded); the three are
// scalars and the result has start's type.
func Range(start, limit, delta *Tensor) (*Tensor, error) {
	if start.Len() != 1 || limit.Len() != 1 || delta.Len() != 1 {
		return nil, errors.New("start, limit and delta must be scalars")
	}
	dt := start.DType
	if start.IsFloat() {
		s, l, d := start.F[0], limit.Floats()[0], delta.Floats()[0]
		n := math.Ceil((l - s) / d)
		if d == 0 || math.IsNaN(n) || n > math.MaxInt32 {
			return nil, fmt.Errorf("range from %g to %g by %g", s, l, d)
		}
		out := Zeros(dt, []int64{int64(max(n, 0))})
		for k := range out.F {
			out.F[k] = RoundTo(dt, s+float64(k)*d)
		}
		return out, nil
	}
	s, l, d := start.I[0], limit.Ints()[0], delta.Ints()[0]
	n := math.Ceil(float64(l-s) / float64(d))
	if d == 0 || n > math.MaxInt32 {
		return nil, fmt.Errorf("range from %d to %d by %d", s, l, d)
	}
	out := Zeros(dt, []int64{int64(max(n, 0))})
	for k := range out.I {
		out.I[k] = s + int64(k)*d
	}
	return out, nil
}

func checkShape(shape []int64) error {
	n := int64(1)
	for _, d := range shape {
		if d < 0 {
			return fmt.Errorf("negative dimension in shape %v", shape)
		}
		if d != 0 && n > math.MaxInt32/d {
			return fmt.Errorf("shape %v is too large for a host tensor", shape)
		}
		n *= d
	}
	return nil
}

// Reshape returns t with another shape of as many elements (the data is shared).
func Reshape(t *Tensor, shape []int64) (*Tensor, error) {
	if err := checkShape(shape); err != nil {
		return nil, err
	}
	if Prod(shape) != int64(t.Len()) {
		return nil, fmt.Errorf("cannot reshape %v (%d elements) to %v", t.Shape, t.Len(), shape)
	}
	c := *t
	c.Shape = shape
	return &c, nil
}

// Expand is ONNX Expand: t broadcast to shape (and shape to t's).
func Expand(t *Tensor, shape []int64) (*Tensor, error) {
	target, err := BroadcastShapes(t.Shape, shape)
	if err != nil {
		return nil, err
	}
	if err := checkShape(target); err != nil {
		return nil, err
	}
	out := Zeros(t.DType, target)
	st := Strides(target)
	for k := int64(0); k < Prod(target); k++ {
		t.copyTo(out, k, BroadcastIndex(k, target, st, t.Shape))
	}
	return out, nil
}

// Gather is ONNX Gather along axis (negative indices count from the end).
func Gather(data, idx *Tensor, axis int) (*Tensor, error) {
	if axis < 0 || axis >= len(data.Shape) {
		return nil, fmt.Errorf("gather axis %d for rank %d", axis, len(data.Shape))
	}
	if idx.IsFloat() {
		return nil, fmt.Errorf("gather indices of type %s", TypeName(idx.DType))
	}
	dim := data.Shape[axis]
	outer := Prod(data.Shape[:axis])
	inner := Prod(data.Shape[axis+1:])
	shape := slices.Concat(data.Shape[:axis], idx.Shape, data.Shape[axis+1:])
	out := Zeros(data.DType, shape)
	p := int64(0)
	for o := int64(0); o < outer; o++ {
		for _, j := range idx.I {
			if j < 0 {
				j += dim
			}
			if j < 0 || j >= dim {
				return nil, fmt.Errorf("index %d out of range for axis of size %d", j, dim)
			}
			base := (o*dim + j) * inner
			for q := int64(0); q < inner; q++ {
				data.copyTo(out, p, base+q)
				p++
			}
		}
	}
	return out, nil
}

// Concat is ONNX Concat along axis; the result has the first input's type.
func Concat(in []*Tensor, axis int) (*Tensor, error) {
	if len(in) == 0 {
		return nil, errors.New("concat of no inputs")
	}
	shape := slices.Clone(in[0].Shape)
	if axis < 0 || axis >= len(shape) {
		return nil, fmt.Errorf("concat axis %d for rank %d", axis, len(shape))
	}
	shape[axis] = 0
	for _, t := range in {
		if len(t.Shape) != len(shape) {
			return nil, fmt.Errorf("concat of ranks %d and %d", len(in[0].Shape), len(t.Shape))
		}
		for d := range shape {
			if d != axis && t.Shape[d] != shape[d] {
				return nil, fmt.Errorf("concat of shapes %v and %v along axis %d", in[0].Shape, t.Shape, axis)
			}
		}
		shape[axis] += t.Shape[axis]
	}
	out := Zeros(in[0].DType, shape)
	outer := Prod(shape[:axis])
	p := int64(0)
	for o := int64(0); o < outer; o++ {
		for _, t := range in {
			chunk := Prod(t.Shape[axis:])
			for q := int64(0); q < chunk; q++ {
				t.copyTo(out, p, o*chunk+q)
				p++
			}
		}
	}
	return out, nil
}

// Transpose permutes the axes of t: axis k of the result is axis perm[k] of t.
func Transpose(t *Tensor, perm []int) (*Tensor, error) {
	if len(perm) != len(t.Shape) {
		return nil, fmt.Errorf("perm %v for rank %d", perm, len(t.Shape))
	}
	shape := make([]int64, len(perm))
	seen := make([]bool, len(perm))
	for k, p := range perm {
		if p < 0 || p >= len(perm) || seen[p] {
			return nil, fmt.Errorf("invalid perm %v", perm)
		}
		seen[p] = true
		shape[k] = t.Shape[p]
	}
	out := Zeros(t.DType, shape)
	inSt, outSt := Strides(t.Shape), Strides(shape)
	for k := int64(0); k < Prod(shape); k++ {
		src := int64(0)
		for d := range shape {
			src += (k / outSt[d]) % shape[d] * inSt[perm[d]]
		}
		t.copyTo(out, k, src)
	}
	return out, nil
}

// Slice takes, on each axis d, count[d] elements from first[d] in steps of step[d]
// (as SliceRange returns them).
func Slice(t *Tensor, first, step, count []int64) (*Tensor, error) {
	r := len(t.Shape)
	if len(first) != r || len(step) != r || len(count) != r {
		return nil, fmt.Errorf("slice of rank %d with %d, %d, %d bounds", r, len(first), len(step), len(count))
	}
	for d := range r {
		last := first[d] + (count[d]-1)*step[d]
		if count[d] < 0 || count[d] > 0 && (first[d] < 0 || first[d] >= t.Shape[d] || last < 0 || last >= t.Shape[d]) {
			return nil, fmt.Errorf("slice of %v: axis %d from %d by %d, %d elements", t.Shape, d, first[d], step[d], count[d])
		}
	}
	shape := slices.Clone(count)
	out := Zeros(t.DType, shape)
	inSt, outSt := Strides(t.Shape), Strides(shape)
	for k := int64(0); k < Prod(shape); k++ {
		src := int64(0)
		for d := range shape {
			src += (first[d] + (k/outSt[d])%shape[d]*step[d]) * inSt[d]
		}
		t.copyTo(out, k, src)
	}
	return out, nil
}
