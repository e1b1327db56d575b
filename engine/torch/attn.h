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

// sptctl_softmax_rows runs the op's softmax kernel alone (for tests): with gp NULL it
// sets *p to bfloat16(softmax(x)) over the last dimension (x float32 or bfloat16);
// else also *gx to softmax's backward for the output gradient gp (made bfloat16, of
// x's shape), in x's dtype. plain != 0 runs the loops of CPUs without AVX-512. It
// returns 0, or -1 with a message in err as above.
int sptctl_softmax_rows(void *x, void *gp, int plain, void **p, void **gx, char *err, int errlen);

#ifdef __cplusplus
}
#endif

#endif
