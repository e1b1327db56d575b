package torch

import (
	"fmt"

	"github.com/sugarme/gotch/ts"

	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery/constfold"
)

// Sparse-delta linear layers: the chain `sptctl inject` writes for a weight with
// sparse trainable entries,
//
//	MatMul(x, W_eff) [→ Add(·, b)] or Gemm(x, W_eff, b),  W_eff = Add(W, ScatterND(…ScatterND(
//	    ConstantOfShape(dims of W), idx₁, v₁)…, idx_k, v_k))
//
// (W stored [in, out] as the exporter writes it, or [out, in] behind a
// Transpose(perm 1,0); k > 1 for the parts of a fused q/k/v weight; b an initializer
// or computed, e.g. inject's sparse-delta chain over one), runs as linear(x, W, b) plus
// the sparse-delta op (sparse.go): the forward values are the same, but no zero tensor
// of W's size is made, W + S is never formed and backward computes only the entries'
// gradients (W itself gets one only if it is trainable). Small frozen weights
// (sparseAsWeight) run as linear(x, W + S, b) instead, the op giving only the values'
// gradients.

// sparseChain is a matched chain: what the fused node reads and the nodes it replaces.
type sparseChain struct {
	x, w, b    string   // b "" if the MatMul's output is not followed by a bias Add
	idx, vals  []string // per part: the ScatterND indices (initializer) and updates
	transposed bool     // W stored [in, out] (MatMul reads it as is)
	computedB  bool     // b is computed (its shape checked at run time), not an initializer
	out        int64    // the output's size
	nodes      []*onnxpb.NodeProto
	last       *onnxpb.NodeProto // the bias Add, or the MatMul
}

// matchSparseLinear matches the chain at n, a MatMul or a Gemm (transA 0, alpha 1,
// beta 1: what the exporter writes for a 2-D linear layer). The helpers are
// findFusions'.
func matchSparseLinear(n *onnxpb.NodeProto, producer map[string]*onnxpb.NodeProto, consumers map[string][]*onnxpb.NodeProto,
	isOutput map[string]bool, initOf func(string) (string, *onnxpb.TensorProto),
	sole func(value, op string) *onnxpb.NodeProto) *sparseChain {
	in := n.GetInput()
	if len(n.GetOutput()) != 1 || len(in) < 2 {
		return nil
	}
	gemm := n.GetOpType() == "Gemm"
	c := &sparseChain{x: in[0], transposed: true, last: n}
	if gemm {
		if len(in) > 3 {
			return nil
		}
		for _, a := range n.GetAttribute() {
			switch a.GetName() {
			case "transA":
				if a.GetI() != 0 {
					return nil
				}
			case "transB":
				c.transposed = a.GetI() == 0
			case "alpha", "beta":
				if a.GetF() != 1 {
					return nil
				}
			}
		}
	} else if len(in) != 2 {
		return nil
	}
	only := func(v string) bool { return len(consumers[v]) == 1 && !isOutput[v] }
	wv := in[1]
	if p := producer[wv]; p != nil && p.GetOpType() == "Transpose" && len(p.GetInput()) == 1 && only(wv) {
		perm := []int64{}
		for _, a := range p.GetAttribute() {
			if a.GetName() == "perm" {
				perm = a.GetInts()
			}
		}
		if len(perm) != 2 || perm[0] != 1 || perm[1] != 0 {
			return nil
		}
		c.nodes = append(c.nodes, p)
		c.transposed = !c.transposed
		wv = p.GetInput()[0]
	}
	add := producer[wv]
	if add == nil || add.GetOpType() != "Add" || len(add.GetInput()) != 2 || !only(wv) {
		return nil
	}
	c.nodes = append(c.nodes, add)
	var wt *onnxpb.TensorProto
	s := ""
	for k, v := range add.GetInput() {
		if name, t := initOf(v); t != nil {
			c.w, wt, s = name, t, add.GetInput()[1-k]
			break
		}
	}
	if wt == nil || wt.GetDataType() != onnxio.Float || len(wt.GetDims()) != 2 {
		return nil
	}
	dims := wt.GetDims()
	seen := map[[2]int64]bool{}
	for {
		p := producer[s]
		if p == nil || !only(s) {
			return nil
		}
		if p.GetOpType() == "ConstantOfShape" {
			if !zeroFill(p) || len(p.GetInput()) != 1 {
				return nil
			}
			_, st := initOf(p.GetInput()[0])
			if st == nil {
				return nil
			}
			h, err := constfold.FromProto(st)
			if err != nil || h.IsFloat() || len(h.I) != 2 || h.I[0] != dims[0] || h.I[1] != dims[1] {
				return nil
			}
			c.nodes = append(c.nodes, p)
			break
		}
		if p.GetOpType() != "ScatterND" || len(p.GetInput()) != 3 {
			return nil
		}
		for _, a := range p.GetAttribute() {
			if a.GetName() == "reduction" && string(a.GetS()) != "none" {
				return nil
			}
		}
		idxName, it := initOf(p.GetInput()[1])
		if it == nil || it.GetDataType() != onnxio.Int64 || len(it.GetDims()) != 2 || it.GetDims()[1] != 2 {
			return nil
		}
		h, err := constfold.FromProto(it)
		if err != nil {
			return nil
		}
		for k := 0; k+1 < len(h.I); k += 2 {
			e := [2]int64{h.I[k], h.I[k+1]}
			if e[0] < 0 || e[0] >= dims[0] || e[1] < 0 || e[1] >= dims[1] || seen[e] {
				return nil // out of range (the op would fail) or written twice (order-dependent)
			}
			seen[e] = true
		}
		c.idx = append([]string{idxName}, c.idx...)
		c.vals = append([]string{p.GetInput()[2]}, c.vals...)
		c.nodes = append(c.nodes, p)
		s = p.GetInput()[0]
	}
	if len(c.idx) == 0 {
		return nil
	}
	// The bias: a 1-D float initializer of the output's size, Gemm's C or added to the
	// MatMul's output (nothing else reading that output).
	outDim := dims[1]
	if !c.transposed {
		outDim = dims[0]
	}
	c.out = outDim
	// A computed bias (a vector with sparse or partly trainable entries, as inject
	// writes them) has its shape checked at run time (linearBias).
	isBias := func(v string) (name string, ok, computed bool) {
		name, bt := initOf(v)
		if bt == nil {
			p := producer[name]
			return name, p != nil && p.GetOpType() != "Constant", true
		}
		return name, bt.GetDataType() == onnxio.Float && len(bt.GetDims()) == 1 && bt.GetDims()[0] == outDim, false
	}
	if gemm {
		if len(in) == 3 && in[2] != "" {
			name, ok, computed := isBias(in[2])
			if !ok {
				return nil
			}
			c.b, c.computedB = name, computed
		}
		return c
	}
	if a := sole(n.GetOutput()[0], "Add"); a != nil && len(a.GetInput()) == 2 && len(a.GetOutput()) == 1 {
		other := a.GetInput()[0]
		if other == n.GetOutput()[0] {
			other = a.GetInput()[1]
		}
		if name, ok, computed := isBias(other); ok {
			c.b, c.computedB = name, computed
			c.nodes = append(c.nodes, n)
			c.last = a
		}
	}
	return c
}

// zeroFill reports whether a ConstantOfShape node fills with float zero.
func zeroFill(n *onnxpb.NodeProto) bool {
	for _, a := range n.GetAttribute() {
		if a.GetName() == "value" {
			h, err := constfold.FromProto(a.GetT())
			return err == nil && h.IsFloat() && len(h.F) == 1 && h.F[0] == 0
		}
	}
	return false // ONNX's default fill is float zero, but inject always writes it
}

// The fused steps' op names, by the weight's stored layout.
const (
	sparseOpInOut = "SparseLinear(fused MatMul/Add/ScatterND, W [in, out])"
	sparseOpOutIn = "SparseLinear(fused MatMul/Gemm/Add/ScatterND, W [out, in])"
)

// fusion returns the fused step: inputs x, W, b ("" if none), then idx and values
// per part.
func (c *sparseChain) fusion() *fusion {
	in := []string{c.x, c.w, c.b}
	for k := range c.idx {
		in = append(in, c.idx[k], c.vals[k])
	}
	op := sparseOpOutIn
	if c.transposed {
		op = sparseOpInOut
	}
	return &fusion{at: c.last, mk: opSparseLinear(c.transposed, c.computedB, c.out),
		node: &onnxpb.NodeProto{Name: c.last.Name, OpType: strp(op),
			Input: in, Output: []string{c.last.GetOutput()[0]}}}
}

// sparseAsWeight says whether a sparse-delta linear with a frozen weight [out, in]
// over rows rows runs as linear(x, W + S) (see opSparseLinear): always under bf16
// autocast, which casts a frozen W to bfloat16 at every call anyway (it caches only
// trainable leaves), so making W + S in bfloat16 instead costs nothing extra; in fp32
// for small weights only. A variable: tests run both ways.
var sparseAsWeight = func(out, in, rows int64, bf16 bool) bool { return bf16 || out*in <= 1<<18 && 2*out <= rows }

// opSparseLinear: y = linear(x, W, b) + S·x (see sparse.go), W stored [in, out]
// (transposed) or [out, in]. The index pairs (output, input) are made once, at
// compile time, from the ScatterND indices (in W's stored layout). computedB: b is a
// computed value (linearBias checks its shape at run time); out is the output's size.
func opSparseLinear(transposed, computedB bool, out int64) opFunc {
	return func(c *nodeCtx) (kernel, error) {
		var pairs []*constfold.Tensor
		for k := 3; k+1 < len(c.static); k += 2 {
			h := c.static[k].h
			if h == nil {
				return nil, fmt.Errorf("sparse indices %q are not a constant", c.n.GetInput()[k])
			}
			p := constfold.Ints64([]int64{int64(len(h.I) / 2), 2}, make([]int64, len(h.I)))
			for e := 0; e+1 < len(h.I); e += 2 {
				r, col := h.I[e], h.I[e+1]
				if transposed { // stored [in, out]
					r, col = col, r
				}
				p.I[e], p.I[e+1] = r, col
			}
			pairs = append(pairs, p)
		}
		return func(r *runCtx, in []value) ([]value, error) {
			x, err := r.T(in[0])
			if err != nil {
				return nil, err
			}
			w, err := r.T(in[1])
			if err != nil {
				return nil, err
			}
			b := new(ts.Tensor) // undefined: no bias
			if !in[2].none() {
				if b, err = r.T(in[2]); err != nil {
					return nil, err
				}
			}
			if transposed { // at::linear wants [out, in]: a transposed view, no copy
				wt, err := w.Transpose(0, 1, false)
				if err != nil {
					return nil, torchErr(err)
				}
				defer wt.Drop()
				w = wt
			}
			// At more than 2 dimensions at::linear returns a view of addmm's [rows, out]
			// result, and the sparse op, which adds into y in place, would then make
			// autograd wrap it in CopySlices (a clone and a copy of the output gradient
			// per call). So the rows are flattened here and the sum reshaped back (not
			// for a computed bias other than a vector of out entries: it broadcasts
			// over x's dimensions).
			var outShape []int64
			flat := x.Dim() > 2
			if flat && computedB {
				bs, err := sizeOf(b)
				flat = err == nil && len(bs) == 1 && bs[0] == out
			}
			if flat {
				xs, err := x.Size()
				if err != nil {
					return nil, torchErr(err)
				}
				x2, err := x.Reshape([]int64{-1, xs[len(xs)-1]}, false)
				if err != nil {
					return nil, torchErr(err)
				}
				defer x2.Drop()
				x = x2
				outShape = append(append([]int64{}, xs[:len(xs)-1]...), out)
			}
			var pts, vts []*ts.Tensor
			for k, p := range pairs {
				pt, err := r.T(value{h: p, static: true})
				if err != nil {
					return nil, err
				}
				vt, err := r.T(in[4+2*k])
				if err != nil {
					return nil, err
				}
				pts, vts = append(pts, pt), append(vts, vt)
			}
			// A frozen weight under bf16 autocast, or a small one in fp32 (sparseAsWeight:
			// at most 2^18 elements and out ≤ rows/2, the small ViT's layers at batch 64,
			// none of vit_b_16's), is multiplied as W + S, a copy of W's size made per
			// step (bfloat16 under autocast, in place of the cast autocast would make of
			// W: the linear casts nothing): the linear's backward then gives x
			// its whole gradient in one product, where the separate sparse share costs
			// a full-size ∂/∂x ([rows, in], at least twice W's size here) and its sum
			// with the linear's. The op then only gives the values their gradients.
			add := true
			if ws, err := w.Size(); err == nil && len(ws) == 2 && !w.MustRequiresGrad() {
				add = !sparseAsWeight(ws[0], ws[1], int64(x.Numel())/max(ws[1], 1), r.p.precision == engine.BF16)
			}
			xs := x
			if !add {
				weff, err := sparseWeight(w, pts, vts)
				if err != nil {
					return nil, torchErr(err)
				}
				defer weff.Drop()
				w = weff
				if xs, err = x.Detach(false); err != nil {
					return nil, torchErr(err)
				}
				defer xs.Drop()
			}
			var y *ts.Tensor
			if computedB {
				y, err = linearBias(x, w, b, out)
			} else {
				y, err = ts.Linear(x, w, b)
				err = torchErr(err)
			}
			if err != nil {
				return nil, err
			}
			defer y.Drop()
			sum, err := sparseDeltaAdd(y, xs, pts, vts, add)
			if err != nil || outShape == nil {
				return one(sum, err)
			}
			defer sum.Drop()
			return one(sum.Reshape(outShape, false))
		}, nil
	}
}
