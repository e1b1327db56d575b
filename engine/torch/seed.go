package torch

// #include "seed.h"
import "C"

import "errors"

// SetSeed seeds libtorch's default CPU generator (at::manual_seed), which train-mode
// Dropout and libtorch's random initialisers draw from. The generator is global (not
// per thread); seed it on the torch thread before the run that should be repeatable.
func SetSeed(seed uint64) error {
	if C.sptctl_manual_seed(C.ulonglong(seed)) != 0 {
		return errors.New("libtorch refused the seed")
	}
	return nil
}
