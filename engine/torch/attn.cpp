// Attention's softmax → matrix product under bfloat16 autocast (package engine/torch,
// see attn.go).
//
// Run as two ops, softmax(float32(x)) saves its float32 output p for its backward and the
// autocast matrix product saves p's bfloat16 copy: per attention layer 1.5x the float32
// probabilities, where PyTorch's autocast (softmax in bfloat16) keeps one bfloat16 copy.
// This op keeps x (bfloat16, the scores' product output) and v, and its backward
// recomputes the float32 probabilities from x and runs the two ops' backward kernels:
// the same values and gradients as the two ops, with the probabilities held as
// bfloat16 scores instead.
#include <torch/csrc/autograd/custom_function.h>
#include <ATen/ATen.h>

#include <cstring>
#include <exception>

#include "attn.h"
#include "errbuf.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Function;
using torch::autograd::variable_list;

// compute runs the two ops as autocast and autograd would (the unfused path; also the
// fallback for shapes the fused op does not take).
at::Tensor compute(const at::Tensor &x, const at::Tensor &v) {
  auto p = at::softmax(x.to(at::kFloat), -1);
  return at::matmul(p.to(at::kBFloat16), v.to(at::kBFloat16));
}

// fits reports whether x [..., T, S] and v [..., S, D] have the same batch dimensions
// (no broadcasting), the case whose products are plain batched ones.
bool fits(const at::Tensor &x, const at::Tensor &v) {
  if (x.dim() < 3 || x.dim() != v.dim() || x.size(-1) != v.size(-2)) {
    return false;
  }
  for (int64_t d = 0; d < x.dim() - 2; d++) {
    if (x.size(d) != v.size(d)) {
      return false;
    }
  }
  return true;
}

// As at::matmul does for batched operands: [..., n, m] as [batch, n, m].
at::Tensor batched(const at::Tensor &t) { return t.reshape({-1, t.size(-2), t.size(-1)}); }

struct SoftmaxMatmul : public Function<SoftmaxMatmul> {
  static at::Tensor forward(AutogradContext *ctx, at::Tensor x, at::Tensor v) {
    auto p = at::softmax(x.to(at::kFloat), -1).to(at::kBFloat16);
    auto vb = batched(v.to(at::kBFloat16)); // matmul's own (contiguous) copy, saved as it saves it
    auto out = at::bmm(batched(p), vb);
    auto shape = x.sizes().vec();
    shape.back() = v.size(-1);
    ctx->save_for_backward({x, vb});
    ctx->saved_data["v_dtype"] = static_cast<int64_t>(v.scalar_type());
    ctx->saved_data["v_sizes"] = v.sizes().vec();
    return out.view(shape);
  }

  // The backward kernels autograd runs for the two ops (bmm's, the casts' copies,
  // softmax's), with the probabilities recomputed from x.
  static variable_list backward(AutogradContext *ctx, variable_list grad) {
    auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &vb = saved[1];
    auto p = at::softmax(x.to(at::kFloat), -1);
    auto g = batched(grad[0].to(at::kBFloat16));
    at::Tensor gx, gv;
    if (ctx->needs_input_grad(1)) {
      const auto vType = static_cast<at::ScalarType>(ctx->saved_data["v_dtype"].toInt());
      gv = batched(p.to(at::kBFloat16)).transpose(1, 2).bmm(g).view(ctx->saved_data["v_sizes"].toIntVector()).to(vType);
    }
    if (ctx->needs_input_grad(0)) {
      auto gp = g.bmm(vb.transpose(1, 2)).view(x.sizes()).to(at::kFloat);
      gx = at::_softmax_backward_data(gp, p, -1, at::kFloat).to(x.scalar_type());
    }
    return {gx, gv};
  }
};

using sptctl::setErr;

} // namespace

extern "C" void *sptctl_softmax_matmul(void *x, void *v, char *err, int errlen) {
  try {
    auto &xt = *static_cast<at::Tensor *>(x);
    auto &vt = *static_cast<at::Tensor *>(v);
    if (!at::isFloatingType(xt.scalar_type()) || !at::isFloatingType(vt.scalar_type())) {
      setErr(err, errlen, "softmax-matmul: want float inputs");
      return nullptr;
    }
    if (!fits(xt, vt) || (!xt.requires_grad() && !vt.requires_grad())) {
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
