package surgery

import (
	"fmt"
	"sort"

	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// Kind names a linear layer's role in a transformer block (or the head).
type Kind string

// The linear layers of a ViT block, in the order sptctl lists them, and the head.
const (
	Q    Kind = "q"
	K    Kind = "k"
	V    Kind = "v"
	Proj Kind = "proj"
	FC1  Kind = "fc1"
	FC2  Kind = "fc2"
	Head Kind = "head"
)

// BlockKinds returns the six linear layers of every block, in the order Block.Linears
// holds them.
func BlockKinds() [6]Kind { return [6]Kind{Q, K, V, Proj, FC1, FC2} }

// Layout says how a weight initializer is stored.
type Layout int

const (
	// InOut is [in, out]: y = x·W (MatMul, the layout PyTorch's exporter writes when it
	// folds the transpose of nn.Linear's weight).
	InOut Layout = iota
	// OutIn is [out, in]: y = x·Wᵀ (Gemm transB=1, or nn.Linear's own layout behind a
	// Transpose node when constant folding was off).
	OutIn
)

func (l Layout) String() string {
	if l == OutIn {
		return "[out,in]"
	}
	return "[in,out]"
}

// Linear is one logical linear layer y = W x + b found in the graph. For a fused q/k/v
// projection, q, k and v are three Linears sharing Node and Weight, each owning
// Out consecutive output units starting at Offset.
type Linear struct {
	Name  string // "blocks.3.fc1", "head"
	Block int    // -1 for the head
	Kind  Kind

	Node        *onnxpb.NodeProto // the MatMul or Gemm
	Input       string            // the activation it multiplies
	Weight      string            // the weight initializer
	WeightValue string            // the value Node (or Transpose) reads the weight as (an Identity alias, maybe)
	Transpose   *onnxpb.NodeProto // exporter's Transpose between Weight and Node, or nil
	Layout      Layout            // how Weight is stored
	Bias        string            // the bias initializer, or ""
	BiasValue   string            // the value the bias is read as
	BiasAdd     *onnxpb.NodeProto // the Add that applies the bias (nil for Gemm's C input)
	Output      string            // the value holding x·W + b (the whole fused output when Fused)

	In, Out  int // this layer's input and output sizes
	Fused    bool
	Part     int // 0, 1, 2 for q, k, v of a fused projection
	Offset   int // first of this layer's output units within the stored matrix
	TotalOut int // output units of the stored matrix (3·Out when fused)
}

// Params is the number of weights and biases of the (logical) layer.
func (l *Linear) Params() int {
	n := l.In * l.Out
	if l.Bias != "" {
		n += l.Out
	}
	return n
}

// Vector is a tunable vector of a block: a bias (or its q/k/v part) or a LayerNorm
// scale or shift, as a range of an initializer.
type Vector struct {
	Name   string // "blocks.3.fc1.bias", "blocks.3.norm1.scale"
	Block  int
	Init   string
	Offset int
	Size   int
}

// LayerNorm is a LayerNormalization node or its decomposed form.
type LayerNorm struct {
	Input, Output string
	Scale, Shift  string // initializers
	First         int    // index of its first node in the graph
	Last          int    // index of the node writing Output
}

// Block is one transformer block.
type Block struct {
	Index        int
	Linears      [6]*Linear // in BlockKinds order
	Norm1, Norm2 LayerNorm
}

// ViT is a vision transformer's structure as found in a graph.
type ViT struct {
	Input      string  // the image input
	Batch      int64   // fixed batch size, 0 if dynamic
	Channels   int64   // input channels
	Height     int64   // input height
	Width      int64   // input width
	Output     string  // the logits
	Dim        int     // hidden size
	PatchEmbed string  // patch-embedding convolution weight
	PatchBias  string  // its bias, or ""
	ClassToken string  // class token initializer, or ""
	PosEmbed   string  // position embedding initializer, or ""
	Blocks     []Block // in depth order
	FinalNorm  LayerNorm
	Head       *Linear
}

// Linears are the block linears in depth order, q, k, v, proj, fc1, fc2 in each block.
func (v *ViT) Linears() []*Linear {
	var ls []*Linear
	for _, b := range v.Blocks {
		ls = append(ls, b.Linears[:]...)
	}
	return ls
}

// Vectors are the tunable vectors of the blocks: each block's norm1 scale and shift,
// the biases of q, k, v and proj, norm2 scale and shift, the biases of fc1 and fc2.
func (v *ViT) Vectors() []Vector {
	var vs []Vector
	norm := func(b int, name string, ln LayerNorm) {
		vs = append(vs, Vector{Name: fmt.Sprintf("blocks.%d.%s.scale", b, name), Block: b, Init: ln.Scale, Size: v.Dim},
			Vector{Name: fmt.Sprintf("blocks.%d.%s.shift", b, name), Block: b, Init: ln.Shift, Size: v.Dim})
	}
	bias := func(l *Linear) {
		if l.Bias != "" {
			vs = append(vs, Vector{Name: l.Name + ".bias", Block: l.Block, Init: l.Bias, Offset: l.Offset, Size: l.Out})
		}
	}
	for _, b := range v.Blocks {
		norm(b.Index, "norm1", b.Norm1)
		for _, l := range b.Linears[:4] {
			bias(l)
		}
		norm(b.Index, "norm2", b.Norm2)
		bias(b.Linears[4])
		bias(b.Linears[5])
	}
	return vs
}

// FindViT finds the transformer's parts in g from the graph's structure: LayerNorms
// (fused or decomposed) split the graph into attention and MLP segments; the linear
// layers (MatMul or Gemm by a constant matrix, plus a bias Add) inside each segment are
// q, k, v and the attention output, or fc1 and fc2; the first linear after the last
// LayerNorm is the head.
func FindViT(g *Graph) (*ViT, error) {
	if err := g.CheckAcyclic(); err != nil {
		return nil, err
	}
	nodes := g.Nodes()
	index := make(map[*onnxpb.NodeProto]int, len(nodes))
	for i, n := range nodes {
		index[n] = i
	}
	norms := g.findLayerNorms(index)
	linears := g.findLinears()
	if len(norms) < 3 {
		return nil, fmt.Errorf("not a ViT: found %d LayerNorms, a transformer needs two per block and a final one", len(norms))
	}
	if len(norms)%2 != 1 {
		return nil, fmt.Errorf("not a ViT: found %d LayerNorms, expected two per block and a final one (an odd number)", len(norms))
	}
	// Place each linear in the segment after the last LayerNorm before it.
	segments := make([][]*Linear, len(norms))
	for _, l := range linears {
		at := index[l.Node]
		seg := -1
		for i, ln := range norms {
			if ln.Last < at {
				seg = i
			}
		}
		if seg >= 0 {
			segments[seg] = append(segments[seg], l)
		}
	}
	v := &ViT{Dim: 0}
	nb := len(norms) / 2
	for b := 0; b < nb; b++ {
		blk := Block{Index: b, Norm1: norms[2*b], Norm2: norms[2*b+1]}
		attn, mlp := segments[2*b], segments[2*b+1]
		if err := g.assignAttention(&blk, attn); err != nil {
			return nil, fmt.Errorf("not a ViT: block %d: %w", b, err)
		}
		if len(mlp) != 2 {
			return nil, fmt.Errorf("not a ViT: block %d: %d linear layers between its second LayerNorm and the next, want 2 (fc1, fc2)", b, len(mlp))
		}
		blk.Linears[4], blk.Linears[5] = mlp[0], mlp[1]
		for i, l := range blk.Linears {
			l.Block, l.Kind = b, BlockKinds()[i]
			l.Name = fmt.Sprintf("blocks.%d.%s", b, l.Kind)
		}
		v.Blocks = append(v.Blocks, blk)
	}
	v.FinalNorm = norms[len(norms)-1]
	if head := segments[len(norms)-1]; len(head) > 0 {
		v.Head = head[0]
		v.Head.Block, v.Head.Kind, v.Head.Name = -1, Head, "head"
	} else {
		return nil, fmt.Errorf("not a ViT: no classification head (a linear layer after the final LayerNorm)")
	}
	v.Dim = v.Blocks[0].Linears[0].In
	for _, b := range v.Blocks {
		for _, l := range b.Linears {
			want := v.Dim
			if l.Kind == FC2 {
				want = b.Linears[4].Out
			}
			if l.In != want {
				return nil, fmt.Errorf("not a ViT: %s has %d inputs, want %d", l.Name, l.In, want)
			}
		}
	}
	if err := g.findEmbeddings(v); err != nil {
		return nil, err
	}
	return v, nil
}

// assignAttention labels the linears of an attention segment: one fused q/k/v
// projection or three separate ones, then the attention output.
func (g *Graph) assignAttention(blk *Block, ls []*Linear) error {
	switch len(ls) {
	case 2: // fused q/k/v + proj
		f := ls[0]
		if f.TotalOut%3 != 0 || f.TotalOut/3 != f.In {
			return fmt.Errorf("attention projection %s has %d outputs for %d inputs; want a fused q/k/v (3×%d) projection", f.Node.GetName(), f.TotalOut, f.In, f.In)
		}
		d := f.TotalOut / 3
		for p := 0; p < 3; p++ {
			part := *f
			part.Fused, part.Part, part.Offset, part.Out = true, p, p*d, d
			blk.Linears[p] = &part
		}
		blk.Linears[3] = ls[1]
	case 4:
		q, k, v := g.labelQKV(ls[:3])
		blk.Linears[0], blk.Linears[1], blk.Linears[2], blk.Linears[3] = q, k, v, ls[3]
	default:
		return fmt.Errorf("%d linear layers between its first and second LayerNorm, want q, k, v and proj (4, or 2 with q/k/v fused)", len(ls))
	}
	return nil
}

// labelQKV tells q, k and v apart by where their outputs go: q and k meet in the
// attention-score MatMul (q as its first input, k as its second), v goes to the other.
// Falls back to file order (the order every known exporter writes) if that fails.
func (g *Graph) labelQKV(ls []*Linear) (q, k, v *Linear) {
	type hit struct {
		node *onnxpb.NodeProto
		arg  int
	}
	hits := make([]hit, 3)
	for i, l := range ls {
		hits[i] = g.firstMatMul(l.Output)
	}
	for i := 0; i < 3; i++ {
		for j := 0; j < 3; j++ {
			if i != j && hits[i].node != nil && hits[i].node == hits[j].node && hits[i].arg == 0 && hits[j].arg == 1 {
				return ls[i], ls[j], ls[3-i-j]
			}
		}
	}
	return ls[0], ls[1], ls[2]
}

// firstMatMul follows value forward (breadth first, bounded) to the first MatMul
// that multiplies two run-time values, and says which input it arrived at.
func (g *Graph) firstMatMul(value string) (h struct {
	node *onnxpb.NodeProto
	arg  int
}) {
	seen := map[string]bool{value: true}
	queue := []string{value}
	for steps := 0; len(queue) > 0 && steps < 200; steps++ {
		v := queue[0]
		queue = queue[1:]
		for _, c := range g.Consumers(v) {
			if c.GetOpType() == "MatMul" && g.Const(c.Input[1]) == nil && g.Const(c.Input[0]) == nil {
				for i, in := range c.Input {
					if in == v {
						h.node, h.arg = c, i
						return h
					}
				}
			}
			if c.GetOpType() == "Shape" {
				continue
			}
			for _, o := range c.Output {
				if !seen[o] {
					seen[o] = true
					queue = append(queue, o)
				}
			}
		}
	}
	return h
}

// findLinears finds every MatMul or Gemm by a constant 2-D matrix, in file order.
func (g *Graph) findLinears() []*Linear {
	var out []*Linear
	for _, n := range g.Nodes() {
		op := n.GetOpType()
		if (op != "MatMul" && op != "Gemm") || len(n.Input) < 2 {
			continue
		}
		if op == "Gemm" && (AttrInt(n, "transA", 0) != 0 || AttrFloat(n, "alpha", 1) != 1 || AttrFloat(n, "beta", 1) != 1) {
			continue
		}
		l := &Linear{Node: n, Input: n.Input[0], WeightValue: n.Input[1], Block: -1}
		wv := n.Input[1]
		transposed := op == "Gemm" && AttrInt(n, "transB", 0) == 1
		if p := g.Producer(g.Source(wv)); p != nil && p.GetOpType() == "Transpose" && g.Const(p.Input[0]) != nil {
			perm := AttrInts(p, "perm")
			if len(perm) != 0 && !(len(perm) == 2 && perm[0] == 1 && perm[1] == 0) {
				continue
			}
			l.Transpose = p
			l.WeightValue = p.Input[0]
			transposed = !transposed
		}
		w := g.Const(l.WeightValue)
		if w == nil || len(w.Dims) != 2 || w.GetDataType() != int32(onnxpb.TensorProto_FLOAT) || g.Initializer(g.Source(l.WeightValue)) == nil {
			continue
		}
		l.Weight = g.Source(l.WeightValue)
		if transposed {
			l.Layout, l.Out, l.In = OutIn, int(w.Dims[0]), int(w.Dims[1])
		} else {
			l.Layout, l.In, l.Out = InOut, int(w.Dims[0]), int(w.Dims[1])
		}
		l.TotalOut = l.Out
		l.Output = n.Output[0]
		if op == "Gemm" && len(n.Input) > 2 && n.Input[2] != "" {
			if b := g.Const(n.Input[2]); b != nil && g.Initializer(g.Source(n.Input[2])) != nil {
				l.Bias, l.BiasValue = g.Source(n.Input[2]), n.Input[2]
			}
		} else if cs := g.Consumers(n.Output[0]); len(cs) == 1 && cs[0].GetOpType() == "Add" {
			add := cs[0]
			other := add.Input[0]
			if other == n.Output[0] {
				other = add.Input[1]
			}
			if b := g.Const(other); b != nil && len(b.Dims) == 1 && int(b.Dims[0]) == l.Out && g.Initializer(g.Source(other)) != nil {
				l.Bias, l.BiasValue, l.BiasAdd, l.Output = g.Source(other), other, add, add.Output[0]
			}
		}
		out = append(out, l)
	}
	return out
}

// findLayerNorms finds LayerNormalization nodes and the decomposed form
// Add(Mul(Div(Sub(x, ReduceMean(x)), …), scale), shift), sorted by position.
func (g *Graph) findLayerNorms(index map[*onnxpb.NodeProto]int) []LayerNorm {
	var out []LayerNorm
	isInit := func(v string) bool { return g.Initializer(g.Source(v)) != nil }
	for i, n := range g.Nodes() {
		switch n.GetOpType() {
		case "LayerNormalization":
			if len(n.Input) < 3 || !isInit(n.Input[1]) || !isInit(n.Input[2]) {
				continue
			}
			out = append(out, LayerNorm{Input: n.Input[0], Output: n.Output[0], Scale: g.Source(n.Input[1]), Shift: g.Source(n.Input[2]), First: i, Last: i})
		case "ReduceMean":
			x := n.Input[0]
			var sub *onnxpb.NodeProto
			for _, c := range g.Consumers(n.Output[0]) {
				if c.GetOpType() == "Sub" && c.Input[0] == x && c.Input[1] == n.Output[0] {
					sub = c
				}
			}
			if sub == nil {
				continue
			}
			div := g.soleConsumer(sub.Output[0], "Div", func(c *onnxpb.NodeProto) bool { return c.Input[0] == sub.Output[0] })
			if div == nil {
				continue
			}
			mul := g.soleConsumer(div.Output[0], "Mul", nil)
			if mul == nil {
				continue
			}
			scale := otherInput(mul, div.Output[0])
			add := g.soleConsumer(mul.Output[0], "Add", nil)
			if add == nil {
				continue
			}
			shift := otherInput(add, mul.Output[0])
			if !isInit(scale) || !isInit(shift) {
				continue
			}
			out = append(out, LayerNorm{Input: x, Output: add.Output[0], Scale: g.Source(scale), Shift: g.Source(shift), First: i, Last: index[add]})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Last < out[j].Last })
	return out
}

// soleConsumer returns the consumer of value with op type op (and passing ok, if
// given), if there is exactly one.
func (g *Graph) soleConsumer(value, op string, ok func(*onnxpb.NodeProto) bool) *onnxpb.NodeProto {
	var found *onnxpb.NodeProto
	for _, c := range g.Consumers(value) {
		if c.GetOpType() == op && (ok == nil || ok(c)) {
			if found != nil {
				return nil
			}
			found = c
		}
	}
	return found
}

func otherInput(n *onnxpb.NodeProto, v string) string {
	if len(n.Input) != 2 {
		return ""
	}
	if n.Input[0] == v {
		return n.Input[1]
	}
	return n.Input[0]
}

// findEmbeddings finds the image input, the patch-embedding Conv, the class token
// (a [1,1,D] constant that is expanded or concatenated) and the position embedding
// (a [1,T,D] constant that is added).
func (g *Graph) findEmbeddings(v *ViT) error {
	gp := g.Proto()
	in, err := ImageInput(g)
	if err != nil {
		return err
	}
	v.Input, v.Batch, v.Channels, v.Height, v.Width = in.Name, in.Batch, in.Channels, in.Height, in.Width
	if outs := gp.GetOutput(); len(outs) > 0 {
		v.Output = outs[0].GetName()
	}
	for _, n := range g.Nodes() {
		switch n.GetOpType() {
		case "Conv":
			if v.PatchEmbed == "" && len(n.Input) >= 2 && g.Initializer(g.Source(n.Input[1])) != nil {
				v.PatchEmbed = g.Source(n.Input[1])
				if len(n.Input) > 2 && n.Input[2] != "" {
					v.PatchBias = g.Source(n.Input[2])
				}
			}
		case "Expand", "Concat", "Tile":
			for _, in := range n.Input {
				if t := g.Initializer(g.Source(in)); t != nil && v.ClassToken == "" && len(t.Dims) == 3 && t.Dims[0] == 1 && t.Dims[1] == 1 && int(t.Dims[2]) == v.Dim {
					v.ClassToken = t.GetName()
				}
			}
		case "Add":
			for _, in := range n.Input {
				if t := g.Initializer(g.Source(in)); t != nil && v.PosEmbed == "" && len(t.Dims) == 3 && t.Dims[0] == 1 && t.Dims[1] > 1 && int(t.Dims[2]) == v.Dim {
					v.PosEmbed = t.GetName()
				}
			}
		}
	}
	if v.PatchEmbed == "" {
		return fmt.Errorf("not a ViT: no patch-embedding convolution")
	}
	return nil
}

// Image is a graph's image input.
type Image struct {
	Name                    string
	Batch                   int64 // fixed batch size, 0 if dynamic
	Channels, Height, Width int64
}

// ImageInput finds the graph's image input: its first input that is not an
// initializer, which must be [N, C, H, W] with fixed C, H and W.
func ImageInput(g *Graph) (Image, error) {
	for _, in := range g.Proto().GetInput() {
		if g.Initializer(in.GetName()) != nil {
			continue
		}
		shape := in.GetType().GetTensorType().GetShape().GetDim()
		if len(shape) != 4 {
			return Image{}, fmt.Errorf("not a ViT: input %q has %d dimensions, want an image batch [N, C, H, W]", in.GetName(), len(shape))
		}
		im := Image{Name: in.GetName(), Batch: shape[0].GetDimValue(), Channels: shape[1].GetDimValue(), Height: shape[2].GetDimValue(), Width: shape[3].GetDimValue()}
		if im.Channels <= 0 || im.Height <= 0 || im.Width <= 0 {
			return Image{}, fmt.Errorf("not a ViT: input %q needs fixed channel, height and width dimensions", in.GetName())
		}
		return im, nil
	}
	return Image{}, fmt.Errorf("not a ViT: the graph has no image input")
}

// Classes is the size of the last dimension of the graph's first output (the
// classifier's logits), or 0 if the graph does not say.
func Classes(g *Graph) int {
	outs := g.Proto().GetOutput()
	if len(outs) == 0 {
		return 0
	}
	dims := outs[0].GetType().GetTensorType().GetShape().GetDim()
	if len(dims) == 0 {
		return 0
	}
	return int(dims[len(dims)-1].GetDimValue())
}
