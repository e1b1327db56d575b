// C view of the grad-square hooks in gradsq.cpp (package engine/torch, see gradsq.go).
#ifndef SPTCTL_TRAIN_GRADSQ_H
#define SPTCTL_TRAIN_GRADSQ_H

#ifdef __cplusplus
extern "C" {
#endif

// sptctl_gradsq_new attaches to each of the n leaf tensors params[k] (torch::Tensor*,
// requiring grad) a hook on its gradient accumulator that, while the set is armed,
// adds the square of the accumulated gradient to sums[k] (a float tensor of the
// same shape) right after backward stored it, and then frees the gradient. It returns
// the set (NULL and a message in err on an error); free it with sptctl_gradsq_free.
void *sptctl_gradsq_new(void **params, void **sums, int n, char *err, int errlen);

// sptctl_gradsq_arm arms (on != 0) or disarms the set's hooks.
void sptctl_gradsq_arm(void *set, int on);

// sptctl_gradsq_free removes the hooks and frees the set.
void sptctl_gradsq_free(void *set);

#ifdef __cplusplus
}
#endif

#endif
