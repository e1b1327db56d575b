package constfold

import "fmt"

// NormAxis maps a possibly negative axis into [0, rank).
func NormAxis(axis int64, rank int) (int, error) {
	a := axis
	if a < 0 {
		a += int64(rank)
	}
	if a < 0 || a >= int64(rank) {
		return 0, fmt.Errorf("axis %d out of range for rank %d", axis, rank)
	}
	return int(a), nil
}

// BroadcastShapes is numpy's (and ONNX's multidirectional) broadcasting.
func BroadcastShapes(a, b []int64) ([]int64, error) {
	n := max(len(a), len(b))
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

// Strides are the row-major strides of shape, in elements.
func Strides(shape []int64) []int64 {
	s := make([]int64, len(shape))
	acc := int64(1)
	for k := len(shape) - 1; k >= 0; k-- {
		s[k] = acc
		acc *= shape[k]
	}
	return s
}

// BroadcastIndex maps a flat index into the broadcast shape out (with strides
// outStrides) to the flat index into an operand of shape in.
func BroadcastIndex(flat int64, out, outStrides, in []int64) int64 {
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

// SliceRange normalises ONNX Slice bounds for one axis of size dim (negative bounds
// count from the end, out-of-range ones are clamped); it returns the first index,
// the step and the number of elements. step must not be 0.
func SliceRange(start, end, step, dim int64) (first, stride, count int64) {
	if start < 0 {
		start += dim
	}
	if end < 0 {
		end += dim
	}
	if step > 0 {
		start = min(max(start, 0), dim)
		end = min(max(end, 0), dim)
		if end <= start {
			return start, step, 0
		}
		return start, step, (end - start + step - 1) / step
	}
	start = min(max(start, 0), dim-1)
	end = min(max(end, -1), dim-1)
	if start <= end {
		return start, step, 0
	}
	return start, step, (start - end + (-step) - 1) / (-step)
}
