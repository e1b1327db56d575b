package torch

import (
	"errors"
	"fmt"

	"github.com/sugarme/gotch/ts"

	"github.com/sptctl/sptctl/surgery/constfold"
)

// Shape ops: reshaping, transposing, joining, splitting, slicing, gathering and the shape queries.

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
			shape = h.Ints()
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
			return hostOne(constfold.Reshape(in[0].h, target))
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
	total := constfold.Prod(xs)
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
		target := []int64{constfold.Prod(xs[:a]), constfold.Prod(xs[a:])}
		if in[0].h != nil {
			return hostOne(constfold.Reshape(in[0].h, target))
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
				a, err := constfold.NormAxis(perm[k], len(xs))
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
			return hostOne(constfold.Transpose(in[0].h, p))
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
		a, err := constfold.NormAxis(axis, len(xs))
		if err != nil {
			return nil, err
		}
		if allHost(parts) {
			hs := make([]*constfold.Tensor, len(parts))
			for k, v := range parts {
				hs[k] = v.h
			}
			return hostOne(constfold.Concat(hs, a))
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
		a, err := constfold.NormAxis(axis, len(xs))
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
				h, err := constfold.Slice(in[0].h, first, step, count)
				if err != nil {
					return nil, err
				}
				out[k] = value{h: h}
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
	sa := newSliceArgs(c)
	return func(r *runCtx, in []value) ([]value, error) {
		b, err := sa.bounds(r, in)
		if err != nil {
			return nil, err
		}
		return applySlice(in[0], b)
	}, nil
}

// sliceArgs are a Slice node's compile-time arguments (attributes before opset 10).
type sliceArgs struct {
	starts, ends, axes []int64
	hasAxes            bool
	opset              int64
}

func newSliceArgs(c *nodeCtx) sliceArgs {
	sa := sliceArgs{opset: c.opset}
	sa.starts, _ = c.ints("starts")
	sa.ends, _ = c.ints("ends")
	sa.axes, sa.hasAxes = c.ints("axes")
	return sa
}

// sliceBounds is what a Slice takes of its input: the input's shape xs and, per axis,
// the first index, the step and the count of the elements taken.
type sliceBounds struct{ xs, first, step, count []int64 }

// bounds returns the Slice's bounds on its input in[0].
func (sa sliceArgs) bounds(r *runCtx, in []value) (sliceBounds, error) {
	starts, ends, axes, steps := sa.starts, sa.ends, sa.axes, []int64(nil)
	if !sa.hasAxes {
		axes = nil
	}
	if sa.opset >= 10 {
		var err error
		if starts, _, err = optInts(r, in, 1); err != nil {
			return sliceBounds{}, err
		}
		if ends, _, err = optInts(r, in, 2); err != nil {
			return sliceBounds{}, err
		}
		if axes, _, err = optInts(r, in, 3); err != nil {
			return sliceBounds{}, err
		}
		if steps, _, err = optInts(r, in, 4); err != nil {
			return sliceBounds{}, err
		}
	}
	xs, err := r.Shape(in[0])
	if err != nil {
		return sliceBounds{}, err
	}
	if len(starts) != len(ends) || (axes != nil && len(axes) != len(starts)) || (steps != nil && len(steps) != len(starts)) {
		return sliceBounds{}, fmt.Errorf("starts %v, ends %v, axes %v, steps %v differ in length", starts, ends, axes, steps)
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
		a, err := constfold.NormAxis(ax, len(xs))
		if err != nil {
			return sliceBounds{}, err
		}
		if touched[a] {
			return sliceBounds{}, fmt.Errorf("axis %d sliced twice", a)
		}
		touched[a] = true
		st := int64(1)
		if steps != nil {
			st = steps[k]
		}
		if st == 0 {
			return sliceBounds{}, errors.New("step 0")
		}
		first[a], step[a], count[a] = constfold.SliceRange(starts[k], ends[k], st, xs[a])
	}
	return sliceBounds{xs, first, step, count}, nil
}

// applySlice takes from x the elements b.first[d] + k·b.step[d], k < b.count[d], along
// every axis d.
func applySlice(x value, b sliceBounds) ([]value, error) {
	xs, first, step, count := b.xs, b.first, b.step, b.count
	if x.h != nil {
		return hostOne(constfold.Slice(x.h, first, step, count))
	}
	t := x.t
	owned := false
	var err error
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
}

func opGather(c *nodeCtx) (kernel, error) {
	axis := c.int("axis", 0)
	return func(r *runCtx, in []value) ([]value, error) {
		xs, err := r.Shape(in[0])
		if err != nil {
			return nil, err
		}
		a, err := constfold.NormAxis(axis, len(xs))
		if err != nil {
			return nil, err
		}
		if in[0].h != nil && in[1].h != nil {
			return hostOne(constfold.Gather(in[0].h, in[1].h, a))
		}
		x, err := r.T(in[0])
		if err != nil {
			return nil, err
		}
		dim := xs[a]
		if in[1].h != nil {
			idx := in[1].h.Ints()
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
			if len(in[1].h.Shape) == 0 { // x[:, j]: a view
				return one(x.Select(int64(a), norm[0], false))
			}
			it, err := tensorFromInt64s(norm, []int64{int64(len(norm))})
			if err != nil {
				return nil, err
			}
			defer it.Drop()
			return gatherIndexSelect(x, xs, a, it, in[1].h.Shape)
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
		flat, err := reshapeT(pos, []int64{constfold.Prod(is)})
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
		s, e = min(max(s, 0), n), min(max(e, 0), n)
		if e < s {
			e = s
		}
		out := append([]int64{}, xs[s:e]...)
		return []value{{h: constfold.Ints64([]int64{int64(len(out))}, out)}}, nil
	}, nil
}

func opSize(c *nodeCtx) (kernel, error) {
	return func(r *runCtx, in []value) ([]value, error) {
		xs, err := r.Shape(in[0])
		if err != nil {
			return nil, err
		}
		return []value{{h: constfold.Ints64(nil, []int64{constfold.Prod(xs)})}}, nil
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
			a, err := constfold.NormAxis(ax, rank)
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
			return hostOne(constfold.Reshape(in[0].h, shape))
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
				a, err := constfold.NormAxis(ax, len(xs))
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
			return hostOne(constfold.Reshape(in[0].h, shape))
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
		target, err := constfold.BroadcastShapes(xs, sh.Ints())
		if err != nil {
			return nil, err
		}
		if in[0].h != nil {
			return hostOne(constfold.Expand(in[0].h, target))
		}
		if len(target) == 0 {
			return clone(in[0].t)
		}
		return one(in[0].t.Expand(target, false, false))
	}, nil
}
