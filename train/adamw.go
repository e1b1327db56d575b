package train

import "math"

// AdamW is Adam with decoupled weight decay (Loshchilov & Hutter), as PyTorch's
// torch.optim.AdamW computes it, on float32 parameters held in Go memory. Tensors with
// at most one dimension larger than 1 (biases, LayerNorm scales and shifts, sparse
// delta values, the class token) get no weight decay, as timm's optimizer factory
// leaves 1-D parameters and the class token undecayed.
type AdamW struct {
	Beta1, Beta2, Eps, WeightDecay float64
	// Step is the number of updates made so far (for bias correction).
	Step int
	M, V map[string][]float32
}

// NewAdamW returns an optimizer with PyTorch's defaults (β 0.9, 0.999, ε 1e-8).
func NewAdamW(weightDecay float64) *AdamW {
	return &AdamW{Beta1: 0.9, Beta2: 0.999, Eps: 1e-8, WeightDecay: weightDecay, M: map[string][]float32{}, V: map[string][]float32{}}
}

// Decays reports whether a parameter of this shape gets weight decay.
func Decays(shape []int64) bool {
	big := 0
	for _, d := range shape {
		if d > 1 {
			big++
		}
	}
	return big > 1
}

// Begin counts a new step; call it once before the Update calls of that step.
func (o *AdamW) Begin() { o.Step++ }

// Update applies one AdamW update with learning rate lr to w given its gradient g.
func (o *AdamW) Update(name string, shape []int64, w, g []float32, lr float64) {
	m, v := o.M[name], o.V[name]
	if m == nil {
		m, v = make([]float32, len(w)), make([]float32, len(w))
		o.M[name], o.V[name] = m, v
	}
	b1, b2 := o.Beta1, o.Beta2
	bc1 := 1 - math.Pow(b1, float64(o.Step))
	bc2 := 1 - math.Pow(b2, float64(o.Step))
	stepSize := lr / bc1
	sqrtBC2 := math.Sqrt(bc2)
	decay := 1.0
	if Decays(shape) {
		decay = 1 - lr*o.WeightDecay
	}
	for i := range w {
		gi := float64(g[i])
		mi := b1*float64(m[i]) + (1-b1)*gi
		vi := b2*float64(v[i]) + (1-b2)*gi*gi
		m[i], v[i] = float32(mi), float32(vi)
		denom := math.Sqrt(vi)/sqrtBC2 + o.Eps
		w[i] = float32(float64(w[i])*decay - stepSize*mi/denom)
	}
}

// CosineLR is the learning rate at step (0-based) of total steps: a linear warm-up
// over the first warmup steps from base/warmup to base, then a cosine decay to min.
func CosineLR(base, min float64, step, warmup, total int) float64 {
	if step < warmup {
		return base * float64(step+1) / float64(warmup)
	}
	if total <= warmup {
		return base
	}
	t := float64(step-warmup) / float64(total-warmup)
	return min + 0.5*(base-min)*(1+math.Cos(math.Pi*t))
}
