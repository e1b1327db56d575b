// libtorch's random seed for package train (see seed.go).
#include <ATen/Context.h>

#include "seed.h"

extern "C" int sptctl_manual_seed(unsigned long long seed) {
  try {
    at::manual_seed(seed);
  } catch (...) {
    return -1;
  }
  return 0;
}
