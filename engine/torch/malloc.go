package torch

// #include <malloc.h>
// #include <stdlib.h>
//
// // sptctl_malloc_tune fixes glibc malloc's thresholds (see init below); it leaves
// // them alone if the user set any through the environment.
// static void sptctl_malloc_tune(void) {
//   if (getenv("MALLOC_MMAP_THRESHOLD_") || getenv("MALLOC_TRIM_THRESHOLD_") ||
//       getenv("MALLOC_TOP_PAD_") || getenv("GLIBC_TUNABLES")) {
//     return;
//   }
//   mallopt(M_MMAP_THRESHOLD, 32 << 20);
//   mallopt(M_TRIM_THRESHOLD, 128 << 20);
//   mallopt(M_TOP_PAD, 64 << 20);
// }
import "C"

// libtorch's CPU tensors come from glibc malloc. By default glibc serves an
// allocation above its mmap threshold with its own mmap, raises the threshold to the
// size of each such block freed, and gives the heap's free top back to the system
// past twice that: a training step's tensors of a few MB then keep being returned and
// faulted back in, zero-filled, step after step (vit_b_16 bf16 SPT step: 1.21M minor
// faults over 6 steps, ~1.3 CPU-s per step, against 0.56M with the settings below).
// The fixed settings: blocks under 32 MiB (every activation of a ViT-B batch)
// from the heap, 128 MiB of free top kept, the heap grown 64 MiB at a time. Pages not
// written are not resident, so the peak RSS barely moves (bench/RESULTS-stepcost.md).
// MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_ or GLIBC_TUNABLES in
// the environment leave glibc's own behaviour. A setting glibc refuses keeps its
// default: nothing depends on these but speed and memory.
func init() { C.sptctl_malloc_tune() }
