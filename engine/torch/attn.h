// C view of the softmax → matrix product op in attn.cpp (package engine/torch, see attn.go).
#ifndef SPTCTL_TRAIN_ATTN_H
#define SPTCTL_TRAIN_ATTN_H

#ifdef __cplusplus
extern "C" {
#endif

// sptctl_softmax_matmul returns a new tensor handle (a torch::Tensor*, as gotch's C API)
// for matmul(softmax(float32(x), dim -1) as bfloat16, v as bfloat16): what softmax
// in float32 followed by a matrix product under bfloat16 autocast computes. Its backward
// keeps x and v only and recomputes the softmax (see attn.cpp). On an error it returns
// NULL and writes a message of at most errlen bytes (NUL-terminated) to err.
void *sptctl_softmax_matmul(void *x, void *v, char *err, int errlen);

#ifdef __cplusplus
}
#endif

#endif
