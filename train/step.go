package train

import "github.com/sptctl/sptctl/engine"

// Step takes one batch's gradients: it zeroes the trainable initializers' gradients
// and runs forward and backward on n images (row-major) against their labels. Fit,
// sensitivity scoring and the benchmarks all take their gradients through it. Call it
// inside the engine's Do.
func Step(p engine.Program, images []float32, labels []int64, n int) (*engine.StepResult, error) {
	if err := p.ZeroGrad(); err != nil {
		return nil, err
	}
	return p.ForwardBackward(images, labels, n)
}

// Apply makes one AdamW update of every trainable initializer of p from the gradient
// Step left in it, with learning rate lr. Call it inside the engine's Do.
func (o *AdamW) Apply(p engine.Program, lr float64) error {
	o.Begin()
	for _, n := range p.Trainable() {
		shape, _ := p.ParamShape(n)
		g, err := p.Grad(n)
		if err != nil {
			return err
		}
		v, err := p.Floats(n)
		if err != nil {
			return err
		}
		o.Update(n, shape, v, g, lr)
		if err := p.SetFloats(n, v); err != nil {
			return err
		}
	}
	return nil
}

// dropoutSeed is the seed of train-mode Dropout for an optimizer step: a function of
// the run's seed and the step only, so a resumed run draws what an uninterrupted one
// would.
func dropoutSeed(seed int64, step int) uint64 { return uint64(seed)*1_000_003 + uint64(step) }
