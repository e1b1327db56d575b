// Train-mode dropout for package engine/torch (see dropout.go).
//
// libtorch 1.13's dropout draws its mask with bernoulli_, which off Intel CPUs (and
// without MKL, as Debian builds it) is a serial loop drawing a 64-bit random number
// per element: ~10 ns an element on one core, 0.3 CPU-s of a vit_b_16 SPT step. This
// op draws 32 bits per element from a counter-based hash of (seed, index), in
// parallel, and keeps no mask: backward hashes again.
#include <torch/csrc/autograd/custom_function.h>
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <exception>
#include <mutex>

#include "dropout.h"
#include "errbuf.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Function;
using torch::autograd::variable_list;

// mix is splitmix64's output function of the counter seed + w·γ: 64 well-mixed bits
// for word w, which gives elements 2w (low half) and 2w + 1 (high half) their draws.
inline uint64_t mix(uint64_t seed, uint64_t w) {
  uint64_t z = seed + (w + 1) * 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// keepBelow is the threshold on a 32-bit draw that keeps an element with probability
// 1 - ratio (to within 2⁻³²).
inline uint64_t keepBelow(double ratio) {
  return static_cast<uint64_t>(std::ldexp(1.0 - ratio, 32));
}

// apply writes dst[i] = src[i] · scale where element i is kept, else 0, for the
// contiguous tensors' n elements, in parallel over 2-element words.
template <typename T>
void apply(T *dst, const T *src, int64_t n, uint64_t seed, uint64_t below, float scale) {
  const int64_t words = (n + 1) / 2;
  at::parallel_for(0, words, 16384, [&](int64_t w0, int64_t w1) {
    for (int64_t w = w0; w < w1; w++) {
      const uint64_t r = mix(seed, static_cast<uint64_t>(w));
      const int64_t i = 2 * w;
      dst[i] = (r & 0xffffffffULL) < below ? T(static_cast<float>(src[i]) * scale) : T(0.0f);
      if (i + 1 < n) {
        dst[i + 1] = (r >> 32) < below ? T(static_cast<float>(src[i + 1]) * scale) : T(0.0f);
      }
    }
  });
}

at::Tensor masked(const at::Tensor &x, uint64_t seed, double ratio) {
  auto xc = x.contiguous();
  auto y = at::empty_like(xc, at::MemoryFormat::Contiguous);
  const float scale = static_cast<float>(1.0 / (1.0 - ratio));
  if (xc.scalar_type() == at::kFloat) {
    apply(y.data_ptr<float>(), xc.data_ptr<float>(), xc.numel(), seed, keepBelow(ratio), scale);
  } else {
    apply(y.data_ptr<at::BFloat16>(), xc.data_ptr<at::BFloat16>(), xc.numel(), seed, keepBelow(ratio), scale);
  }
  return y;
}

struct Dropout : public Function<Dropout> {
  static at::Tensor forward(AutogradContext *ctx, at::Tensor x, double ratio, int64_t seed) {
    ctx->saved_data["ratio"] = ratio;
    ctx->saved_data["seed"] = seed;
    return masked(x, static_cast<uint64_t>(seed), ratio);
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    const double ratio = ctx->saved_data["ratio"].toDouble();
    const uint64_t seed = static_cast<uint64_t>(ctx->saved_data["seed"].toInt());
    auto g = grads[0];
    if (g.scalar_type() != at::kFloat && g.scalar_type() != at::kBFloat16) {
      g = g.to(at::kFloat);
    }
    return {masked(g, seed, ratio), at::Tensor(), at::Tensor()};
  }
};

} // namespace

extern "C" void *sptctl_dropout(void *x, double ratio, char *err, int errlen) {
  try {
    auto &xt = *static_cast<at::Tensor *>(x);
    if (xt.scalar_type() != at::kFloat && xt.scalar_type() != at::kBFloat16) {
      sptctl::setErr(err, errlen, "dropout: want a float32 or bfloat16 tensor");
      return nullptr;
    }
    if (!(ratio > 0 && ratio < 1)) {
      sptctl::setErr(err, errlen, "dropout: ratio not in (0, 1)");
      return nullptr;
    }
    uint64_t seed;
    {
      auto gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      seed = at::check_generator<at::CPUGeneratorImpl>(gen)->random64();
    }
    return new at::Tensor(Dropout::apply(xt, ratio, static_cast<int64_t>(seed)));
  } catch (const std::exception &e) {
    sptctl::setErr(err, errlen, e.what());
  } catch (...) {
    sptctl::setErr(err, errlen, "dropout: unknown C++ exception");
  }
  return nullptr;
}
