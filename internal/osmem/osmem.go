// Package osmem gives a process's freed memory back to the operating system, so
// that one stage's peak does not stay under the next stage's: the C heap's, from
// which libtorch and ONNX Runtime allocate (glibc keeps most of what they free
// otherwise: a vit_b_16 session or training step's worth), and the Go heap's.
package osmem

// #include <malloc.h>
import "C"

import "runtime/debug"

// TrimC returns the C heap's free memory to the system (glibc malloc_trim).
func TrimC() { C.malloc_trim(0) }

// Release collects the Go heap's garbage and returns it and the C heap's free memory
// to the system. It costs a full garbage collection: for the end of a stage, not for
// a loop.
func Release() {
	debug.FreeOSMemory()
	TrimC()
}

// MapLargeAllocs makes every C heap allocation of at least size bytes a memory
// mapping of its own, which free returns to the system at once (glibc's
// M_MMAP_THRESHOLD, fixed: glibc otherwise raises the threshold to the largest block
// freed so far and carves later tensors out of its arenas, where the room freed by a
// forward's temporaries fits the next ones poorly and the process's resident memory
// grows well past what it holds). It costs the system time of mapping and zeroing
// those pages at every allocation: for a process that runs a few large batches
// (sensitivity on vit_b_16: a peak 490 MB lower), not for a training loop.
func MapLargeAllocs(size int) { C.mallopt(C.M_MMAP_THRESHOLD, C.int(size)) }
