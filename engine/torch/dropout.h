// C view of the dropout autograd op in dropout.cpp (package engine/torch, see dropout.go).
#ifndef SPTCTL_TORCH_DROPOUT_H
#define SPTCTL_TORCH_DROPOUT_H

#ifdef __cplusplus
extern "C" {
#endif

// sptctl_dropout returns a new tensor handle (a torch::Tensor*, as gotch's C API) for
// train-mode dropout of x (float32 or bfloat16): each element kept with probability
// 1 - ratio and scaled by 1 / (1 - ratio), else 0. The mask comes from a counter-based
// hash of a seed drawn from libtorch's default CPU generator (so at::manual_seed makes
// it repeatable) and the element's index, so it does not depend on the thread count;
// backward recomputes it from the seed instead of keeping it. ratio must be in (0, 1).
// On an error it returns NULL and writes a message of at most errlen bytes to err.
void *sptctl_dropout(void *x, double ratio, char *err, int errlen);

#ifdef __cplusplus
}
#endif

#endif
