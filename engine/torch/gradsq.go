package torch

// #include <stdlib.h>
// #include "gradsq.h"
import "C"

import (
	"errors"
	"fmt"
	"unsafe"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"

	"github.com/sptctl/sptctl/internal/osmem"
)

// gradSquares is a set of hooks (gradsq.cpp) that, while armed, add the square of
// each trainable weight's gradient to its running sum as soon as backward has
// accumulated it, and free the gradient: a Program compiled with
// engine.Options.SquareGrads never holds the gradients of the whole model at once
// (on vit_b_16, 346 MB less at sensitivity's peak).
type gradSquares struct{ c unsafe.Pointer }

// newGradSquares hooks params[k] (leaves requiring grad) to sums[k] (float32 of the
// same shape). The tensors stay owned by the caller; the hooks hold references.
func newGradSquares(params, sums []*ts.Tensor) (*gradSquares, error) {
	if len(params) != len(sums) {
		return nil, errors.New("grad² hooks: want one sum per parameter")
	}
	if len(params) == 0 {
		return &gradSquares{}, nil
	}
	cp := make([]unsafe.Pointer, len(params)) // C pointers only: fine to pass to C
	cs := make([]unsafe.Pointer, len(sums))
	for k := range params {
		cp[k], cs[k] = params[k].Ctensor(), sums[k].Ctensor()
	}
	var msg [256]C.char
	set := C.sptctl_gradsq_new(&cp[0], &cs[0], C.int(len(params)), &msg[0], C.int(len(msg)))
	if set == nil {
		return nil, errors.New(C.GoString(&msg[0]))
	}
	return &gradSquares{c: set}, nil
}

// arm turns the hooks on or off.
func (g *gradSquares) arm(on bool) {
	if g == nil || g.c == nil {
		return
	}
	v := C.int(0)
	if on {
		v = 1
	}
	C.sptctl_gradsq_arm(g.c, v)
}

// close removes the hooks.
func (g *gradSquares) close() {
	if g == nil || g.c == nil {
		return
	}
	C.sptctl_gradsq_free(g.c)
	g.c = nil
}

// releaseFreeMemory gives the C heap's free memory back to the system: the glibc
// allocator keeps most of what libtorch frees (a step's activations) otherwise, so a
// process's later Go allocations would come on top of it.
func releaseFreeMemory() { osmem.TrimC() }

// hookGradSquares makes the running sums of every trainable initializer (zeros) and
// hooks them to the gradients (Options.SquareGrads).
func (p *Program) hookGradSquares() error {
	p.gradSq = map[string]*ts.Tensor{}
	params := make([]*ts.Tensor, 0, len(p.trainable))
	sums := make([]*ts.Tensor, 0, len(p.trainable))
	for _, name := range p.trainable {
		pr := p.params[name]
		s, err := ts.Zeros(pr.shape, gotch.Float, gotch.CPU)
		if err != nil {
			return fmt.Errorf("grad² sum of %q: %w", name, torchErr(err))
		}
		p.gradSq[name] = s
		params, sums = append(params, pr.t), append(sums, s)
	}
	g, err := newGradSquares(params, sums)
	if err != nil {
		return err
	}
	p.squares = g
	return nil
}
