package inject

import (
	"fmt"
	"slices"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

// Matrix is a block matrix inside the stored tensor that holds it: entry (output
// unit o, input i) is Data[At(o, i)]. A part of a fused q/k/v weight is a block of
// rows or columns of Data.
type Matrix struct {
	Data    []float32
	In, Out int
	at      func(o, i int) int
}

// At is the flat index of entry (o, i).
func (m Matrix) At(o, i int) int { return m.at(o, i) }

// MatrixOf views layer l inside a stored tensor of dims (l.Weight, or a copy of it).
func MatrixOf(l *LayerPlan, data []float32, dims []int64) (Matrix, error) {
	if len(dims) != 2 || int64(len(data)) != dims[0]*dims[1] {
		return Matrix{}, fmt.Errorf("layer %s: weight of shape %v", l.Name, dims)
	}
	m := Matrix{Data: data, In: l.In, Out: l.Out}
	if l.Layout == surgery.OutIn.String() {
		if dims[1] != int64(l.In) || int64(l.Offset+l.Out) > dims[0] {
			return Matrix{}, fmt.Errorf("layer %s does not fit its weight %v", l.Name, dims)
		}
		in, off := l.In, l.Offset
		m.at = func(o, i int) int { return (off+o)*in + i }
		return m, nil
	}
	total, off := int(dims[1]), l.Offset
	if dims[0] != int64(l.In) || l.Offset+l.Out > total {
		return Matrix{}, fmt.Errorf("layer %s does not fit its weight %v", l.Name, dims)
	}
	m.at = func(o, i int) int { return i*total + off + o }
	return m, nil
}

// Weights are what a trained model's modules fold into: a copy of the base model
// (export --merge, MergeWeights) or a whole tensor of an adapter-ready model. Tuners
// change them through Layer, Vector, Tensor and (merge only) the head and Builder, and
// read the trained model's tensors through Trained.
type Weights struct {
	// Plan is the trained model's plan.
	Plan    *Plan
	trained func(name string) ([]float32, []int64, error)
	layer   func(l *LayerPlan) (Matrix, error)
	vector  func(v *VectorPlan) ([]float32, error)
	tensor  func(t *TensorPlan) ([]float32, []int64, error)

	// Merge only: the merged graph, its sites and its changed tensors.
	b       *Builder
	bufs    map[slot]*buffer
	order   []slot
	flushed map[string]bool // base initializers Flush wrote
	// Kept lists the modules that stay as nodes (they cannot fold).
	Kept []string
	// Changed and Added list the base initializers given new values, and the
	// initializers added where a de-duplicated base tensor had to be split.
	Changed, Added []string
}

// buffer is the merged value read at one site.
type buffer struct {
	src  string // the base initializer read there (through aliases)
	dims []int64
	data []float32
}

// Trained returns a tensor of the trained model, by the name its record gives.
func (w *Weights) Trained(name string) ([]float32, []int64, error) { return w.trained(name) }

// Layer is the merged weight of layer l, to change in place.
func (w *Weights) Layer(l *LayerPlan) (Matrix, error) {
	if w.layer == nil {
		return Matrix{}, fmt.Errorf("layer %s: not in these weights", l.Name)
	}
	return w.layer(l)
}

// Vector is the merged entries of vector v (Size of them), to change in place.
func (w *Weights) Vector(v *VectorPlan) ([]float32, error) {
	if w.vector == nil {
		return nil, fmt.Errorf("vector %s: not in these weights", v.Name)
	}
	return w.vector(v)
}

// Tensor is the merged value of a non-block tensor, to change in place.
func (w *Weights) Tensor(t *TensorPlan) ([]float32, []int64, error) {
	if w.tensor == nil {
		return nil, nil, fmt.Errorf("%s: not in these weights", t.Name)
	}
	return w.tensor(t)
}

// trainedModule returns the trained values of module tensor p.
func (w *Weights) trainedPart(m Module, p Part) ([]float32, []int64, error) {
	name, err := m.Init(p)
	if err != nil {
		return nil, nil, err
	}
	return w.Trained(name)
}

// MergeWeights folds into merged, a copy of the base model trained was injected from
// (p is trained's plan): call each module's Fold, then Finish.
func MergeWeights(merged, trained *onnxpb.ModelProto, p *Plan) (*Weights, error) {
	g := surgery.New(merged)
	v, err := surgery.FindViT(g)
	if err != nil {
		return nil, fmt.Errorf("base model: %w", err)
	}
	b := newBuilder(g, v, p, ApplyOptions{}, onnxio.Opset(merged))
	if err := b.findSites(); err != nil {
		return nil, fmt.Errorf("base model: %w", err)
	}
	tg := surgery.New(trained)
	w := &Weights{Plan: p, b: b, bufs: map[slot]*buffer{}, flushed: map[string]bool{}, Kept: []string{}, Changed: []string{}, Added: []string{}}
	w.trained = func(name string) ([]float32, []int64, error) {
		t := tg.Initializer(name)
		if t == nil {
			return nil, nil, fmt.Errorf("the trained model has no tensor %s", name)
		}
		x, err := onnxio.Floats(t)
		return x, t.Dims, err
	}
	w.layer = func(l *LayerPlan) (Matrix, error) {
		s, ok := b.weightSlot[l.Name]
		if !ok {
			return Matrix{}, fmt.Errorf("layer %s is not in the base model", l.Name)
		}
		buf, err := w.at(s)
		if err != nil {
			return Matrix{}, err
		}
		return MatrixOf(l, buf.data, buf.dims)
	}
	w.vector = func(v *VectorPlan) ([]float32, error) {
		s, ok := b.vecSlot[v.Name]
		if !ok {
			return nil, fmt.Errorf("vector %s is not in the base model", v.Name)
		}
		buf, err := w.at(s)
		if err != nil {
			return nil, err
		}
		if v.Offset+v.Size > len(buf.data) {
			return nil, fmt.Errorf("vector %s [%d:%d] outside %s %v", v.Name, v.Offset, v.Offset+v.Size, buf.src, buf.dims)
		}
		return buf.data[v.Offset : v.Offset+v.Size], nil
	}
	w.tensor = func(t *TensorPlan) ([]float32, []int64, error) {
		s, err := b.extraSlot(*t)
		if err != nil {
			return nil, nil, err
		}
		buf, err := w.at(s)
		if err != nil {
			return nil, nil, err
		}
		return buf.data, buf.dims, nil
	}
	return w, nil
}

// at is the merged buffer of the value read at s, starting from the base's.
func (w *Weights) at(s slot) (*buffer, error) {
	if buf, ok := w.bufs[s]; ok {
		return buf, nil
	}
	src := w.b.g.Source(s.value())
	t := w.b.g.Initializer(src)
	if t == nil {
		return nil, fmt.Errorf("node %s reads %s, which is not an initializer", s.node.GetName(), s.value())
	}
	if w.flushed[src] {
		return nil, fmt.Errorf("%s was written already (Flush): a module folded into it after the last one Source named it for", src)
	}
	x, err := onnxio.Floats(t)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	buf := &buffer{src: src, dims: slices.Clone(t.Dims), data: x}
	w.bufs[s] = buf
	w.order = append(w.order, s)
	return buf, nil
}

// builder is the merged graph's Builder, for modules that stay as nodes.
func (w *Weights) builder() (*Builder, error) {
	if w.b == nil {
		return nil, fmt.Errorf("these weights take no nodes")
	}
	return w.b, nil
}

// Source is the base initializer (through aliases) that the folds of a module on
// target t change, or "" for a target whose module folds outside the buffers (the
// head) or that the merged model lacks (its fold reports that).
func (w *Weights) Source(t Target) string {
	if w.b == nil {
		return ""
	}
	var s slot
	var ok bool
	switch {
	case t.Layer != nil:
		s, ok = w.b.weightSlot[t.Layer.Name]
	case t.Vector != nil:
		s, ok = w.b.vecSlot[t.Vector.Name]
	case t.Tensor != nil:
		var err error
		s, err = w.b.extraSlot(*t.Tensor)
		ok = err == nil
	}
	if !ok {
		return ""
	}
	return w.b.g.Source(s.value())
}

// Flush writes the folded values of base initializer src into the merged model now,
// as Finish does, and drops their buffers: a merge that flushes each tensor after the
// last module that changes it (Source) holds a few tensors' buffers at a time instead
// of the model's (vit_b_16: 346 MB). A later fold into src is an error.
func (w *Weights) Flush(src string) error {
	var ss []slot
	w.order = slices.DeleteFunc(w.order, func(s slot) bool {
		if w.bufs[s].src != src {
			return false
		}
		ss = append(ss, s)
		return true
	})
	w.flushed[src] = true
	if len(ss) == 0 {
		return nil
	}
	if err := w.write(src, ss); err != nil {
		return err
	}
	for _, s := range ss {
		delete(w.bufs, s)
	}
	return nil
}

// Finish writes the folded tensors not flushed yet into the merged model: a base
// initializer whose every reader now needs the same value gets it in place; where its
// readers (a de-duplicated tensor behind Identity aliases) need different values, the
// changed ones read a new initializer. Branches kept as nodes are summed, and the
// nodes sorted.
func (w *Weights) Finish() error {
	var srcs []string
	for _, s := range w.order {
		if src := w.bufs[s].src; !slices.Contains(srcs, src) {
			srcs = append(srcs, src)
		}
	}
	for _, src := range srcs {
		if err := w.Flush(src); err != nil {
			return err
		}
	}
	w.b.sumBranches()
	return w.b.g.TopoSort()
}

// write settles the values base initializer src must give the sites ss that read it
// (through aliases): sites needing equal values form a class; one class keeps src (the
// class of its base value if any site still needs that, else the first) and is
// written into it, every other class reads a new initializer.
func (w *Weights) write(src string, ss []slot) error {
	b := w.b
	t := b.g.Initializer(src)
	base, err := onnxio.Floats(t)
	if err != nil {
		return err
	}
	type class struct {
		dims  []int64
		data  []float32
		sites []slot
	}
	var classes []*class
	keeper := -1
	for _, s := range ss {
		x := w.bufs[s]
		i := slices.IndexFunc(classes, func(c *class) bool { return slices.Equal(c.dims, x.dims) && slices.Equal(c.data, x.data) })
		if i < 0 {
			classes = append(classes, &class{dims: x.dims, data: x.data})
			i = len(classes) - 1
		}
		classes[i].sites = append(classes[i].sites, s)
		if slices.Equal(x.dims, t.Dims) && slices.Equal(x.data, base) {
			keeper = i
		}
	}
	if keeper < 0 && len(ss) < len(b.users(src)) {
		keeper = len(classes) // sites that were not folded into keep the base value
	}
	for i, c := range classes {
		switch {
		case i == keeper:
		case keeper < 0 && i == 0:
			if err := setFloats(t, c.dims, c.data); err != nil {
				return err
			}
			w.Changed = append(w.Changed, src)
		default:
			nt, err := onnxio.NewFloat(src+"_tuned", c.dims, c.data)
			if err != nil {
				return err
			}
			name := b.g.AddInitializer(nt)
			w.repoint(c.sites, src, name)
			w.Added = append(w.Added, name)
		}
	}
	return nil
}

// repoint makes sites read name instead of src. Where the sites are every reader of
// an Identity alias of src, the alias reads name instead: the merged graph keeps the
// base's nodes and reads each tensor through the same alias.
func (w *Weights) repoint(sites []slot, src, name string) {
	g := w.b.g
	byValue := map[string][]slot{}
	var values []string
	for _, s := range sites {
		v := s.value()
		if _, ok := byValue[v]; !ok {
			values = append(values, v)
		}
		byValue[v] = append(byValue[v], s)
	}
	for _, v := range values {
		ss := byValue[v]
		if a := g.Producer(v); a != nil && a.GetOpType() == "Identity" && a.Input[0] == src && len(g.Consumers(v)) == len(ss) && !g.IsOutput(v) {
			g.SetInput(a, 0, name)
			continue
		}
		for _, s := range ss {
			g.SetInput(s.node, s.idx, name)
		}
	}
}

// setFloats gives a float initializer new dims and values.
func setFloats(t *onnxpb.TensorProto, dims []int64, x []float32) error {
	t.Dims = slices.Clone(dims)
	return onnxio.ReplaceFloats(t, x) // t is the merged model's, x a buffer Finish drops
}
