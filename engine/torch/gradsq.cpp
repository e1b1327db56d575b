// Squared gradients summed as backward produces them (package engine/torch, see
// gradsq.go): sensitivity scoring needs Σ grad² per weight, not the gradients, so
// each gradient is freed as soon as its square is added and the gradients of the
// whole model never exist at once.
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <ATen/ATen.h>


#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "gradsq.h"
#include "errbuf.h"

namespace {

using torch::autograd::FunctionPostHook;
using torch::autograd::Node;
using torch::autograd::variable_list;

struct Set;

// SquareHook runs after a leaf's AccumulateGrad stored the batch's gradient in .grad.
struct SquareHook : public FunctionPostHook {
  SquareHook(const Set *set, at::Tensor w, at::Tensor sum) : set(set), w(std::move(w)), sum(std::move(sum)) {}
  variable_list operator()(const variable_list &outputs, const variable_list &) override;
  const Set *set;
  at::Tensor w, sum;
};

struct Entry {
  std::shared_ptr<Node> acc; // held: the leaf itself only keeps a weak reference
  uintptr_t key;
};

struct Set {
  bool armed = false;
  std::vector<Entry> entries;
};

variable_list SquareHook::operator()(const variable_list &outputs, const variable_list &) {
  if (!set->armed) {
    return outputs;
  }
  at::Tensor &g = w.mutable_grad();
  if (g.defined()) {
    sum.addcmul_(g, g);
    g.reset();
  }
  return outputs;
}

using sptctl::setErr;

} // namespace

extern "C" void *sptctl_gradsq_new(void **params, void **sums, int n, char *err, int errlen) {
  auto set = std::make_unique<Set>();
  try {
    for (int k = 0; k < n; k++) {
      const at::Tensor &w = *static_cast<at::Tensor *>(params[k]);
      const at::Tensor &s = *static_cast<at::Tensor *>(sums[k]);
      if (!w.requires_grad() || !w.is_leaf()) {
        throw std::runtime_error("grad² hook: parameter is not a leaf that requires grad");
      }
      if (!s.sizes().equals(w.sizes()) || s.scalar_type() != at::kFloat) {
        throw std::runtime_error("grad² hook: sum tensor of another shape or type");
      }
      auto acc = torch::autograd::impl::grad_accumulator(w);
      if (!acc) {
        throw std::runtime_error("grad² hook: no gradient accumulator");
      }
      uintptr_t key = acc->add_post_hook(std::make_unique<SquareHook>(set.get(), w, s));
      set->entries.push_back(Entry{acc, key});
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

