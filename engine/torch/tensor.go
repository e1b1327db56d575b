package torch

import (
	"errors"
	"fmt"
	"strings"
	"unsafe"

	"github.com/sugarme/gotch"
	lib "github.com/sugarme/gotch/libtch"
	"github.com/sugarme/gotch/ts"

	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery/constfold"
)

// Conversions between Go memory and libtorch tensors, and gotch error handling.

// torchErr turns a gotch error into a short one: gotch appends a Go stack trace and
// libtorch a C++ one; the first line of libtorch's message is what says what went wrong.
func torchErr(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if i := strings.Index(msg, "Libtorch API Error: "); i >= 0 {
		msg = msg[i+len("Libtorch API Error: "):]
	}
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	msg = strings.TrimSpace(msg)
	if msg == "" {
		msg = "libtorch error"
	}
	return errors.New(msg)
}

// lastErr reads (and clears) gotch's per-thread error slot after a direct libtch call.
func lastErr() error { return torchErr(ts.TorchErr()) }

// dimsBuf returns shape, or a one-element buffer for a scalar shape: libtch takes the
// address of the first element even when the length is 0.
func dimsBuf(shape []int64) []int64 {
	if len(shape) == 0 {
		return []int64{0}
	}
	return shape
}

// tensorFromData copies n elements of size elt at ptr into a new tensor.
func tensorFromData(ptr unsafe.Pointer, shape []int64, elt uint, kind gotch.DType) (*ts.Tensor, error) {
	c := lib.AtTensorOfData(ptr, dimsBuf(shape), uint(len(shape)), elt, int(kind.CKind()))
	if err := lastErr(); err != nil {
		return nil, err
	}
	return ts.New(c), nil
}

// tensorFromFloats makes a float32 tensor of the given shape holding a copy of v.
func tensorFromFloats(v []float32, shape []int64) (*ts.Tensor, error) {
	if int64(len(v)) != constfold.Prod(shape) {
		return nil, fmt.Errorf("%d values for shape %v", len(v), shape)
	}
	var one float32
	p := unsafe.Pointer(&one)
	if len(v) > 0 {
		p = unsafe.Pointer(&v[0])
	}
	return tensorFromData(p, shape, 4, gotch.Float)
}

// tensorFromInt64s makes an int64 tensor of the given shape holding a copy of v.
func tensorFromInt64s(v []int64, shape []int64) (*ts.Tensor, error) {
	if int64(len(v)) != constfold.Prod(shape) {
		return nil, fmt.Errorf("%d values for shape %v", len(v), shape)
	}
	var one int64
	p := unsafe.Pointer(&one)
	if len(v) > 0 {
		p = unsafe.Pointer(&v[0])
	}
	return tensorFromData(p, shape, 8, gotch.Int64)
}

// tensorFromHost makes a libtorch tensor from a host value: FLOAT as float32, DOUBLE as
// float64, BOOL as bool and every integer type as int64.
func tensorFromHost(h *constfold.Tensor) (*ts.Tensor, error) {
	switch {
	case onnxpb.TensorProto_DataType(h.DType) == onnxpb.TensorProto_DOUBLE:
		var one float64
		p := unsafe.Pointer(&one)
		if len(h.F) > 0 {
			p = unsafe.Pointer(&h.F[0])
		}
		return tensorFromData(p, h.Shape, 8, gotch.Double)
	case h.IsFloat():
		if onnxpb.TensorProto_DataType(h.DType) != onnxpb.TensorProto_FLOAT {
			return nil, fmt.Errorf("element type %s is not supported", constfold.TypeName(h.DType))
		}
		v := make([]float32, len(h.F))
		for k, x := range h.F {
			v[k] = float32(x)
		}
		return tensorFromFloats(v, h.Shape)
	case onnxpb.TensorProto_DataType(h.DType) == onnxpb.TensorProto_BOOL:
		v := make([]byte, len(h.I)+1)
		for k, x := range h.I {
			if x != 0 {
				v[k] = 1
			}
		}
		return tensorFromData(unsafe.Pointer(&v[0]), h.Shape, 1, gotch.Bool)
	default:
		return tensorFromInt64s(h.I, h.Shape)
	}
}

// onnxType is the ONNX element type sptctl uses for a libtorch dtype.
func onnxType(d gotch.DType) (int32, error) {
	switch d {
	case gotch.Float:
		return int32(onnxpb.TensorProto_FLOAT), nil
	case gotch.Double:
		return int32(onnxpb.TensorProto_DOUBLE), nil
	case gotch.Int64, gotch.Int, gotch.Int16, gotch.Int8, gotch.Uint8:
		return int32(onnxpb.TensorProto_INT64), nil
	case gotch.Bool:
		return int32(onnxpb.TensorProto_BOOL), nil
	}
	return 0, fmt.Errorf("libtorch dtype %v is not supported", d)
}

// torchType is the libtorch dtype that holds an ONNX element type here.
func torchType(dt int32) (gotch.DType, error) {
	switch onnxpb.TensorProto_DataType(dt) {
	case onnxpb.TensorProto_FLOAT:
		return gotch.Float, nil
	case onnxpb.TensorProto_DOUBLE:
		return gotch.Double, nil
	case onnxpb.TensorProto_BOOL:
		return gotch.Bool, nil
	}
	if constfold.IsIntType(dt) {
		return gotch.Int64, nil
	}
	return gotch.Invalid, fmt.Errorf("element type %s is not supported", constfold.TypeName(dt))
}

// hostFromTensor copies a (small) tensor into Go memory.
func hostFromTensor(t *ts.Tensor) (*constfold.Tensor, error) {
	shape, err := sizeOf(t)
	if err != nil {
		return nil, err
	}
	dt, err := onnxType(t.DType())
	if err != nil {
		return nil, err
	}
	h := constfold.Zeros(dt, shape)
	n := uint(constfold.Prod(shape))
	if n == 0 {
		return h, nil
	}
	if h.IsFloat() {
		d, err := t.Totype(gotch.Double, false)
		if err != nil {
			return nil, torchErr(err)
		}
		defer d.Drop()
		if err := d.CopyData(h.F, n); err != nil {
			return nil, torchErr(err)
		}
		return h, nil
	}
	d, err := t.Totype(gotch.Int64, false)
	if err != nil {
		return nil, torchErr(err)
	}
	defer d.Drop()
	if err := d.CopyData(h.I, n); err != nil {
		return nil, torchErr(err)
	}
	return h, nil
}

// copyFloats copies a float32 tensor's values (detached, contiguous) into Go memory.
func copyFloats(t *ts.Tensor) ([]float32, error) {
	shape, err := sizeOf(t)
	if err != nil {
		return nil, err
	}
	n := constfold.Prod(shape)
	out := make([]float32, n)
	if n == 0 {
		return out, nil
	}
	if t.DType() != gotch.Float {
		return nil, fmt.Errorf("tensor of %v, want float32", t.DType())
	}
	// One copy straight into the slice (gotch's CopyData goes through reflection and
	// dtype map look-ups that showed in profiles of sensitivity on vit_b_16).
	lib.AtCopyData(lib.Ctensor(t.Ctensor()), unsafe.Pointer(&out[0]), uint(n), 4)
	if err := lastErr(); err != nil {
		return nil, err
	}
	return out, nil
}

// sizeOf returns a tensor's shape. It reads it straight into Go memory (gotch's Size
// goes through a C buffer and encoding/binary).
func sizeOf(t *ts.Tensor) ([]int64, error) {
	c := lib.Ctensor(t.Ctensor())
	n := lib.AtDim(c)
	if err := lastErr(); err != nil {
		return nil, err
	}
	if n > 64 {
		return nil, fmt.Errorf("invalid tensor rank %d", n)
	}
	buf := make([]int64, n+1)
	lib.AtShape(c, unsafe.Pointer(&buf[0]))
	if err := lastErr(); err != nil {
		return nil, err
	}
	return buf[:n], nil
}
