package osmem

// #include <malloc.h>
// #include <stdlib.h>
import "C"

import "unsafe"

// mappedBlockWith reports whether glibc serves a C allocation of size bytes with a
// memory mapping of its own (mallinfo2's count of mapped blocks grows while it is
// held): how the tests see which thresholds are in force.
func mappedBlockWith(size int) bool {
	before := C.mallinfo2().hblks
	p := C.malloc(C.size_t(size))
	defer C.free(unsafe.Pointer(p))
	return C.mallinfo2().hblks > before
}

// heapKeptAfterFree reports whether the room of n blocks of size bytes, allocated from
// the heap and freed (the last first, as a backward frees a forward's activations),
// stays with the heap (mallinfo2's bytes taken from the system) instead of going back
// to the system.
func heapKeptAfterFree(n, size int) bool {
	ps := make([]unsafe.Pointer, n)
	for i := range ps {
		ps[i] = C.malloc(C.size_t(size))
	}
	for i := len(ps) - 1; i >= 0; i-- {
		C.free(ps[i])
	}
	return C.mallinfo2().arena >= C.size_t(n*size)
}
