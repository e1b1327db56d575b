package torch

// #include <stdlib.h>
// #include "profile.h"
import "C"

import (
	"fmt"
	"unsafe"
)

// StartProfile turns libtorch's operator profiler on for the calling OS thread (call
// it inside Worker.Do; autograd's backward, run on the same thread, is recorded too).
// The returned stop, called inside Do on the same worker, turns it off and writes to
// path one line per operator and input shapes, tab-separated, by self time: self ms,
// total ms, calls, operator, shapes. For finding where a step's time goes
// (bench/engine -torchprofile); profiling slows every operator a little. Calling stop again does nothing.
func StartProfile(path string) (stop func() error, err error) {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var buf [512]C.char
	h := C.sptctl_profile_start(cpath, &buf[0], C.int(len(buf)))
	if h == nil {
		return nil, fmt.Errorf("profile %s: %s", path, C.GoString(&buf[0]))
	}
	stopped := false
	return func() error {
		if stopped {
			return nil
		}
		stopped = true
		if C.sptctl_profile_stop(h, &buf[0], C.int(len(buf))) != 0 {
			return fmt.Errorf("profile %s: %s", path, C.GoString(&buf[0]))
		}
		return nil
	}, nil
}
