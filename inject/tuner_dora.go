package inject

import (
	"fmt"
	"math"
	"slices"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/surgery"
)

// doraTuner is DoRA, weight-decomposed low-rank adaptation (Liu et al., 2024): the
// layer's weight becomes W' = m ⊙ V / ‖V‖, V = W + s·B·A, where ‖V‖ is the L2 norm of
// each output unit's weights (over the inputs: per column of a MatMul weight stored
// [in, out], per row of one stored [out, in]) and m [out] is a trainable magnitude per
// output unit, initialised to ‖W‖ so that the model starts as the base. A [r, in]
// (Kaiming-uniform) and B [out, r] (zero) are LoRA's, s the plan's LoRA scaling. W
// is the weight as the layer reads it after any sparse deltas of the same layer. The
// gradient flows through the norm too (the formula exactly; the paper's cheaper
// variant detaches it).
//
// The rewrite replaces W where the layer reads it (in its stored layout, before any
// Transpose the exporter put behind it) with MatMul, Add, Mul, ReduceSum, Sqrt and Div
// nodes; for a part of a fused q/k/v weight, the part is Sliced out and Concatenated
// back. It folds exactly into the weight (the merged model has the base's nodes), and
// an adapter-ready model holds it as three inputs (A, B, the magnitude), so ONNX
// Runtime serves it from .onnx_adapter files like LoRA; a task without DoRA on a layer
// where another task has one gets A = B = 0 and m = ‖W + its sparse deltas‖. One
// adapter-ready graph cannot hold DoRA and another module type (LoRA, Adapter) on the
// same layer.
type doraTuner struct{}

// PartMagnitude is DoRA's magnitude vector m [out].
const PartMagnitude Part = "magnitude"

// KindDoRA is DoRA's tuner kind and allocation type (allocate --type dora).
const KindDoRA Kind = "dora"

func (doraTuner) Kind() Kind { return KindDoRA }

// Delta: the low-rank factors; the magnitude keeps its value (the base's column norms).
func (doraTuner) Delta(p Part) bool { return p == PartA || p == PartB }

func (doraTuner) FoldsIntoWeight() bool { return true }

func (doraTuner) Params(t Target) int64 {
	l := t.Layer
	return int64(l.Rank)*int64(l.In+l.Out) + int64(l.Out)
}

func (doraTuner) Inject(b *Builder, t Target) error {
	l := t.Layer
	lin, err := b.linear(l)
	if err != nil {
		return err
	}
	wt := b.g.Initializer(l.Weight)
	if wt == nil {
		return fmt.Errorf("DoRA of %s: weight %s is not an initializer", l.Name, l.Weight)
	}
	wv, err := onnxio.Floats(wt)
	if err != nil {
		return err
	}
	W, err := MatrixOf(l, wv, wt.Dims)
	if err != nil {
		return err
	}
	name := Prefix + l.Name
	r, in, out := int64(l.Rank), int64(l.In), int64(l.Out)
	a := b.addFloat(name+"/dora_A", []int64{r, in}, kaimingUniform(b.rng(l.Name), int(r*in), in), true)
	bb := b.addFloat(name+"/dora_B", []int64{out, r}, make([]float32, out*r), true)
	m := b.addFloat(name+"/dora_magnitude", []int64{out}, columnNorms(W), true)
	b.Later(func() error {
		// Recorded here, after the layer's sparse deltas: records are in the order
		// their effects compose, which is the order Merge folds them in.
		b.record(a, l.Name, KindDoRA, PartA, l.Weight, 0, true)
		b.record(bb, l.Name, KindDoRA, PartB, l.Weight, 0, true)
		b.record(m, l.Name, KindDoRA, PartMagnitude, l.Weight, 0, true)
		s := b.weightSlot[l.Name]
		b.g.SetInput(s.node, s.idx, doraWeight(b, lin, l, s.value(), a, bb, m))
		return nil
	})
	return nil
}

// doraWeight writes W' from the stored weight value x (the whole fused tensor for a
// fused part) and returns the value that replaces x.
func doraWeight(b *Builder, lin *surgery.Linear, l *LayerPlan, x, a, bb, m string) string {
	name := Prefix + l.Name + "/dora"
	inOut := lin.Layout == surgery.InOut
	axis := int64(0) // the output axis of the stored weight
	if inOut {
		axis = 1
	}
	part := x
	off, end, total := int64(lin.Offset), int64(lin.Offset+lin.Out), int64(lin.TotalOut)
	slice := func(from, to int64, what string) string {
		return b.node("Slice", name+"_"+what, []string{x,
			b.addInt64(name+"_"+what+"_starts", []int64{1}, []int64{from}),
			b.addInt64(name+"_"+what+"_ends", []int64{1}, []int64{to}),
			b.addInt64(name+"_"+what+"_axes", []int64{1}, []int64{axis})})
	}
	if lin.Fused {
		part = slice(off, end, "part")
	}
	// s·B·A in the stored layout: [out, in] = B·A, [in, out] = Aᵀ·Bᵀ.
	var delta string
	if inOut {
		delta = b.node("MatMul", name+"_delta", []string{b.transpose(a, name+"_A_T"), b.transpose(bb, name+"_B_T")})
	} else {
		delta = b.node("MatMul", name+"_delta", []string{bb, a})
	}
	if s := b.p.Options.LoRAScaling; s != 0 && s != 1 {
		delta = b.node("Mul", name+"_scale", []string{delta, b.scalar(fmt.Sprintf("lora_scaling_%g", s), float32(s))})
	}
	v := b.node("Add", name+"_V", []string{part, delta})
	// ‖V‖ per output unit: a sum over the input axis, kept for broadcasting.
	inAxis := 1 - axis
	sq := b.node("Mul", name+"_sq", []string{v, v})
	var sum string
	if b.opset >= 13 {
		sum = b.node("ReduceSum", name+"_sumsq", []string{sq, b.addInt64(name+"_axes", []int64{1}, []int64{inAxis})}, surgery.IntAttr("keepdims", 1))
	} else {
		sum = b.node("ReduceSum", name+"_sumsq", []string{sq}, surgery.IntsAttr("axes", inAxis), surgery.IntAttr("keepdims", 1))
	}
	norm := b.node("Sqrt", name+"_norm", []string{sum})
	mag := m
	if !inOut { // m [out] → [out, 1]
		mag = b.node("Reshape", name+"_m_col", []string{m, b.addInt64(name+"_m_shape", []int64{2}, []int64{int64(l.Out), 1})})
	}
	scale := b.node("Div", name+"_m_over_norm", []string{mag, norm})
	w := b.node("Mul", name+"_weight", []string{v, scale})
	if !lin.Fused {
		return w
	}
	var pieces []string
	if off > 0 {
		pieces = append(pieces, slice(0, off, "before"))
	}
	pieces = append(pieces, w)
	if end < total {
		pieces = append(pieces, slice(end, total, "after"))
	}
	return b.node("Concat", name+"_concat", pieces, surgery.IntAttr("axis", axis))
}

// columnNorms is ‖W‖ per output unit (over the inputs).
func columnNorms(W Matrix) []float32 {
	n := make([]float32, W.Out)
	for o := range n {
		var s float64
		for i := 0; i < W.In; i++ {
			x := float64(W.Data[W.At(o, i)])
			s += x * x
		}
		n[o] = float32(math.Sqrt(s))
	}
	return n
}

// Fold writes W' = m ⊙ V/‖V‖, V = W + s·B·A, into the weight (W as folded so far:
// after the layer's sparse deltas), computed in float64.
func (doraTuner) Fold(w *Weights, m Module) error {
	l := m.Target.Layer
	A, B, err := lowRankFactors(w, m)
	if err != nil {
		return err
	}
	mag, md, err := w.trainedPart(m, PartMagnitude)
	if err != nil {
		return err
	}
	if !slices.Equal(md, []int64{int64(l.Out)}) {
		return fmt.Errorf("%s: DoRA magnitude of shape %v, want [%d]", l.Name, md, l.Out)
	}
	W, err := w.Layer(l)
	if err != nil {
		return err
	}
	s, r := loraScaling(w.Plan), l.Rank
	v := make([]float64, W.In)
	for o := 0; o < W.Out; o++ {
		lowRankRow(v, A, B, r, o)
		var sq float64
		for i := range v {
			v[i] = float64(W.Data[W.At(o, i)]) + s*v[i]
			sq += v[i] * v[i]
		}
		f := float64(mag[o]) / math.Sqrt(sq)
		for i, x := range v {
			W.Data[W.At(o, i)] = float32(x * f)
		}
	}
	return nil
}

// Fill gives the task's A, B (padded to the ready rank, B times the task's scaling)
// and magnitude; for a task without DoRA here, A = B = 0 and m = ‖W + the task's
// sparse deltas on the layer‖, which makes W' that weight.
func (doraTuner) Fill(f *Fill, m Module) error {
	l := m.Target.Layer
	if _, ok := f.Task.Module(l.Name, KindDoRA); ok {
		return f.padParts(m, map[Part]float32{PartB: float32(loraScaling(f.Task))})
	}
	if err := f.padParts(m, nil); err != nil { // zeros
		return err
	}
	wv, dims, err := f.ReadyFloats(l.Weight)
	if err != nil {
		return err
	}
	W, err := MatrixOf(l, slices.Clone(wv), dims)
	if err != nil {
		return err
	}
	if sm, ok := f.Task.Module(l.Name, KindSparse); ok {
		tw := &Weights{Plan: f.Task, trained: f.TaskFloats, layer: func(*LayerPlan) (Matrix, error) { return W, nil }}
		if err := (sparseTuner{}).Fold(tw, sm); err != nil {
			return err
		}
	}
	name, err := m.Init(PartMagnitude)
	if err != nil {
		return err
	}
	dst, _, err := f.Out(name, true)
	if err != nil {
		return err
	}
	copy(dst, columnNorms(W))
	return nil
}
