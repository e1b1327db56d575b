package torch

// #cgo CXXFLAGS: -std=c++17 -O1 -g0 -I/usr/include/torch/csrc/api/include -w
// #cgo LDFLAGS: -lstdc++ -ltorch -lc10 -ltorch_cpu
// #include "threads.h"
import "C"

import "runtime"

// SetNumThreads sets libtorch's intra-op thread count (at::set_num_threads), which
// with Debian's libopenblas0-openmp also governs the BLAS threads. libtorch starts
// with one thread here; n < 1 means one per CPU (runtime.NumCPU).
//
// OpenMP keeps the count per OS thread: call it on the locked OS thread that runs
// the torch work (Worker; docs/ARCHITECTURE.md, "One executor").
func SetNumThreads(n int) {
	if n < 1 {
		n = runtime.NumCPU()
	}
	C.sptctl_set_num_threads(C.int(n))
}

// NumThreads returns libtorch's intra-op thread count (at::get_num_threads) as the
// calling OS thread sees it.
func NumThreads() int {
	return int(C.sptctl_get_num_threads())
}
