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
void *sptctl_sparse_delta_add(void *y, void *x, void **pairs, void **vals, int nparts, char *err, int errlen);

#ifdef __cplusplus
}
#endif

#endif
