package inject

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

// ApplyOptions control Apply.
type ApplyOptions struct {
	// Classes is the task's class count; 0 means the plan's. It must equal the plan's
	// (the plan's total counts the head).
	Classes int
	// KeepHead trains the model's own head instead of a new one; the plan must have
	// been made for the model's head size.
	KeepHead bool
	// Seed seeds the LoRA A and Adapter down-projection initializations. The new head
	// is made with the plan's head seed (HeadInit(in, classes, plan.Head.Seed)), the
	// head sensitivity ran with.
	Seed int64
	// Dropout is the ratio of a Dropout node on each branch input (0: none). ONNX
	// Dropout is the identity at inference; the trainer applies it.
	Dropout float32
	// BasePath, if set, is recorded as meta.KeyBasePath: where export finds the base
	// model by default (give an absolute path).
	BasePath string
}

// Names of the things Apply adds. Every new initializer and node is named
// "spt/<layer or vector name>/<part>", e.g. spt/blocks.3.fc1/lora_A.
const Prefix = "spt/"

// Apply rewrites m, the base model p was made for, into the tunable model:
//
//   - LoRA (in parallel): y = W·x + b + B·(A·x), A [r, in] Kaiming-uniform (a = √5),
//     B [out, r] zero, written as MatMul(MatMul(x, Transpose(A)), Transpose(B)) added to
//     the layer's output; for a part of a fused q/k/v projection, B is zero-padded
//     (Pad) to the part's rows of the fused output, [3d, r], so the branch adds only to
//     the part's columns.
//   - Adapter (in sequence on the layer's output h = W·x + b):
//     y = h + U·GELU(D·h + c) + d, D [r, out] Kaiming-uniform, c [r] uniform
//     (nn.Linear's bias init), U [out, r] and d [out] zero; GELU as PyTorch's exporter
//     writes it, x·(1 + erf(x/√2))·0.5 (Div, Erf, Add, Mul, Mul). For a fused part, h
//     is the part's Slice of the fused output, and U and d are padded like LoRA's B.
//   - Sparse deltas: W_eff = Add(W, ScatterND(ConstantOfShape(shape of W), indices
//     [n, rank] int64, values [n] trainable, zero)) replaces W where the layer reads it
//     (before any Transpose the exporter put behind it), in W's stored layout; the parts
//     of a fused weight chain their ScatterNDs on one zero tensor. Sparse vectors the
//     same way.
//   - Whole vectors, the class token, the head (and with the full strategy whole
//     matrices and embeddings) are trained in place; an initializer that other nodes
//     also read (a de-duplicated tensor behind Identity aliases) is first copied for
//     this use. A fused bias of which only some parts are trained whole is split into
//     per-part initializers joined by a Concat.
//   - A new head for the plan's classes (weight truncated normal, std 0.02, bias zero,
//     seeded with the plan's head seed) replaces the old one, and the graph output's
//     class dimension is updated; or, with KeepHead, the model's head is trained.
//   - An optional Dropout node (shared per input value) on every branch input.
//
// The trainable initializers (their sizes add up to the plan's total exactly; see
// TrainableCount), the plan, the base fingerprint, the class count and the head seed
// are stored in the model's metadata (internal/meta keys), and the nodes are sorted
// topologically. All checks (plan for this model, sizes, indices, options) run before
// the model is changed: on such an error m is untouched.
func Apply(m *onnxpb.ModelProto, p *Plan, opt ApplyOptions) error {
	in, err := check(m, p, opt)
	if err != nil {
		return err
	}
	g, classes := in.g, p.Head.Classes
	if err := in.run(); err != nil {
		return fmt.Errorf("inject: %w", err)
	}
	if err := meta.Set(m, meta.KeyTrainable, in.order); err != nil {
		return err
	}
	stored := *p
	stored.Injected = in.records
	pj, err := json.Marshal(&stored)
	if err != nil {
		return err
	}
	onnxio.SetMetadata(m, meta.KeyPlan, string(pj))
	onnxio.SetMetadata(m, meta.KeyBaseFingerprint, p.BaseFingerprint)
	if err := meta.Set(m, meta.KeyClasses, classes); err != nil {
		return err
	}
	if err := meta.Set(m, meta.KeyHeadSeed, p.Head.Seed); err != nil {
		return err
	}
	if opt.BasePath != "" {
		onnxio.SetMetadata(m, meta.KeyBasePath, opt.BasePath)
	}
	g.RemoveDeadNodes()
	if err := g.TopoSort(); err != nil {
		return fmt.Errorf("inject: %w", err)
	}
	return nil
}

// TrainableCount is the number of trainable parameters of an injected model: the sum
// of the sizes of the initializers its metadata marks trainable.
func TrainableCount(m *onnxpb.ModelProto) (int64, error) {
	names, err := meta.Trainable(m)
	if err != nil {
		return 0, err
	}
	if names == nil {
		return 0, errors.New("model has no trainable-parameter list (not injected)")
	}
	inits := map[string]*onnxpb.TensorProto{}
	for _, t := range m.GetGraph().GetInitializer() {
		inits[t.GetName()] = t
	}
	seen := map[string]bool{}
	var n int64
	for _, name := range names {
		t := inits[name]
		if t == nil {
			return 0, fmt.Errorf("trainable initializer %q is not in the model", name)
		}
		if seen[name] {
			return 0, fmt.Errorf("trainable initializer %q is listed twice", name)
		}
		seen[name] = true
		n += onnxio.NumElements(t.Dims)
	}
	return n, nil
}

// HeadInit makes a classifier head for classes classes on in features: the weight
// [classes, in] (row-major) drawn from a normal distribution with std 0.02 truncated
// at ±2 std, the bias zero. The same seed gives the same head (sensitivity uses it
// for the head it computes scores with, so that Apply's head is that head).
func HeadInit(in, classes int, seed int64) (weight, bias []float32) {
	rng := rand.New(rand.NewPCG(uint64(seed), 0x5350545f68656164)) // "SPT_head"
	weight = make([]float32, in*classes)
	for i := range weight {
		z := rng.NormFloat64()
		for z < -2 || z > 2 {
			z = rng.NormFloat64()
		}
		weight[i] = float32(0.02 * z)
	}
	return weight, make([]float32, classes)
}

// slot is one input of one node: where a value is read.
type slot struct {
	node *onnxpb.NodeProto
	idx  int
}

func (s slot) value() string { return s.node.Input[s.idx] }

type injector struct {
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
}

// prepare checks the plan against the model and finds every place to change.
func (in *injector) prepare() error {
	g, v, p := in.g, in.v, in.p
	us, err := units(v, g)
	if err != nil {
		return err
	}
	in.all = us
	in.units = map[string]*unit{}
	for i := range us {
		in.units[us[i].name] = &us[i]
	}
	in.weightSlot, in.vecSlot = map[string]slot{}, map[string]slot{}
	for _, b := range v.Blocks {
		for _, l := range b.Linears {
			s, err := weightSlot(l)
			if err != nil {
				return err
			}
			in.weightSlot[l.Name] = s
			if l.Bias != "" {
				bs, err := biasSlot(l)
				if err != nil {
					return err
				}
				in.vecSlot[l.Name+".bias"] = bs
			}
		}
		for name, ln := range map[string]surgery.LayerNorm{"norm1": b.Norm1, "norm2": b.Norm2} {
			sc, sh, err := in.normSlots(ln)
			if err != nil {
				return fmt.Errorf("block %d %s: %w", b.Index, name, err)
			}
			in.vecSlot[fmt.Sprintf("blocks.%d.%s.scale", b.Index, name)] = sc
			in.vecSlot[fmt.Sprintf("blocks.%d.%s.shift", b.Index, name)] = sh
		}
	}
	for i := range us {
		if _, ok := in.vecSlot[us[i].name]; !us[i].matrix && !ok {
			return fmt.Errorf("vector %s: cannot find where it is read", us[i].name)
		}
	}
	seen := map[string]bool{}
	for i := range p.Layers {
		l := &p.Layers[i]
		u := in.units[l.Name]
		if u == nil || !u.matrix {
			return fmt.Errorf("plan layer %s is not in this model", l.Name)
		}
		if seen[l.Name] {
			return fmt.Errorf("plan lists layer %s twice", l.Name)
		}
		seen[l.Name] = true
		if u.init != l.Weight || int(u.in) != l.In || int(u.out) != l.Out || u.lin.Offset != l.Offset {
			return fmt.Errorf("plan layer %s (%s %dx%d at %d) does not match the model (%s %dx%d at %d)", l.Name, l.Weight, l.In, l.Out, l.Offset, u.init, u.in, u.out, u.lin.Offset)
		}
		if err := checkIndices(u, l.Indices); err != nil {
			return fmt.Errorf("plan layer %s: %w", l.Name, err)
		}
		in.layers = append(in.layers, l)
	}
	// A fused weight trained whole must be trained whole in all its parts.
	fullParts := map[string]int{}
	for _, l := range in.layers {
		if l.Mode == ModeFull {
			fullParts[l.Weight]++
		}
	}
	for _, l := range in.layers {
		if l.Mode == ModeFull && l.Fused && fullParts[l.Weight] != 3 {
			return fmt.Errorf("plan layer %s: a fused q/k/v weight can only be trained whole in all three parts", l.Name)
		}
	}
	in.vectors = map[string]*VectorPlan{}
	for i := range p.Vectors {
		vp := &p.Vectors[i]
		u := in.units[vp.Name]
		if u == nil || u.matrix {
			return fmt.Errorf("plan vector %s is not in this model", vp.Name)
		}
		if in.vectors[vp.Name] != nil {
			return fmt.Errorf("plan lists vector %s twice", vp.Name)
		}
		if u.init != vp.Init || u.vec.Offset != vp.Offset || u.vec.Size != vp.Size {
			return fmt.Errorf("plan vector %s (%s [%d:%d]) does not match the model (%s [%d:%d])", vp.Name, vp.Init, vp.Offset, vp.Offset+vp.Size, u.init, u.vec.Offset, u.vec.Offset+u.vec.Size)
		}
		if err := checkIndices(u, vp.Indices); err != nil {
			return fmt.Errorf("plan vector %s: %w", vp.Name, err)
		}
		in.vectors[vp.Name] = vp
	}
	if p.ClassToken != nil {
		t := g.Initializer(v.ClassToken)
		if v.ClassToken != p.ClassToken.Init || t == nil || onnxio.NumElements(t.Dims) != p.ClassToken.Params {
			return fmt.Errorf("plan class token %s (%d) does not match the model's %q", p.ClassToken.Init, p.ClassToken.Params, v.ClassToken)
		}
		if _, err := in.extraSlot(*p.ClassToken); err != nil {
			return err
		}
	}
	for _, e := range p.Extra {
		t := g.Initializer(e.Init)
		if t == nil || onnxio.NumElements(t.Dims) != e.Params {
			return fmt.Errorf("plan tensor %s (%s, %d) is not in this model", e.Name, e.Init, e.Params)
		}
		if _, err := in.extraSlot(e); err != nil {
			return err
		}
	}
	if _, err := weightSlot(v.Head); err != nil {
		return err
	}
	if v.Head.Bias != "" {
		if _, err := biasSlot(v.Head); err != nil {
			return err
		}
	}
	return nil
}

func checkIndices(u *unit, idx []int64) error {
	for _, f := range idx {
		if u.sp.local(f) < 0 {
			return fmt.Errorf("index %d is outside its entries of %s", f, u.init)
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
func (in *injector) normSlots(ln surgery.LayerNorm) (scale, shift slot, err error) {
	g := in.g
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
func (in *injector) extraSlot(e TensorPlan) (slot, error) {
	v := in.v
	switch e.Name {
	case "norm.scale", "norm.shift":
		sc, sh, err := in.normSlots(v.FinalNorm)
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
	users := in.users(e.Init)
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
func (in *injector) users(name string) []slot {
	var out []slot
	seen := map[string]bool{}
	var walk func(value string)
	walk = func(value string) {
		if seen[value] {
			return
		}
		seen[value] = true
		for _, c := range in.g.Consumers(value) {
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

func (in *injector) record(init, of, role, base string, offset int, trainable bool) {
	in.records = append(in.records, Injected{Init: init, Of: of, Role: role, Base: base, Offset: offset, Trainable: trainable})
}

func (in *injector) markTrainable(name string) {
	if !in.trainable[name] {
		in.trainable[name] = true
		in.order = append(in.order, name)
	}
}

// trainWhole makes the initializer read at s trainable, copying it first (as copyName)
// if anything else reads it too, and records it as trained whole for each of the
// things in of (at their offsets). It returns the trainable initializer's name.
func (in *injector) trainWhole(s slot, copyName string, of []string, offsets []int) (string, error) {
	name := in.g.Source(s.value())
	t := in.g.Initializer(name)
	if t == nil {
		return "", fmt.Errorf("%s reads %s, which is not an initializer", s.node.GetName(), s.value())
	}
	defer func() {
		for i, o := range of {
			in.record(in.order[len(in.order)-1], o, "whole", name, offsets[i], true)
		}
	}()
	users := in.users(name)
	if len(users) == 1 && users[0] == s && !in.trainable[name] {
		in.markTrainable(name)
		return name, nil
	}
	c := proto.Clone(t).(*onnxpb.TensorProto)
	c.Name = proto.String(copyName)
	c.DocString = nil
	newName := in.g.AddInitializer(c)
	in.g.SetInput(s.node, s.idx, newName)
	in.markTrainable(newName)
	return newName, nil
}

// addFloat adds a float initializer; trainable ones are recorded.
func (in *injector) addFloat(name string, dims []int64, vals []float32, trainable bool) string {
	t, err := onnxio.NewFloat(name, dims, vals)
	if err != nil {
		panic(err) // sizes are computed here; a mismatch is a bug
	}
	n := in.g.AddInitializer(t)
	if trainable {
		in.markTrainable(n)
	}
	return n
}

func (in *injector) addInt64(name string, dims []int64, vals []int64) string {
	t, err := onnxio.NewInt64(name, dims, vals)
	if err != nil {
		panic(err)
	}
	return in.g.AddInitializer(t)
}

// scalar returns a shared float scalar constant.
func (in *injector) scalar(name string, x float32) string {
	if n, ok := in.consts[name]; ok {
		return n
	}
	n := in.addFloat(Prefix+"const/"+name, nil, []float32{x}, false)
	in.consts[name] = n
	return n
}

func (in *injector) node(op, name string, inputs []string, attrs ...*onnxpb.AttributeProto) string {
	n := in.g.AddNode(op, name, inputs, []string{name + "_output"}, attrs...)
	return n.Output[0]
}

// dropout returns x through a Dropout node (one per x), or x when there is none.
func (in *injector) dropout(x, name string) string {
	if in.opt.Dropout == 0 {
		return x
	}
	if d, ok := in.dropouts[x]; ok {
		return d
	}
	var d string
	if in.opset >= 12 {
		d = in.node("Dropout", name+"/dropout", []string{x, in.scalar("dropout_ratio", in.opt.Dropout)})
	} else {
		d = in.node("Dropout", name+"/dropout", []string{x}, surgery.FloatAttr("ratio", in.opt.Dropout))
	}
	in.dropouts[x] = d
	return d
}

// pad zero-pads a constant 1-D or 2-D tensor along its first axis: before, after.
func (in *injector) pad(x, name string, rank int, before, after int64) string {
	pads := make([]int64, 2*rank)
	pads[0], pads[rank] = before, after
	return in.node("Pad", name, []string{x, in.addInt64(name+"_pads", []int64{int64(len(pads))}, pads)})
}

func (in *injector) transpose(x, name string) string {
	return in.node("Transpose", name, []string{x}, surgery.IntsAttr("perm", 1, 0))
}

// gelu writes GELU as PyTorch's exporter does: (x · (erf(x / √2) + 1)) · 0.5.
func (in *injector) gelu(x, name string) string {
	d := in.node("Div", name+"/gelu_div", []string{x, in.scalar("sqrt2", float32(math.Sqrt2))})
	e := in.node("Erf", name+"/gelu_erf", []string{d})
	a := in.node("Add", name+"/gelu_add", []string{e, in.scalar("one", 1)})
	m := in.node("Mul", name+"/gelu_mul", []string{x, a})
	return in.node("Mul", name+"/gelu_half", []string{m, in.scalar("half", 0.5)})
}

// rng gives each unit its own deterministic stream.
func (in *injector) rng(name string) *rand.Rand {
	h := fnv.New64a()
	h.Write([]byte(name))
	return rand.New(rand.NewPCG(uint64(in.opt.Seed), h.Sum64()))
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

// run does the rewrite.
func (in *injector) run() error {
	g, p := in.g, in.p
	if p.ClassToken != nil {
		s, err := in.extraSlot(*p.ClassToken)
		if err != nil {
			return err
		}
		if _, err := in.trainWhole(s, Prefix+"class_token", []string{"class_token"}, []int{0}); err != nil {
			return err
		}
	}
	if err := in.head(); err != nil {
		return err
	}
	// Branch outputs: remember who reads each layer output before any branch does.
	readers := map[string][]*onnxpb.NodeProto{}
	var outputs []string
	for _, l := range in.layers {
		if l.Mode != ModeLoRA && l.Mode != ModeAdapter {
			continue
		}
		y := in.units[l.Name].lin.Output
		if _, ok := readers[y]; !ok {
			if g.IsOutput(y) {
				return fmt.Errorf("%s: its output %s is a graph output", l.Name, y)
			}
			readers[y] = slices.Clone(g.Consumers(y))
			outputs = append(outputs, y)
		}
	}
	deltas := map[string][]string{}
	sparse := map[slot][]*LayerPlan{}
	var sparseOrder []slot
	done := map[string]bool{}
	for _, l := range in.layers {
		u := in.units[l.Name]
		if l.Mode == ModeSparse || len(l.Indices) > 0 {
			s := in.weightSlot[l.Name]
			if _, ok := sparse[s]; !ok {
				sparseOrder = append(sparseOrder, s)
			}
			sparse[s] = append(sparse[s], l)
		}
		switch l.Mode {
		case ModeLoRA:
			deltas[u.lin.Output] = append(deltas[u.lin.Output], in.lora(u, l))
		case ModeAdapter:
			deltas[u.lin.Output] = append(deltas[u.lin.Output], in.adapter(u, l))
		case ModeFull:
			if done[u.init] {
				continue
			}
			done[u.init] = true
			name, of, offs := l.Name, []string{l.Name}, []int{0}
			if u.lin.Fused {
				name = fmt.Sprintf("blocks.%d.qkv", u.block)
				of, offs = nil, nil
				for _, x := range in.layers {
					if x.Weight == l.Weight {
						of, offs = append(of, x.Name), append(offs, x.Offset)
					}
				}
			}
			if _, err := in.trainWhole(in.weightSlot[l.Name], Prefix+name+"/weight", of, offs); err != nil {
				return err
			}
		}
	}
	for _, y := range outputs {
		sum := y
		for i, d := range deltas[y] {
			sum = in.node("Add", fmt.Sprintf("%s%s/branch_add_%d", Prefix, branchName(in, y), i), []string{sum, d})
		}
		for _, c := range readers[y] {
			for i, x := range c.Input {
				if x == y {
					g.SetInput(c, i, sum)
				}
			}
		}
	}
	for _, s := range sparseOrder {
		ls := sparse[s]
		u0 := in.units[ls[0].Name]
		group := ls[0].Name
		if u0.lin.Fused {
			group = fmt.Sprintf("blocks.%d.qkv", u0.block)
		}
		var parts []sparsePart
		for _, l := range ls {
			parts = append(parts, sparsePart{name: l.Name, flat: l.Indices, base: l.Weight})
		}
		g.SetInput(s.node, s.idx, in.sparseDelta(s.value(), group, u0.dims, parts))
	}
	if err := in.vectorsRewrite(); err != nil {
		return err
	}
	for _, e := range p.Extra {
		s, err := in.extraSlot(e)
		if err != nil {
			return err
		}
		if _, err := in.trainWhole(s, Prefix+e.Name, []string{e.Name}, []int{0}); err != nil {
			return err
		}
	}
	return nil
}

// branchName names the sum of branches on output y after the (first) layer writing it.
func branchName(in *injector, y string) string {
	for _, l := range in.layers {
		u := in.units[l.Name]
		if u.lin.Output == y {
			if u.lin.Fused {
				return fmt.Sprintf("blocks.%d.qkv", u.block)
			}
			return l.Name
		}
	}
	return "branch"
}

// lora builds a LoRA branch and returns its output (to be added to the layer's).
func (in *injector) lora(u *unit, l *LayerPlan) string {
	name := Prefix + l.Name
	r := int64(l.Rank)
	a := in.addFloat(name+"/lora_A", []int64{r, u.in}, kaimingUniform(in.rng(l.Name), int(r*u.in), u.in), true)
	b := in.addFloat(name+"/lora_B", []int64{u.out, r}, make([]float32, u.out*r), true)
	in.record(a, l.Name, "lora_A", u.init, 0, true)
	in.record(b, l.Name, "lora_B", u.init, 0, true)
	x := in.dropout(u.lin.Input, name)
	h := in.node("MatMul", name+"/lora_down", []string{x, in.transpose(a, name+"/lora_A_T")})
	if u.lin.Fused {
		b = in.pad(b, name+"/lora_B_pad", 2, int64(u.lin.Offset), int64(u.lin.TotalOut-u.lin.Offset-u.lin.Out))
	}
	d := in.node("MatMul", name+"/lora_up", []string{h, in.transpose(b, name+"/lora_B_T")})
	if s := in.p.Options.LoRAScaling; s != 0 && s != 1 {
		d = in.node("Mul", name+"/lora_scale", []string{d, in.scalar(fmt.Sprintf("lora_scaling_%g", s), float32(s))})
	}
	return d
}

// adapter builds an Adapter on the layer's output and returns its output.
func (in *injector) adapter(u *unit, l *LayerPlan) string {
	name := Prefix + l.Name
	r := int64(l.Rank)
	rng := in.rng(l.Name)
	dw := in.addFloat(name+"/adapter_down", []int64{r, u.out}, kaimingUniform(rng, int(r*u.out), u.out), true)
	db := in.addFloat(name+"/adapter_down_bias", []int64{r}, kaimingUniform(rng, int(r), u.out), true)
	uw := in.addFloat(name+"/adapter_up", []int64{u.out, r}, make([]float32, u.out*r), true)
	ub := in.addFloat(name+"/adapter_up_bias", []int64{u.out}, make([]float32, u.out), true)
	for _, x := range [][2]string{{dw, "adapter_down"}, {db, "adapter_down_bias"}, {uw, "adapter_up"}, {ub, "adapter_up_bias"}} {
		in.record(x[0], l.Name, x[1], "", 0, true)
	}
	h := u.lin.Output
	if u.lin.Fused {
		off, end := int64(u.lin.Offset), int64(u.lin.Offset+u.lin.Out)
		h = in.node("Slice", name+"/adapter_slice", []string{h,
			in.addInt64(name+"/adapter_slice_starts", []int64{1}, []int64{off}),
			in.addInt64(name+"/adapter_slice_ends", []int64{1}, []int64{end}),
			in.addInt64(name+"/adapter_slice_axes", []int64{1}, []int64{-1})})
	}
	h = in.dropout(h, name)
	z := in.node("MatMul", name+"/adapter_down_matmul", []string{h, in.transpose(dw, name+"/adapter_down_T")})
	z = in.node("Add", name+"/adapter_down_add", []string{z, db})
	z = in.gelu(z, name)
	if u.lin.Fused {
		before, after := int64(u.lin.Offset), int64(u.lin.TotalOut-u.lin.Offset-u.lin.Out)
		uw = in.pad(uw, name+"/adapter_up_pad", 2, before, after)
		ub = in.pad(ub, name+"/adapter_up_bias_pad", 1, before, after)
	}
	z = in.node("MatMul", name+"/adapter_up_matmul", []string{z, in.transpose(uw, name+"/adapter_up_T")})
	return in.node("Add", name+"/adapter_up_add", []string{z, ub})
}

// sparsePart is one unit's sparse entries in a tensor.
type sparsePart struct {
	name string  // unit name
	flat []int64 // flat indices into the tensor given to sparseDelta
	base string  // the base initializer, for the record
}

// sparseDelta returns Add(x, ScatterND(…ScatterND(ConstantOfShape(dims), idx₁, vals₁)…)),
// x being a tensor of shape dims, with one trainable values initializer per part.
func (in *injector) sparseDelta(x, group string, dims []int64, parts []sparsePart) string {
	gname := Prefix + group
	shape := in.addInt64(gname+"/sparse_shape", []int64{int64(len(dims))}, dims)
	zero, _ := onnxio.NewFloat("value", []int64{1}, []float32{0})
	acc := in.node("ConstantOfShape", gname+"/sparse_zeros", []string{shape},
		&onnxpb.AttributeProto{Name: proto.String("value"), Type: onnxpb.AttributeProto_TENSOR.Enum(), T: zero})
	for _, pt := range parts {
		n := int64(len(pt.flat))
		idx := in.addInt64(Prefix+pt.name+"/sparse_indices", []int64{n, int64(len(dims))}, unravel(pt.flat, dims))
		vals := in.addFloat(Prefix+pt.name+"/sparse_values", []int64{n}, make([]float32, n), true)
		in.record(vals, pt.name, "sparse_values", pt.base, 0, true)
		in.record(idx, pt.name, "sparse_indices", pt.base, 0, false)
		acc = in.node("ScatterND", Prefix+pt.name+"/sparse_scatter", []string{acc, idx, vals})
	}
	return in.node("Add", gname+"/sparse_add", []string{x, acc})
}

// vectorsRewrite trains the planned vectors, grouped by where they are read (the
// three parts of a fused bias are read together).
func (in *injector) vectorsRewrite() error {
	type group struct {
		s     slot
		units []*unit
	}
	var groups []*group
	bySlot := map[slot]*group{}
	for i := range in.all {
		u := &in.all[i]
		if u.matrix {
			continue
		}
		s := in.vecSlot[u.name]
		gr := bySlot[s]
		if gr == nil {
			gr = &group{s: s}
			bySlot[s] = gr
			groups = append(groups, gr)
		}
		gr.units = append(gr.units, u)
	}
	for _, gr := range groups {
		var planned []*VectorPlan
		full := 0
		for _, u := range gr.units {
			if vp := in.vectors[u.name]; vp != nil {
				planned = append(planned, vp)
				if vp.Mode == ModeFull {
					full++
				}
			}
		}
		if len(planned) == 0 {
			continue
		}
		u0 := gr.units[0]
		size := onnxio.NumElements(u0.dims)
		slices.SortFunc(gr.units, func(a, b *unit) int { return a.vec.Offset - b.vec.Offset })
		covered := int64(0)
		for _, u := range gr.units {
			if int64(u.vec.Offset) != covered {
				covered = -1
				break
			}
			covered += int64(u.vec.Size)
		}
		gname := u0.name
		if len(gr.units) > 1 {
			gname = fmt.Sprintf("blocks.%d.qkv.bias", u0.block)
		}
		switch {
		case full == len(gr.units) && covered == size:
			var of []string
			var offs []int
			for _, u := range gr.units {
				of, offs = append(of, u.name), append(offs, u.vec.Offset)
			}
			if _, err := in.trainWhole(gr.s, Prefix+gname, of, offs); err != nil {
				return err
			}
		case full == 0:
			var parts []sparsePart
			for _, vp := range planned {
				parts = append(parts, sparsePart{name: vp.Name, flat: vp.Indices, base: vp.Init})
			}
			in.g.SetInput(gr.s.node, gr.s.idx, in.sparseDelta(gr.s.value(), gname, u0.dims, parts))
		default: // split into per-part initializers joined by a Concat
			if covered != size || len(u0.dims) != 1 {
				return fmt.Errorf("vector %s: cannot train part of initializer %s whole", planned[0].Name, u0.init)
			}
			src := in.g.Initializer(u0.init)
			all, err := onnxio.Floats(src)
			if err != nil {
				return err
			}
			var pieces []string
			for _, u := range gr.units {
				vals := slices.Clone(all[u.vec.Offset : u.vec.Offset+u.vec.Size])
				vp := in.vectors[u.name]
				piece := in.addFloat(Prefix+u.name, []int64{int64(u.vec.Size)}, vals, vp != nil && vp.Mode == ModeFull)
				if vp != nil && vp.Mode == ModeFull {
					in.record(piece, u.name, "whole", u.init, 0, true)
				}
				if vp != nil && vp.Mode == ModeSparse {
					local := make([]int64, len(vp.Indices))
					for i, f := range vp.Indices {
						local[i] = f - int64(u.vec.Offset)
					}
					// The record's indices are into the piece; say so by naming it as the base.
					piece = in.sparseDelta(piece, u.name, []int64{int64(u.vec.Size)}, []sparsePart{{name: u.name, flat: local, base: piece}})
				}
				pieces = append(pieces, piece)
			}
			in.g.SetInput(gr.s.node, gr.s.idx, in.node("Concat", Prefix+gname+"/concat", pieces, surgery.IntAttr("axis", 0)))
		}
	}
	return nil
}

// head trains the model's head (KeepHead) or puts a new one in its place.
func (in *injector) head() error {
	g, h, p := in.g, in.v.Head, in.p
	ws, err := weightSlot(h)
	if err != nil {
		return err
	}
	var bs slot
	if h.Bias != "" {
		if bs, err = biasSlot(h); err != nil {
			return err
		}
	}
	classes := int64(p.Head.Classes)
	if in.opt.KeepHead {
		if _, err := in.trainWhole(ws, Prefix+"head/weight", []string{"head.weight"}, []int{0}); err != nil {
			return err
		}
		if h.Bias != "" {
			_, err := in.trainWhole(bs, Prefix+"head/bias", []string{"head.bias"}, []int{0})
			return err
		}
		in.addHeadBias(h, classes)
		return nil
	}
	w, b := HeadInit(h.In, int(classes), p.Head.Seed)
	dims := []int64{classes, int64(h.In)}
	if h.Layout == surgery.InOut {
		t := make([]float32, len(w))
		for c := 0; c < int(classes); c++ {
			for i := 0; i < h.In; i++ {
				t[i*int(classes)+c] = w[c*h.In+i]
			}
		}
		w, dims = t, []int64{int64(h.In), classes}
	}
	wn := in.addFloat(Prefix+"head/weight", dims, w, true)
	in.record(wn, "head.weight", "whole", "", 0, true)
	g.SetInput(ws.node, ws.idx, wn)
	if h.Bias != "" {
		bn := in.addFloat(Prefix+"head/bias", []int64{classes}, b, true)
		in.record(bn, "head.bias", "whole", "", 0, true)
		g.SetInput(bs.node, bs.idx, bn)
	} else {
		in.addHeadBias(h, classes)
	}
	if int64(h.Out) != classes {
		in.fixShapes(h, classes)
	}
	return nil
}

// addHeadBias gives a head without a bias one (zero), as an Add after it.
func (in *injector) addHeadBias(h *surgery.Linear, classes int64) {
	g := in.g
	out := h.Output
	readers := slices.Clone(g.Consumers(out))
	b := in.addFloat(Prefix+"head/bias", []int64{classes}, make([]float32, classes), true)
	in.record(b, "head.bias", "whole", "", 0, true)
	if g.IsOutput(out) {
		// Keep the graph output's name: the head node writes a new value instead.
		mid := g.UniqueName(Prefix + "head/logits_nobias")
		h.Node.Output[0] = mid
		g.Reindex()
		g.AddNode("Add", Prefix+"head/bias_add", []string{mid, b}, nil).Output = []string{out}
		g.Reindex()
		return
	}
	sum := in.node("Add", Prefix+"head/bias_add", []string{out, b})
	for _, c := range readers {
		for i, x := range c.Input {
			if x == out {
				g.SetInput(c, i, sum)
			}
		}
	}
}

// fixShapes updates the class dimension of graph outputs that follow the head and
// drops stale shape annotations (value_info) downstream of it.
func (in *injector) fixShapes(h *surgery.Linear, classes int64) {
	g := in.g
	down := map[string]bool{}
	queue := slices.Clone(h.Node.Output)
	for len(queue) > 0 {
		v := queue[0]
		queue = queue[1:]
		if down[v] {
			continue
		}
		down[v] = true
		for _, c := range g.Consumers(v) {
			queue = append(queue, c.Output...)
		}
	}
	gp := g.Proto()
	for _, o := range gp.GetOutput() {
		if !down[o.GetName()] {
			continue
		}
		dims := o.GetType().GetTensorType().GetShape().GetDim()
		if len(dims) > 0 {
			last := dims[len(dims)-1]
			if _, fixed := last.GetValue().(*onnxpb.TensorShapeProto_Dimension_DimValue); fixed {
				last.Value = &onnxpb.TensorShapeProto_Dimension_DimValue{DimValue: classes}
			}
		}
	}
	gp.ValueInfo = slices.DeleteFunc(gp.ValueInfo, func(vi *onnxpb.ValueInfoProto) bool { return down[vi.GetName()] })
}

// IsInjected reports whether a name is one Apply made.
func IsInjected(name string) bool { return strings.HasPrefix(name, Prefix) }
