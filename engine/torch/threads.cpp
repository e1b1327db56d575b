// libtorch's intra-op thread count for package train (see threads.go).
#include <ATen/Parallel.h>

#include "threads.h"

extern "C" int sptctl_set_num_threads(int n) {
  try {
    at::set_num_threads(n);
  } catch (...) {
    return -1;
  }
  return 0;
}

extern "C" int sptctl_get_num_threads(void) {
  try {
    return at::get_num_threads();
  } catch (...) {
    return -1;
  }
}
