// Package constfold evaluates ONNX operators on small tensors held in Go memory: the
// shapes, indices and scalar constants that a graph's shape arithmetic works on (Shape
// → Gather → Unsqueeze → Concat → Reshape), and the constant subgraphs a compiler
// folds before it runs anything. It is the one host tensor type of sptctl; the
// executor (engine/torch) folds with it at compile time and runs the same kernels on
// host values at run time instead of a libtorch round trip per node.
//
// Integers and booleans are held as int64, floating-point values as float64 (rounded
// to float32 after each operation on FLOAT tensors, so that results match a float32
// kernel). Kernels return errors on inputs that do not fit the operator; they never
// change their inputs, so values may share their data.
//
// The package is pure Go (no cgo).
package constfold

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// Tensor is a value in Go memory. DType is an ONNX element type; integer types other
// than BOOL are held as INT64 (FromProto and the kernels widen them). Integer and
// boolean data live in I, floating-point data in F; the other slice is nil.
type Tensor struct {
	DType int32
	Shape []int64
	I     []int64
	F     []float64
}

// ONNX element types used here.
const (
	Float = int32(onnxpb.TensorProto_FLOAT)
	Int64 = int32(onnxpb.TensorProto_INT64)
	Bool  = int32(onnxpb.TensorProto_BOOL)
)

// IsFloat says whether t holds floating-point data (in F).
func (t *Tensor) IsFloat() bool { return IsFloatType(t.DType) }

// Len is the number of elements.
func (t *Tensor) Len() int {
	if t.IsFloat() {
		return len(t.F)
	}
	return len(t.I)
}

// Ints returns the values as int64 (floats truncated toward zero). The slice is t's
// own for integer tensors: do not change it.
func (t *Tensor) Ints() []int64 {
	if !t.IsFloat() {
		return t.I
	}
	out := make([]int64, len(t.F))
	for k, v := range t.F {
		out[k] = int64(v)
	}
	return out
}

// Floats returns the values as float64. The slice is t's own for floating-point
// tensors: do not change it.
func (t *Tensor) Floats() []float64 {
	if t.IsFloat() {
		return t.F
	}
	out := make([]float64, len(t.I))
	for k, v := range t.I {
		out[k] = float64(v)
	}
	return out
}

// IsFloatType says whether an ONNX element type is a floating-point one.
func IsFloatType(dt int32) bool {
	switch onnxpb.TensorProto_DataType(dt) {
	case onnxpb.TensorProto_FLOAT, onnxpb.TensorProto_DOUBLE, onnxpb.TensorProto_FLOAT16,
		onnxpb.TensorProto_BFLOAT16:
		return true
	}
	return false
}

// IsIntType says whether an ONNX element type is an integer one (BOOL is not).
func IsIntType(dt int32) bool {
	switch onnxpb.TensorProto_DataType(dt) {
	case onnxpb.TensorProto_INT64, onnxpb.TensorProto_INT32, onnxpb.TensorProto_INT16,
		onnxpb.TensorProto_INT8, onnxpb.TensorProto_UINT8, onnxpb.TensorProto_UINT16,
		onnxpb.TensorProto_UINT32, onnxpb.TensorProto_UINT64:
		return true
	}
	return false
}

// TypeName is the ONNX name of an element type ("FLOAT", "INT64", …).
func TypeName(dt int32) string { return onnxpb.TensorProto_DataType(dt).String() }

// Ints64 makes an INT64 tensor of the given shape holding v (not copied).
func Ints64(shape []int64, v []int64) *Tensor {
	return &Tensor{DType: Int64, Shape: shape, I: v}
}

// Scalar makes a rank-0 tensor of type dt holding v.
func Scalar(dt int32, v float64) *Tensor {
	t := Zeros(dt, nil)
	if t.IsFloat() {
		t.F[0] = RoundTo(dt, v)
	} else {
		t.I[0] = int64(v)
	}
	return t
}

// Zeros makes a zero tensor of type dt (integers other than BOOL become INT64) and
// the given shape, which must have no negative dimension.
func Zeros(dt int32, shape []int64) *Tensor {
	n := int(Prod(shape))
	t := &Tensor{DType: dt, Shape: shape}
	if IsFloatType(dt) {
		t.F = make([]float64, n)
	} else {
		if dt != Bool {
			t.DType = Int64
		}
		t.I = make([]int64, n)
	}
	return t
}

// Prod is the product of a shape's dimensions (1 for a scalar).
func Prod(s []int64) int64 {
	n := int64(1)
	for _, d := range s {
		n *= d
	}
	return n
}

// RoundTo rounds a computed value to what the element type holds: float32 for
// FLOAT; other types keep float64 (integer wrap-around is ignored: shape arithmetic
// never overflows).
func RoundTo(dt int32, v float64) float64 {
	if dt == Float {
		return float64(float32(v))
	}
	return v
}

// FromProto decodes an ONNX tensor (raw or typed data; external data must have been
// loaded) into Go memory.
func FromProto(p *onnxpb.TensorProto) (*Tensor, error) {
	if p.GetDataLocation() == onnxpb.TensorProto_EXTERNAL {
		return nil, fmt.Errorf("tensor %q: external data not loaded", p.GetName())
	}
	dt := p.GetDataType()
	shape := append([]int64{}, p.GetDims()...)
	n64 := onnxio.NumElements(shape)
	if n64 < 0 || n64 > math.MaxInt32 {
		return nil, fmt.Errorf("tensor %q: shape %v is too large or negative", p.GetName(), shape)
	}
	n := int(n64)
	t := &Tensor{DType: dt, Shape: shape}
	raw := p.GetRawData()
	bad := func(got int) error {
		return fmt.Errorf("tensor %q: %d values for shape %v", p.GetName(), got, shape)
	}
	switch onnxpb.TensorProto_DataType(dt) {
	case onnxpb.TensorProto_FLOAT:
		v, err := onnxio.Floats(p)
		if err != nil {
			return nil, err
		}
		t.F = make([]float64, n)
		for k, x := range v {
			t.F[k] = float64(x)
		}
	case onnxpb.TensorProto_DOUBLE:
		t.F = make([]float64, n)
		if raw != nil {
			if len(raw) != 8*n {
				return nil, bad(len(raw) / 8)
			}
			for k := range t.F {
				t.F[k] = math.Float64frombits(binary.LittleEndian.Uint64(raw[8*k:]))
			}
			return t, nil
		}
		if len(p.DoubleData) != n {
			return nil, bad(len(p.DoubleData))
		}
		copy(t.F, p.DoubleData)
	case onnxpb.TensorProto_INT64:
		v, err := onnxio.Int64s(p)
		if err != nil {
			return nil, err
		}
		t.I = v
	case onnxpb.TensorProto_INT32, onnxpb.TensorProto_INT16, onnxpb.TensorProto_INT8,
		onnxpb.TensorProto_UINT8, onnxpb.TensorProto_UINT16, onnxpb.TensorProto_BOOL:
		if err := t.smallInts(p, n); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("tensor %q: element type %s is not supported", p.GetName(), TypeName(dt))
	}
	return t, nil
}

// smallInts decodes the integer types narrower than 64 bits and BOOL (ONNX stores
// their typed data in int32_data); they widen to INT64, BOOL stays 0/1.
func (t *Tensor) smallInts(p *onnxpb.TensorProto, n int) error {
	dt := onnxpb.TensorProto_DataType(t.DType)
	t.I = make([]int64, n)
	if raw := p.GetRawData(); raw != nil {
		size := onnxio.ElemSize(t.DType)
		if len(raw) != size*n {
			return fmt.Errorf("tensor %q: %d values for shape %v", p.GetName(), len(raw)/size, t.Shape)
		}
		for k := range t.I {
			b := raw[size*k:]
			switch dt {
			case onnxpb.TensorProto_INT32:
				t.I[k] = int64(int32(binary.LittleEndian.Uint32(b)))
			case onnxpb.TensorProto_INT16:
				t.I[k] = int64(int16(binary.LittleEndian.Uint16(b)))
			case onnxpb.TensorProto_UINT16:
				t.I[k] = int64(binary.LittleEndian.Uint16(b))
			case onnxpb.TensorProto_INT8:
				t.I[k] = int64(int8(b[0]))
			default: // UINT8, BOOL
				t.I[k] = int64(b[0])
			}
		}
	} else {
		if len(p.Int32Data) != n {
			return fmt.Errorf("tensor %q: %d values for shape %v", p.GetName(), len(p.Int32Data), t.Shape)
		}
		for k, v := range p.Int32Data {
			t.I[k] = int64(v)
		}
	}
	if dt == onnxpb.TensorProto_BOOL {
		for k, v := range t.I {
			if v != 0 {
				t.I[k] = 1
			}
		}
		return nil
	}
	t.DType = Int64
	return nil
}
