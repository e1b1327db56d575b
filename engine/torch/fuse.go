package torch

import (
	"math"

	"github.com/sugarme/gotch/ts"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// Fusions: node chains that PyTorch's exporter writes for one PyTorch op run as that
// op, which is what the model computed in PyTorch (so gradients match it more closely)
// and is faster (one libtorch kernel forward and backward instead of several):
//
//   - GELU: Div(x, √2) → Erf → Add(·, 1) → Mul(x, ·) → Mul(·, 0.5)  ⇒  gelu(x)
//   - linear: MatMul(x, Wᵀ) → Add(b, ·)  ⇒  linear(x, W, b) (at::linear: addmm), where
//     Wᵀ is a 2-D float initializer (exported pre-transposed) or Transpose(W, perm 1,0)
//     of one (constant folding off) and b a 1-D float initializer.
//   - sparse-delta linear: MatMul over W + ScatterND(zeros, idx, v) [→ Add(b)], or
//     Gemm over it  ⇒
//     linear(x, W, b) + the sparse-delta op (fuse_sparse.go).
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
	producer := map[string]*onnxpb.NodeProto{}
	consumers := map[string][]*onnxpb.NodeProto{}
	for _, n := range g.GetNode() {
		for _, o := range n.GetOutput() {
			producer[o] = n
		}
		for _, in := range n.GetInput() {
			consumers[in] = append(consumers[in], n)
		}
	}
	isOutput := map[string]bool{}
	for _, o := range g.GetOutput() {
		isOutput[o.GetName()] = true
	}
	inits := map[string]*onnxpb.TensorProto{}
	for _, t := range g.GetInitializer() {
		inits[t.GetName()] = t
	}
	// scalar returns the value of a one-element float constant (Constant node or
	// initializer).
	scalar := func(name string) (float64, bool) {
		var t *onnxpb.TensorProto
		if p := producer[name]; p != nil && p.GetOpType() == "Constant" {
			for _, a := range p.GetAttribute() {
				if a.GetName() == "value" {
					t = a.GetT()
				}
			}
		} else {
			t = inits[name]
		}
		if t == nil || !isFloatType(t.GetDataType()) {
			return 0, false
		}
		h, err := hostFromProto(t)
		if err != nil || len(h.f) != 1 {
			return 0, false
		}
		return h.f[0], true
	}
	// sole returns the only consumer of value if it has op type op.
	sole := func(value, op string) *onnxpb.NodeProto {
		cs := consumers[value]
		if len(cs) != 1 || isOutput[value] || cs[0].GetOpType() != op || cs[0].GetDomain() != "" && cs[0].GetDomain() != "ai.onnx" {
			return nil
		}
		return cs[0]
	}
	out0 := func(n *onnxpb.NodeProto) string {
		if len(n.GetOutput()) != 1 {
			return ""
		}
		return n.GetOutput()[0]
	}
	// other returns the input of a two-input node that is not v.
	other := func(n *onnxpb.NodeProto, v string) (string, bool) {
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
	// init follows Identity aliases (the exporter's de-duplicated tensors) to an
	// initializer.
	initOf := func(name string) (string, *onnxpb.TensorProto) {
		for k := 0; k < 16; k++ {
			if t := inits[name]; t != nil {
				return name, t
			}
			p := producer[name]
			if p == nil || p.GetOpType() != "Identity" || len(p.GetInput()) != 1 {
				return name, nil
			}
			name = p.GetInput()[0]
		}
		return name, nil
	}
	near := func(v, want float64) bool { return math.Abs(v-want) <= 1e-6*math.Abs(want) }

	fused := map[*onnxpb.NodeProto]*fusion{}
	skip := map[*onnxpb.NodeProto]bool{}
	for _, n := range g.GetNode() {
		if skip[n] || n.GetDomain() != "" && n.GetDomain() != "ai.onnx" {
			continue
		}
		switch n.GetOpType() {
		case "Div": // GELU
			in := n.GetInput()
			if len(in) != 2 || out0(n) == "" {
				continue
			}
			if v, ok := scalar(in[1]); !ok || !near(v, math.Sqrt2) {
				continue
			}
			x := in[0]
			erf := sole(out0(n), "Erf")
			if erf == nil || out0(erf) == "" {
				continue
			}
			add := sole(out0(erf), "Add")
			if add == nil || out0(add) == "" {
				continue
			}
			if c, ok := other(add, out0(erf)); !ok {
				continue
			} else if v, ok := scalar(c); !ok || !near(v, 1) {
				continue
			}
			mul := sole(out0(add), "Mul")
			if mul == nil || out0(mul) == "" {
				continue
			}
			if c, ok := other(mul, out0(add)); !ok || c != x {
				continue
			}
			half := sole(out0(mul), "Mul")
			if half == nil || out0(half) == "" {
				continue
			}
			if c, ok := other(half, out0(mul)); !ok {
				continue
			} else if v, ok := scalar(c); !ok || !near(v, 0.5) {
				continue
			}
			for _, k := range []*onnxpb.NodeProto{n, erf, add, mul} {
				skip[k] = true
			}
			fused[half] = &fusion{at: half, mk: opGeluFused,
				node: &onnxpb.NodeProto{Name: half.Name, OpType: strp("Gelu(fused Div/Erf/Add/Mul/Mul)"),
					Input: []string{x}, Output: []string{out0(half)}}}
		case "Gemm": // sparse-delta linear
			if sc := matchSparseLinear(n, producer, consumers, isOutput, initOf, sole); sc != nil {
				for _, k := range sc.nodes {
					skip[k] = true
				}
				fused[sc.last] = sc.fusion()
			}
		case "MatMul": // linear
			if sc := matchSparseLinear(n, producer, consumers, isOutput, initOf, sole); sc != nil {
				for _, k := range sc.nodes {
					skip[k] = true
				}
				fused[sc.last] = sc.fusion()
				continue
			}
			in := n.GetInput()
			if len(in) != 2 || out0(n) == "" {
				continue
			}
			w, transposed := in[1], true
			var tr *onnxpb.NodeProto
			if _, t := initOf(w); t == nil {
				p := producer[w]
				if p == nil || p.GetOpType() != "Transpose" || len(p.GetInput()) != 1 || len(consumers[w]) != 1 || isOutput[w] {
					continue
				}
				perm := []int64{}
				for _, a := range p.GetAttribute() {
					if a.GetName() == "perm" {
						perm = a.GetInts()
					}
				}
				if len(perm) != 2 || perm[0] != 1 || perm[1] != 0 {
					continue
				}
				tr, w, transposed = p, p.GetInput()[0], false
			}
			w, wt := initOf(w)
			if wt == nil || wt.GetDataType() != onnxio.Float || len(wt.GetDims()) != 2 {
				continue
			}
			add := sole(out0(n), "Add")
			if add == nil || out0(add) == "" {
				continue
			}
			b, ok := other(add, out0(n))
			if !ok {
				continue
			}
			b, bt := initOf(b)
			outDim := wt.GetDims()[1]
			if !transposed {
				outDim = wt.GetDims()[0]
			}
			if bt == nil || bt.GetDataType() != onnxio.Float || len(bt.GetDims()) != 1 || bt.GetDims()[0] != outDim {
				continue
			}
			skip[n] = true
			if tr != nil {
				skip[tr] = true
			}
			fused[add] = &fusion{at: add, mk: opLinearFused(transposed),
				node: &onnxpb.NodeProto{Name: add.Name, OpType: strp("Linear(fused MatMul/Add)"),
					Input: []string{in[0], w, b}, Output: []string{out0(add)}}}
		}
	}
	return fused, skip
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

// opLinearFused: y = x W + b with W stored [in, out] (transposed: what MatMul reads),
// or y = x Wᵀ + b with W stored [out, in] (PyTorch's layout, behind a Transpose).
func opLinearFused(transposed bool) opFunc {
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
			return one(ts.Linear(x, w, b))
		}, nil
	}
}
