package torch

// #include "autocast.h"
import "C"

import (
	"errors"

	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// bfloat16 mixed precision (engine.BF16): a Program compiled with it runs under
// libtorch's CPU autocast, which casts the inputs of matrix products and convolutions
// to bfloat16 (oneDNN kernels) and records the casts for autograd, so the float32
// weights get float32 gradients.

// autocastEnter turns bfloat16 CPU autocast on for the calling OS thread; give its
// result to autocastExit.
func autocastEnter() (wasOn int, err error) {
	r := C.sptctl_autocast_enter()
	if r < 0 {
		return 0, errors.New("libtorch refused to turn CPU autocast on")
	}
	return int(r), nil
}

// autocastExit undoes autocastEnter, dropping autocast's cached bfloat16 weights.
func autocastExit(wasOn int) error {
	if C.sptctl_autocast_exit(C.int(wasOn)) != 0 {
		return errors.New("libtorch refused to turn CPU autocast off")
	}
	return nil
}

// asFloat32 returns t as float32: t itself, or (bfloat16 under autocast) a float32
// copy, dropping t.
func asFloat32(t *ts.Tensor) (*ts.Tensor, error) {
	if t.DType() == gotch.Float {
		return t, nil
	}
	f, err := t.Totype(gotch.Float, true)
	if err != nil {
		return nil, torchErr(err)
	}
	return f, nil
}

// F32 is T(v) as float32: a bfloat16 tensor (an autocast matrix product's output) is
// cast, the copy dropped after the step. Layer norm and softmax read their input
// through it, so they compute in float32 under bf16 autocast.
func (r *runCtx) F32(v value) (*ts.Tensor, error) {
	t, err := r.T(v)
	if err != nil || t.DType() != gotch.BFloat16 {
		return t, err
	}
	f, err := t.Totype(gotch.Float, false)
	if err != nil {
		return nil, torchErr(err)
	}
	r.temps = append(r.temps, f)
	return f, nil
}
