package torch

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// The exported attention's q, k, v Slices of the packed projection run as one split:
// every such group of the fixture is fused, and the logits, loss and every gradient are
// the Slices' to the bit (split's backward concatenates what the Slices' backward
// writes into zeros and adds up).
func TestSplitSlicesSameAsSlices(t *testing.T) {
	m, _, _ := loadFixture(t, "tv_op17_dynamic")
	images, labels, n := randomBatch(m, 4, 5, rand.New(rand.NewPCG(9, 9)))
	var all []string
	onTorch(t, func() (err error) { all, err = allParams(m); return err })
	opt := engine.Options{Trainable: all}
	fused := stepOnce(t, m, opt, images, labels, n)
	noSplitFusion = true
	plain := stepOnce(t, m, opt, images, labels, n)
	noSplitFusion = false
	if fused.ops["SplitSlices"] == 0 || plain.ops["Slice"]-fused.ops["Slice"] < 2*fused.ops["SplitSlices"] {
		t.Errorf("fused: %d SplitSlices steps, Slice steps %d (unfused %d); want the q/k/v Slices fused",
			fused.ops["SplitSlices"], fused.ops["Slice"], plain.ops["Slice"])
	}
	if !slices.Equal(fused.res.Logits, plain.res.Logits) || fused.res.Loss != plain.res.Loss {
		t.Errorf("logits or loss differ (loss %.9g, unfused %.9g)", fused.res.Loss, plain.res.Loss)
	}
	for _, nm := range all {
		if !slices.Equal(fused.grads[nm], plain.grads[nm]) {
			t.Errorf("%s: gradient differs from the unfused run's", nm)
		}
	}
}

// tiling accepts slices that cover one axis exactly with step 1, in any order, and
// nothing else.
func TestTiling(t *testing.T) {
	xs := []int64{2, 6}
	type sl = sliceBounds
	col := func(first, step, count int64) sl {
		return sl{xs, []int64{0, first}, []int64{1, step}, []int64{2, count}}
	}
	for _, c := range []struct {
		name  string
		parts []sl
		axis  int
		sizes []int64
		order []int
	}{
		{"in order", []sl{col(0, 1, 2), col(2, 1, 2), col(4, 1, 2)}, 1, []int64{2, 2, 2}, []int{0, 1, 2}},
		{"shuffled, unequal", []sl{col(3, 1, 3), col(0, 1, 1), col(1, 1, 2)}, 1, []int64{1, 2, 3}, []int{1, 2, 0}},
		{"gap", []sl{col(0, 1, 2), col(3, 1, 3)}, -1, nil, nil},
		{"overlap", []sl{col(0, 1, 3), col(2, 1, 4)}, -1, nil, nil},
		{"short of the end", []sl{col(0, 1, 2), col(2, 1, 3)}, -1, nil, nil},
		{"step 2", []sl{col(0, 2, 3), col(1, 2, 3)}, -1, nil, nil},
		{"empty part", []sl{col(0, 1, 6), col(6, 1, 0)}, -1, nil, nil},
		{"two axes", []sl{col(0, 1, 3), {xs, []int64{1, 3}, []int64{1, 1}, []int64{1, 3}}}, -1, nil, nil},
		{"rows", []sl{{xs, []int64{1, 0}, []int64{1, 1}, []int64{1, 6}}, {xs, []int64{0, 0}, []int64{1, 1}, []int64{1, 6}}}, 0, []int64{1, 1}, []int{1, 0}},
		{"all whole", []sl{col(0, 1, 6), col(0, 1, 6)}, -1, nil, nil},
	} {
		axis, sizes, order := tiling(c.parts)
		if axis != c.axis || !slices.Equal(sizes, c.sizes) || !slices.Equal(order, c.order) {
			t.Errorf("%s: axis %d, sizes %v, order %v; want %d, %v, %v", c.name, axis, sizes, order, c.axis, c.sizes, c.order)
		}
	}
}

// A group of Slices runs as a split or, when they do not tile an axis, one by one, with
// the values of the Slices either way (inputs: libtorch tensors; constants: Go memory).
func TestSplitSlicesValues(t *testing.T) {
	cols := func(parts ...[2]int) []float32 { // x234's elements, the parts' columns side by side
		var out []float32
		for b := 0; b < 2; b++ {
			for r := 0; r < 3; r++ {
				for _, p := range parts {
					for c := p[0]; c < p[1]; c++ {
						out = append(out, float32(b*12+r*4+c))
					}
				}
			}
		}
		return out
	}
	slice := func(out string, s, e string) *onnxpb.NodeProto {
		return node("Slice", []string{"x", s, e, "ax"}, []string{out})
	}
	consts := map[string]arr{"ax": ia([]int64{1}, -1), "c0": ia([]int64{1}, 0), "c1": ia([]int64{1}, 1),
		"c2": ia([]int64{1}, 2), "c3": ia([]int64{1}, 3), "c4": ia([]int64{1}, 4)}
	cat := node("Concat", []string{"b", "a"}, []string{"y"}, attrI("axis", -1))
	for _, c := range []opCase{
		{name: "tiling, the later part first", nodes: []*onnxpb.NodeProto{slice("a", "c0", "c1"), slice("b", "c1", "c4"), cat},
			want: fa([]int64{2, 3, 4}, cols([2]int{1, 4}, [2]int{0, 1})...)},
		{name: "overlapping", nodes: []*onnxpb.NodeProto{slice("a", "c0", "c3"), slice("b", "c1", "c4"), cat},
			want: fa([]int64{2, 3, 6}, cols([2]int{1, 4}, [2]int{0, 3})...)},
		{name: "leaving a gap", nodes: []*onnxpb.NodeProto{slice("a", "c0", "c1"), slice("b", "c2", "c4"), cat},
			want: fa([]int64{2, 3, 3}, cols([2]int{2, 4}, [2]int{0, 1})...)},
		{name: "opset 9 attributes", opset: 9, nodes: []*onnxpb.NodeProto{
			node("Slice", []string{"x"}, []string{"a"}, attrIs("starts", 0), attrIs("ends", 2), attrIs("axes", 2)),
			node("Slice", []string{"x"}, []string{"b"}, attrIs("starts", 2), attrIs("ends", 4), attrIs("axes", 2)), cat},
			want: fa([]int64{2, 3, 4}, cols([2]int{2, 4}, [2]int{0, 2})...)},
	} {
		c.data = map[string]arr{"x": x234()}
		if c.consts == nil {
			c.consts = consts
		}
		for _, asInputs := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/inputs=%v", c.name, asInputs), func(t *testing.T) {
				onTorch(t, func() error {
					m := model(max(c.opset, 9), c.nodes, c.data, c.consts, asInputs)
					if c.opset == 0 {
						m = model(17, c.nodes, c.data, c.consts, asInputs)
					}
					p, err := Compile(m, engine.Options{})
					if err != nil {
						return err
					}
					defer p.Close()
					fusedSteps := 0
					for _, s := range p.steps {
						if s.op == "SplitSlices(fused Slice)" {
							fusedSteps++
						}
					}
					if asInputs && fusedSteps != 1 { // (constants fold at compile time)
						return fmt.Errorf("%d SplitSlices steps, want 1", fusedSteps)
					}
					got, err := runCase(c, asInputs)
					if err != nil {
						return err
					}
					return checkArr(got, c.want, 0)
				})
			})
		}
	}
}
