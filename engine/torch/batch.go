package torch

import (
	"errors"
	"fmt"

	"github.com/sugarme/gotch/ts"

	"github.com/sptctl/sptctl/engine"
	"github.com/sptctl/sptctl/surgery/constfold"
)

// Image classification on top of Run: batches of images in, mean cross-entropy and its
// gradients out, for graphs with a dynamic batch axis and for graphs exported with a
// fixed batch size (often 1, baked into Reshape shapes), which run in micro-batches of
// that size.

// imageInput returns the graph's first input and the shape of one example.
func (p *Program) imageInput() (engine.IO, []int64, error) {
	if len(p.inputs) != 1 {
		return engine.IO{}, nil, fmt.Errorf("graph has %d inputs, want one image input", len(p.inputs))
	}
	in := p.inputs[0]
	if len(in.Shape) < 2 {
		return engine.IO{}, nil, fmt.Errorf("input %q has shape %v, want [batch, ...]", in.Name, in.Shape)
	}
	for _, d := range in.Shape[1:] {
		if d < 0 {
			return engine.IO{}, nil, fmt.Errorf("input %q has shape %v: only the batch axis may be dynamic", in.Name, in.Shape)
		}
	}
	if len(p.outputs) < 1 {
		return engine.IO{}, nil, errors.New("graph has no output")
	}
	return in, in.Shape[1:], nil
}

// ForwardBackward runs the graph in train mode on n images (n × the input's
// per-example size, row-major) and runs backward from the mean cross-entropy of the
// first output (logits [batch, classes]) against labels, accumulating gradients in
// the trainable initializers (call ZeroGrad first unless accumulating on purpose).
// A fixed-batch graph runs ⌈n/B⌉ micro-batches of its batch size B: each contributes
// the summed loss of its real examples divided by n, so the gradients equal those of
// one batch of n. Call it on the torch thread.
func (p *Program) ForwardBackward(images []float32, labels []int64, n int) (*engine.StepResult, error) {
	if len(p.trainable) == 0 {
		return nil, errors.New("forward-backward: no trainable initializers")
	}
	if len(labels) != n {
		return nil, fmt.Errorf("forward-backward: %d labels for %d images", len(labels), n)
	}
	prev, err := ts.GradSetEnabled(true)
	if err != nil {
		return nil, torchErr(err)
	}
	defer ts.GradSetEnabled(prev)
	res, err := p.batches(images, labels, n, true)
	if p.squares != nil {
		// Sensitivity runs few, large batches and then copies its sums out: give
		// the activations' memory back rather than keep it under what comes next.
		releaseFreeMemory()
	}
	return res, err
}

// Forward runs the graph in eval mode (no gradients, no dropout) on n images and
// returns the first output's rows, in micro-batches for a fixed-batch graph. With
// labels (optional, n of them) it also counts the correct predictions and the loss.
func (p *Program) Forward(images []float32, labels []int64, n int) (*engine.StepResult, error) {
	if labels != nil && len(labels) != n {
		return nil, fmt.Errorf("forward: %d labels for %d images", len(labels), n)
	}
	return p.batches(images, labels, n, false)
}

func (p *Program) batches(images []float32, labels []int64, n int, train bool) (*engine.StepResult, error) {
	in, sample, err := p.imageInput()
	if err != nil {
		return nil, err
	}
	if n <= 0 {
		return nil, fmt.Errorf("%d images", n)
	}
	size := int(constfold.Prod(sample))
	if len(images) != n*size {
		return nil, fmt.Errorf("%d values for %d images of shape %v", len(images), n, sample)
	}
	chunk := n
	res := &engine.StepResult{N: n}
	if fb := p.FixedBatch(); fb > 0 {
		chunk = fb
		res.MicroBatched = fb != n
	}
	outName := p.outputs[0].Name
	buf := make([]float32, chunk*size)
	lab := make([]int64, chunk)
	for off := 0; off < n; off += chunk {
		m := min(chunk, n-off)
		b := m
		if p.FixedBatch() > 0 {
			b = chunk
		}
		x := images[off*size : (off+m)*size]
		if b != m { // pad with zeros
			copy(buf, x)
			clear(buf[m*size:])
			x = buf
		}
		xt, err := tensorFromFloats(x, append([]int64{int64(b)}, sample...))
		if err != nil {
			return nil, err
		}
		outs, err := p.run(map[string]*ts.Tensor{in.Name: xt}, train)
		xt.Drop()
		if err != nil {
			return nil, err
		}
		logits := outs[outName]
		for name, t := range outs {
			if name != outName {
				t.Drop()
			}
		}
		res.Runs++
		// SquareGrads: the hooks square the batch's gradient once, when the last
		// micro-batch's backward has added its share.
		p.squares.arm(train && off+chunk >= n)
		err = p.consume(res, logits, labels, off, m, b, n, train, lab)
		p.squares.arm(false)
		if err == nil {
			err = p.squares.err()
		}
		logits.Drop()
		if err != nil {
			return nil, err
		}
	}
	return res, nil
}

// consume reads one run's logits [b, classes] (its first m rows real) and, with
// labels, adds its loss; in train mode it runs backward.
func (p *Program) consume(res *engine.StepResult, logits *ts.Tensor, labels []int64, off, m, b, n int, train bool, lab []int64) error {
	shape, err := sizeOf(logits)
	if err != nil {
		return err
	}
	if len(shape) != 2 || shape[0] != int64(b) {
		return fmt.Errorf("output %q has shape %v, want [%d, classes]", p.outputs[0].Name, shape, b)
	}
	classes := int(shape[1])
	res.Classes = classes
	det, err := logits.Detach(false)
	if err != nil {
		return torchErr(err)
	}
	vals, err := copyFloats(det)
	det.Drop()
	if err != nil {
		return err
	}
	res.Logits = append(res.Logits, vals[:m*classes]...)
	if labels == nil {
		return nil
	}
	for k := 0; k < b; k++ {
		lab[k] = -100 // ignore_index: padding
		if k < m {
			l := labels[off+k]
			if l < 0 || l >= int64(classes) {
				return fmt.Errorf("label %d of example %d is outside [0, %d)", l, off+k, classes)
			}
			lab[k] = l
			row := vals[k*classes : (k+1)*classes]
			best := 0
			for j, v := range row {
				if v > row[best] {
					best = j
				}
			}
			if int64(best) == l {
				res.Correct++
			}
		}
	}
	lt, err := tensorFromInt64s(lab[:b], []int64{int64(b)})
	if err != nil {
		return err
	}
	defer lt.Drop()
	sum, err := logits.CrossEntropyLoss(lt, ts.None, ts.ReductionSum, -100, 0, false)
	if err != nil {
		return fmt.Errorf("cross-entropy: %w", torchErr(err))
	}
	defer sum.Drop()
	s := ts.FloatScalar(float64(n))
	loss, err := sum.DivScalar(s, false)
	s.Drop()
	if err != nil {
		return torchErr(err)
	}
	defer loss.Drop()
	lv, err := copyFloats(loss)
	if err != nil {
		return err
	}
	res.Loss += float64(lv[0])
	if train {
		if err := loss.Backward(); err != nil {
			return fmt.Errorf("backward: %w", torchErr(err))
		}
	}
	return nil
}
