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
