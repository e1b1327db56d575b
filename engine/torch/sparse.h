// C view of the sparse-delta autograd op in sparse.cpp (package engine/torch, see sparse.go).
#ifndef SPTCTL_TRAIN_SPARSE_H
#define SPTCTL_TRAIN_SPARSE_H

#ifdef __cplusplus
extern "C" {
#endif

// sptctl_sparse_delta_add returns a new tensor handle (a torch::Tensor*, as gotch's
// C API) for y + Σ_p S_p(x), where x is [..., in], y is [..., out] and S_p is the
// sparse [out, in] matrix whose entries are pairs[p] (int64 [n_p, 2]: output index,
// input index) with values vals[p] (float [n_p]): for every row t,
// out[t, o_k] = y[t, o_k] + Σ vals[p][k] · x[t, i_k]. It is recorded for autograd:
// the gradient reaches y (unchanged), x (only the sparse entries' share; the caller
// adds the dense product) and each vals[p] (entry k: the dot of x's column i_k and the
// output gradient's column o_k over the rows). On an error it returns NULL and writes
// a message of at most errlen bytes (NUL-terminated) to err. The caller checks that
// every index is in range (output index < out, input index < in).
// With add 0 the op adds nothing: y already holds the entries' share (y = x·(W + S)ᵀ + b,
// W + S from sptctl_sparse_weight); only the values' gradients come from it (and x gets
// none from it: the caller passes x detached, the linear's backward has the share).
void *sptctl_sparse_delta_add(void *y, void *x, void **pairs, void **vals, int nparts, int add, char *err, int errlen);

// sptctl_sparse_weight returns a new tensor handle for W + Σ_p S_p ([out, in] as w, a
// float32 weight, possibly a transposed view; entries as in sptctl_sparse_delta_add,
// which must be distinct), made without autograd in one copy of W: a contiguous
// constant for the step's linear, whose backward then gives x the whole ∂/∂x (dense
// and sparse shares) in one product. Under bfloat16 CPU autocast it is bfloat16, with
// the values of the float32 sum cast to bfloat16 (what autocast would make of it),
// else float32. NULL and a message on an error.
void *sptctl_sparse_weight(void *w, void **pairs, void **vals, int nparts, char *err, int errlen);

#ifdef __cplusplus
}
#endif

#endif
