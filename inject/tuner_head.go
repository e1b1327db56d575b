package inject

import (
	"errors"
	"fmt"
	"slices"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery"
)

// headTuner is the classifier head, always trained: a new head for the plan's classes
// (the plan's head values, the head sensitivity fitted and scored through; else weight
// truncated normal, std 0.02, bias zero, seeded with the plan's head seed, see
// HeadInit) replaces the old one and the graph output's class dimension is updated;
// or, with KeepHead, the model's own head is trained in place. A head without a bias
// gets one (an Add after it). It folds by replacing the base head (a bias for a Gemm
// head without one becomes its C input).
type headTuner struct{}

func (headTuner) Kind() Kind { return KindHead }

func (headTuner) Delta(Part) bool { return false }

func (headTuner) FoldsIntoWeight() bool { return true }

func (headTuner) Params(t Target) int64 { return int64(t.Head.In+1) * int64(t.Head.Classes) }

// Inject trains the model's head (KeepHead) or puts a new one in its place.
func (headTuner) Inject(b *Builder, t Target) error {
	g, h, p := b.g, b.v.Head, b.p
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
	if b.opt.KeepHead {
		if _, err := b.trainWhole(ws, Prefix+"head/weight", []string{HeadName}, []int{0}, KindHead, PartWeight); err != nil {
			return err
		}
		if h.Bias != "" {
			_, err := b.trainWhole(bs, Prefix+"head/bias", []string{HeadName}, []int{0}, KindHead, PartBias)
			return err
		}
		b.addHeadBias(h, make([]float32, classes), true)
		return nil
	}
	w, bias := p.Head.initial()
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
	wn := b.addFloat(Prefix+"head/weight", dims, w, true)
	b.record(wn, HeadName, KindHead, PartWeight, "", 0, true)
	g.SetInput(ws.node, ws.idx, wn)
	if h.Bias != "" {
		bn := b.addFloat(Prefix+"head/bias", []int64{classes}, bias, true)
		b.record(bn, HeadName, KindHead, PartBias, "", 0, true)
		g.SetInput(bs.node, bs.idx, bn)
	} else {
		b.addHeadBias(h, bias, true)
	}
	if int64(h.Out) != classes {
		b.fixShapes(h, classes)
	}
	return nil
}

// addHeadBias gives a head without a bias one, as an Add after it (a trainable one,
// recorded, when injecting).
func (b *Builder) addHeadBias(h *surgery.Linear, bias []float32, trainable bool) {
	g := b.g
	out := h.Output
	readers := slices.Clone(g.Consumers(out))
	bn := b.addFloat(Prefix+"head/bias", []int64{int64(len(bias))}, bias, trainable)
	if trainable {
		b.record(bn, HeadName, KindHead, PartBias, "", 0, true)
	}
	if g.IsOutput(out) {
		// Keep the graph output's name: the head node writes a new value instead.
		mid := g.UniqueName(Prefix + "head/logits_nobias")
		h.Node.Output[0] = mid
		g.Reindex()
		g.AddNode("Add", Prefix+"head/bias_add", []string{mid, bn}, nil).Output = []string{out}
		g.Reindex()
		return
	}
	sum := b.node("Add", Prefix+"head/bias_add", []string{out, bn})
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
func (b *Builder) fixShapes(h *surgery.Linear, classes int64) {
	g := b.g
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

// Fold puts the trained head in the base head's place.
func (headTuner) Fold(w *Weights, m Module) error {
	b, err := w.builder()
	if err != nil {
		return fmt.Errorf("head: %w", err)
	}
	h := b.v.Head
	hw, wdims, err := w.trainedPart(m, PartWeight)
	if err != nil {
		return err
	}
	hb, _, err := w.trainedPart(m, PartBias)
	if err != nil {
		return err
	}
	classes := int64(len(hb))
	ws, err := weightSlot(h)
	if err != nil {
		return err
	}
	buf, err := w.at(ws)
	if err != nil {
		return err
	}
	buf.data, buf.dims = hw, wdims
	switch {
	case h.Bias != "":
		bs, err := biasSlot(h)
		if err != nil {
			return err
		}
		bb, err := w.at(bs)
		if err != nil {
			return err
		}
		bb.data, bb.dims = hb, []int64{classes}
	case h.Node.GetOpType() == "Gemm" && len(h.Node.Input) == 2:
		t, err := onnxio.NewFloat("head.bias", []int64{classes}, hb)
		if err != nil {
			return err
		}
		name := b.g.AddInitializer(t)
		h.Node.Input = append(h.Node.Input, name)
		b.g.Reindex()
		w.Added = append(w.Added, name)
	default:
		b.addHeadBias(h, hb, false)
	}
	if int64(h.Out) != classes {
		b.fixShapes(h, classes)
	}
	return nil
}

// Fill copies the task's head into the ready head, padded to its classes (zero
// weights, bias PadLogit).
func (headTuner) Fill(f *Fill, m Module) error {
	tm, ok := f.Task.Module(HeadName, KindHead)
	if !ok {
		return errors.New("the task model does not record its head")
	}
	wn, err := tm.Init(PartWeight)
	if err != nil {
		return err
	}
	w, _, err := f.TaskFloats(wn)
	if err != nil {
		return err
	}
	c := f.Task.Head.Classes
	bias := make([]float32, c)
	if bn, err := tm.Init(PartBias); err == nil {
		if bias, _, err = f.TaskFloats(bn); err != nil {
			return err
		}
	}
	pw, pb, err := PadHead(w, bias, f.Ready.Head.In, c, f.Ready.Head.Classes, f.HeadLayout, f.PadLogit)
	if err != nil {
		return fmt.Errorf("task head: %w", err)
	}
	for _, r := range m.Tensors {
		dst, _, err := f.Out(r.Init, false)
		if err != nil {
			return err
		}
		if r.Part == PartWeight {
			copy(dst, pw)
		} else {
			copy(dst, pb)
		}
	}
	return nil
}

// PadHead pads a head of c classes on in features (weight in layout, "[out,in]" or
// "[in,out]") to classes classes: zero weights and bias pad for the added classes.
func PadHead(w, b []float32, in, c, classes int, layout string, pad float32) ([]float32, []float32, error) {
	if len(w) != in*c || len(b) != c {
		return nil, nil, fmt.Errorf("head of %d weights and %d biases is not %d×%d", len(w), len(b), c, in)
	}
	if c > classes {
		return nil, nil, fmt.Errorf("head has %d classes, the adapter-ready model %d", c, classes)
	}
	pw := make([]float32, in*classes)
	if layout == surgery.OutIn.String() {
		copy(pw, w) // [c, in] rows are the first rows of [classes, in]
	} else {
		for i := 0; i < in; i++ {
			copy(pw[i*classes:i*classes+c], w[i*c:(i+1)*c])
		}
	}
	pb := make([]float32, classes)
	copy(pb, b)
	for k := c; k < classes; k++ {
		pb[k] = pad
	}
	return pw, pb, nil
}
