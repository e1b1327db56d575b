// Squared gradients summed as backward produces them (package engine/torch, see
// gradsq.go): sensitivity scoring needs Σ grad² per weight, not the gradients, so
// each gradient is freed as soon as its square is added and the gradients of the
// whole model never exist at once. Between batches the sums can go to a file
// (sptctl_gradsq_spill): each comes back when backward next reaches its weight.
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <ATen/ATen.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

#include "gradsq.h"
#include "errbuf.h"

namespace {

using torch::autograd::FunctionPostHook;
using torch::autograd::Node;
using torch::autograd::variable_list;

struct Set;

// SquareHook runs after a leaf's AccumulateGrad stored the batch's gradient in .grad.
struct SquareHook : public FunctionPostHook {
  SquareHook(Set *set, int k) : set(set), k(k) {}
  variable_list operator()(const variable_list &outputs, const variable_list &) override;
  Set *set;
  int k;
};

struct Entry {
  std::shared_ptr<Node> acc; // held: the leaf itself only keeps a weak reference
  uintptr_t key;
  at::Tensor w;   // the leaf
  at::Tensor sum; // its running sum; undefined while zero or spilled
  int64_t off;    // where the sum lies in the spill file
  bool inFile;    // the sum is in the spill file (else, if undefined, zero)
};

struct Set {
  bool armed = false;
  std::vector<Entry> entries;
  int fd = -1;    // spill file; -1: none
  std::string err; // first I/O error of a hook (reported by sptctl_gradsq_err)
};

int64_t nbytes(const at::Tensor &w) { return w.numel() * int64_t(sizeof(float)); }

// readAll and writeAll move n bytes between p and the file at off, or say why not.
std::string readAll(int fd, char *p, int64_t n, int64_t off) {
  while (n > 0) {
    ssize_t r = pread(fd, p, size_t(n), off_t(off));
    if (r < 0 && errno == EINTR) {
      continue;
    }
    if (r < 0) {
      return std::string("read: ") + std::strerror(errno);
    }
    if (r == 0) {
      return "read: file shorter than the sums written to it";
    }
    p += r, n -= r, off += r;
  }
  return "";
}

std::string writeAll(int fd, const char *p, int64_t n, int64_t off) {
  while (n > 0) {
    ssize_t r = pwrite(fd, p, size_t(n), off_t(off));
    if (r < 0 && errno == EINTR) {
      continue;
    }
    if (r < 0) {
      return std::string("write: ") + std::strerror(errno);
    }
    p += r, n -= r, off += r;
  }
  return "";
}

// load makes entry k's sum: zeros before its first gradient (so the first forward
// runs without the sums too), else read back from the spill file.
std::string load(Set *set, Entry &en) {
  if (en.sum.defined()) {
    return "";
  }
  if (!en.inFile) {
    en.sum = at::zeros(en.w.sizes(), at::TensorOptions().dtype(at::kFloat));
    return "";
  }
  at::Tensor s = at::empty(en.w.sizes(), at::TensorOptions().dtype(at::kFloat));
  std::string e = readAll(set->fd, static_cast<char *>(s.data_ptr()), nbytes(en.w), en.off);
  if (!e.empty()) {
    return e;
  }
  en.sum = s;
  return "";
}

variable_list SquareHook::operator()(const variable_list &outputs, const variable_list &) {
  if (!set->armed || !set->err.empty()) {
    return outputs;
  }
  Entry &en = set->entries[k];
  at::Tensor &g = en.w.mutable_grad();
  if (g.defined()) {
    std::string e = load(set, en);
    if (!e.empty()) {
      set->err = e;
      return outputs;
    }
    en.sum.addcmul_(g, g);
    g.reset();
  }
  return outputs;
}

using sptctl::setErr;

} // namespace

extern "C" void *sptctl_gradsq_new(void **params, int n, char *err, int errlen) {
  auto set = std::make_unique<Set>();
  try {
    int64_t off = 0;
    for (int k = 0; k < n; k++) {
      const at::Tensor &w = *static_cast<at::Tensor *>(params[k]);
      if (!w.requires_grad() || !w.is_leaf()) {
        throw std::runtime_error("grad² hook: parameter is not a leaf that requires grad");
      }
      auto acc = torch::autograd::impl::grad_accumulator(w);
      if (!acc) {
        throw std::runtime_error("grad² hook: no gradient accumulator");
      }
      uintptr_t key = acc->add_post_hook(std::make_unique<SquareHook>(set.get(), k));
      set->entries.push_back(Entry{acc, key, w, at::Tensor(), off, false});
      off += nbytes(w);
    }
  } catch (const std::exception &e) {
    for (auto &en : set->entries) {
      en.acc->del_post_hook(en.key);
    }
    setErr(err, errlen, e.what());
    return nullptr;
  }
  return set.release();
}

extern "C" void sptctl_gradsq_arm(void *set, int on) {
  static_cast<Set *>(set)->armed = on != 0;
}

extern "C" int sptctl_gradsq_err(void *p, char *err, int errlen) {
  Set *set = static_cast<Set *>(p);
  if (set->err.empty()) {
    return 0;
  }
  setErr(err, errlen, set->err.c_str());
  return 1;
}

extern "C" int sptctl_gradsq_spill(void *p, int fd, char *err, int errlen) {
  Set *set = static_cast<Set *>(p);
  if (set->fd >= 0 && set->fd != fd) {
    setErr(err, errlen, "grad² spill: another file than before");
    return 1;
  }
  // Write every sum in memory first, then free them: after an error the sums are
  // all still where they were (in memory or in the file).
  for (auto &en : set->entries) {
    if (!en.sum.defined()) {
      continue;
    }
    at::Tensor c = en.sum.contiguous();
    std::string e = writeAll(fd, static_cast<const char *>(c.data_ptr()), nbytes(en.w), en.off);
    if (!e.empty()) {
      setErr(err, errlen, e.c_str());
      return 1;
    }
  }
  set->fd = fd;
  for (auto &en : set->entries) {
    if (en.sum.defined()) {
      en.sum.reset();
      en.inFile = true;
    }
  }
  return 0;
}

extern "C" int sptctl_gradsq_copy(void *p, int k, float *dst, int64_t n, char *err, int errlen) {
  Set *set = static_cast<Set *>(p);
  if (k < 0 || k >= int(set->entries.size())) {
    setErr(err, errlen, "grad² sum: no such parameter");
    return 1;
  }
  Entry &en = set->entries[k];
  if (n != en.w.numel()) {
    setErr(err, errlen, "grad² sum: wrong size");
    return 1;
  }
  if (!en.sum.defined() && !en.inFile) {
    std::memset(dst, 0, size_t(nbytes(en.w)));
    return 0;
  }
  if (!en.sum.defined()) {
    std::string e = readAll(set->fd, reinterpret_cast<char *>(dst), nbytes(en.w), en.off);
    if (!e.empty()) {
      setErr(err, errlen, e.c_str());
      return 1;
    }
    return 0;
  }
  at::Tensor c = en.sum.contiguous();
  std::memcpy(dst, c.data_ptr(), size_t(nbytes(en.w)));
  return 0;
}

extern "C" void sptctl_gradsq_free(void *p) {
  Set *set = static_cast<Set *>(p);
  if (set == nullptr) {
    return;
  }
  for (auto &en : set->entries) {
    en.acc->del_post_hook(en.key);
  }
  delete set;
}
