package torch

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// hostT is a small tensor kept in Go memory: shapes, indices and the scalar constants
// that shape arithmetic (Shape → Gather → Unsqueeze → Concat → Reshape) works on.
// Computing those in Go saves a libtorch round trip (and a gotch wrapper) per node.
// Integer and boolean data live in i, floating-point data in f.
type hostT struct {
	dtype int32 // ONNX element type (FLOAT, DOUBLE, INT64, BOOL, ...)
	shape []int64
	i     []int64
	f     []float64
}

func (h *hostT) isFloat() bool { return isFloatType(h.dtype) }

func (h *hostT) numel() int {
	if h.isFloat() {
		return len(h.f)
	}
	return len(h.i)
}

// ints returns the values as int64 (floats truncated).
func (h *hostT) ints() []int64 {
	if !h.isFloat() {
		return h.i
	}
	out := make([]int64, len(h.f))
	for k, v := range h.f {
		out[k] = int64(v)
	}
	return out
}

// floats returns the values as float64.
func (h *hostT) floats() []float64 {
	if h.isFloat() {
		return h.f
	}
	out := make([]float64, len(h.i))
	for k, v := range h.i {
		out[k] = float64(v)
	}
	return out
}

func isFloatType(dt int32) bool {
	switch onnxpb.TensorProto_DataType(dt) {
	case onnxpb.TensorProto_FLOAT, onnxpb.TensorProto_DOUBLE, onnxpb.TensorProto_FLOAT16,
		onnxpb.TensorProto_BFLOAT16:
		return true
	}
	return false
}

func isIntType(dt int32) bool {
	switch onnxpb.TensorProto_DataType(dt) {
	case onnxpb.TensorProto_INT64, onnxpb.TensorProto_INT32, onnxpb.TensorProto_INT16,
		onnxpb.TensorProto_INT8, onnxpb.TensorProto_UINT8, onnxpb.TensorProto_UINT16,
		onnxpb.TensorProto_UINT32, onnxpb.TensorProto_UINT64:
		return true
	}
	return false
}

func typeName(dt int32) string { return onnxpb.TensorProto_DataType(dt).String() }

func newHostInts(shape []int64, v []int64) *hostT {
	return &hostT{dtype: int32(onnxpb.TensorProto_INT64), shape: shape, i: v}
}

func newHostLike(dt int32, shape []int64) *hostT {
	n := int(prod(shape))
	h := &hostT{dtype: dt, shape: shape}
	if isFloatType(dt) {
		h.f = make([]float64, n)
	} else {
		h.i = make([]int64, n)
	}
	return h
}

func prod(s []int64) int64 {
	n := int64(1)
	for _, d := range s {
		n *= d
	}
	return n
}

// roundTo rounds a computed value to what the element type can hold (float32 math for
// FLOAT, integer wrap-around is ignored: shape arithmetic never overflows).
func roundTo(dt int32, v float64) float64 {
	if onnxpb.TensorProto_DataType(dt) == onnxpb.TensorProto_FLOAT {
		return float64(float32(v))
	}
	return v
}

// hostFromProto decodes an ONNX tensor into Go memory.
func hostFromProto(t *onnxpb.TensorProto) (*hostT, error) {
	dt := t.GetDataType()
	shape := append([]int64{}, t.GetDims()...)
	n := int(prod(shape))
	h := &hostT{dtype: dt, shape: shape}
	raw := t.GetRawData()
	if t.GetDataLocation() == onnxpb.TensorProto_EXTERNAL {
		return nil, fmt.Errorf("tensor %q: external data not loaded", t.GetName())
	}
	bad := func(got int) error {
		return fmt.Errorf("tensor %q: %d values for shape %v", t.GetName(), got, shape)
	}
	switch onnxpb.TensorProto_DataType(dt) {
	case onnxpb.TensorProto_FLOAT:
		h.f = make([]float64, n)
		if raw != nil {
			if len(raw) != 4*n {
				return nil, bad(len(raw) / 4)
			}
			for k := range h.f {
				h.f[k] = float64(math.Float32frombits(binary.LittleEndian.Uint32(raw[4*k:])))
			}
		} else {
			if len(t.FloatData) != n {
				return nil, bad(len(t.FloatData))
			}
			for k, v := range t.FloatData {
				h.f[k] = float64(v)
			}
		}
	case onnxpb.TensorProto_DOUBLE:
		h.f = make([]float64, n)
		if raw != nil {
			if len(raw) != 8*n {
				return nil, bad(len(raw) / 8)
			}
			for k := range h.f {
				h.f[k] = math.Float64frombits(binary.LittleEndian.Uint64(raw[8*k:]))
			}
		} else {
			if len(t.DoubleData) != n {
				return nil, bad(len(t.DoubleData))
			}
			copy(h.f, t.DoubleData)
		}
	case onnxpb.TensorProto_INT64:
		h.i = make([]int64, n)
		if raw != nil {
			if len(raw) != 8*n {
				return nil, bad(len(raw) / 8)
			}
			for k := range h.i {
				h.i[k] = int64(binary.LittleEndian.Uint64(raw[8*k:]))
			}
		} else {
			if len(t.Int64Data) != n {
				return nil, bad(len(t.Int64Data))
			}
			copy(h.i, t.Int64Data)
		}
	case onnxpb.TensorProto_INT32, onnxpb.TensorProto_INT16, onnxpb.TensorProto_INT8,
		onnxpb.TensorProto_UINT8, onnxpb.TensorProto_UINT16, onnxpb.TensorProto_BOOL:
		h.i = make([]int64, n)
		if raw != nil {
			size := map[onnxpb.TensorProto_DataType]int{
				onnxpb.TensorProto_INT32: 4, onnxpb.TensorProto_INT16: 2, onnxpb.TensorProto_INT8: 1,
				onnxpb.TensorProto_UINT8: 1, onnxpb.TensorProto_UINT16: 2, onnxpb.TensorProto_BOOL: 1,
			}[onnxpb.TensorProto_DataType(dt)]
			if len(raw) != size*n {
				return nil, bad(len(raw) / size)
			}
			for k := range h.i {
				b := raw[size*k:]
				switch onnxpb.TensorProto_DataType(dt) {
				case onnxpb.TensorProto_INT32:
					h.i[k] = int64(int32(binary.LittleEndian.Uint32(b)))
				case onnxpb.TensorProto_INT16:
					h.i[k] = int64(int16(binary.LittleEndian.Uint16(b)))
				case onnxpb.TensorProto_UINT16:
					h.i[k] = int64(binary.LittleEndian.Uint16(b))
				case onnxpb.TensorProto_INT8:
					h.i[k] = int64(int8(b[0]))
				default:
					h.i[k] = int64(b[0])
				}
			}
		} else {
			if len(t.Int32Data) != n {
				return nil, bad(len(t.Int32Data))
			}
			for k, v := range t.Int32Data {
				h.i[k] = int64(v)
			}
		}
		if onnxpb.TensorProto_DataType(dt) == onnxpb.TensorProto_BOOL {
			for k, v := range h.i {
				if v != 0 {
					h.i[k] = 1
				}
			}
		} else {
			h.dtype = int32(onnxpb.TensorProto_INT64) // all integers are int64 here
		}
	default:
		return nil, fmt.Errorf("tensor %q: element type %s is not supported", t.GetName(), typeName(dt))
	}
	return h, nil
}

// ---------------------------------------------------------------- shape helpers

// normAxis maps a possibly negative axis into [0, rank).
func normAxis(axis int64, rank int) (int, error) {
	a := axis
	if a < 0 {
		a += int64(rank)
	}
	if a < 0 || a >= int64(rank) {
		return 0, fmt.Errorf("axis %d out of range for rank %d", axis, rank)
	}
	return int(a), nil
}

// broadcastShapes is numpy's (and ONNX's multidirectional) broadcasting.
func broadcastShapes(a, b []int64) ([]int64, error) {
	n := len(a)
	if len(b) > n {
		n = len(b)
	}
	out := make([]int64, n)
	for k := 0; k < n; k++ {
		da, db := int64(1), int64(1)
		if i := len(a) - n + k; i >= 0 {
			da = a[i]
		}
		if i := len(b) - n + k; i >= 0 {
			db = b[i]
		}
		switch {
		case da == db, db == 1:
			out[k] = da
		case da == 1:
			out[k] = db
		default:
			return nil, fmt.Errorf("shapes %v and %v do not broadcast", a, b)
		}
	}
	return out, nil
}

func stridesOf(shape []int64) []int64 {
	s := make([]int64, len(shape))
	acc := int64(1)
	for k := len(shape) - 1; k >= 0; k-- {
		s[k] = acc
		acc *= shape[k]
	}
	return s
}

// bIndex maps a flat index of the broadcast output shape to the flat index into an
// operand of shape in.
func bIndex(flat int64, out, outStrides, in []int64) int64 {
	idx := int64(0)
	off := len(out) - len(in)
	acc := int64(1)
	for k := len(in) - 1; k >= 0; k-- {
		c := (flat / outStrides[k+off]) % out[k+off]
		if in[k] != 1 {
			idx += c * acc
		}
		acc *= in[k]
	}
	return idx
}

// ---------------------------------------------------------------- host kernels

// hostBinary applies f elementwise with broadcasting; the result has dtype outType.
func hostBinary(a, b *hostT, outType int32, fi func(x, y int64) int64, ff func(x, y float64) float64) (*hostT, error) {
	shape, err := broadcastShapes(a.shape, b.shape)
	if err != nil {
		return nil, err
	}
	out := newHostLike(outType, shape)
	st := stridesOf(shape)
	n := prod(shape)
	useFloat := a.isFloat() || b.isFloat()
	var af, bf []float64
	if useFloat {
		af, bf = a.floats(), b.floats()
	}
	for k := int64(0); k < n; k++ {
		ia, ib := bIndex(k, shape, st, a.shape), bIndex(k, shape, st, b.shape)
		if useFloat {
			r := ff(af[ia], bf[ib])
			if out.isFloat() {
				out.f[k] = roundTo(outType, r)
			} else {
				out.i[k] = int64(r)
			}
		} else {
			r := fi(a.i[ia], b.i[ib])
			if out.isFloat() {
				out.f[k] = float64(r)
			} else {
				out.i[k] = r
			}
		}
	}
	return out, nil
}

// hostReshape returns h with another shape (data shared; host values are immutable).
func hostReshape(h *hostT, shape []int64) *hostT {
	c := *h
	c.shape = shape
	return &c
}

// hostGather is ONNX Gather on Go data.
func hostGather(data, idx *hostT, axis int) (*hostT, error) {
	r := len(data.shape)
	dim := data.shape[axis]
	outer := prod(data.shape[:axis])
	inner := prod(data.shape[axis+1:])
	ind := idx.ints()
	shape := append(append(append([]int64{}, data.shape[:axis]...), idx.shape...), data.shape[axis+1:]...)
	out := newHostLike(data.dtype, shape)
	_ = r
	p := 0
	for o := int64(0); o < outer; o++ {
		for _, j := range ind {
			if j < 0 {
				j += dim
			}
			if j < 0 || j >= dim {
				return nil, fmt.Errorf("index %d out of range for axis of size %d", j, dim)
			}
			base := (o*dim + j) * inner
			for q := int64(0); q < inner; q++ {
				if data.isFloat() {
					out.f[p] = data.f[base+q]
				} else {
					out.i[p] = data.i[base+q]
				}
				p++
			}
		}
	}
	return out, nil
}

// hostConcat is ONNX Concat on Go data (all inputs have the dtype of the first).
func hostConcat(in []*hostT, axis int) (*hostT, error) {
	shape := append([]int64{}, in[0].shape...)
	shape[axis] = 0
	for _, h := range in {
		if len(h.shape) != len(shape) {
			return nil, fmt.Errorf("concat of ranks %d and %d", len(in[0].shape), len(h.shape))
		}
		shape[axis] += h.shape[axis]
	}
	out := newHostLike(in[0].dtype, shape)
	outer := prod(shape[:axis])
	p := 0
	for o := int64(0); o < outer; o++ {
		for _, h := range in {
			chunk := prod(h.shape[axis:])
			for q := int64(0); q < chunk; q++ {
				if out.isFloat() {
					out.f[p] = h.floats()[o*chunk+q]
				} else {
					out.i[p] = h.ints()[o*chunk+q]
				}
				p++
			}
		}
	}
	return out, nil
}

// hostTranspose permutes the axes of h.
func hostTranspose(h *hostT, perm []int) *hostT {
	shape := make([]int64, len(perm))
	for k, p := range perm {
		shape[k] = h.shape[p]
	}
	out := newHostLike(h.dtype, shape)
	inSt := stridesOf(h.shape)
	outSt := stridesOf(shape)
	n := prod(shape)
	for k := int64(0); k < n; k++ {
		src := int64(0)
		for d := range shape {
			c := (k / outSt[d]) % shape[d]
			src += c * inSt[perm[d]]
		}
		if out.isFloat() {
			out.f[k] = h.f[src]
		} else {
			out.i[k] = h.i[src]
		}
	}
	return out
}

// sliceRange normalises ONNX Slice bounds for one axis of size dim; it returns the
// first index, the step and the number of elements.
func sliceRange(start, end, step, dim int64) (int64, int64, int64) {
	if start < 0 {
		start += dim
	}
	if end < 0 {
		end += dim
	}
	if step > 0 {
		start = clamp(start, 0, dim)
		end = clamp(end, 0, dim)
		if end <= start {
			return start, step, 0
		}
		return start, step, (end - start + step - 1) / step
	}
	start = clamp(start, 0, dim-1)
	end = clamp(end, -1, dim-1)
	if start <= end {
		return start, step, 0
	}
	return start, step, (start - end + (-step) - 1) / (-step)
}

func clamp(v, lo, hi int64) int64 {
	if v < lo {
		return lo
	}
	if v > hi {
		return hi
	}
	return v
}

// hostSlice takes the given per-axis (first, step, count) selection.
func hostSlice(h *hostT, first, step, count []int64) *hostT {
	shape := append([]int64{}, count...)
	out := newHostLike(h.dtype, shape)
	inSt := stridesOf(h.shape)
	outSt := stridesOf(shape)
	n := prod(shape)
	for k := int64(0); k < n; k++ {
		src := int64(0)
		for d := range shape {
			c := (k / outSt[d]) % shape[d]
			src += (first[d] + c*step[d]) * inSt[d]
		}
		if out.isFloat() {
			out.f[k] = h.f[src]
		} else {
			out.i[k] = h.i[src]
		}
	}
	return out
}
