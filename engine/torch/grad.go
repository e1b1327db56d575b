package torch

// #include "grad.h"
import "C"

import (
	"errors"

	"github.com/sugarme/gotch/ts"
)

// dropGrad leaves t without a gradient. The next backward then hands t its gradient
// as made instead of adding it to a zeroed one: for full fine-tuning of vit_b_16 that
// is a pass writing 344 MB (the zeroing) and one reading twice that (the addition) less
// per step, and no second gradient-sized tensor alive during backward.
func dropGrad(t *ts.Tensor) error {
	if C.sptctl_drop_grad(t.Ctensor()) != 0 {
		return errors.New("libtorch refused to drop a gradient")
	}
	return nil
}
