package inject

import (
	"fmt"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/surgery"
)

// adapterTuner is an Adapter in sequence on a block matrix's output h = W·x + b:
// y = h + U·GELU(D·h + c) + d, D [r, out] Kaiming-uniform, c [r] uniform (nn.Linear's
// bias init), U [out, r] and d [out] zero; GELU as PyTorch's exporter writes it,
// x·(1 + erf(x/√2))·0.5. For a fused q/k/v part, h is the part's Slice of the fused
// output, and U and d are zero-padded to the fused output. Its parameter count,
// 2·r·out + r + out, is the module actually built (as the SPT reference counts it). It
// cannot fold into the weights (GELU): a merged model keeps its nodes.
type adapterTuner struct{}

func (adapterTuner) Kind() Kind { return KindAdapter }

func (adapterTuner) Delta(p Part) bool {
	return p == PartDown || p == PartDownBias || p == PartUp || p == PartUpBias
}

// FoldsIntoWeight is false: the Adapter's GELU keeps it as nodes.
func (adapterTuner) FoldsIntoWeight() bool { return false }

func (adapterTuner) Params(t Target) int64 {
	l := t.Layer
	return 2*int64(l.Rank)*int64(l.Out) + int64(l.Rank) + int64(l.Out)
}

var adapterParts = []Part{PartDown, PartDownBias, PartUp, PartUpBias}

func (adapterTuner) Inject(b *Builder, t Target) error {
	l := t.Layer
	lin, err := b.linear(l)
	if err != nil {
		return err
	}
	name := Prefix + l.Name
	r, out := int64(l.Rank), int64(l.Out)
	return b.branch(lin, func() (string, error) {
		rng := b.rng(l.Name)
		dw := b.addFloat(name+"/adapter_down", []int64{r, out}, kaimingUniform(rng, int(r*out), out), true)
		db := b.addFloat(name+"/adapter_down_bias", []int64{r}, kaimingUniform(rng, int(r), out), true)
		uw := b.addFloat(name+"/adapter_up", []int64{out, r}, make([]float32, out*r), true)
		ub := b.addFloat(name+"/adapter_up_bias", []int64{out}, make([]float32, out), true)
		for i, x := range []string{dw, db, uw, ub} {
			b.record(x, l.Name, KindAdapter, adapterParts[i], "", 0, true)
		}
		return adapterBranch(b, lin, name, dw, db, uw, ub), nil
	})
}

// adapterBranch builds the Adapter's nodes on lin's output from its four tensors and
// returns the value to add to the output.
func adapterBranch(b *Builder, lin *surgery.Linear, name, dw, db, uw, ub string) string {
	h := lin.Output
	if lin.Fused {
		off, end := int64(lin.Offset), int64(lin.Offset+lin.Out)
		h = b.node("Slice", name+"/adapter_slice", []string{h,
			b.addInt64(name+"/adapter_slice_starts", []int64{1}, []int64{off}),
			b.addInt64(name+"/adapter_slice_ends", []int64{1}, []int64{end}),
			b.addInt64(name+"/adapter_slice_axes", []int64{1}, []int64{-1})})
	}
	h = b.dropout(h, name)
	z := b.node("MatMul", name+"/adapter_down_matmul", []string{h, b.transpose(dw, name+"/adapter_down_T")})
	z = b.node("Add", name+"/adapter_down_add", []string{z, db})
	z = b.gelu(z, name)
	if lin.Fused {
		before, after := int64(lin.Offset), int64(lin.TotalOut-lin.Offset-lin.Out)
		uw = b.pad(uw, name+"/adapter_up_pad", 2, before, after)
		ub = b.pad(ub, name+"/adapter_up_bias_pad", 1, before, after)
	}
	z = b.node("MatMul", name+"/adapter_up_matmul", []string{z, b.transpose(uw, name+"/adapter_up_T")})
	return b.node("Add", name+"/adapter_up_add", []string{z, ub})
}

// Fold keeps the Adapter as nodes: the merged graph gets the trained tensors and the
// same nodes on the layer's output (without Dropout, the identity at inference).
func (adapterTuner) Fold(w *Weights, m Module) error {
	l := m.Target.Layer
	b, err := w.builder()
	if err != nil {
		return fmt.Errorf("Adapter of %s: cannot fold (GELU): %w", l.Name, err)
	}
	lin, err := b.linear(l)
	if err != nil {
		return err
	}
	var names [4]string
	for i, p := range adapterParts {
		x, dims, err := w.trainedPart(m, p)
		if err != nil {
			return err
		}
		init, _ := m.Init(p)
		t, err := onnxio.NewFloat(init, dims, x)
		if err != nil {
			return err
		}
		names[i] = b.g.AddInitializer(t)
	}
	w.Kept = append(w.Kept, l.Name)
	return b.branch(lin, func() (string, error) {
		return adapterBranch(b, lin, Prefix+l.Name, names[0], names[1], names[2], names[3]), nil
	})
}

func (adapterTuner) Fill(f *Fill, m Module) error { return f.padParts(m, nil) }
