// C view of libtorch's random seed for package train (see seed.go).
#ifndef SPTCTL_TRAIN_SEED_H
#define SPTCTL_TRAIN_SEED_H

#ifdef __cplusplus
extern "C" {
#endif

// sptctl_manual_seed seeds libtorch's default CPU generator (at::manual_seed); it
// returns 0, or -1 on an exception.
int sptctl_manual_seed(unsigned long long seed);

#ifdef __cplusplus
}
#endif

#endif
