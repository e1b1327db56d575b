// Dropping a tensor's gradient for package engine/torch (see grad.go).
#include <ATen/ATen.h>

#include "grad.h"

extern "C" int sptctl_drop_grad(void *t) {
  try {
    static_cast<at::Tensor *>(t)->mutable_grad().reset();
  } catch (...) {
    return -1;
  }
  return 0;
}
