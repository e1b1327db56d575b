package torch

// #include <stdlib.h>
// #include "gradsq.h"
import "C"

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"github.com/sugarme/gotch/ts"

	"github.com/sptctl/sptctl/internal/osmem"
)

// gradSquares is a set of hooks (gradsq.cpp) that, while armed, add the square of
// each trainable weight's gradient to its running sum as soon as backward has
// accumulated it, and free the gradient: a Program compiled with
// engine.Options.SquareGrads never holds the gradients of the whole model at once
// (on vit_b_16, 346 MB less at sensitivity's peak). The set owns the sums; spill
// moves them to a file between batches (another 346 MB less during the next
// forward).
type gradSquares struct {
	c     unsafe.Pointer
	index map[string]int // parameter name → hook
	spill *os.File       // where spill wrote the sums (nil: never spilled)
}

// newGradSquares hooks params[k] (leaves requiring grad) to running sums, made of
// zeros when the first gradient comes (the first forward runs without them).
func newGradSquares(names []string, params []*ts.Tensor) (*gradSquares, error) {
	g := &gradSquares{index: map[string]int{}}
	for k, n := range names {
		g.index[n] = k
	}
	if len(params) == 0 {
		return g, nil
	}
	cp := make([]unsafe.Pointer, len(params)) // C pointers only: fine to pass to C
	for k := range params {
		cp[k] = params[k].Ctensor()
	}
	var msg [256]C.char
	set := C.sptctl_gradsq_new(&cp[0], C.int(len(params)), &msg[0], C.int(len(msg)))
	if set == nil {
		return nil, errors.New(C.GoString(&msg[0]))
	}
	g.c = set
	return g, nil
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

// err reports a hook's failure to read its sum back from the spill file.
func (g *gradSquares) err() error {
	if g == nil || g.c == nil {
		return nil
	}
	var msg [256]C.char
	if C.sptctl_gradsq_err(g.c, &msg[0], C.int(len(msg))) != 0 {
		return fmt.Errorf("grad² sums: %s: %s", g.spill.Name(), C.GoString(&msg[0]))
	}
	return nil
}

// close removes the hooks and frees the sums.
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

// hookGradSquares hooks every trainable initializer to a running sum
// (Options.SquareGrads).
func (p *Program) hookGradSquares() error {
	params := make([]*ts.Tensor, 0, len(p.trainable))
	for _, name := range p.trainable {
		params = append(params, p.params[name].t)
	}
	g, err := newGradSquares(p.trainable, params)
	if err != nil {
		return err
	}
	p.squares = g
	return nil
}

// SpillGradSquares writes the running sums of a Program compiled with
// Options.SquareGrads to f (read and written at offsets from 0; pass the same file
// every time) and frees them: the next ForwardBackward runs without them, and
// backward reads each one back just before it adds the square of its weight's
// gradient, in the same order as without the spill (the sums are the same to the
// bit). GradSquareSum reads a sum that is still in f from there. f must stay open
// until the Program is closed.
func (p *Program) SpillGradSquares(f *os.File) error {
	g := p.squares
	if g == nil {
		return errors.New("grad² spill: the program was not compiled with SquareGrads")
	}
	if f == nil {
		return errors.New("grad² spill: no file")
	}
	if g.c == nil {
		return nil
	}
	if g.spill != nil && g.spill != f {
		return fmt.Errorf("grad² spill: %s: sums already spilled to %s", f.Name(), g.spill.Name())
	}
	var msg [256]C.char
	if C.sptctl_gradsq_spill(g.c, C.int(f.Fd()), &msg[0], C.int(len(msg))) != 0 {
		return fmt.Errorf("grad² spill: %s: %s", f.Name(), C.GoString(&msg[0]))
	}
	g.spill = f
	releaseFreeMemory()
	return nil
}

// sum copies the running sum of the trainable initializer name into v.
func (g *gradSquares) sum(name string, v []float32) error {
	k, ok := g.index[name]
	if !ok {
		return fmt.Errorf("grad² sum: %q is not hooked", name)
	}
	if len(v) == 0 {
		return nil
	}
	var msg [256]C.char
	// v is Go memory without Go pointers in it: C may write to it during the call.
	if C.sptctl_gradsq_copy(g.c, C.int(k), (*C.float)(unsafe.Pointer(&v[0])), C.int64_t(len(v)), &msg[0], C.int(len(msg))) != 0 {
		where := ""
		if g.spill != nil {
			where = g.spill.Name() + ": "
		}
		return fmt.Errorf("grad² sum of %q: %s%s", name, where, C.GoString(&msg[0]))
	}
	return nil
}
