// C view of the grad-square hooks in gradsq.cpp (package engine/torch, see gradsq.go).
#ifndef SPTCTL_TRAIN_GRADSQ_H
#define SPTCTL_TRAIN_GRADSQ_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// sptctl_gradsq_new attaches to each of the n leaf tensors params[k] (torch::Tensor*,
// requiring grad) a hook on its gradient accumulator that, while the set is armed,
// adds the square of the accumulated gradient to a running sum (float, the same
// shape; made of zeros when the first gradient comes) right after backward stored
// it, and then frees the gradient. It returns the set (NULL and a message in err on
// an error); free it with sptctl_gradsq_free.
void *sptctl_gradsq_new(void **params, int n, char *err, int errlen);

// sptctl_gradsq_arm arms (on != 0) or disarms the set's hooks.
void sptctl_gradsq_arm(void *set, int on);

// sptctl_gradsq_err returns 1 and the message if a hook failed to read its sum back
// from the spill file (the hooks then add nothing more), else 0.
int sptctl_gradsq_err(void *set, char *err, int errlen);

// sptctl_gradsq_spill writes the sums held in memory to the file fd (each at its own
// offset; always the same fd) and frees them; a hook reads its sum back before adding
// to it. It returns 0, or 1 and a message (the sums are then all kept).
int sptctl_gradsq_spill(void *set, int fd, char *err, int errlen);

// sptctl_gradsq_copy copies sum k (n floats) to dst, from memory or the spill file.
// It returns 0, or 1 and a message.
int sptctl_gradsq_copy(void *set, int k, float *dst, int64_t n, char *err, int errlen);

// sptctl_gradsq_free removes the hooks and frees the set and its sums.
void sptctl_gradsq_free(void *set);

#ifdef __cplusplus
}
#endif

#endif
