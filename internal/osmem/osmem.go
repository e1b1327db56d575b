// Package osmem owns how the process's C heap (glibc malloc, from which libtorch and
// ONNX Runtime allocate) is tuned, and gives freed memory back to the operating
// system, so that one stage's peak does not stay under the next stage's (glibc keeps
// most of what libtorch and ONNX Runtime free otherwise: a vit_b_16 session or
// training step's worth), the Go heap's too.
//
// The tuning functions leave glibc alone when the user set any of its malloc
// variables (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_,
// GLIBC_TUNABLES): the environment wins.
package osmem

// #include <malloc.h>
// #include <stdlib.h>
//
// static int sptctl_user_tuned(void) {
//   return getenv("MALLOC_MMAP_THRESHOLD_") || getenv("MALLOC_TRIM_THRESHOLD_") ||
//          getenv("MALLOC_TOP_PAD_") || getenv("GLIBC_TUNABLES");
// }
import "C"

import "runtime/debug"

// UserTuned reports whether the environment sets glibc malloc's behaviour, in which
// case FixThresholds and MapLargeAllocs do nothing.
func UserTuned() bool { return C.sptctl_user_tuned() != 0 }

// FixThresholds fixes glibc malloc's thresholds for libtorch's tensors and returns
// whether it did (false: the environment sets them). By default glibc serves an
// allocation above its mmap threshold with its own mmap, raises the threshold to the
// size of each such block freed, and gives the heap's free top back to the system
// past twice that: a training step's tensors of a few MB then keep being returned and
// faulted back in, zero-filled, step after step (vit_b_16 bf16 SPT step: 1.21M minor
// faults over 6 steps, ~1.3 CPU-s per step, against 0.56M with these settings). The
// fixed settings: blocks under 32 MiB (every activation of a ViT-B batch) from the
// heap, 128 MiB of free top kept, the heap grown 64 MiB at a time. Pages not written
// are not resident, so the peak RSS barely moves (bench/RESULTS-stepcost.md). A
// training loop turns trimming off altogether with KeepFreedHeap. A setting glibc
// refuses keeps its default: nothing depends on these but speed and memory.
func FixThresholds() bool {
	return setThresholds(32<<20, trimThreshold, 64<<20)
}

// trimThreshold is FixThresholds' free top kept by the heap.
const trimThreshold = 128 << 20

// KeepFreedHeap stops glibc from giving the heap's free top back to the system, for a
// training loop, and returns the function that restores FixThresholds' threshold
// (both do nothing when the environment sets glibc's malloc variables). A backward
// frees most of a step's activations at once, so any finite threshold below a step's
// working set still hands that memory back and the next forward faults it in again,
// zero-filled (vit_b_16 bf16 full fine-tuning: ~54,000 minor faults and ~0.2 CPU-s of
// system time per step with 128 MiB, ~2,000 without trimming). Outside a loop the
// kept memory would only raise the next stage's peak (export --merge of vit_b_16: 1012
// MiB against 893), hence the restore.
func KeepFreedHeap() (restore func()) {
	if UserTuned() {
		return func() {}
	}
	C.mallopt(C.M_TRIM_THRESHOLD, -1) // glibc: -1 turns trimming off
	return func() { C.mallopt(C.M_TRIM_THRESHOLD, trimThreshold) }
}

// setThresholds sets glibc's mmap threshold, trim threshold and top pad, unless the
// environment sets any of glibc's malloc variables.
func setThresholds(mmap, trim, pad int) bool {
	if UserTuned() {
		return false
	}
	C.mallopt(C.M_MMAP_THRESHOLD, C.int(mmap))
	C.mallopt(C.M_TRIM_THRESHOLD, C.int(trim))
	C.mallopt(C.M_TOP_PAD, C.int(pad))
	return true
}

// MapLargeAllocs makes every C heap allocation of at least size bytes a memory
// mapping of its own, which free returns to the system at once, and returns whether
// it did (false: the environment sets glibc's thresholds). glibc otherwise (or with
// FixThresholds) carves later tensors out of its arenas, where the room freed by a
// forward's temporaries fits the next ones poorly and the process's resident memory
// grows well past what it holds. It costs the system time of mapping and zeroing
// those pages at every allocation: for a process that runs a few large batches
// (sensitivity on vit_b_16: a peak 490 MB lower), not for a training loop.
func MapLargeAllocs(size int) bool {
	if UserTuned() {
		return false
	}
	C.mallopt(C.M_MMAP_THRESHOLD, C.int(size))
	return true
}

// TrimC returns the C heap's free memory to the system (glibc malloc_trim).
func TrimC() { C.malloc_trim(0) }

// Release collects the Go heap's garbage and returns it and the C heap's free memory
// to the system. It costs a full garbage collection: for the end of a stage, not for
// a loop.
func Release() {
	debug.FreeOSMemory()
	TrimC()
}
