package onnxio

import (
	"encoding/binary"
	"fmt"
	"math"
	"strings"
	"unsafe"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// Element data types used by sptctl (the TensorProto.DataType enum).
const (
	Float = int32(onnxpb.TensorProto_FLOAT)
	Int64 = int32(onnxpb.TensorProto_INT64)
	Int32 = int32(onnxpb.TensorProto_INT32)
	Bool  = int32(onnxpb.TensorProto_BOOL)
)

// ElemSize is the size in bytes of one element of an ONNX data type, or 0 for types
// whose elements have no fixed size (strings) or that sptctl does not know.
func ElemSize(dataType int32) int {
	switch onnxpb.TensorProto_DataType(dataType) {
	case onnxpb.TensorProto_FLOAT, onnxpb.TensorProto_INT32, onnxpb.TensorProto_UINT32:
		return 4
	case onnxpb.TensorProto_DOUBLE, onnxpb.TensorProto_INT64, onnxpb.TensorProto_UINT64,
		onnxpb.TensorProto_COMPLEX64:
		return 8
	case onnxpb.TensorProto_FLOAT16, onnxpb.TensorProto_BFLOAT16, onnxpb.TensorProto_INT16,
		onnxpb.TensorProto_UINT16:
		return 2
	case onnxpb.TensorProto_INT8, onnxpb.TensorProto_UINT8, onnxpb.TensorProto_BOOL:
		return 1
	case onnxpb.TensorProto_COMPLEX128:
		return 16
	}
	return 0
}

// NumElements is the product of dims (1 for a scalar), or -1 if a dim is negative or
// the product does not fit in an int64 (a file may declare any dims; callers compare
// the count with what they hold, so -1 never matches).
func NumElements(dims []int64) int64 {
	n := int64(1)
	for _, d := range dims {
		if d < 0 {
			return -1
		}
		if d != 0 && n > math.MaxInt64/d {
			// Keep scanning: a later zero dim makes the product 0 after all.
			for _, e := range dims {
				if e == 0 {
					return 0
				}
			}
			return -1
		}
		n *= d
	}
	return n
}

// ByteSize is the number of bytes a tensor of the given dims and data type holds, or an
// error naming the shape when a dim is negative, the type has no fixed size, or the size
// does not fit in an int64.
func ByteSize(dims []int64, dataType int32) (int64, error) {
	n := NumElements(dims)
	if n < 0 {
		for _, d := range dims {
			if d < 0 {
				return 0, fmt.Errorf("negative dimension in shape %v", dims)
			}
		}
		return 0, fmt.Errorf("shape %v has more elements than an int64 can count", dims)
	}
	es := int64(ElemSize(dataType))
	if es == 0 {
		return 0, fmt.Errorf("data type %s has no fixed element size", onnxpb.TensorProto_DataType(dataType))
	}
	if n > math.MaxInt64/es {
		return 0, fmt.Errorf("shape %v of %s is more bytes than an int64 can count", dims, onnxpb.TensorProto_DataType(dataType))
	}
	return n * es, nil
}

// typedLen is the number of elements a tensor holds in its typed (non-raw) field.
func typedLen(t *onnxpb.TensorProto) int {
	switch onnxpb.TensorProto_DataType(t.GetDataType()) {
	case onnxpb.TensorProto_FLOAT, onnxpb.TensorProto_COMPLEX64:
		return len(t.FloatData)
	case onnxpb.TensorProto_DOUBLE, onnxpb.TensorProto_COMPLEX128:
		return len(t.DoubleData)
	case onnxpb.TensorProto_INT64:
		return len(t.Int64Data)
	case onnxpb.TensorProto_UINT32, onnxpb.TensorProto_UINT64:
		return len(t.Uint64Data)
	case onnxpb.TensorProto_STRING:
		return len(t.StringData)
	default:
		return len(t.Int32Data)
	}
}

// CheckTensor reports whether a tensor's stored data agrees with its shape and type.
// External data must have been resolved first.
func CheckTensor(t *onnxpb.TensorProto) error {
	n := NumElements(t.Dims)
	if n < 0 {
		if _, err := ByteSize(t.Dims, Float); err != nil {
			return fmt.Errorf("initializer %q: %w", t.GetName(), err)
		}
	}
	if t.GetDataLocation() == onnxpb.TensorProto_EXTERNAL {
		return fmt.Errorf("initializer %q: external data not resolved", t.GetName())
	}
	if t.RawData != nil {
		if ElemSize(t.GetDataType()) == 0 {
			return fmt.Errorf("initializer %q: raw data of unsupported type %d", t.GetName(), t.GetDataType())
		}
		want, err := ByteSize(t.Dims, t.GetDataType())
		if err != nil {
			return fmt.Errorf("initializer %q: %w", t.GetName(), err)
		}
		if int64(len(t.RawData)) != want {
			return fmt.Errorf("initializer %q: %d bytes of data, but shape %v of %s needs %d",
				t.GetName(), len(t.RawData), t.Dims, onnxpb.TensorProto_DataType(t.GetDataType()), want)
		}
		return nil
	}
	got := int64(typedLen(t))
	switch onnxpb.TensorProto_DataType(t.GetDataType()) {
	case onnxpb.TensorProto_COMPLEX64, onnxpb.TensorProto_COMPLEX128:
		got /= 2
	case onnxpb.TensorProto_FLOAT16, onnxpb.TensorProto_BFLOAT16:
		// stored one per int32; the count is what matters
	}
	if got != n {
		return fmt.Errorf("initializer %q: %d values, but shape %v needs %d", t.GetName(), got, t.Dims, n)
	}
	return nil
}

// CheckInitializers runs CheckTensor on every initializer of g.
func CheckInitializers(g *onnxpb.GraphProto) error {
	for _, t := range g.GetInitializer() {
		if err := CheckTensor(t); err != nil {
			return err
		}
	}
	return nil
}

// checkNodeTensors runs CheckTensor on the tensors in g's node attributes (Constant
// values, ConstantOfShape fills): their dims are as much a size read from the file as an
// initializer's, and executors allocate from them.
func checkNodeTensors(g *onnxpb.GraphProto) error {
	for _, n := range g.GetNode() {
		for _, a := range n.GetAttribute() {
			ts := a.GetTensors()
			if a.T != nil {
				ts = append([]*onnxpb.TensorProto{a.T}, ts...)
			}
			for _, t := range ts {
				if err := CheckTensor(t); err != nil {
					name := n.GetName()
					if name == "" && len(n.GetOutput()) > 0 {
						name = n.GetOutput()[0]
					}
					return fmt.Errorf("node %q attribute %q: %s", name, a.GetName(), strings.Replace(err.Error(), "initializer ", "tensor ", 1))
				}
			}
		}
	}
	return nil
}

// Floats returns a copy of a float32 tensor's values.
func Floats(t *onnxpb.TensorProto) ([]float32, error) {
	if t.GetDataType() != Float {
		return nil, fmt.Errorf("tensor %q: type %s, want FLOAT", t.GetName(), onnxpb.TensorProto_DataType(t.GetDataType()))
	}
	if err := CheckTensor(t); err != nil {
		return nil, err
	}
	if t.RawData == nil {
		return append([]float32(nil), t.FloatData...), nil
	}
	out := make([]float32, len(t.RawData)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.RawData[4*i:]))
	}
	return out, nil
}

// SetFloats replaces a float32 tensor's values, stored as raw_data. The number of
// values must match the tensor's shape.
func SetFloats(t *onnxpb.TensorProto, v []float32) error {
	if err := checkSetFloats(t, v); err != nil {
		return err
	}
	t.RawData = floatBytes(v)
	t.FloatData = nil
	return nil
}

// ReplaceFloats is SetFloats for a caller that owns the tensor's data and gives v up:
// where raw_data holds as many bytes as the new values need, they are written over it
// (no allocation; whoever shares those bytes sees the change); else, on a
// little-endian machine, raw_data becomes v's memory instead of a copy of it. A merge
// into vit_b_16 replaces a model's worth of tensors: with SetFloats it would hold the
// old and the new values at once. v must not be changed afterwards.
func ReplaceFloats(t *onnxpb.TensorProto, v []float32) error {
	if err := checkSetFloats(t, v); err != nil {
		return err
	}
	switch {
	case len(t.RawData) == 4*len(v) && len(v) > 0:
		for i, x := range v {
			binary.LittleEndian.PutUint32(t.RawData[4*i:], math.Float32bits(x))
		}
	case nativeLittleEndian && len(v) > 0:
		t.RawData = unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(v))), 4*len(v))
	default:
		t.RawData = floatBytes(v)
	}
	t.FloatData = nil
	return nil
}

func checkSetFloats(t *onnxpb.TensorProto, v []float32) error {
	if t.GetDataType() != Float {
		return fmt.Errorf("tensor %q: type %s, want FLOAT", t.GetName(), onnxpb.TensorProto_DataType(t.GetDataType()))
	}
	if n := NumElements(t.Dims); int64(len(v)) != n {
		return fmt.Errorf("tensor %q: %d values for shape %v (%d elements)", t.GetName(), len(v), t.Dims, n)
	}
	return nil
}

// nativeLittleEndian: raw_data is little-endian, so float32 memory can be raw_data as is.
var nativeLittleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// DropData removes the values of g's initializers (raw_data and the typed fields),
// keeping their names, types and shapes, so that the memory they hold (for a loaded
// model, the file's bytes, which every raw_data shares) can be freed. For callers
// that have handed the weights on (to the executor) and need only the graph.
func DropData(g *onnxpb.GraphProto) {
	for _, t := range g.GetInitializer() {
		DropTensorData(t)
	}
}

// DropTensorData removes one tensor's values (raw_data and the typed fields), keeping
// its name, type and shape: DropData for callers that keep some tensors' data.
func DropTensorData(t *onnxpb.TensorProto) {
	t.RawData, t.FloatData, t.DoubleData = nil, nil, nil
	t.Int32Data, t.Int64Data, t.Uint64Data, t.StringData = nil, nil, nil, nil
}

// Int64s returns a copy of an int64 tensor's values.
func Int64s(t *onnxpb.TensorProto) ([]int64, error) {
	if t.GetDataType() != Int64 {
		return nil, fmt.Errorf("tensor %q: type %s, want INT64", t.GetName(), onnxpb.TensorProto_DataType(t.GetDataType()))
	}
	if err := CheckTensor(t); err != nil {
		return nil, err
	}
	if t.RawData == nil {
		return append([]int64(nil), t.Int64Data...), nil
	}
	out := make([]int64, len(t.RawData)/8)
	for i := range out {
		out[i] = int64(binary.LittleEndian.Uint64(t.RawData[8*i:]))
	}
	return out, nil
}

// NewFloat makes a float32 tensor named name with the given shape and values
// (stored as raw_data, as PyTorch's exporter stores them).
func NewFloat(name string, dims []int64, v []float32) (*onnxpb.TensorProto, error) {
	t := &onnxpb.TensorProto{Name: proto.String(name), DataType: proto.Int32(Float), Dims: append([]int64(nil), dims...)}
	if err := SetFloats(t, v); err != nil {
		return nil, err
	}
	return t, nil
}

// NewInt64 makes an int64 tensor with the given shape and values.
func NewInt64(name string, dims []int64, v []int64) (*onnxpb.TensorProto, error) {
	if n := NumElements(dims); int64(len(v)) != n {
		return nil, fmt.Errorf("tensor %q: %d values for shape %v", name, len(v), dims)
	}
	b := make([]byte, 8*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], uint64(x))
	}
	return &onnxpb.TensorProto{Name: proto.String(name), DataType: proto.Int32(Int64), Dims: append([]int64(nil), dims...), RawData: b}, nil
}

func floatBytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

// Bytes returns a tensor's data in raw little-endian form, converting from the typed
// field where needed (FLOAT, INT64, INT32 only for the typed forms).
func Bytes(t *onnxpb.TensorProto) ([]byte, error) {
	if t.RawData != nil {
		return t.RawData, nil
	}
	switch t.GetDataType() {
	case Float:
		return floatBytes(t.FloatData), nil
	case Int64:
		b := make([]byte, 8*len(t.Int64Data))
		for i, x := range t.Int64Data {
			binary.LittleEndian.PutUint64(b[8*i:], uint64(x))
		}
		return b, nil
	case Int32:
		b := make([]byte, 4*len(t.Int32Data))
		for i, x := range t.Int32Data {
			binary.LittleEndian.PutUint32(b[4*i:], uint32(x))
		}
		return b, nil
	}
	if NumElements(t.Dims) == 0 {
		return []byte{}, nil
	}
	return nil, fmt.Errorf("tensor %q: typed data of type %s cannot be converted to raw bytes",
		t.GetName(), onnxpb.TensorProto_DataType(t.GetDataType()))
}
