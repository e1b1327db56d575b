// Attention's softmax → matrix product under bfloat16 autocast (package engine/torch,
// see attn.go).
//
// Run as two ops, softmax(float32(x)) saves its float32 output p for its backward and the
// autocast matrix product saves p's bfloat16 copy: per attention layer 1.5x the float32
// probabilities, where PyTorch's autocast (softmax in bfloat16) keeps one bfloat16 copy.
// This op keeps x (bfloat16, the scores' product output) and v, and its backward runs
// the same ops again under autograd (float32 softmax, bfloat16 casts, matmul) and
// differentiates them: the same values and gradients as the two ops, with the
// probabilities held as bfloat16 scores instead.
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <ATen/ATen.h>

#include <cstring>
#include <exception>

#include "attn.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Function;
using torch::autograd::variable_list;

at::Tensor compute(const at::Tensor &x, const at::Tensor &v) {
  auto p = at::softmax(x.to(at::kFloat), -1);
  return at::matmul(p.to(at::kBFloat16), v.to(at::kBFloat16));
}

struct SoftmaxMatmul : public Function<SoftmaxMatmul> {
  static at::Tensor forward(AutogradContext *ctx, at::Tensor x, at::Tensor v) {
    ctx->save_for_backward({x, v});
    return compute(x, v);
  }

  static variable_list backward(AutogradContext *ctx, variable_list grad) {
    auto saved = ctx->get_saved_variables();
    const bool wantX = ctx->needs_input_grad(0), wantV = ctx->needs_input_grad(1);
    at::AutoGradMode on(true);
    auto x = saved[0].detach().requires_grad_(wantX);
    auto v = saved[1].detach().requires_grad_(wantV);
    variable_list in;
    if (wantX) {
      in.push_back(x);
    }
    if (wantV) {
      in.push_back(v);
    }
    if (in.empty()) {
      return {at::Tensor(), at::Tensor()};
    }
    auto out = compute(x, v);
    auto g = torch::autograd::grad({out}, in, {grad[0]}, false, false, true);
    size_t k = 0;
    at::Tensor gx = wantX ? g[k++] : at::Tensor();
    at::Tensor gv = wantV ? g[k++] : at::Tensor();
    return {gx, gv};
  }
};

void setErr(char *err, int errlen, const char *msg) {
  if (err == nullptr || errlen <= 0) {
    return;
  }
  std::strncpy(err, msg, errlen - 1);
  err[errlen - 1] = 0;
}

} // namespace

extern "C" void *sptctl_softmax_matmul(void *x, void *v, char *err, int errlen) {
  try {
    auto &xt = *static_cast<at::Tensor *>(x);
    auto &vt = *static_cast<at::Tensor *>(v);
    if (!at::isFloatingType(xt.scalar_type()) || !at::isFloatingType(vt.scalar_type())) {
      setErr(err, errlen, "softmax-matmul: want float inputs");
      return nullptr;
    }
    if (!xt.requires_grad() && !vt.requires_grad()) {
      return new at::Tensor(compute(xt, vt));
    }
    return new at::Tensor(SoftmaxMatmul::apply(xt, vt));
  } catch (const std::exception &e) {
    setErr(err, errlen, e.what());
  } catch (...) {
    setErr(err, errlen, "softmax-matmul: unknown C++ exception");
  }
  return nullptr;
}
