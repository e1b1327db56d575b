package inject

import (
	"fmt"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
)

// sparseTuner trains chosen entries of a weight or vector as a delta: W_eff = Add(W,
// ScatterND(ConstantOfShape(shape of W), indices [n, rank] int64, values [n]
// trainable, zero)) replaces W where the layer reads it (before any Transpose the
// exporter put behind it), in W's stored layout; the parts of a fused weight chain
// their ScatterNDs on one zero tensor. The entries are a layer's own (mode sparse) or
// extra entries beside its module. It folds exactly: W[idx] += values.
type sparseTuner struct{}

func (sparseTuner) Kind() Kind { return KindSparse }

func (sparseTuner) Delta(p Part) bool { return p == PartValues }

func (sparseTuner) FoldsIntoWeight() bool { return true }

func (sparseTuner) Params(t Target) int64 {
	if t.Layer != nil {
		return int64(len(t.Layer.Indices))
	}
	if t.Vector != nil {
		return int64(len(t.Vector.Indices))
	}
	return 0
}

// sparseSites collects the sparse layers by where they read their weight, so that
// the parts of a fused weight share one zero tensor (flushSparse builds them).
type sparseSites struct {
	order []slot
	at    map[slot][]*LayerPlan
}

// Inject queues a layer's entries; flushSparse builds them (vectors are built with
// the other vectors of their site, see vectorsRewrite).
func (sparseTuner) Inject(b *Builder, t Target) error {
	l := t.Layer
	if l == nil {
		return fmt.Errorf("%s: sparse vectors are built with their site", t.Name())
	}
	st, _ := b.state[KindSparse].(*sparseSites)
	if st == nil {
		st = &sparseSites{at: map[slot][]*LayerPlan{}}
		b.state[KindSparse] = st
	}
	s := b.weightSlot[l.Name]
	if _, ok := st.at[s]; !ok {
		st.order = append(st.order, s)
	}
	st.at[s] = append(st.at[s], l)
	return nil
}

// flushSparse builds the queued sparse deltas of layers.
func flushSparse(b *Builder) {
	st, _ := b.state[KindSparse].(*sparseSites)
	if st == nil {
		return
	}
	for _, s := range st.order {
		ls := st.at[s]
		u0 := b.units[ls[0].Name]
		group := ls[0].Name
		if u0.lin.Fused {
			group = fmt.Sprintf("blocks.%d.qkv", u0.block)
		}
		var parts []sparsePart
		for _, l := range ls {
			parts = append(parts, sparsePart{name: l.Name, flat: l.Indices, base: l.Weight})
		}
		b.g.SetInput(s.node, s.idx, sparseDelta(b, s.value(), group, u0.dims, parts))
	}
	delete(b.state, KindSparse)
}

// sparsePart is one unit's sparse entries in a tensor.
type sparsePart struct {
	name string  // unit name
	flat []int64 // flat indices into the tensor given to sparseDelta
	base string  // the base initializer, for the record
}

// sparseDelta returns Add(x, ScatterND(…ScatterND(ConstantOfShape(dims), idx₁, vals₁)…)),
// x being a tensor of shape dims, with one trainable values initializer per part.
func sparseDelta(b *Builder, x, group string, dims []int64, parts []sparsePart) string {
	gname := Prefix + group
	shape := b.addInt64(gname+"/sparse_shape", []int64{int64(len(dims))}, dims)
	zero, _ := onnxio.NewFloat("value", []int64{1}, []float32{0})
	acc := b.node("ConstantOfShape", gname+"/sparse_zeros", []string{shape},
		&onnxpb.AttributeProto{Name: proto.String("value"), Type: onnxpb.AttributeProto_TENSOR.Enum(), T: zero})
	for _, pt := range parts {
		n := int64(len(pt.flat))
		idx := b.addInt64(Prefix+pt.name+"/sparse_indices", []int64{n, int64(len(dims))}, unravel(pt.flat, dims))
		vals := b.addFloat(Prefix+pt.name+"/sparse_values", []int64{n}, make([]float32, n), true)
		b.record(vals, pt.name, KindSparse, PartValues, pt.base, 0, true)
		b.record(idx, pt.name, KindSparse, PartIndices, pt.base, 0, false)
		acc = b.node("ScatterND", Prefix+pt.name+"/sparse_scatter", []string{acc, idx, vals})
	}
	return b.node("Add", gname+"/sparse_add", []string{x, acc})
}

// sparseIndices are the target's entries: flat indices into the initializer that
// holds it, ascending.
func sparseIndices(t Target) []int64 {
	if t.Layer != nil {
		return t.Layer.Indices
	}
	if t.Vector != nil {
		return t.Vector.Indices
	}
	return nil
}

func (sparseTuner) Fold(w *Weights, m Module) error {
	vals, _, err := w.trainedPart(m, PartValues)
	if err != nil {
		return err
	}
	idx := sparseIndices(m.Target)
	if len(vals) != len(idx) {
		return fmt.Errorf("%s: %d sparse values for %d indices", m.Target.Name(), len(vals), len(idx))
	}
	var dst []float32
	off := int64(0)
	switch t := m.Target; {
	case t.Layer != nil:
		W, err := w.Layer(t.Layer)
		if err != nil {
			return err
		}
		dst = W.Data
	case t.Vector != nil:
		if dst, err = w.Vector(t.Vector); err != nil {
			return err
		}
		off = int64(t.Vector.Offset)
	default:
		return fmt.Errorf("%s: sparse entries of an unknown target", t.Name())
	}
	for k, f := range idx {
		i := f - off
		if i < 0 || i >= int64(len(dst)) {
			return fmt.Errorf("%s: sparse index %d outside its tensor", m.Target.Name(), f)
		}
		dst[i] += vals[k]
	}
	return nil
}

// Fill puts the task's values at their places in the union's index list (zero
// elsewhere); the indices are the union's (their default).
func (sparseTuner) Fill(f *Fill, m Module) error {
	r, err := m.Init(PartValues)
	if err != nil {
		return err
	}
	dst, _, err := f.Out(r, true)
	if err != nil {
		return err
	}
	union := sparseIndices(m.Target)
	if len(union) != len(dst) {
		return fmt.Errorf("%d values for %d indices", len(dst), len(union))
	}
	tm, ok := f.Task.Module(m.Target.Name(), KindSparse)
	if !ok {
		return nil
	}
	task := sparseIndices(tm.Target)
	name, err := tm.Init(PartValues)
	if err != nil {
		return err
	}
	src, _, err := f.TaskFloats(name)
	if err != nil {
		return err
	}
	if len(src) != len(task) {
		return fmt.Errorf("task has %d sparse values of %s for %d indices", len(src), m.Target.Name(), len(task))
	}
	for k, x := range task {
		i, ok := slices.BinarySearch(union, x)
		if !ok {
			return fmt.Errorf("task index %d of %s is not in the adapter-ready model", x, m.Target.Name())
		}
		dst[i] = src[k]
	}
	return nil
}
