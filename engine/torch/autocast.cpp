// libtorch's CPU autocast for package engine/torch (see autocast.go).
#include <ATen/autocast_mode.h>

#include "autocast.h"

extern "C" int sptctl_autocast_enter(void) {
  try {
    const bool was = at::autocast::is_cpu_enabled();
    at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
    at::autocast::set_cpu_enabled(true);
    at::autocast::increment_nesting();
    return was ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

extern "C" int sptctl_autocast_exit(int was_on) {
  try {
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_cpu_enabled(was_on == 1);
  } catch (...) {
    return -1;
  }
  return 0;
}

extern "C" int sptctl_autocast_enabled(void) {
  try {
    return at::autocast::is_cpu_enabled() ? 1 : 0;
  } catch (...) {
    return -1;
  }
}
