// C view of libtorch's CPU autocast for package engine/torch (see autocast.go).
#ifndef SPTCTL_TRAIN_AUTOCAST_H
#define SPTCTL_TRAIN_AUTOCAST_H

#ifdef __cplusplus
extern "C" {
#endif

// sptctl_autocast_enter turns CPU autocast to bfloat16 on for the calling OS thread
// (at::autocast::set_cpu_enabled, set_autocast_cpu_dtype) and enters one nesting
// level, as torch.autocast("cpu", dtype=torch.bfloat16) does; it returns whether
// autocast was already on (to give back to sptctl_autocast_exit), or -1 on an error.
int sptctl_autocast_enter(void);

// sptctl_autocast_exit leaves the nesting level; at the outermost level it clears the
// cache of bfloat16 copies of the weights (they change between steps). Autocast stays
// on if was_on (sptctl_autocast_enter's result) is 1. It returns 0, or -1 on an error.
int sptctl_autocast_exit(int was_on);

// sptctl_autocast_enabled returns whether CPU autocast is on for the calling thread.
int sptctl_autocast_enabled(void);

#ifdef __cplusplus
}
#endif

#endif
