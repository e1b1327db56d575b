// Attention's softmax → matrix product under bfloat16 autocast (package engine/torch,
// see attn.go).
//
// Run as two ops, softmax(float32(x)) saves its float32 output p for its backward and the
// autocast matrix product saves p's bfloat16 copy: per attention layer 1.5x the float32
// probabilities, where PyTorch's autocast (softmax in bfloat16) keeps one bfloat16 copy.
// This op keeps x (bfloat16, the scores' product output) and v, and its backward
// recomputes the float32 probabilities from x: the values and gradients of the two ops,
// with the probabilities held as bfloat16 scores instead.
//
// The softmax is this file's row kernel: it reads the scores in their own dtype, computes
// in float32 (max, e^(x - max) to within 2e-7 relative, sums in 16 lanes) and writes the
// bfloat16 probabilities the product reads; backward recomputes the float32
// probabilities and applies softmax's backward, p ⊙ (gp − Σ gp ⊙ p), in the same pass.
// libtorch's way (cast the scores to float32, softmax, cast the probabilities back, and
// in backward the same plus the float32 gradient's casts) made six full copies of the
// [heads·batch, T, T] scores per layer and step: twice the time of PyTorch autocast's
// bfloat16 softmax for a vit_b_16 layer (BenchmarkSoftmaxMatMul). The kernel is written
// for AVX-512 (every CPU with avx512_bf16, the only ones that pick bf16 by themselves,
// has it) with a plain loop for other CPUs.
#include <torch/csrc/autograd/custom_function.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <tuple>
#include <type_traits>
#include <vector>

#include "attn.h"
#include "errbuf.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Function;
using torch::autograd::variable_list;

// Storage types as float32 and back: bfloat16 widens exactly and rounds to nearest
// even, as c10::BFloat16's conversion does for finite values.
inline float widen(float v) { return v; }
inline float widen(at::BFloat16 v) { return static_cast<float>(v); }
template <typename T> inline T narrow(float v) { return static_cast<T>(v); }

// Row kernels. A row's softmax: m = max x, e = exp(x − m), p = e / Σ e. The exp
// is only ever taken of x − m <= 0; below −87 it is e^−87 (≈ 1.6e-38) instead of 0.

// Plain loops, for CPUs without AVX-512.
template <typename T> float expRowPlain(float *e, const T *x, int64_t n) {
  float m = -INFINITY;
  for (int64_t j = 0; j < n; j++) {
    m = std::max(m, widen(x[j]));
  }
  float s = 0;
  for (int64_t j = 0; j < n; j++) {
    e[j] = std::exp(std::max(widen(x[j]) - m, -87.0f));
    s += e[j];
  }
  return 1.0f / s;
}

template <typename T> void forwardRowPlain(at::BFloat16 *p, float *e, const T *x, int64_t n) {
  const float inv = expRowPlain(e, x, n);
  for (int64_t j = 0; j < n; j++) {
    p[j] = narrow<at::BFloat16>(e[j] * inv);
  }
}

template <typename T>
void backwardRowPlain(at::BFloat16 *p, T *gx, float *e, const T *x, const at::BFloat16 *gp, int64_t n) {
  const float inv = expRowPlain(e, x, n);
  float dot = 0;
  for (int64_t j = 0; j < n; j++) {
    e[j] *= inv;
    p[j] = narrow<at::BFloat16>(e[j]);
    dot += widen(gp[j]) * e[j];
  }
  for (int64_t j = 0; j < n; j++) {
    gx[j] = narrow<T>(e[j] * (widen(gp[j]) - dot));
  }
}

#pragma GCC push_options
#pragma GCC optimize("O2")
#pragma GCC target("avx512f,avx512bw,avx512vl")
#define SPTCTL_VEC inline __attribute__((always_inline))

// mask16 selects the first min(n − j, 16) lanes.
SPTCTL_VEC __mmask16 mask16(int64_t j, int64_t n) {
  return n - j >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << (n - j)) - 1);
}

SPTCTL_VEC __m512 load16(const float *p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
SPTCTL_VEC __m512 load16(const at::BFloat16 *p, __mmask16 m) {
  const __m256i h = _mm256_maskz_loadu_epi16(m, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
SPTCTL_VEC void store16(float *p, __m512 v, __mmask16 m) { _mm512_mask_storeu_ps(p, m, v); }
SPTCTL_VEC void store16(at::BFloat16 *p, __m512 v, __mmask16 m) {
  const __m512i b = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(b, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
  _mm256_mask_storeu_epi16(p, m, _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
}

// exp16 is e^x for x <= 0: x = k·ln2 + f, |f| <= ln2/2 (ln2 in two parts, so f is
// exact), e^f by its degree-7 Taylor polynomial (remainder < 6e-9), 2^k by the exponent
// bits; within 2e-7 relative of e^x.
SPTCTL_VEC __m512 exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.4426950408889634f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 f = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693145751953125f), x);
  f = _mm512_fnmadd_ps(k, _mm512_set1_ps(1.428606765330187e-06f), f);
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 720));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(k), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

// expRow512 writes e = exp(x − max x) and returns 1 / Σ e.
template <typename T> float expRow512(float *e, const T *x, int64_t n) {
  __m512 mx = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = mask16(j, n);
    mx = _mm512_mask_max_ps(mx, m, mx, load16(x + j, m));
  }
  const __m512 mv = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
  __m512 s = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = mask16(j, n);
    const __m512 ev = exp16(_mm512_sub_ps(load16(x + j, m), mv));
    store16(e + j, ev, m);
    s = _mm512_mask_add_ps(s, m, s, ev);
  }
  return 1.0f / _mm512_reduce_add_ps(s);
}

template <typename T> void forwardRow512(at::BFloat16 *p, float *e, const T *x, int64_t n) {
  const __m512 inv = _mm512_set1_ps(expRow512(e, x, n));
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = mask16(j, n);
    store16(p + j, _mm512_mul_ps(load16(e + j, m), inv), m);
  }
}

template <typename T>
void backwardRow512(at::BFloat16 *p, T *gx, float *e, const T *x, const at::BFloat16 *gp, int64_t n) {
  const __m512 inv = _mm512_set1_ps(expRow512(e, x, n));
  __m512 dot = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = mask16(j, n);
    const __m512 pv = _mm512_mul_ps(load16(e + j, m), inv);
    store16(e + j, pv, m);
    store16(p + j, pv, m);
    dot = _mm512_fmadd_ps(load16(gp + j, m), pv, dot); // masked lanes: 0 · 0
  }
  const __m512 dv = _mm512_set1_ps(_mm512_reduce_add_ps(dot));
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = mask16(j, n);
    store16(gx + j, _mm512_mul_ps(load16(e + j, m), _mm512_sub_ps(load16(gp + j, m), dv)), m);
  }
}

#undef SPTCTL_VEC
#pragma GCC pop_options

bool haveAVX512() {
  static const bool yes = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl");
  return yes;
}

int64_t rowGrain(int64_t n) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(n, 1)); }

// forRows calls row(xr, o, e) for every row of x (contiguous, float32 or bfloat16: xr
// points to the row in x's dtype, o is its offset) in parallel, e being a float32
// scratch row of the calling thread.
template <typename F> void forRows(const at::Tensor &x, F row) {
  const int64_t n = x.size(-1), rows = n == 0 ? 0 : x.numel() / n;
  auto run = [&](const auto *xp) {
    at::parallel_for(0, rows, rowGrain(n), [&](int64_t r0, int64_t r1) {
      std::vector<float> e(n);
      for (int64_t r = r0; r < r1; r++) {
        row(xp + r * n, r * n, e.data());
      }
    });
  };
  if (x.scalar_type() == at::kBFloat16) {
    run(x.data_ptr<at::BFloat16>());
  } else {
    run(x.data_ptr<float>());
  }
}

// softmaxRows returns p = bfloat16(softmax(x)) over the last dimension of x (contiguous,
// float32 or bfloat16), with the AVX-512 kernel if wide.
at::Tensor softmaxRows(const at::Tensor &x, bool wide = haveAVX512()) {
  auto p = at::empty(x.sizes(), x.options().dtype(at::kBFloat16));
  at::BFloat16 *pp = p.data_ptr<at::BFloat16>();
  const int64_t n = x.size(-1);
  forRows(x, [&](const auto *xr, int64_t o, float *e) {
    if (wide) {
      forwardRow512(pp + o, e, xr, n);
    } else {
      forwardRowPlain(pp + o, e, xr, n);
    }
  });
  return p;
}

// softmaxBackwardRows recomputes p = softmax(x) (float32) and returns its bfloat16 copy
// and gx = p ⊙ (gp − Σ gp ⊙ p) per row in x's dtype (x float32 or bfloat16, gp
// bfloat16, both contiguous and of one shape), with the AVX-512 kernel if wide.
std::pair<at::Tensor, at::Tensor> softmaxBackwardRows(const at::Tensor &x, const at::Tensor &gp,
                                                      bool wide = haveAVX512()) {
  auto pb = at::empty(x.sizes(), x.options().dtype(at::kBFloat16));
  auto gx = at::empty(x.sizes(), x.options());
  const at::BFloat16 *gpp = gp.data_ptr<at::BFloat16>();
  at::BFloat16 *pbp = pb.data_ptr<at::BFloat16>();
  void *gxp = gx.data_ptr();
  const int64_t n = x.size(-1);
  forRows(x, [&](const auto *xr, int64_t o, float *e) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(xr)>>; // x's dtype, gx's too
    T *gxr = static_cast<T *>(gxp) + o;
    if (wide) {
      backwardRow512(pbp + o, gxr, e, xr, gpp + o, n);
    } else {
      backwardRowPlain(pbp + o, gxr, e, xr, gpp + o, n);
    }
  });
  return {pb, gx};
}

bool rowKernelTakes(const at::Tensor &x) {
  return x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16;
}

// compute is the forward without autograd (and for shapes the op does not take).
at::Tensor compute(const at::Tensor &x, const at::Tensor &v) {
  if (!rowKernelTakes(x)) {
    auto p = at::softmax(x.to(at::kFloat), -1);
    return at::matmul(p.to(at::kBFloat16), v.to(at::kBFloat16));
  }
  return at::matmul(softmaxRows(x.contiguous()), v.to(at::kBFloat16));
}

// fits reports whether x [..., T, S] and v [..., S, D] have the same batch dimensions
// (no broadcasting), the case whose products are plain batched ones.
bool fits(const at::Tensor &x, const at::Tensor &v) {
  if (x.dim() < 3 || x.dim() != v.dim() || x.size(-1) != v.size(-2) || !rowKernelTakes(x)) {
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
    x = x.contiguous();
    auto p = softmaxRows(x);
    auto vb = batched(v.to(at::kBFloat16));
    auto out = at::bmm(batched(p), vb);
    auto shape = x.sizes().vec();
    shape.back() = v.size(-1);
    ctx->save_for_backward({x, vb});
    ctx->saved_data["v_dtype"] = static_cast<int64_t>(v.scalar_type());
    ctx->saved_data["v_sizes"] = v.sizes().vec();
    return out.view(shape);
  }

  // bmm's backward for both operands, with the probabilities and softmax's backward
  // from the row kernel.
  static variable_list backward(AutogradContext *ctx, variable_list grad) {
    auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &vb = saved[1];
    auto g = batched(grad[0].to(at::kBFloat16));
    at::Tensor gx, gv, pb;
    if (ctx->needs_input_grad(0)) {
      auto gp = g.bmm(vb.transpose(1, 2)).view(x.sizes()).contiguous();
      std::tie(pb, gx) = softmaxBackwardRows(x, gp);
    } else {
      pb = softmaxRows(x);
    }
    if (ctx->needs_input_grad(1)) {
      const auto vType = static_cast<at::ScalarType>(ctx->saved_data["v_dtype"].toInt());
      gv = batched(pb).transpose(1, 2).bmm(g).view(ctx->saved_data["v_sizes"].toIntVector()).to(vType);
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

extern "C" int sptctl_softmax_rows(void *x, void *gp, int plain, void **p, void **gx, char *err, int errlen) {
  try {
    auto xt = static_cast<at::Tensor *>(x)->contiguous();
    if (!rowKernelTakes(xt) || xt.dim() == 0) {
      setErr(err, errlen, "softmax rows: want a float32 or bfloat16 tensor of rank >= 1");
      return -1;
    }
    // plain: the loops other CPUs run, so that tests check both on an AVX-512 machine.
    const bool wide = haveAVX512() && plain == 0;
    if (gp == nullptr) {
      *p = new at::Tensor(softmaxRows(xt, wide));
      return 0;
    }
    auto g = static_cast<at::Tensor *>(gp)->to(at::kBFloat16).contiguous();
    if (g.sizes() != xt.sizes()) {
      setErr(err, errlen, "softmax rows: gradient and scores differ in shape");
      return -1;
    }
    auto res = softmaxBackwardRows(xt, g, wide);
    *p = new at::Tensor(res.first);
    *gx = new at::Tensor(res.second);
    return 0;
  } catch (const std::exception &e) {
    setErr(err, errlen, e.what());
  } catch (...) {
    setErr(err, errlen, "softmax rows: unknown C++ exception");
  }
  return -1;
}
