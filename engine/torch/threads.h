// C view of the libtorch thread-pool calls in threads.cpp (package train).
#ifndef SPTCTL_TRAIN_THREADS_H
#define SPTCTL_TRAIN_THREADS_H

#ifdef __cplusplus
extern "C" {
#endif

// sptctl_set_num_threads calls at::set_num_threads(n); it returns 0, or -1 when
// libtorch refused (n < 1).
int sptctl_set_num_threads(int n);

// sptctl_get_num_threads returns at::get_num_threads().
int sptctl_get_num_threads(void);

#ifdef __cplusplus
}
#endif

#endif
