// errbuf.h: how the C++ ops of this package report an error to Go: a message copied
// into the caller's buffer (truncated to fit, always NUL-terminated).
#ifndef SPTCTL_ERRBUF_H
#define SPTCTL_ERRBUF_H

#include <cstring>

namespace sptctl {

inline void setErr(char *err, int errlen, const char *msg) {
  if (err == nullptr || errlen <= 0) {
    return;
  }
  std::strncpy(err, msg, errlen - 1);
  err[errlen - 1] = 0;
}

} // namespace sptctl

#endif
