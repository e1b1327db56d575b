package torch

import (
	"fmt"
	"sort"

	lib "github.com/sugarme/gotch/libtch"
	"github.com/sugarme/gotch/ts"

	"github.com/sptctl/sptctl/onnxio"
	"github.com/sptctl/sptctl/onnxio/onnxpb"
	"github.com/sptctl/sptctl/surgery/constfold"
)

// The Program's weights and their gradients, as Go slices.

// paramTensor returns the libtorch tensor of a float initializer (nil if there is none).
// The Program owns it.
func (p *Program) paramTensor(name string) *ts.Tensor {
	if pr, ok := p.params[name]; ok {
		return pr.t
	}
	return nil
}

// ParamShape returns the shape of a float initializer.
func (p *Program) ParamShape(name string) ([]int64, bool) {
	pr, ok := p.params[name]
	if !ok {
		return nil, false
	}
	return append([]int64{}, pr.shape...), true
}

// Grad returns a copy of the gradient accumulated in a trainable initializer (zeros if
// backward has not reached it).
func (p *Program) Grad(name string) ([]float32, error) {
	pr, ok := p.params[name]
	if !ok {
		return nil, fmt.Errorf("grad: no float initializer %q", name)
	}
	if !pr.trainable {
		return nil, fmt.Errorf("grad: initializer %q is not trainable", name)
	}
	g, err := pr.t.Grad(false)
	if err != nil {
		return nil, fmt.Errorf("grad %q: %w", name, torchErr(err))
	}
	defer g.Drop()
	def, err := g.Defined()
	if err != nil {
		return nil, fmt.Errorf("grad %q: %w", name, torchErr(err))
	}
	if !def {
		return make([]float32, constfold.Prod(pr.shape)), nil
	}
	out, err := copyFloats(g)
	if err != nil {
		return nil, fmt.Errorf("grad %q: %w", name, err)
	}
	return out, nil
}

// gradTensor returns a new handle to the gradient tensor of a trainable initializer,
// or nil if it has none yet. The caller drops it.
func (p *Program) gradTensor(name string) (*ts.Tensor, error) {
	pr, ok := p.params[name]
	if !ok || !pr.trainable {
		return nil, fmt.Errorf("grad: %q is not a trainable initializer", name)
	}
	g, err := pr.t.Grad(false)
	if err != nil {
		return nil, torchErr(err)
	}
	def, err := g.Defined()
	if err != nil || !def {
		g.Drop()
		return nil, torchErr(err)
	}
	return g, nil
}

// AddGradSquares adds the square of every trainable initializer's gradient to its
// running sum, kept in libtorch memory (copying every gradient out per batch doubled
// the memory of sensitivity scoring on vit_b_16). Initializers backward has not
// reached add nothing; with Options.SquareGrads backward has added them already and
// freed the gradients, so nothing is left to add.
func (p *Program) AddGradSquares() error {
	if p.squares != nil {
		return nil
	}
	if p.gradSq == nil {
		p.gradSq = map[string]*ts.Tensor{}
	}
	for _, name := range p.trainable {
		g, err := p.gradTensor(name)
		if err != nil {
			return err
		}
		if g == nil {
			continue
		}
		sq, err := g.Square(false)
		g.Drop()
		if err != nil {
			return fmt.Errorf("grad² of %q: %w", name, torchErr(err))
		}
		if a := p.gradSq[name]; a == nil {
			p.gradSq[name] = sq
		} else {
			err = a.Add_(sq)
			sq.Drop()
			if err != nil {
				return fmt.Errorf("grad² of %q: %w", name, torchErr(err))
			}
		}
	}
	return nil
}

// GradSquareSum returns a copy of the running sum AddGradSquares keeps for a trainable
// initializer (zeros if it never had a gradient).
func (p *Program) GradSquareSum(name string) ([]float32, error) {
	pr, ok := p.params[name]
	if !ok || !pr.trainable {
		return nil, fmt.Errorf("grad² sum: %q is not a trainable initializer", name)
	}
	if p.squares != nil {
		v := make([]float32, constfold.Prod(pr.shape))
		if err := p.squares.sum(name, v); err != nil {
			return nil, err
		}
		return v, nil
	}
	a := p.gradSq[name]
	if a == nil {
		return make([]float32, constfold.Prod(pr.shape)), nil
	}
	v, err := copyFloats(a)
	if err != nil {
		return nil, fmt.Errorf("grad² sum of %q: %w", name, err)
	}
	return v, nil
}

// ZeroGrad clears the gradients of every trainable initializer: it drops them (as
// PyTorch's zero_grad(set_to_none=True)), so the next backward hands each initializer
// its gradient instead of adding it to zeros; Grad reads zeros until then.
func (p *Program) ZeroGrad() error {
	for _, name := range p.trainable {
		if err := dropGrad(p.params[name].t); err != nil {
			return fmt.Errorf("zero grad %q: %w", name, err)
		}
	}
	return nil
}

// SetFloats overwrites a float initializer's values (its gradient is kept).
func (p *Program) SetFloats(name string, v []float32) error {
	pr, ok := p.params[name]
	if !ok {
		return fmt.Errorf("set %q: no float initializer of that name", name)
	}
	src, err := tensorFromFloats(v, pr.shape)
	if err != nil {
		return fmt.Errorf("set %q: %w", name, err)
	}
	defer src.Drop()
	prev, err := ts.GradSetEnabled(false)
	if err != nil {
		return fmt.Errorf("set %q: %w", name, torchErr(err))
	}
	defer ts.GradSetEnabled(prev)
	lib.AtCopy_(lib.Ctensor(pr.t.Ctensor()), lib.Ctensor(src.Ctensor())) // ts.Copy_ would log.Fatal
	if err := lastErr(); err != nil {
		return fmt.Errorf("set %q: %w", name, err)
	}
	return nil
}

// Floats returns a copy of a float initializer's current values.
func (p *Program) Floats(name string) ([]float32, error) {
	pr, ok := p.params[name]
	if !ok {
		return nil, fmt.Errorf("floats %q: no float initializer of that name", name)
	}
	d, err := pr.t.Detach(false)
	if err != nil {
		return nil, fmt.Errorf("floats %q: %w", name, torchErr(err))
	}
	defer d.Drop()
	return copyFloats(d)
}

// WriteBack copies the current values of the trainable initializers into m's
// initializers of the same names (m is normally the model the Program came from).
func (p *Program) WriteBack(m *onnxpb.ModelProto) error {
	byName := map[string]*onnxpb.TensorProto{}
	for _, t := range m.GetGraph().GetInitializer() {
		byName[t.GetName()] = t
	}
	names := append([]string{}, p.trainable...)
	sort.Strings(names)
	for _, name := range names {
		t, ok := byName[name]
		if !ok {
			return fmt.Errorf("write back: model has no initializer %q", name)
		}
		v, err := p.Floats(name)
		if err != nil {
			return fmt.Errorf("write back: %w", err)
		}
		if err := onnxio.SetFloats(t, v); err != nil {
			return fmt.Errorf("write back: %w", err)
		}
	}
	return nil
}
