package export

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/inject"
	"github.com/sptctl/sptctl/internal/meta"
	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

// ErrNotInjected is returned for a model without sptctl's plan metadata.
var ErrNotInjected = errors.New("not made by `sptctl inject` (no " + meta.KeyPlan + " metadata)")

// Plan returns the plan an injected model stores in its metadata (with its list of
// injected tensors), or ErrNotInjected.
func Plan(m *onnxpb.ModelProto) (*inject.Plan, error) {
	s, ok := onnxio.Metadata(m, meta.KeyPlan)
	if !ok {
		return nil, ErrNotInjected
	}
	p, err := inject.DecodePlan([]byte(s))
	if err != nil {
		return nil, fmt.Errorf("metadata %s: %w", meta.KeyPlan, err)
	}
	if len(p.Injected) == 0 {
		return nil, fmt.Errorf("metadata %s: the plan lists no injected tensors (a plan.json, not an injected model's copy)", meta.KeyPlan)
	}
	return p, nil
}

// CheckBase refuses a base model that is not the one m was injected from.
func CheckBase(p *inject.Plan, base *onnxpb.ModelProto) error {
	fp, err := onnxio.Fingerprint(base.GetGraph())
	if err != nil {
		return err
	}
	if fp != p.BaseFingerprint {
		return fmt.Errorf("the base model is not the one the model was injected from (its fingerprint is %s, the plan's %s)", short(fp), short(p.BaseFingerprint))
	}
	return nil
}

func short(fp string) string {
	if len(fp) > 23 {
		return fp[:23] + "…"
	}
	return fp
}

// MergeReport says what Merge folded and what it kept.
type MergeReport struct {
	LoRA          []string `json:"lora"`           // layers whose LoRA (scaling·B·A) was added to the weight
	SparseEntries int64    `json:"sparse_entries"` // sparse deltas folded (matrices and vectors)
	Changed       []string `json:"changed"`        // base initializers given new values (the head included)
	Added         []string `json:"added"`          // initializers added where a de-duplicated base tensor had to be split
	Adapters      []string `json:"adapters"`       // layers whose Adapter stays as nodes (GELU cannot fold)
	Head          string   `json:"head"`           // what happened to the head
	Nodes         int      `json:"nodes"`          // nodes of the merged graph
	BaseNodes     int      `json:"base_nodes"`     // nodes of the base graph
}

// String describes the merge in a few lines.
func (r *MergeReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "folded %d LoRA modules, %d sparse entries; %d base tensors changed, %d added; %s\n",
		len(r.LoRA), r.SparseEntries, len(r.Changed), len(r.Added), r.Head)
	if len(r.Adapters) > 0 {
		fmt.Fprintf(&b, "%d Adapters cannot fold into the weights (they contain a GELU) and stay as nodes: %s\n",
			len(r.Adapters), strings.Join(r.Adapters, ", "))
	}
	fmt.Fprintf(&b, "graph: %d nodes (base: %d)\n", r.Nodes, r.BaseNodes)
	return b.String()
}

// Merge turns m, a trained model written by inject (and train), into the base model
// with the task's weights: LoRA modules fold into their weight (W += scaling·B·A, in
// W's stored layout, into a fused q/k/v weight's columns or rows of the part), sparse
// deltas into their tensor (W[idx] += values), tuned vectors and the class token
// replace the base's, and the new head takes the old one's place. The injected nodes
// and the initializers no longer read are removed, and so is sptctl's injection
// metadata (the preprocessing stays; meta.KeyMerged records the merge).
//
// base is the model m was injected from (its fingerprint must match the plan's): the
// merged graph is built from its nodes, so that for LoRA and sparse plans it has
// exactly the base graph's nodes, in the same order, reading the same values (the
// head's shape aside). A tensor that the base de-duplicated (one initializer behind
// Identity aliases) but that the task changed for only some of its users becomes a new
// initializer, read through the same alias node. Adapters cannot fold (GELU): their
// nodes stay, inserted just before the first node that needs them, and the report
// lists them.
//
// m is changed only if Merge succeeds; base is not changed.
func Merge(m, base *onnxpb.ModelProto) (*MergeReport, error) {
	p, err := Plan(m)
	if err != nil {
		return nil, err
	}
	if err := CheckBase(p, base); err != nil {
		return nil, err
	}
	mr := &merger{p: p, m: m, base: base, mg: surgery.New(m), bg: surgery.New(base)}
	if err := mr.run(); err != nil {
		return nil, fmt.Errorf("merge: %w", err)
	}
	return mr.report, nil
}

type merger struct {
	p       *inject.Plan
	m, base *onnxpb.ModelProto
	mg, bg  *surgery.Graph
	ev      *evaluator
	report  *MergeReport

	records map[string]inject.Injected // by initializer name
	nodes   []*onnxpb.NodeProto        // the base nodes, cloned: the merged graph's skeleton
	twin    []*onnxpb.NodeProto        // each base node's counterpart in m (nil if removed)
	isTwin  map[*onnxpb.NodeProto]bool
	extra   map[*onnxpb.NodeProto]*onnxpb.NodeProto // m's injected nodes kept, and their clones
	slots   []*pslot
	chains  map[string]string // injected value → the value the merged graph reads instead

	headBias string // a base head without bias: the init name of the task head's bias
	headFold bool   // … folded into the head Gemm's C input
}

// pslot is a place where a base node reads a base initializer (through aliases).
type pslot struct {
	node, idx int
	bval, src string  // the value read in the base, and its initializer
	t         *tensor // what the merged graph must read there
}

func (mr *merger) run() error {
	mr.ev = newEvaluator(mr.mg, mr.bg)
	mr.report = &MergeReport{Changed: []string{}, Added: []string{}, LoRA: []string{}, Adapters: []string{}}
	mr.records = map[string]inject.Injected{}
	for _, r := range mr.p.Injected {
		mr.records[r.Init] = r
	}
	bv, err := surgery.FindViT(mr.bg)
	if err != nil {
		return fmt.Errorf("base model: %w", err)
	}
	if err := mr.pairNodes(); err != nil {
		return err
	}
	mr.chains = map[string]string{}
	if err := mr.headWithoutBias(bv); err != nil {
		return err
	}
	if err := mr.findSlots(); err != nil {
		return err
	}
	if err := mr.foldLoRA(bv); err != nil {
		return err
	}
	inits, err := mr.materialize()
	if err != nil {
		return err
	}
	order, err := mr.order()
	if err != nil {
		return err
	}
	mr.finish(order, inits)
	return nil
}

// pairNodes clones the base nodes and finds each one's counterpart in m (by name when
// names are unique, else by the first output).
func (mr *merger) pairNodes() error {
	byName := func(ns []*onnxpb.NodeProto) map[string]*onnxpb.NodeProto {
		out := map[string]*onnxpb.NodeProto{}
		dup := map[string]bool{}
		for _, n := range ns {
			if _, ok := out[n.GetName()]; ok {
				dup[n.GetName()] = true
			}
			out[n.GetName()] = n
		}
		for k := range dup {
			delete(out, k)
		}
		delete(out, "")
		return out
	}
	bnames, mnames := byName(mr.bg.Nodes()), byName(mr.mg.Nodes())
	mr.isTwin = map[*onnxpb.NodeProto]bool{}
	for _, n := range mr.bg.Nodes() {
		mr.nodes = append(mr.nodes, proto.Clone(n).(*onnxpb.NodeProto))
		var t *onnxpb.NodeProto
		if _, ok := bnames[n.GetName()]; ok {
			t = mnames[n.GetName()]
		} else if len(n.Output) > 0 {
			t = mr.mg.Producer(n.Output[0])
		}
		if t != nil && (t.GetOpType() != n.GetOpType() || inject.IsInjected(t.GetName()) || mr.isTwin[t]) {
			t = nil
		}
		if t != nil {
			mr.isTwin[t] = true
		}
		mr.twin = append(mr.twin, t)
	}
	return nil
}

// isAlias reports whether a base node is an Identity re-exposing an initializer.
func (mr *merger) isAlias(n *onnxpb.NodeProto) bool {
	return n.GetOpType() == "Identity" && len(n.Input) == 1 && mr.bg.Initializer(mr.bg.Source(n.Input[0])) != nil
}

// findSlots walks every input of every base node: where it reads a base initializer,
// the merged graph must read the constant the injected model computes there; where
// the injected model reads a branch sum instead of a layer's output, the merged graph
// reads the output plus whatever cannot fold.
func (mr *merger) findSlots() error {
	for i, n := range mr.bg.Nodes() {
		if mr.isAlias(n) {
			continue
		}
		t := mr.twin[i]
		for idx, bval := range n.Input {
			if bval == "" {
				continue
			}
			mval := bval
			if t != nil && idx < len(t.Input) {
				mval = t.Input[idx]
			}
			src := mr.bg.Source(bval)
			if mr.bg.Initializer(src) != nil {
				v, err := mr.ev.value(mval)
				if err != nil {
					return fmt.Errorf("node %s input %d reads %s in the trained model: %w", n.GetName(), idx, mval, err)
				}
				mr.slots = append(mr.slots, &pslot{node: i, idx: idx, bval: bval, src: src, t: v})
				continue
			}
			if mval == bval {
				continue
			}
			nv, err := mr.chain(mval, bval)
			if err != nil {
				return fmt.Errorf("node %s input %d: %w", n.GetName(), idx, err)
			}
			mr.nodes[i].Input[idx] = nv
		}
	}
	return nil
}

// chain undoes the branch sums inject put on a layer output bval (read as mval):
// Add(…Add(bval, d₁)…, dₙ). LoRA branches fold into the weight (and the bias of a head
// that had none into its Gemm); Adapter branches cannot, and stay. It returns the value
// the merged graph reads.
func (mr *merger) chain(mval, bval string) (string, error) {
	if v, ok := mr.chains[mval]; ok {
		return v, nil
	}
	var adds []*onnxpb.NodeProto
	for v := mval; v != bval; {
		a := mr.mg.Producer(v)
		if a == nil || a.GetOpType() != "Add" || len(a.Input) != 2 || mr.isTwin[a] {
			return "", fmt.Errorf("the trained model reads %s where the base reads %s, and it is not a sum of injected branches", mval, bval)
		}
		adds = append(adds, a)
		v = a.Input[0]
	}
	slices.Reverse(adds)
	sum := bval
	for _, a := range adds {
		kind, err := mr.branchKind(a.Input[1])
		if err != nil {
			return "", err
		}
		switch {
		case kind == "lora", kind == "head_bias" && mr.headFold:
			continue // folded
		case kind == "adapter", kind == "head_bias":
			c := mr.keep(a)
			c.Input[0] = sum
			sum = c.Output[0]
		}
	}
	mr.chains[mval] = sum
	return sum, nil
}

// branchKind tells a LoRA branch from an Adapter by the injected tensors it reads.
func (mr *merger) branchKind(v string) (string, error) {
	seen := map[string]bool{}
	kinds := map[string]bool{}
	var walk func(v string)
	walk = func(v string) {
		if seen[v] {
			return
		}
		seen[v] = true
		if r, ok := mr.records[v]; ok {
			switch {
			case strings.HasPrefix(r.Role, "lora_"):
				kinds["lora"] = true
			case strings.HasPrefix(r.Role, "adapter_"):
				kinds["adapter"] = true
			case r.Of == "head.bias":
				kinds["head_bias"] = true
			}
			return
		}
		if mr.bg.Producer(v) != nil || mr.bg.Initializer(v) != nil {
			return // a base value: the branch's input
		}
		if n := mr.mg.Producer(v); n != nil && !mr.isTwin[n] {
			for _, x := range n.Input {
				walk(x)
			}
		}
	}
	walk(v)
	if len(kinds) != 1 {
		ks := slices.Sorted(mapsKeys(kinds))
		return "", fmt.Errorf("branch %s: cannot tell what it is (reads injected tensors of kinds %v)", v, ks)
	}
	for k := range kinds {
		return k, nil
	}
	return "", nil
}

func mapsKeys(m map[string]bool) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// keep returns the merged graph's copy of an injected node of m.
func (mr *merger) keep(n *onnxpb.NodeProto) *onnxpb.NodeProto {
	if mr.extra == nil {
		mr.extra = map[*onnxpb.NodeProto]*onnxpb.NodeProto{}
	}
	if c, ok := mr.extra[n]; ok {
		return c
	}
	c := proto.Clone(n).(*onnxpb.NodeProto)
	mr.extra[n] = c
	return c
}

// headWithoutBias handles a base head that had no bias (inject then adds an Add with
// a trainable bias): for a Gemm the bias becomes its C input, otherwise the Add stays.
func (mr *merger) headWithoutBias(bv *surgery.ViT) error {
	if bv.Head.Bias != "" {
		return nil
	}
	for _, r := range mr.p.Injected {
		if r.Of == "head.bias" && r.Base == "" {
			mr.headBias = r.Init
		}
	}
	if mr.headBias == "" {
		return nil
	}
	hi := slices.Index(mr.bg.Nodes(), bv.Head.Node)
	if hi < 0 {
		return errors.New("head node not found")
	}
	h := mr.nodes[hi]
	if h.GetOpType() == "Gemm" && len(h.Input) == 2 {
		mr.headFold = true
		h.Input = append(h.Input, mr.headBias) // materialize renames it
		return nil
	}
	// The head keeps its Add: where the head wrote a graph output, the Add writes it now.
	if t := mr.twin[hi]; t != nil && len(t.Output) > 0 && t.Output[0] != h.Output[0] {
		h.Output[0] = t.Output[0]
	}
	return nil
}

// foldLoRA adds scaling·B·A of every LoRA module into the weight its layer reads.
func (mr *merger) foldLoRA(bv *surgery.ViT) error {
	scaling := mr.p.Options.LoRAScaling
	if scaling == 0 {
		scaling = 1
	}
	linears := map[string]*surgery.Linear{}
	for _, l := range bv.Linears() {
		linears[l.Name] = l
	}
	layers := map[string]*inject.LayerPlan{}
	for i := range mr.p.Layers {
		layers[mr.p.Layers[i].Name] = &mr.p.Layers[i]
	}
	type parts struct{ a, b string }
	byLayer := map[string]*parts{}
	var order []string
	for _, r := range mr.p.Injected {
		if r.Role != "lora_A" && r.Role != "lora_B" {
			continue
		}
		if byLayer[r.Of] == nil {
			byLayer[r.Of] = &parts{}
			order = append(order, r.Of)
		}
		if r.Role == "lora_A" {
			byLayer[r.Of].a = r.Init
		} else {
			byLayer[r.Of].b = r.Init
		}
	}
	work := map[*pslot][]float32{}
	for _, name := range order {
		pt := byLayer[name]
		l, lp := linears[name], layers[name]
		if l == nil || lp == nil || pt.a == "" || pt.b == "" {
			return fmt.Errorf("LoRA of %s: layer or tensors not found", name)
		}
		s := mr.weightSlot(l)
		if s == nil {
			return fmt.Errorf("LoRA of %s: cannot find where the base reads its weight %s", name, l.Weight)
		}
		ta, err := mr.ev.value(pt.a)
		if err != nil {
			return err
		}
		tb, err := mr.ev.value(pt.b)
		if err != nil {
			return err
		}
		A, err := ta.floats()
		if err != nil {
			return fmt.Errorf("%s: %w", pt.a, err)
		}
		B, err := tb.floats()
		if err != nil {
			return fmt.Errorf("%s: %w", pt.b, err)
		}
		in, out := l.In, l.Out
		if len(A)%in != 0 || len(B) != out*(len(A)/in) {
			return fmt.Errorf("LoRA of %s: A %v and B %v do not fit a %dx%d layer", name, ta.dims, tb.dims, in, out)
		}
		r := len(A) / in
		w := work[s]
		if w == nil {
			if w, err = s.t.floats(); err != nil {
				return fmt.Errorf("weight of %s: %w", name, err)
			}
			work[s] = w
		}
		if len(s.t.dims) != 2 {
			return fmt.Errorf("weight of %s has shape %v", name, s.t.dims)
		}
		cols := s.t.dims[1]
		for o := 0; o < out; o++ {
			for i := 0; i < in; i++ {
				var d float64
				for k := 0; k < r; k++ {
					d += float64(B[o*r+k]) * float64(A[k*in+i])
				}
				var at int64
				if l.Layout == surgery.InOut {
					at = int64(i)*cols + int64(l.Offset+o)
				} else {
					at = int64(l.Offset+o)*cols + int64(i)
				}
				w[at] = float32(float64(w[at]) + scaling*d)
			}
		}
		mr.report.LoRA = append(mr.report.LoRA, name)
	}
	for s, w := range work {
		s.t = floatTensor(s.t.dims, w)
	}
	return nil
}

// weightSlot is the slot where the base reads l's weight.
func (mr *merger) weightSlot(l *surgery.Linear) *pslot {
	n := l.Node
	if l.Transpose != nil {
		n = l.Transpose
	}
	i := slices.Index(mr.bg.Nodes(), n)
	for _, s := range mr.slots {
		if s.node == i && s.bval == l.WeightValue {
			return s
		}
	}
	return nil
}

// materialize decides, for every base initializer, what the merged graph holds: its
// base value, the task's value in its place, or (when its users now need different
// values) the value most of them keep plus new initializers for the others, read
// through the same alias nodes. It returns the merged initializers by name.
func (mr *merger) materialize() (map[string]*onnxpb.TensorProto, error) {
	inits := map[string]*onnxpb.TensorProto{}
	type class struct {
		t     *tensor
		slots []*pslot
	}
	var srcs []string
	bySrc := map[string][]*pslot{}
	for _, s := range mr.slots {
		if _, ok := bySrc[s.src]; !ok {
			srcs = append(srcs, s.src)
		}
		bySrc[s.src] = append(bySrc[s.src], s)
	}
	used := map[string]bool{}
	for _, t := range mr.base.Graph.GetInitializer() {
		used[t.GetName()] = true
	}
	for _, t := range mr.m.Graph.GetInitializer() {
		used[t.GetName()] = true
	}
	for _, n := range append(slices.Clone(mr.bg.Nodes()), mr.mg.Nodes()...) {
		for _, o := range n.Output {
			used[o] = true
		}
	}
	unique := func(base string) string {
		name := base
		for i := 2; used[name]; i++ {
			name = fmt.Sprintf("%s_%d", base, i)
		}
		used[name] = true
		return name
	}
	// The merged graph's consumers of every base value, to know when an alias can be
	// re-pointed as a whole.
	readers := map[string]int{}
	for i, n := range mr.bg.Nodes() {
		if mr.isAlias(n) {
			continue
		}
		for _, x := range mr.nodes[i].Input {
			readers[x]++
		}
	}
	for _, o := range mr.base.Graph.GetOutput() {
		readers[o.GetName()]++
	}
	for _, src := range srcs {
		b0, err := leaf(mr.bg.Initializer(src))
		if err != nil {
			return nil, err
		}
		var classes []*class
		for _, s := range bySrc[src] {
			i := slices.IndexFunc(classes, func(c *class) bool { return c.t.equal(s.t) })
			if i < 0 {
				classes = append(classes, &class{t: s.t})
				i = len(classes) - 1
			}
			classes[i].slots = append(classes[i].slots, s)
		}
		keeper := slices.IndexFunc(classes, func(c *class) bool { return c.t.equal(b0) })
		if keeper < 0 {
			keeper = slices.IndexFunc(classes, func(c *class) bool {
				return slices.ContainsFunc(c.slots, func(s *pslot) bool { return s.bval == src })
			})
		}
		keeper = max(keeper, 0)
		inits[src] = mr.initFor(src, classes[keeper].t)
		if !classes[keeper].t.equal(b0) {
			mr.report.Changed = append(mr.report.Changed, src)
		}
		for ci, c := range classes {
			if ci == keeper {
				continue
			}
			base := c.slots[0].bval
			name := unique(base + "_tuned")
			inits[name] = c.t.proto(name)
			mr.report.Added = append(mr.report.Added, name)
			perValue := map[string]int{}
			for _, s := range c.slots {
				perValue[s.bval]++
			}
			for _, s := range c.slots {
				if s.bval != src && perValue[s.bval] == readers[s.bval] {
					if a := mr.bg.Producer(s.bval); a != nil && a.GetOpType() == "Identity" {
						mr.nodes[slices.Index(mr.bg.Nodes(), a)].Input[0] = name
						continue
					}
				}
				mr.nodes[s.node].Input[s.idx] = name
			}
		}
	}
	if mr.headFold {
		name := unique("head.bias")
		t, err := mr.ev.value(mr.headBias)
		if err != nil {
			return nil, err
		}
		inits[name] = t.proto(name)
		for _, n := range mr.nodes {
			for i, x := range n.Input {
				if x == mr.headBias {
					n.Input[i] = name
				}
			}
		}
		mr.report.Added = append(mr.report.Added, name)
	}
	for _, l := range mr.p.Layers {
		mr.report.SparseEntries += int64(len(l.Indices))
		if l.Mode == inject.ModeAdapter {
			mr.report.Adapters = append(mr.report.Adapters, l.Name)
		}
	}
	for _, v := range mr.p.Vectors {
		mr.report.SparseEntries += int64(len(v.Indices))
	}
	return inits, nil
}

// initFor is the merged initializer src holding t: m's or the base's own when they
// hold t already, else a new one.
func (mr *merger) initFor(src string, t *tensor) *onnxpb.TensorProto {
	if mt := mr.mg.Initializer(src); mt != nil {
		if l, err := leaf(mt); err == nil && l.equal(t) {
			return mt
		}
	}
	return t.proto(src)
}

// order lists the merged nodes: the base's in the base's order, each kept injected
// node just before the first node that reads it.
func (mr *merger) order() ([]*onnxpb.NodeProto, error) {
	// Injected nodes the merged graph needs, found from what the base nodes read.
	producer := map[string]*onnxpb.NodeProto{} // value → m's injected node writing it
	for _, n := range mr.mg.Nodes() {
		if !mr.isTwin[n] {
			for _, o := range n.Output {
				producer[o] = n
			}
		}
	}
	baseOut := map[string]bool{}
	for _, n := range mr.nodes {
		for _, o := range n.Output {
			baseOut[o] = true
		}
	}
	// Dropout is the identity at inference: a kept branch reads its input directly.
	resolve := func(v string) string {
		for i := 0; i < 8; i++ {
			p := producer[v]
			if p == nil || baseOut[v] || p.GetOpType() != "Dropout" || len(p.Input) == 0 {
				break
			}
			v = p.Input[0]
		}
		return v
	}
	var extras []*onnxpb.NodeProto // clones, in m's order of their originals
	var need func(v string)
	need = func(v string) {
		if baseOut[v] {
			return
		}
		p := producer[v]
		if p == nil {
			return
		}
		_, had := mr.extra[p]
		c := mr.keep(p)
		if had && slices.Contains(extras, c) {
			return
		}
		extras = append(extras, c)
		for i, x := range c.Input {
			c.Input[i] = resolve(x)
			need(c.Input[i])
		}
	}
	for _, n := range mr.nodes {
		for i, x := range n.Input {
			n.Input[i] = resolve(x)
			need(n.Input[i])
		}
	}
	for _, o := range mr.m.Graph.GetOutput() {
		need(o.GetName())
	}
	writer := map[string]*onnxpb.NodeProto{}
	for _, c := range extras {
		for _, o := range c.Output {
			writer[o] = c
		}
	}
	var out []*onnxpb.NodeProto
	state := map[*onnxpb.NodeProto]int{} // 1 visiting, 2 done
	var visit func(n *onnxpb.NodeProto) error
	visit = func(n *onnxpb.NodeProto) error {
		switch state[n] {
		case 1:
			return fmt.Errorf("cycle through node %s", n.GetName())
		case 2:
			return nil
		}
		state[n] = 1
		for _, x := range n.Input {
			if w := writer[x]; w != nil {
				if err := visit(w); err != nil {
					return err
				}
			}
		}
		state[n] = 2
		out = append(out, n)
		return nil
	}
	for _, n := range mr.nodes {
		if err := visit(n); err != nil {
			return nil, err
		}
	}
	for _, c := range extras {
		if err := visit(c); err != nil {
			return nil, err
		}
	}
	avail := map[string]bool{"": true}
	for _, v := range mr.m.Graph.GetInput() {
		avail[v.GetName()] = true
	}
	for _, n := range out {
		for _, x := range n.Input {
			if !avail[x] && (writer[x] != nil || baseOut[x]) {
				return nil, fmt.Errorf("node %s reads %s before it is computed", n.GetName(), x)
			}
		}
		for _, o := range n.Output {
			avail[o] = true
		}
	}
	return out, nil
}

// finish writes the merged graph into m.
func (mr *merger) finish(nodes []*onnxpb.NodeProto, inits map[string]*onnxpb.TensorProto) {
	g := mr.m.Graph
	read := map[string]bool{}
	produced := map[string]bool{}
	for _, n := range nodes {
		for _, x := range n.Input {
			read[x] = true
		}
		for _, o := range n.Output {
			produced[o] = true
		}
	}
	for _, o := range g.GetOutput() {
		read[o.GetName()] = true
	}
	var list []*onnxpb.TensorProto
	done := map[string]bool{}
	add := func(name string, t *onnxpb.TensorProto) {
		if done[name] || !read[name] || t == nil {
			return
		}
		done[name] = true
		list = append(list, t)
	}
	pick := func(name string) *onnxpb.TensorProto {
		if t, ok := inits[name]; ok {
			return t
		}
		if t := mr.mg.Initializer(name); t != nil {
			return t
		}
		if t := mr.bg.Initializer(name); t != nil {
			return proto.Clone(t).(*onnxpb.TensorProto)
		}
		return nil
	}
	for _, t := range mr.base.Graph.GetInitializer() {
		add(t.GetName(), pick(t.GetName()))
	}
	for _, t := range g.GetInitializer() {
		add(t.GetName(), pick(t.GetName()))
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for k := range inits {
			if !yield(k) {
				return
			}
		}
	})
	for _, name := range names {
		add(name, inits[name])
	}
	wasInit := map[string]bool{}
	for _, t := range g.GetInitializer() {
		wasInit[t.GetName()] = true
	}
	g.Input = slices.DeleteFunc(g.Input, func(v *onnxpb.ValueInfoProto) bool {
		return wasInit[v.GetName()] && !done[v.GetName()]
	})
	g.ValueInfo = slices.DeleteFunc(g.ValueInfo, func(v *onnxpb.ValueInfoProto) bool { return !produced[v.GetName()] })
	g.Node = nodes
	g.Initializer = list

	summary := mr.p.Summary()
	note := meta.MergedNote{BaseFingerprint: mr.p.BaseFingerprint, Plan: summary, Adapters: mr.report.Adapters,
		Note: "merged by sptctl export: LoRA, sparse deltas, tuned vectors and the head are folded into the base weights"}
	if len(mr.report.Adapters) > 0 {
		note.Note += "; Adapters cannot fold (GELU) and stay as nodes"
	}
	drop := map[string]bool{meta.KeyTrainable: true, meta.KeyPlan: true, meta.KeyBaseFingerprint: true,
		meta.KeyHeadSeed: true, meta.KeyBasePath: true}
	mr.m.MetadataProps = slices.DeleteFunc(mr.m.MetadataProps, func(e *onnxpb.StringStringEntryProto) bool { return drop[e.GetKey()] })
	_ = meta.Set(mr.m, meta.KeyMerged, note)

	mr.report.Head = fmt.Sprintf("the base's head, trained (%d classes)", mr.p.Head.Classes)
	for _, r := range mr.p.Injected {
		if r.Of == "head.weight" && r.Base == "" {
			mr.report.Head = fmt.Sprintf("new head for %d classes in place of the base's", mr.p.Head.Classes)
		}
	}
	mr.report.Nodes, mr.report.BaseNodes = len(nodes), len(mr.bg.Nodes())
}
