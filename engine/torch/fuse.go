package torch

import (
	"math"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
	"github.com/sptctl/sptctl/surgery/constfold"
)

// Fusions: node chains that PyTorch's exporter writes for one PyTorch op run as that
// op, which is what the model computed in PyTorch (so gradients match it more closely)
// and is faster (one libtorch kernel forward and backward instead of several):
//
//   - GELU: Div(x, √2) → Erf → Add(·, 1) → Mul(x, ·) → Mul(·, 0.5)  ⇒  gelu(x)
//   - linear: MatMul(x, Wᵀ) → Add(b, ·)  ⇒  linear(x, W, b) (at::linear: addmm), where
//     Wᵀ is a 2-D float initializer (exported pre-transposed) or Transpose(W, perm 1,0)
//     of one (constant folding off) and b a 1-D float initializer or a computed value
//     (a bias with trainable entries; its shape is checked at run time, see linearBias).
//   - sparse-delta linear: MatMul over W + ScatterND(zeros, idx, v) [→ Add(b)], or
//     Gemm over it  ⇒
//     linear(x, W, b) + the sparse-delta op (fuse_sparse.go).
//   - under bf16 only: Softmax(last axis) → MatMul  ⇒  one op that keeps the scores
//     instead of the probabilities (attn.go).
//   - the Slices of one tensor (a chunk)  ⇒  split, when they tile an axis at run time
//     (fuse_split.go).
//
// Only chains whose intermediate values nothing else reads (and no graph output is)
// are fused. The fused step takes the place of the chain's last node and is named
// after it.

type fusion struct {
	at   *onnxpb.NodeProto // the chain's last node
	node *onnxpb.NodeProto // the synthetic node (name, inputs, outputs)
	mk   opFunc
}

// findFusions returns the fused steps by the node they replace and the nodes to skip.
func findFusions(g *onnxpb.GraphProto) (map[*onnxpb.NodeProto]*fusion, map[*onnxpb.NodeProto]bool) {
	ix := newFusionIndex(g)
	fused := map[*onnxpb.NodeProto]*fusion{}
	skip := map[*onnxpb.NodeProto]bool{}
	take := func(f *fusion, chain []*onnxpb.NodeProto) {
		for _, k := range chain {
			skip[k] = true
		}
		fused[f.at] = f
	}
	for _, n := range g.GetNode() {
		if skip[n] || n.GetDomain() != "" && n.GetDomain() != "ai.onnx" {
			continue
		}
		switch n.GetOpType() {
		case "Div":
			if f, chain := ix.gelu(n); f != nil {
				take(f, chain)
			}
		case "Gemm", "MatMul":
			if sc := matchSparseLinear(n, ix.producer, ix.consumers, ix.isOutput, ix.initOf, ix.sole); sc != nil {
				take(sc.fusion(), sc.nodes)
			} else if f, chain := ix.linear(n); f != nil {
				take(f, chain)
			}
		}
	}
	return fused, skip
}

// fusionIndex is what the fusion matchers read of a graph.
type fusionIndex struct {
	producer  map[string]*onnxpb.NodeProto
	consumers map[string][]*onnxpb.NodeProto
	isOutput  map[string]bool
	inits     map[string]*onnxpb.TensorProto
}

func newFusionIndex(g *onnxpb.GraphProto) *fusionIndex {
	ix := &fusionIndex{producer: map[string]*onnxpb.NodeProto{}, consumers: map[string][]*onnxpb.NodeProto{},
		isOutput: map[string]bool{}, inits: map[string]*onnxpb.TensorProto{}}
	for _, n := range g.GetNode() {
		for _, o := range n.GetOutput() {
			ix.producer[o] = n
		}
		for _, in := range n.GetInput() {
			ix.consumers[in] = append(ix.consumers[in], n)
		}
	}
	for _, o := range g.GetOutput() {
		ix.isOutput[o.GetName()] = true
	}
	for _, t := range g.GetInitializer() {
		ix.inits[t.GetName()] = t
	}
	return ix
}

// scalar returns the value of a one-element float constant (Constant node or
// initializer).
func (ix *fusionIndex) scalar(name string) (float64, bool) {
	var t *onnxpb.TensorProto
	if p := ix.producer[name]; p != nil && p.GetOpType() == "Constant" {
		if a := surgery.Attr(p, "value"); a != nil {
			t = a.GetT()
		}
	} else {
		t = ix.inits[name]
	}
	if t == nil || !constfold.IsFloatType(t.GetDataType()) {
		return 0, false
	}
	h, err := constfold.FromProto(t)
	if err != nil || len(h.F) != 1 {
		return 0, false
	}
	return h.F[0], true
}

// sole returns the only consumer of value if it has op type op.
func (ix *fusionIndex) sole(value, op string) *onnxpb.NodeProto {
	cs := ix.consumers[value]
	if len(cs) != 1 || ix.isOutput[value] || cs[0].GetOpType() != op || cs[0].GetDomain() != "" && cs[0].GetDomain() != "ai.onnx" {
		return nil
	}
	return cs[0]
}

// initOf follows Identity aliases (the exporter's de-duplicated tensors) to an
// initializer.
func (ix *fusionIndex) initOf(name string) (string, *onnxpb.TensorProto) {
	for k := 0; k < 16; k++ {
		if t := ix.inits[name]; t != nil {
			return name, t
		}
		p := ix.producer[name]
		if p == nil || p.GetOpType() != "Identity" || len(p.GetInput()) != 1 {
			return name, nil
		}
		name = p.GetInput()[0]
	}
	return name, nil
}

// scalarNear reports whether value is a scalar constant within 1e-6 (relative) of want.
func (ix *fusionIndex) scalarNear(value string, want float64) bool {
	v, ok := ix.scalar(value)
	return ok && math.Abs(v-want) <= 1e-6*math.Abs(want)
}

func out0(n *onnxpb.NodeProto) string {
	if len(n.GetOutput()) != 1 {
		return ""
	}
	return n.GetOutput()[0]
}

// other returns the input of a two-input node that is not v.
func other(n *onnxpb.NodeProto, v string) (string, bool) {
	in := n.GetInput()
	if len(in) != 2 {
		return "", false
	}
	switch v {
	case in[0]:
		return in[1], true
	case in[1]:
		return in[0], true
	}
	return "", false
}

// gelu matches Div(x, √2) → Erf → Add(·, 1) → Mul(x, ·) → Mul(·, 0.5) from its Div.
func (ix *fusionIndex) gelu(n *onnxpb.NodeProto) (*fusion, []*onnxpb.NodeProto) {
	in := n.GetInput()
	if len(in) != 2 || out0(n) == "" || !ix.scalarNear(in[1], math.Sqrt2) {
		return nil, nil
	}
	x := in[0]
	erf := ix.sole(out0(n), "Erf")
	if erf == nil || out0(erf) == "" {
		return nil, nil
	}
	add := ix.sole(out0(erf), "Add")
	if add == nil || out0(add) == "" {
		return nil, nil
	}
	if c, ok := other(add, out0(erf)); !ok || !ix.scalarNear(c, 1) {
		return nil, nil
	}
	mul := ix.sole(out0(add), "Mul")
	if mul == nil || out0(mul) == "" {
		return nil, nil
	}
	if c, ok := other(mul, out0(add)); !ok || c != x {
		return nil, nil
	}
	half := ix.sole(out0(mul), "Mul")
	if half == nil || out0(half) == "" {
		return nil, nil
	}
	if c, ok := other(half, out0(mul)); !ok || !ix.scalarNear(c, 0.5) {
		return nil, nil
	}
	return &fusion{at: half, mk: opGeluFused,
		node: &onnxpb.NodeProto{Name: half.Name, OpType: strp("Gelu(fused Div/Erf/Add/Mul/Mul)"),
			Input: []string{x}, Output: []string{out0(half)}}}, []*onnxpb.NodeProto{n, erf, add, mul}
}

// linear matches MatMul(x, Wᵀ or Transpose(W)) → Add(b) from its MatMul.
func (ix *fusionIndex) linear(n *onnxpb.NodeProto) (*fusion, []*onnxpb.NodeProto) {
	in := n.GetInput()
	if n.GetOpType() != "MatMul" || len(in) != 2 || out0(n) == "" {
		return nil, nil
	}
	w, transposed := in[1], true
	var tr *onnxpb.NodeProto
	if _, t := ix.initOf(w); t == nil {
		p := ix.producer[w]
		if p == nil || p.GetOpType() != "Transpose" || len(p.GetInput()) != 1 || len(ix.consumers[w]) != 1 || ix.isOutput[w] {
			return nil, nil
		}
		if perm := surgery.AttrInts(p, "perm"); len(perm) != 2 || perm[0] != 1 || perm[1] != 0 {
			return nil, nil
		}
		tr, w, transposed = p, p.GetInput()[0], false
	}
	w, wt := ix.initOf(w)
	if wt == nil || wt.GetDataType() != onnxio.Float || len(wt.GetDims()) != 2 {
		return nil, nil
	}
	add := ix.sole(out0(n), "Add")
	if add == nil || out0(add) == "" {
		return nil, nil
	}
	b, ok := other(add, out0(n))
	if !ok {
		return nil, nil
	}
	b, bt := ix.initOf(b)
	outDim := wt.GetDims()[1]
	if !transposed {
		outDim = wt.GetDims()[0]
	}
	// A computed bias (a vector with sparse or partly trainable entries, as inject
	// writes them) is checked at run time; an initializer here.
	computed := bt == nil && !ix.isConst(b)
	if !computed && (bt == nil || bt.GetDataType() != onnxio.Float || len(bt.GetDims()) != 1 || bt.GetDims()[0] != outDim) {
		return nil, nil
	}
	chain := []*onnxpb.NodeProto{n}
	if tr != nil {
		chain = append(chain, tr)
	}
	var computedOut int64
	if computed {
		computedOut = outDim
	}
	return &fusion{at: add, mk: opLinearFused(transposed, computedOut),
		node: &onnxpb.NodeProto{Name: add.Name, OpType: strp("Linear(fused MatMul/Add)"),
			Input: []string{in[0], w, b}, Output: []string{out0(add)}}}, chain
}

func strp(s string) *string { return &s }

func opGeluFused(c *nodeCtx) (kernel, error) {
	return func(r *runCtx, in []value) ([]value, error) {
		x, err := r.T(in[0])
		if err != nil {
			return nil, err
		}
		return one(x.Gelu("none", false))
	}, nil
}

// isConst reports whether value is a Constant node's output (a scalar or a shape
// operand, never a bias).
func (ix *fusionIndex) isConst(value string) bool {
	p := ix.producer[value]
	return p != nil && p.GetOpType() == "Constant"
}

// linearBias is linear(x, w, b) when b is a float vector of out entries; else (a
// computed value of another shape) linear(x, w) + b, what the unfused MatMul → Add
// computes.
func linearBias(x, w, b *ts.Tensor, out int64) (*ts.Tensor, error) {
	bs, err := sizeOf(b)
	if err != nil {
		return nil, err
	}
	if len(bs) == 1 && bs[0] == out && b.DType() == gotch.Float {
		y, err := ts.Linear(x, w, b)
		return y, torchErr(err)
	}
	y, err := ts.Linear(x, w, new(ts.Tensor))
	if err != nil {
		return nil, torchErr(err)
	}
	defer y.Drop()
	s, err := y.Add(b, false)
	return s, torchErr(err)
}

// opLinearFused: y = x W + b with W stored [in, out] (transposed: what MatMul reads),
// or y = x Wᵀ + b with W stored [out, in] (PyTorch's layout, behind a Transpose). With
// computedOut > 0 the bias is a computed value, checked at run time (linearBias): under
// autocast it is cast like an initializer bias and the output stays bfloat16, where
// MatMul → Add(float32 bias) would promote it (and what follows) to float32.
func opLinearFused(transposed bool, computedOut int64) opFunc {
	return func(c *nodeCtx) (kernel, error) {
		return func(r *runCtx, in []value) ([]value, error) {
			x, err := r.T(in[0])
			if err != nil {
				return nil, err
			}
			w, err := r.T(in[1])
			if err != nil {
				return nil, err
			}
			b, err := r.T(in[2])
			if err != nil {
				return nil, err
			}
			if transposed { // at::linear wants [out, in]: a transposed view, no copy
				wt, err := w.Transpose(0, 1, false)
				if err != nil {
					return nil, torchErr(err)
				}
				defer wt.Drop()
				w = wt
			}
			if computedOut > 0 {
				return one(linearBias(x, w, b, computedOut))
			}
			return one(ts.Linear(x, w, b))
		}, nil
	}
}
