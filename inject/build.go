package inject

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

// slot is one input of one node: where a value is read.
type slot struct {
	node *onnxpb.NodeProto
	idx  int
}

func (s slot) value() string { return s.node.Input[s.idx] }

// Builder rewrites a model's graph for tuners: it knows where every block matrix and
// vector is read (its site), makes initializers and nodes under Prefix, records what
// each tuner made, and sums the branches tuners add to a layer's output.
type Builder struct {
	g     *surgery.Graph
	v     *surgery.ViT
	p     *Plan
	opt   ApplyOptions
	opset int64

	units   map[string]*unit // by name
	all     []unit
	layers  []*LayerPlan
	vectors map[string]*VectorPlan

	weightSlot map[string]slot // matrix unit name → where its layer reads the weight
	vecSlot    map[string]slot // vector unit name → where it is read

	trainable map[string]bool
	order     []string
	records   []Injected
	dropouts  map[string]string // branch input → its Dropout output
	consts    map[string]string

	readers  map[string][]*onnxpb.NodeProto // layer output → its readers before any branch
	outputs  []string                       // layer outputs with branches, in order
	branches map[string][]string            // layer output → the branches added to it
	later    []func() error                 // rewrites that need the final weights (see Later)
	state    map[Kind]any                   // per-tuner state during one rewrite
}

func newBuilder(g *surgery.Graph, v *surgery.ViT, p *Plan, opt ApplyOptions, opset int64) *Builder {
	return &Builder{g: g, v: v, p: p, opt: opt, opset: opset, trainable: map[string]bool{}, dropouts: map[string]string{},
		consts: map[string]string{}, readers: map[string][]*onnxpb.NodeProto{}, branches: map[string][]string{}, state: map[Kind]any{}}
}

// Later queues a rewrite that must see the final value of a weight (after sparse
// deltas): it runs after every tuner's Inject, in the order queued.
func (b *Builder) Later(f func() error) { b.later = append(b.later, f) }

// branch adds a branch to layer l's output: build makes the branch (its nodes may
// read the output) and returns the value to add to it. The layer's readers then read
// the sum. The readers are those before any branch was built.
func (b *Builder) branch(l *surgery.Linear, build func() (string, error)) error {
	y := l.Output
	if _, ok := b.readers[y]; !ok {
		if b.g.IsOutput(y) {
			return fmt.Errorf("%s: its output %s is a graph output", l.Name, y)
		}
		b.readers[y] = slices.Clone(b.g.Consumers(y))
		b.outputs = append(b.outputs, y)
	}
	d, err := build()
	if err != nil {
		return err
	}
	b.branches[y] = append(b.branches[y], d)
	return nil
}

// sumBranches makes every layer output with branches read as the sum of the output
// and its branches.
func (b *Builder) sumBranches() {
	for _, y := range b.outputs {
		sum := y
		for i, d := range b.branches[y] {
			sum = b.node("Add", fmt.Sprintf("%s%s/branch_add_%d", Prefix, b.branchName(y), i), []string{sum, d})
		}
		for _, c := range b.readers[y] {
			for i, x := range c.Input {
				if x == y {
					b.g.SetInput(c, i, sum)
				}
			}
		}
	}
	b.outputs, b.readers, b.branches = nil, map[string][]*onnxpb.NodeProto{}, map[string][]string{}
}

// branchName names the sum of branches on output y after the layer writing it.
func (b *Builder) branchName(y string) string {
	for _, l := range b.v.Linears() {
		if l.Output == y {
			if l.Fused {
				return fmt.Sprintf("blocks.%d.qkv", l.Block)
			}
			return l.Name
		}
	}
	return "branch"
}

// linear is the model's layer a plan layer names.
func (b *Builder) linear(l *LayerPlan) (*surgery.Linear, error) {
	u := b.units[l.Name]
	if u == nil || !u.matrix {
		return nil, fmt.Errorf("layer %s is not in the model", l.Name)
	}
	return u.lin, nil
}

// findSites finds where every allocation unit of the model is read.
func (b *Builder) findSites() error {
	g, v := b.g, b.v
	us, err := units(v, g)
	if err != nil {
		return err
	}
	b.all = us
	b.units = map[string]*unit{}
	for i := range us {
		b.units[us[i].name] = &us[i]
	}
	b.weightSlot, b.vecSlot = map[string]slot{}, map[string]slot{}
	for _, blk := range v.Blocks {
		for _, l := range blk.Linears {
			s, err := weightSlot(l)
			if err != nil {
				return err
			}
			b.weightSlot[l.Name] = s
			if l.Bias != "" {
				bs, err := biasSlot(l)
				if err != nil {
					return err
				}
				b.vecSlot[l.Name+".bias"] = bs
			}
		}
		for name, ln := range map[string]surgery.LayerNorm{"norm1": blk.Norm1, "norm2": blk.Norm2} {
			sc, sh, err := b.normSlots(ln)
			if err != nil {
				return fmt.Errorf("block %d %s: %w", blk.Index, name, err)
			}
			b.vecSlot[fmt.Sprintf("blocks.%d.%s.scale", blk.Index, name)] = sc
			b.vecSlot[fmt.Sprintf("blocks.%d.%s.shift", blk.Index, name)] = sh
		}
	}
	for i := range us {
		if _, ok := b.vecSlot[us[i].name]; !us[i].matrix && !ok {
			return fmt.Errorf("vector %s: cannot find where it is read", us[i].name)
		}
	}
	return nil
}

// weightSlot is where l's node (or the exporter's Transpose before it) reads the weight.
func weightSlot(l *surgery.Linear) (slot, error) {
	n := l.Node
	if l.Transpose != nil {
		n = l.Transpose
	}
	for i, x := range n.Input {
		if x == l.WeightValue {
			return slot{n, i}, nil
		}
	}
	return slot{}, fmt.Errorf("%s: node %s does not read its weight %s", l.Name, n.GetName(), l.WeightValue)
}

// biasSlot is where l's bias is read: its bias Add, or the Gemm's C input.
func biasSlot(l *surgery.Linear) (slot, error) {
	if l.BiasAdd != nil {
		for i, x := range l.BiasAdd.Input {
			if x == l.BiasValue {
				return slot{l.BiasAdd, i}, nil
			}
		}
	} else if len(l.Node.Input) > 2 && l.Node.Input[2] == l.BiasValue {
		return slot{l.Node, 2}, nil
	}
	return slot{}, fmt.Errorf("%s: cannot find where its bias %s is read", l.Name, l.BiasValue)
}

// normSlots finds where a LayerNorm reads its scale and shift.
func (b *Builder) normSlots(ln surgery.LayerNorm) (scale, shift slot, err error) {
	g := b.g
	nodes := g.Nodes()
	if ln.Last < 0 || ln.Last >= len(nodes) {
		return scale, shift, errors.New("LayerNorm node not found")
	}
	last := nodes[ln.Last]
	if last.GetOpType() == "LayerNormalization" {
		return slot{last, 1}, slot{last, 2}, nil
	}
	for i, x := range last.Input {
		if g.Source(x) == ln.Shift && g.Const(x) != nil {
			shift = slot{last, i}
		} else if p := g.Producer(x); p != nil && p.GetOpType() == "Mul" {
			for j, y := range p.Input {
				if g.Source(y) == ln.Scale && g.Const(y) != nil {
					scale = slot{p, j}
				}
			}
		}
	}
	if scale.node == nil || shift.node == nil {
		return scale, shift, errors.New("cannot find the LayerNorm's scale and shift inputs")
	}
	return scale, shift, nil
}

// extraSlot is where a non-block tensor (full strategy) is read: the class token's
// Expand/Concat, the patch embedding's Conv, the position embedding's Add, the final
// LayerNorm.
func (b *Builder) extraSlot(e TensorPlan) (slot, error) {
	v := b.v
	switch e.Name {
	case "norm.scale", "norm.shift":
		sc, sh, err := b.normSlots(v.FinalNorm)
		if e.Name == "norm.scale" {
			return sc, err
		}
		return sh, err
	}
	op, idx := map[string]string{"patch_embed.weight": "Conv", "patch_embed.bias": "Conv", "pos_embed": "Add", "class_token": ""}[e.Name], -1
	switch e.Name {
	case "patch_embed.weight":
		idx = 1
	case "patch_embed.bias":
		idx = 2
	}
	users := b.users(e.Init)
	for _, u := range users {
		ok := u.node.GetOpType() == op && (idx < 0 || u.idx == idx)
		if e.Name == "class_token" {
			ok = slices.Contains([]string{"Expand", "Concat", "Tile"}, u.node.GetOpType())
		}
		if ok {
			return u, nil
		}
	}
	if len(users) == 1 {
		return users[0], nil
	}
	return slot{}, fmt.Errorf("cannot find where %s (%s) is read", e.Name, e.Init)
}

// users are the places that read initializer name, directly or through Identity
// aliases (the Identity nodes themselves excluded).
func (b *Builder) users(name string) []slot {
	var out []slot
	seen := map[string]bool{}
	var walk func(value string)
	walk = func(value string) {
		if seen[value] {
			return
		}
		seen[value] = true
		for _, c := range b.g.Consumers(value) {
			if c.GetOpType() == "Identity" {
				walk(c.Output[0])
				continue
			}
			for i, x := range c.Input {
				if x == value {
					out = append(out, slot{c, i})
				}
			}
		}
	}
	walk(name)
	return out
}

// record notes that tuner k made init as part of its module on target of.
func (b *Builder) record(init, of string, k Kind, part Part, base string, offset int, trainable bool) {
	b.records = append(b.records, Injected{Init: init, Of: of, Tuner: k, Part: part, Base: base, Offset: offset, Trainable: trainable})
}

func (b *Builder) markTrainable(name string) {
	if !b.trainable[name] {
		b.trainable[name] = true
		b.order = append(b.order, name)
	}
}

// trainWhole makes the initializer read at s trainable, copying it first (as copyName)
// if anything else reads it too, and records it as trained whole for each of the
// things in of (at their offsets), as part of tuner k's module. It returns the
// trainable initializer's name.
func (b *Builder) trainWhole(s slot, copyName string, of []string, offsets []int, k Kind, part Part) (string, error) {
	name := b.g.Source(s.value())
	t := b.g.Initializer(name)
	if t == nil {
		return "", fmt.Errorf("%s reads %s, which is not an initializer", s.node.GetName(), s.value())
	}
	defer func() {
		for i, o := range of {
			b.record(b.order[len(b.order)-1], o, k, part, name, offsets[i], true)
		}
	}()
	users := b.users(name)
	if len(users) == 1 && users[0] == s && !b.trainable[name] {
		b.markTrainable(name)
		return name, nil
	}
	c := proto.Clone(t).(*onnxpb.TensorProto)
	c.Name = proto.String(copyName)
	c.DocString = nil
	newName := b.g.AddInitializer(c)
	b.g.SetInput(s.node, s.idx, newName)
	b.markTrainable(newName)
	return newName, nil
}

// addFloat adds a float initializer; trainable ones are recorded.
func (b *Builder) addFloat(name string, dims []int64, vals []float32, trainable bool) string {
	t, err := onnxio.NewFloat(name, dims, vals)
	if err != nil {
		panic(err) // sizes are computed here; a mismatch is a bug
	}
	n := b.g.AddInitializer(t)
	if trainable {
		b.markTrainable(n)
	}
	return n
}

func (b *Builder) addInt64(name string, dims []int64, vals []int64) string {
	t, err := onnxio.NewInt64(name, dims, vals)
	if err != nil {
		panic(err)
	}
	return b.g.AddInitializer(t)
}

// scalar returns a shared float scalar constant.
func (b *Builder) scalar(name string, x float32) string {
	if n, ok := b.consts[name]; ok {
		return n
	}
	n := b.addFloat(Prefix+"const/"+name, nil, []float32{x}, false)
	b.consts[name] = n
	return n
}

func (b *Builder) node(op, name string, inputs []string, attrs ...*onnxpb.AttributeProto) string {
	n := b.g.AddNode(op, name, inputs, []string{name + "_output"}, attrs...)
	return n.Output[0]
}

// dropout returns x through a Dropout node (one per x), or x when there is none.
func (b *Builder) dropout(x, name string) string {
	if b.opt.Dropout == 0 {
		return x
	}
	if d, ok := b.dropouts[x]; ok {
		return d
	}
	var d string
	if b.opset >= 12 {
		d = b.node("Dropout", name+"/dropout", []string{x, b.scalar("dropout_ratio", b.opt.Dropout)})
	} else {
		d = b.node("Dropout", name+"/dropout", []string{x}, surgery.FloatAttr("ratio", b.opt.Dropout))
	}
	b.dropouts[x] = d
	return d
}

// pad zero-pads a constant 1-D or 2-D tensor along its first axis: before, after.
func (b *Builder) pad(x, name string, rank int, before, after int64) string {
	pads := make([]int64, 2*rank)
	pads[0], pads[rank] = before, after
	return b.node("Pad", name, []string{x, b.addInt64(name+"_pads", []int64{int64(len(pads))}, pads)})
}

func (b *Builder) transpose(x, name string) string {
	return b.node("Transpose", name, []string{x}, surgery.IntsAttr("perm", 1, 0))
}

// gelu writes GELU as PyTorch's exporter does: (x · (erf(x / √2) + 1)) · 0.5.
func (b *Builder) gelu(x, name string) string {
	d := b.node("Div", name+"/gelu_div", []string{x, b.scalar("sqrt2", float32(math.Sqrt2))})
	e := b.node("Erf", name+"/gelu_erf", []string{d})
	a := b.node("Add", name+"/gelu_add", []string{e, b.scalar("one", 1)})
	m := b.node("Mul", name+"/gelu_mul", []string{x, a})
	return b.node("Mul", name+"/gelu_half", []string{m, b.scalar("half", 0.5)})
}

// rng gives each unit its own deterministic stream.
func (b *Builder) rng(name string) *rand.Rand {
	h := fnv.New64a()
	h.Write([]byte(name))
	return rand.New(rand.NewPCG(uint64(b.opt.Seed), h.Sum64()))
}

// kaimingUniform is nn.init.kaiming_uniform_(a=√5) (nn.Linear's weight init), which is
// U(-1/√fanIn, 1/√fanIn).
func kaimingUniform(rng *rand.Rand, n int, fanIn int64) []float32 {
	bound := 1 / math.Sqrt(float64(fanIn))
	out := make([]float32, n)
	for i := range out {
		out[i] = float32((2*rng.Float64() - 1) * bound)
	}
	return out
}

// unravel turns flat indices into ScatterND indices [n, rank] for a tensor of dims.
func unravel(flat []int64, dims []int64) []int64 {
	out := make([]int64, 0, len(flat)*len(dims))
	for _, f := range flat {
		at := len(out)
		out = append(out, make([]int64, len(dims))...)
		for d := len(dims) - 1; d >= 0; d-- {
			out[at+d] = f % dims[d]
			f /= dims[d]
		}
	}
	return out
}
