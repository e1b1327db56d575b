package torch

import (
	"slices"

	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// Slices that tile an axis: PyTorch's exporter writes a chunk (nn.MultiheadAttention's
// q, k, v = packed projection .chunk(3, -1)) as one Slice node per part. Run one by
// one, each Slice's backward makes a zero tensor of the whole input and copies its part's
// gradient into it, and autograd adds the parts' tensors up (vit_b_16: three
// [197, 8, 2304] zero fills and two additions per block and step, ~4x the time of
// split's backward, one concatenation). The Slices of one tensor run as one step that
// splits it (at::split_with_sizes) when, at run time, their bounds tile one axis with
// step 1 (the exporter computes them from shapes, so they are known only then), and
// as the Slices otherwise.

// noSplitFusion turns the fusion off (tests compare against the Slices).
var noSplitFusion = false

// findSplitFusions adds to fused and skip the groups of two or more Slice nodes that
// slice one value, each with one output that nothing reads before the group's last
// Slice (where the group runs).
func findSplitFusions(g *onnxpb.GraphProto, fused map[*onnxpb.NodeProto]*fusion, skip map[*onnxpb.NodeProto]bool) {
	if noSplitFusion {
		return
	}
	nodes := g.GetNode()
	pos := make(map[*onnxpb.NodeProto]int, len(nodes))
	for k, n := range nodes {
		pos[n] = k
	}
	ix := newFusionIndex(g)
	seen := map[string]bool{}
	for _, n := range nodes {
		if n.GetOpType() != "Slice" || len(n.GetInput()) == 0 {
			continue
		}
		x := n.GetInput()[0]
		if seen[x] {
			continue
		}
		seen[x] = true
		var group []*onnxpb.NodeProto // x's Slices (other readers, a Shape, do not matter)
		for _, c := range ix.consumers[x] {
			if c.GetOpType() == "Slice" && !slices.Contains(group, c) {
				group = append(group, c)
			}
		}
		if len(group) < 2 {
			continue
		}
		last := 0
		ok := true
		for _, s := range group {
			ok = ok && (s.GetDomain() == "" || s.GetDomain() == "ai.onnx") &&
				!skip[s] && fused[s] == nil && len(s.GetInput()) >= 1 && len(s.GetInput()) <= 5 &&
				s.GetInput()[0] == x && len(s.GetOutput()) == 1 && out0(s) != "" &&
				!slices.Contains(s.GetInput()[1:], x)
			last = max(last, pos[s])
		}
		for _, s := range group {
			for _, c := range ix.consumers[out0(s)] {
				ok = ok && pos[c] > last
			}
		}
		if !ok {
			continue
		}
		node := &onnxpb.NodeProto{Name: nodes[last].Name, OpType: strp("SplitSlices(fused Slice)"), Input: []string{x}}
		for _, s := range group {
			in := append(append([]string{}, s.GetInput()[1:]...), make([]string, 5-len(s.GetInput()))...)
			node.Input = append(node.Input, in...)
			node.Output = append(node.Output, out0(s))
			skip[s] = true
		}
		delete(skip, nodes[last])
		parts := slices.Clone(group)
		fused[nodes[last]] = &fusion{at: nodes[last], node: node,
			mk: func(c *nodeCtx) (kernel, error) { return opSplitSlices(c, parts) }}
	}
}

// opSplitSlices runs the Slices parts, whose inputs the fused node lists after the
// sliced value four per Slice (starts, ends, axes, steps; "" where absent).
func opSplitSlices(c *nodeCtx, parts []*onnxpb.NodeProto) (kernel, error) {
	args := make([]sliceArgs, len(parts))
	for k, s := range parts {
		args[k] = newSliceArgs(&nodeCtx{n: s, name: s.GetName(), opset: c.opset})
	}
	return func(r *runCtx, in []value) ([]value, error) {
		bs := make([]sliceBounds, len(parts))
		for k := range parts {
			b, err := args[k].bounds(r, append([]value{in[0]}, in[1+4*k:1+4*k+4]...))
			if err != nil {
				return nil, err
			}
			bs[k] = b
		}
		if in[0].t != nil {
			if axis, sizes, order := tiling(bs); axis >= 0 {
				pieces, err := in[0].t.SplitWithSizes(sizes, int64(axis))
				if err != nil {
					return nil, torchErr(err)
				}
				out := make([]value, len(parts))
				for j, k := range order {
					out[k] = value{t: pieces[j]}
				}
				return out, nil
			}
		}
		out := make([]value, len(parts))
		for k, b := range bs {
			v, err := applySlice(in[0], b)
			if err != nil {
				for _, o := range out[:k] {
					if o.t != nil {
						o.t.Drop()
					}
				}
				return nil, err
			}
			out[k] = v[0]
		}
		return out, nil
	}, nil
}

// tiling reports whether slices of one tensor cover one axis exactly with step 1 and
// leave every other axis whole: it returns that axis, the parts' sizes in order along
// it and the slices in that order; axis -1 if not.
func tiling(parts []sliceBounds) (axis int, sizes []int64, order []int) {
	axis = -1
	for _, b := range parts {
		for d := range b.xs {
			if b.first[d] == 0 && b.step[d] == 1 && b.count[d] == b.xs[d] {
				continue
			}
			if axis >= 0 && d != axis || b.step[d] != 1 || b.count[d] <= 0 {
				return -1, nil, nil
			}
			axis = d
		}
	}
	if axis < 0 {
		return -1, nil, nil // every slice whole: nothing to split
	}
	order = make([]int, len(parts))
	for k := range order {
		order[k] = k
	}
	slices.SortFunc(order, func(a, b int) int { return int(parts[a].first[axis] - parts[b].first[axis]) })
	next := int64(0)
	for _, k := range order {
		if parts[k].first[axis] != next {
			return -1, nil, nil
		}
		sizes = append(sizes, parts[k].count[axis])
		next += parts[k].count[axis]
	}
	if next != parts[0].xs[axis] {
		return -1, nil, nil
	}
	return axis, sizes, order
}
