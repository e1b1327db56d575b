package torch

import "github.com/sptctl/sptctl/internal/osmem"

// libtorch's CPU tensors come from glibc malloc, whose default thresholds make a
// training step's tensors of a few MB be returned to the system and faulted back in
// at every step; they are fixed when this package loads (osmem.FixThresholds, which
// says why and leaves them alone if the environment sets glibc's malloc variables).
func init() { osmem.FixThresholds() }
