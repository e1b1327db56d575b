package torch

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/sugarme/gotch"

	"github.com/sptctl/sptctl/engine"
)

// A bf16 (autocast) training step against the fp32 one on a fixture, every float
// initializer trainable, the same batch: the loss before the step within 2% of fp32's,
// the gradient's direction (all initializers as one vector) with cosine ≥ 0.99 to
// fp32's, every gradient float32, and one SGD step (each precision with its own
// gradient) lowering the loss by an amount within 5% of fp32's drop (measured: 0.2%). bfloat16 has an
// 8-bit mantissa (relative rounding ~0.4%), which bounds what can be asked.
func TestBF16StepMovesLossLikeFP32(t *testing.T) {
	m, _, _ := loadFixture(t, "tv_op17_dynamic")
	rng := rand.New(rand.NewPCG(3, 4))
	images, labels, n := randomBatch(m, 8, 5, rng) // dynamic batch: 8
	type run struct {
		loss0, loss1 float64
		grad         []float32
	}
	step := func(prec engine.Precision) run {
		var r run
		onTorch(t, func() error {
			all, err := allParams(m)
			if err != nil {
				return err
			}
			p, err := Compile(m, engine.Options{Trainable: all, Precision: prec})
			if err != nil {
				return err
			}
			defer p.Close()
			res, err := p.ForwardBackward(images, labels, n)
			if err != nil {
				return err
			}
			r.loss0 = res.Loss
			const lr = 0.05
			for _, name := range all {
				g, err := p.Grad(name)
				if err != nil {
					return err
				}
				gt, err := p.gradTensor(name)
				if err != nil {
					return err
				}
				if gt != nil {
					if k := gt.DType(); k != gotch.Float {
						t.Errorf("%s: gradient is %v, want float32", name, k)
					}
					gt.Drop()
				}
				r.grad = append(r.grad, g...)
				v, err := p.Floats(name)
				if err != nil {
					return err
				}
				for i := range v {
					v[i] -= lr * g[i]
				}
				if err := p.SetFloats(name, v); err != nil {
					return err
				}
			}
			after, err := p.Forward(images, labels, n)
			if err != nil {
				return err
			}
			r.loss1 = after.Loss
			return nil
		})
		return r
	}
	f32, b16 := step(engine.FP32), step(engine.BF16)
	if d := math.Abs(b16.loss0 - f32.loss0); d > 0.02*f32.loss0 {
		t.Errorf("loss before the step: bf16 %.5f, fp32 %.5f", b16.loss0, f32.loss0)
	}
	var dot, na, nb float64
	for i := range f32.grad {
		a, b := float64(f32.grad[i]), float64(b16.grad[i])
		dot, na, nb = dot+a*b, na+a*a, nb+b*b
	}
	if cos := dot / math.Sqrt(na*nb); !(cos >= 0.99) {
		t.Errorf("gradient cosine bf16 vs fp32 %.4f, want ≥ 0.99", cos)
	}
	d32, d16 := f32.loss0-f32.loss1, b16.loss0-b16.loss1
	if !(d32 > 0) || math.Abs(d16-d32) > 0.05*d32 {
		t.Errorf("loss drop of one SGD step: bf16 %.5f (%.5f → %.5f), fp32 %.5f (%.5f → %.5f); want within 5%%",
			d16, b16.loss0, b16.loss1, d32, f32.loss0, f32.loss1)
	}
	t.Logf("loss %.5f → %.5f (fp32), %.5f → %.5f (bf16); gradient cosine %.5f", f32.loss0, f32.loss1, b16.loss0, b16.loss1, dot/math.Sqrt(na*nb))
}
