// C view of grad.cpp (package engine/torch, see grad.go).
#ifndef SPTCTL_TRAIN_GRAD_H
#define SPTCTL_TRAIN_GRAD_H

#ifdef __cplusplus
extern "C" {
#endif

// sptctl_drop_grad leaves the tensor (a torch::Tensor*, as gotch's C API) without a
// gradient, as PyTorch's zero_grad(set_to_none=True) does; it returns 0, or -1 on a
// libtorch error.
int sptctl_drop_grad(void *t);

#ifdef __cplusplus
}
#endif

#endif
