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
