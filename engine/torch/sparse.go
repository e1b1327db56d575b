package torch

// #include <stdlib.h>
// #include "sparse.h"
import "C"

import (
	"errors"
	"unsafe"

	lib "github.com/sugarme/gotch/libtch"
	"github.com/sugarme/gotch/ts"
)

// sparseDeltaAdd returns y + Σ_p S_p·x row by row, S_p being the sparse [out, in]
// matrix with entries pairs[p] (int64 [n, 2]: output index, input index; the caller
// has checked the ranges) and values vals[p] [n]: the sparse share of a linear layer
// whose weight is W + S, beside linear(x, W, b). Its backward gives each vals[p] the
// gradient of its entries only (the dot of x's input column and the output
// gradient's column over the rows) and x the entries' share of its gradient; nothing
// of W's size is made (see sparse.cpp).
//
// With add false it adds nothing (y already has the entries' share: the linear used
// sparseWeight's W + S) and only gives the values their gradients; x should then be
// detached (the linear's backward gives it all of ∂/∂x).
func sparseDeltaAdd(y, x *ts.Tensor, pairs, vals []*ts.Tensor, add bool) (*ts.Tensor, error) {
	if len(pairs) != len(vals) || len(pairs) == 0 {
		return nil, errors.New("sparse delta: want one values tensor per index tensor")
	}
	cp := make([]unsafe.Pointer, len(pairs)) // C pointers only: fine to pass to C
	cv := make([]unsafe.Pointer, len(vals))
	for k := range pairs {
		cp[k], cv[k] = pairs[k].Ctensor(), vals[k].Ctensor()
	}
	var msg [256]C.char
	a := C.int(0)
	if add {
		a = 1
	}
	out := C.sptctl_sparse_delta_add(y.Ctensor(), x.Ctensor(), &cp[0], &cv[0], C.int(len(pairs)), a, &msg[0], C.int(len(msg)))
	if out == nil {
		return nil, errors.New(C.GoString(&msg[0]))
	}
	return ts.New(lib.Ctensor(out)), nil
}

// sparseWeight returns W + Σ_p S_p (w [out, in], float32; pairs and vals as
// sparseDeltaAdd's), made without autograd: a constant of W's size for one step's
// linear, bfloat16 under bf16 autocast (the float32 sum rounded once: autocast's cast
// of it, made in the same pass), else float32.
func sparseWeight(w *ts.Tensor, pairs, vals []*ts.Tensor) (*ts.Tensor, error) {
	if len(pairs) != len(vals) || len(pairs) == 0 {
		return nil, errors.New("sparse weight: want one values tensor per index tensor")
	}
	cp := make([]unsafe.Pointer, len(pairs))
	cv := make([]unsafe.Pointer, len(vals))
	for k := range pairs {
		cp[k], cv[k] = pairs[k].Ctensor(), vals[k].Ctensor()
	}
	var msg [256]C.char
	out := C.sptctl_sparse_weight(w.Ctensor(), &cp[0], &cv[0], C.int(len(pairs)), &msg[0], C.int(len(msg)))
	if out == nil {
		return nil, errors.New(C.GoString(&msg[0]))
	}
	return ts.New(lib.Ctensor(out)), nil
}
