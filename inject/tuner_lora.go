package inject

import (
	"fmt"
	"slices"
)

// loraTuner is LoRA in parallel with a block matrix: y = W·x + b + s·B·(A·x), A [r, in]
// Kaiming-uniform (a = √5), B [out, r] zero, s the plan's LoRA scaling (1: none, as in
// the SPT reference). The branch is MatMul(MatMul(x, Transpose(A)), Transpose(B)),
// added to the layer's output; for a part of a fused q/k/v projection, B is zero-padded
// (Pad) to the part's rows of the fused output, [3d, r], so the branch adds only to the
// part's columns. It folds exactly: W += s·B·A in W's stored layout.
type loraTuner struct{}

func (loraTuner) Kind() Kind { return KindLoRA }

func (loraTuner) Delta(p Part) bool { return p == PartA || p == PartB }

func (loraTuner) FoldsIntoWeight() bool { return true }

func (loraTuner) Params(t Target) int64 {
	l := t.Layer
	return int64(l.Rank) * int64(l.In+l.Out)
}

func (loraTuner) Inject(b *Builder, t Target) error {
	l := t.Layer
	lin, err := b.linear(l)
	if err != nil {
		return err
	}
	name := Prefix + l.Name
	r, in, out := int64(l.Rank), int64(l.In), int64(l.Out)
	return b.branch(lin, func() (string, error) {
		a := b.addFloat(name+"/lora_A", []int64{r, in}, kaimingUniform(b.rng(l.Name), int(r*in), in), true)
		bb := b.addFloat(name+"/lora_B", []int64{out, r}, make([]float32, out*r), true)
		b.record(a, l.Name, KindLoRA, PartA, l.Weight, 0, true)
		b.record(bb, l.Name, KindLoRA, PartB, l.Weight, 0, true)
		x := b.dropout(lin.Input, name)
		h := b.node("MatMul", name+"/lora_down", []string{x, b.transpose(a, name+"/lora_A_T")})
		if lin.Fused {
			bb = b.pad(bb, name+"/lora_B_pad", 2, int64(lin.Offset), int64(lin.TotalOut-lin.Offset-lin.Out))
		}
		d := b.node("MatMul", name+"/lora_up", []string{h, b.transpose(bb, name+"/lora_B_T")})
		if s := b.p.Options.LoRAScaling; s != 0 && s != 1 {
			d = b.node("Mul", name+"/lora_scale", []string{d, b.scalar(fmt.Sprintf("lora_scaling_%g", s), float32(s))})
		}
		return d, nil
	})
}

func (loraTuner) Fold(w *Weights, m Module) error {
	l := m.Target.Layer
	A, B, err := lowRankFactors(w, m)
	if err != nil {
		return err
	}
	W, err := w.Layer(l)
	if err != nil {
		return err
	}
	addLowRank(W, A, B, l.Rank, loraScaling(w.Plan))
	return nil
}

func (loraTuner) Fill(f *Fill, m Module) error {
	return f.padParts(m, map[Part]float32{PartB: float32(loraScaling(f.Task))})
}

// loraScaling is the plan's LoRA scaling (0 in a plan means 1).
func loraScaling(p *Plan) float64 {
	if s := p.Options.LoRAScaling; s != 0 {
		return s
	}
	return 1
}

// checkLowRank checks A [r, in] and B [out, r] against layer l.
func checkLowRank(l *LayerPlan, ad, bd []int64) error {
	r := int64(l.Rank)
	if !slices.Equal(ad, []int64{r, int64(l.In)}) || !slices.Equal(bd, []int64{int64(l.Out), r}) {
		return fmt.Errorf("%s: low-rank factors of shapes %v and %v do not fit a rank-%d %dx%d layer", l.Name, ad, bd, r, l.In, l.Out)
	}
	return nil
}

// lowRankFactors reads a trained module's A [r, in] and B [out, r] (LoRA's, DoRA's)
// and checks them against its layer.
func lowRankFactors(w *Weights, m Module) (A, B []float32, err error) {
	A, ad, err := w.trainedPart(m, PartA)
	if err != nil {
		return nil, nil, err
	}
	B, bd, err := w.trainedPart(m, PartB)
	if err != nil {
		return nil, nil, err
	}
	if err := checkLowRank(m.Target.Layer, ad, bd); err != nil {
		return nil, nil, err
	}
	return A, B, nil
}

// lowRankRow writes row o of B·A (A [r, len(dst)], B [·, r]) into dst, accumulating
// in float64.
func lowRankRow(dst []float64, A, B []float32, r, o int) {
	in := len(dst)
	for i := range dst {
		var d float64
		for k := 0; k < r; k++ {
			d += float64(B[o*r+k]) * float64(A[k*in+i])
		}
		dst[i] = d
	}
}

// addLowRank adds scale·B·A (A [r, in], B [out, r]) to W.
func addLowRank(W Matrix, A, B []float32, r int, scale float64) {
	d := make([]float64, W.In)
	for o := 0; o < W.Out; o++ {
		lowRankRow(d, A, B, r, o)
		for i, x := range d {
			at := W.At(o, i)
			W.Data[at] = float32(float64(W.Data[at]) + scale*x)
		}
	}
}
