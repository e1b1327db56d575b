package torch

// #include "dropout.h"
import "C"

import (
	"errors"

	"github.com/sugarme/gotch"
	lib "github.com/sugarme/gotch/libtch"
	"github.com/sugarme/gotch/ts"
)

// dropout is train-mode dropout of x with 0 < ratio < 1: each element kept with
// probability 1 - ratio and scaled by 1/(1 - ratio), else 0, recorded for autograd.
// float32 and bfloat16 tensors go through dropout.cpp's op (a parallel counter-based
// mask, seeded from libtorch's generator, recomputed in backward rather than kept:
// libtorch's own draws its mask serially, ~10 ns an element here); other dtypes
// through libtorch's.
func dropout(x *ts.Tensor, ratio float64) (*ts.Tensor, error) {
	if k := x.DType(); k != gotch.Float && k != gotch.BFloat16 {
		return ts.Dropout(x, ratio, true)
	}
	var msg [256]C.char
	out := C.sptctl_dropout(x.Ctensor(), C.double(ratio), &msg[0], C.int(len(msg)))
	if out == nil {
		return nil, errors.New(C.GoString(&msg[0]))
	}
	return ts.New(lib.Ctensor(out)), nil
}
