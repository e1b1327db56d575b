// C view of libtorch's operator profiler for package engine/torch (see profile.go).
#ifndef SPTCTL_TORCH_PROFILE_H
#define SPTCTL_TORCH_PROFILE_H

#ifdef __cplusplus
extern "C" {
#endif

// sptctl_profile_start turns libtorch's (legacy) CPU profiler on for the calling OS
// thread, recording every operator with its input shapes; the trace goes to path when
// sptctl_profile_stop is given the handle. It returns NULL on an error, with a message
// in err (of size n).
void *sptctl_profile_start(const char *path, char *err, int n);

// sptctl_profile_stop turns the profiler off and writes the trace (Chrome's trace
// format); it returns 0, or -1 with a message in err.
int sptctl_profile_stop(void *handle, char *err, int n);

#ifdef __cplusplus
}
#endif

#endif
