// Package surgery indexes an ONNX graph for reading and rewriting, and finds the parts
// of a vision transformer in it whatever exporter wrote it.
//
// A Graph knows the producer and consumers of every value and the initializers, sees
// through the Identity nodes that exporters put in front of de-duplicated initializers,
// adds nodes and initializers under unique names, removes dead nodes and sorts the
// nodes topologically. FindViT reads the transformer's structure (blocks, their q, k,
// v, attention-output, fc1 and fc2 linear layers, LayerNorms, embeddings and head) from
// the op pattern between LayerNorms, not from names.
package surgery

import (
	"fmt"
	"slices"
	"strconv"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// Graph is an index over an ONNX model's main graph. Its methods keep the index up to
// date; after changing the protobuf directly, call Reindex.
type Graph struct {
	Model     *onnxpb.ModelProto
	producer  map[string]*onnxpb.NodeProto
	consumers map[string][]*onnxpb.NodeProto
	inits     map[string]*onnxpb.TensorProto
	used      map[string]bool // every node and value name, for UniqueName
}

// New indexes m's graph. The graph is shared, not copied.
func New(m *onnxpb.ModelProto) *Graph {
	g := &Graph{Model: m}
	g.Reindex()
	return g
}

// Proto is the indexed GraphProto.
func (g *Graph) Proto() *onnxpb.GraphProto { return g.Model.GetGraph() }

// Nodes are the graph's nodes in file order.
func (g *Graph) Nodes() []*onnxpb.NodeProto { return g.Proto().GetNode() }

// Reindex rebuilds the index from the protobuf.
func (g *Graph) Reindex() {
	gp := g.Proto()
	g.producer = map[string]*onnxpb.NodeProto{}
	g.consumers = map[string][]*onnxpb.NodeProto{}
	g.inits = map[string]*onnxpb.TensorProto{}
	g.used = map[string]bool{}
	for _, t := range gp.GetInitializer() {
		g.inits[t.GetName()] = t
		g.used[t.GetName()] = true
	}
	for _, v := range gp.GetInput() {
		g.used[v.GetName()] = true
	}
	for _, v := range gp.GetOutput() {
		g.used[v.GetName()] = true
	}
	for _, n := range gp.GetNode() {
		g.indexNode(n)
	}
}

func (g *Graph) indexNode(n *onnxpb.NodeProto) {
	g.used[n.GetName()] = true
	for _, in := range n.Input {
		if in != "" && !containsNode(g.consumers[in], n) {
			g.consumers[in] = append(g.consumers[in], n)
		}
		g.used[in] = true
	}
	for _, out := range n.Output {
		if out != "" {
			g.producer[out] = n
			g.used[out] = true
		}
	}
}

func containsNode(ns []*onnxpb.NodeProto, n *onnxpb.NodeProto) bool {
	for _, m := range ns {
		if m == n {
			return true
		}
	}
	return false
}

// Producer is the node whose output is value, or nil (graph input, initializer).
func (g *Graph) Producer(value string) *onnxpb.NodeProto { return g.producer[value] }

// Consumers are the nodes that read value, in file order.
func (g *Graph) Consumers(value string) []*onnxpb.NodeProto { return g.consumers[value] }

// IsOutput reports whether value is a graph output.
func (g *Graph) IsOutput(value string) bool {
	for _, o := range g.Proto().GetOutput() {
		if o.GetName() == value {
			return true
		}
	}
	return false
}

// Initializer is the initializer named name, or nil.
func (g *Graph) Initializer(name string) *onnxpb.TensorProto { return g.inits[name] }

// Source follows value back through Identity nodes to where it comes from: the name
// of an initializer (for a de-duplicated initializer's alias) or of the first value
// that is not an Identity's output.
func (g *Graph) Source(value string) string {
	for i := 0; i < 64; i++ { // bounded: a malformed graph may have an Identity cycle
		p := g.producer[value]
		if p == nil || p.GetOpType() != "Identity" || len(p.Input) == 0 {
			return value
		}
		value = p.Input[0]
	}
	return value
}

// Const returns the constant tensor that value holds, through Identity aliases: an
// initializer or the value of a Constant node. Nil if value is computed at run time.
func (g *Graph) Const(value string) *onnxpb.TensorProto {
	src := g.Source(value)
	if t := g.inits[src]; t != nil {
		return t
	}
	if p := g.producer[src]; p != nil && p.GetOpType() == "Constant" {
		for _, a := range p.Attribute {
			if a.GetName() == "value" && a.T != nil {
				return a.T
			}
		}
	}
	return nil
}

// UniqueName returns base if no node or value uses it yet, else base_2, base_3, ...
// The name is reserved.
func (g *Graph) UniqueName(base string) string {
	name := base
	for i := 2; g.used[name]; i++ {
		name = base + "_" + strconv.Itoa(i)
	}
	g.used[name] = true
	return name
}

// AddInitializer adds t, renaming it if its name is taken; it returns the name used.
func (g *Graph) AddInitializer(t *onnxpb.TensorProto) string {
	if g.used[t.GetName()] {
		t.Name = proto.String(g.UniqueName(t.GetName()))
	}
	g.used[t.GetName()] = true
	g.inits[t.GetName()] = t
	gp := g.Proto()
	gp.Initializer = append(gp.Initializer, t)
	return t.GetName()
}

// AddNode appends a node named (uniquely) after name, reading inputs and writing one
// output per entry of outputs, each also made unique. It returns the node; its
// outputs hold the names used. Call TopoSort after a rewrite to restore the order.
func (g *Graph) AddNode(op, name string, inputs, outputs []string, attrs ...*onnxpb.AttributeProto) *onnxpb.NodeProto {
	n := &onnxpb.NodeProto{OpType: proto.String(op), Name: proto.String(g.UniqueName(name)), Input: append([]string(nil), inputs...), Attribute: attrs}
	for _, o := range outputs {
		n.Output = append(n.Output, g.UniqueName(o))
	}
	gp := g.Proto()
	gp.Node = append(gp.Node, n)
	g.indexNode(n)
	return n
}

// SetInput makes n read value as its i-th input.
func (g *Graph) SetInput(n *onnxpb.NodeProto, i int, value string) {
	old := n.Input[i]
	n.Input[i] = value
	if !containsString(n.Input, old) {
		cs := g.consumers[old]
		for j, c := range cs {
			if c == n {
				g.consumers[old] = append(cs[:j:j], cs[j+1:]...)
				break
			}
		}
	}
	if !containsNode(g.consumers[value], n) {
		g.consumers[value] = append(g.consumers[value], n)
	}
	g.used[value] = true
}

// ReplaceUses makes every consumer of old except those in keep read value instead,
// and renames a graph output old to value.
func (g *Graph) ReplaceUses(old, value string, keep ...*onnxpb.NodeProto) {
	for _, c := range append([]*onnxpb.NodeProto(nil), g.consumers[old]...) {
		if containsNode(keep, c) {
			continue
		}
		for i, in := range c.Input {
			if in == old {
				g.SetInput(c, i, value)
			}
		}
	}
}

func containsString(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// RemoveDeadNodes is the graph clean-up every rewrite ends with: it removes nodes none
// of whose outputs is read or is a graph output (repeatedly), then initializers no
// node reads, graph inputs that named a removed initializer (IR < 4 lists
// initializers as inputs too) and value_info for values nothing produces any more. It
// returns the number of nodes removed.
func (g *Graph) RemoveDeadNodes() int {
	gp := g.Proto()
	outputs := map[string]bool{}
	for _, o := range gp.GetOutput() {
		outputs[o.GetName()] = true
	}
	removed := 0
	for {
		live := map[string]bool{}
		for k := range outputs {
			live[k] = true
		}
		for _, n := range gp.Node {
			for _, in := range n.Input {
				live[in] = true
			}
		}
		before := len(gp.Node)
		gp.Node = slices.DeleteFunc(gp.Node, func(n *onnxpb.NodeProto) bool {
			return !slices.ContainsFunc(n.Output, func(o string) bool { return live[o] })
		})
		removed += before - len(gp.Node)
		if len(gp.Node) == before {
			break
		}
	}
	read, produced := map[string]bool{}, map[string]bool{}
	for _, n := range gp.Node {
		for _, in := range n.Input {
			read[in] = true
		}
		for _, o := range n.Output {
			produced[o] = true
		}
	}
	for k := range outputs {
		read[k] = true
	}
	dropped := map[string]bool{}
	gp.Initializer = slices.DeleteFunc(gp.Initializer, func(t *onnxpb.TensorProto) bool {
		dropped[t.GetName()] = !read[t.GetName()]
		return dropped[t.GetName()]
	})
	gp.Input = slices.DeleteFunc(gp.Input, func(v *onnxpb.ValueInfoProto) bool { return dropped[v.GetName()] })
	gp.ValueInfo = slices.DeleteFunc(gp.ValueInfo, func(v *onnxpb.ValueInfoProto) bool { return !produced[v.GetName()] })
	g.Reindex()
	return removed
}

// TopoSort orders the graph's nodes with SortNodes.
func (g *Graph) TopoSort() error {
	order, err := SortNodes(g.Proto().GetNode())
	if err != nil {
		return err
	}
	g.Proto().Node = order
	return nil
}

// SortNodes returns nodes ordered so that every node comes after the producers (in
// the list) of its inputs. It is stable: nodes keep their order, and a node that must
// move (one appended by a rewrite) lands just before its first consumer, so a
// rewritten graph reads like the original with the new nodes inline. It is the one
// topological sort: every package that orders nodes uses it.
func SortNodes(nodes []*onnxpb.NodeProto) ([]*onnxpb.NodeProto, error) {
	producer := map[string]*onnxpb.NodeProto{}
	for _, n := range nodes {
		for _, o := range n.Output {
			if o != "" {
				producer[o] = n
			}
		}
	}
	const (
		unseen = iota
		visiting
		placed
	)
	state := make(map[*onnxpb.NodeProto]int, len(nodes))
	order := make([]*onnxpb.NodeProto, 0, len(nodes))
	var visit func(n *onnxpb.NodeProto) error
	visit = func(n *onnxpb.NodeProto) error {
		switch state[n] {
		case placed:
			return nil
		case visiting:
			return fmt.Errorf("graph has a cycle through node %q", n.GetName())
		}
		state[n] = visiting
		for _, in := range n.Input {
			if p := producer[in]; p == n {
				return fmt.Errorf("graph has a cycle: node %q reads its own output %q", n.GetName(), in)
			} else if p != nil {
				if err := visit(p); err != nil {
					return err
				}
			}
		}
		state[n] = placed
		order = append(order, n)
		return nil
	}
	for _, n := range nodes {
		if err := visit(n); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// Attribute helpers.

// Attr returns n's attribute name, or nil.
func Attr(n *onnxpb.NodeProto, name string) *onnxpb.AttributeProto {
	for _, a := range n.GetAttribute() {
		if a.GetName() == name {
			return a
		}
	}
	return nil
}

// AttrInt returns an INT attribute, or def if n has none.
func AttrInt(n *onnxpb.NodeProto, name string, def int64) int64 {
	if a := Attr(n, name); a != nil {
		return a.GetI()
	}
	return def
}

// AttrInts returns an INTS attribute, or nil.
func AttrInts(n *onnxpb.NodeProto, name string) []int64 {
	if a := Attr(n, name); a != nil {
		return a.GetInts()
	}
	return nil
}

// AttrFloat returns a FLOAT attribute, or def.
func AttrFloat(n *onnxpb.NodeProto, name string, def float32) float32 {
	if a := Attr(n, name); a != nil {
		return a.GetF()
	}
	return def
}

// AttrString returns a STRING attribute, or def.
func AttrString(n *onnxpb.NodeProto, name, def string) string {
	if a := Attr(n, name); a != nil {
		return string(a.GetS())
	}
	return def
}

// IntAttr makes an INT attribute.
func IntAttr(name string, v int64) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_INT.Enum(), I: proto.Int64(v)}
}

// IntsAttr makes an INTS attribute.
func IntsAttr(name string, v ...int64) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_INTS.Enum(), Ints: v}
}

// FloatAttr makes a FLOAT attribute.
func FloatAttr(name string, v float32) *onnxpb.AttributeProto {
	return &onnxpb.AttributeProto{Name: proto.String(name), Type: onnxpb.AttributeProto_FLOAT.Enum(), F: proto.Float32(v)}
}

// ShallowCopy returns a copy of m for rewriting that shares m's initializer tensors:
// nodes, inputs, outputs, value_info and metadata are deep copies, the initializer list
// is a new list of m's TensorProtos. Rewriting the copy's graph (adding, rewiring or
// removing nodes and initializers) leaves m as it was; changing a shared tensor's
// contents in place would not. m is only read.
func ShallowCopy(m *onnxpb.ModelProto) *onnxpb.ModelProto {
	g := m.GetGraph()
	c := cloneExcept(m, "graph").(*onnxpb.ModelProto)
	if g != nil {
		c.Graph = cloneExcept(g, "initializer").(*onnxpb.GraphProto)
		c.Graph.Initializer = slices.Clone(g.GetInitializer())
	}
	return c
}

// cloneExcept deep-copies msg without one of its fields (left unset in the copy).
func cloneExcept(msg proto.Message, field protoreflect.Name) proto.Message {
	src := msg.ProtoReflect()
	shell := src.New()
	src.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Name() != field {
			shell.Set(fd, v) // shares v; the Clone below copies it
		}
		return true
	})
	return proto.Clone(shell.Interface())
}
