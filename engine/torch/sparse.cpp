// Sparse deltas at the cost of their entries (package engine/torch, see sparse.go).
//
// A linear layer whose weight carries a sparse trainable delta, y = x·(W + S)ᵀ + b,
// is run as linear(x, W, b) (W frozen: no weight gradient) plus this op, which adds
// S·x row by row and whose backward computes only what S's entries need: no
// full-size zero tensor, no W + S, no full weight gradient.
#include <torch/csrc/autograd/custom_function.h>
#include <ATen/Parallel.h>
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>
#include <type_traits>
#include <vector>

#include "sparse.h"
#include "errbuf.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Function;
using torch::autograd::variable_list;

// The kernels work on tiles of kTile rows, transposed: a tile holds, for each input
// column (output column) the entries use, its kTile values in a row, so an entry
// (o, i, v) is one axpy or dot of kTile contiguous floats, which the compiler
// vectorises, and its indices are read once per tile instead of once per row. Only
// the columns the entries name are gathered: a tile costs O((cols + outs + n) · kTile).
constexpr int64_t kTile = 64;

// The package builds at -O1 (libtorch's headers are slow to compile): the tile
// kernels are built at -O3, for AVX-512, AVX2 or the baseline, picked at load time.
#pragma GCC push_options
#pragma GCC optimize("O3")
#define SPTCTL_SIMD __attribute__((target_clones("avx512f", "avx2", "default")))

// axpyT: for every entry k, dst[d_k] += v_k · src[s_k] (rows of kTile floats), with
// (d_k, s_k) = slots[2k + dOff], slots[2k + 1 - dOff].
SPTCTL_SIMD void axpyT(float *__restrict dst, const float *__restrict src, const int32_t *slots, int dOff,
                       const float *v, int64_t n) {
  for (int64_t k = 0; k < n; k++) {
    float *d = dst + int64_t(slots[2 * k + dOff]) * kTile;
    const float *s = src + int64_t(slots[2 * k + 1 - dOff]) * kTile;
    const float a = v[k];
    for (int64_t j = 0; j < kTile; j++) {
      d[j] += a * s[j];
    }
  }
}

// dotT: acc[k] += Σ_j xs[i_k][j] · gs[o_k][j] (slots[2k] = o_k, slots[2k+1] = i_k),
// summed in 16 lanes (a vector register's worth) and then across them.
SPTCTL_SIMD void dotT(float *acc, const float *__restrict xs, const float *__restrict gs, const int32_t *slots, int64_t n) {
  constexpr int64_t kLanes = 16;
  for (int64_t k = 0; k < n; k++) {
    const float *g = gs + int64_t(slots[2 * k]) * kTile;
    const float *x = xs + int64_t(slots[2 * k + 1]) * kTile;
    float lane[kLanes] = {};
    for (int64_t j = 0; j < kTile; j += kLanes) {
      for (int64_t l = 0; l < kLanes; l++) {
        lane[l] += x[j + l] * g[j + l];
      }
    }
    float s = 0;
    for (int64_t l = 0; l < kLanes; l++) {
      s += lane[l];
    }
    acc[k] += s;
  }
}

// gather copies columns idx of rows [t0, t0 + tb) of m [rows, width] (float or
// bfloat16) into the float tile dst [idx.size(), kTile], zero past tb.
template <typename T>
void gather(float *dst, const T *m, int64_t width, const std::vector<int64_t> &idx, int64_t t0, int64_t tb) {
  const int64_t c = static_cast<int64_t>(idx.size());
  if (tb < kTile) {
    std::fill(dst, dst + c * kTile, 0.0f);
  }
  for (int64_t t = 0; t < tb; t++) {
    const T *r = m + (t0 + t) * width;
    for (int64_t s = 0; s < c; s++) {
      dst[s * kTile + t] = static_cast<float>(r[idx[s]]);
    }
  }
}

// scatterAdd adds the float tile src [idx.size(), kTile] back into columns idx of rows
// [t0, t0 + tb) of m (float or bfloat16: each element rounded once, as a float sum
// converted to bfloat16 would be).
template <typename T>
void scatterAdd(T *m, const float *src, int64_t width, const std::vector<int64_t> &idx, int64_t t0, int64_t tb) {
  const int64_t c = static_cast<int64_t>(idx.size());
  for (int64_t t = 0; t < tb; t++) {
    T *r = m + (t0 + t) * width;
    for (int64_t s = 0; s < c; s++) {
      r[idx[s]] = static_cast<T>(static_cast<float>(r[idx[s]]) + src[s * kTile + t]);
    }
  }
}

// toT / fromT convert a tile between float and the saved tiles' type (a no-op copy for
// float; exact both ways for bfloat16 values).
template <typename T> void toT(T *dst, const float *src, int64_t n) {
  for (int64_t k = 0; k < n; k++) {
    dst[k] = static_cast<T>(src[k]);
  }
}
template <typename T> void fromT(float *dst, const T *src, int64_t n) {
  for (int64_t k = 0; k < n; k++) {
    dst[k] = static_cast<float>(src[k]);
  }
}

#pragma GCC pop_options

// Slots are the entries of every part renumbered to the columns they use: cols (input
// columns) and outs (output columns), each in increasing order, and per part an int32
// [n, 2] tensor (output slot, input slot).
struct Slots {
  std::vector<int64_t> cols, outs;
  std::vector<at::Tensor> pairs;
};

std::vector<int64_t> used(const std::vector<at::Tensor> &pairs, int off, int64_t size, std::vector<int32_t> &slot) {
  slot.assign(size, -1);
  for (const auto &pr : pairs) {
    const int64_t *p = pr.data_ptr<int64_t>();
    for (int64_t k = 0; k < pr.size(0); k++) {
      slot[p[2 * k + off]] = 0;
    }
  }
  std::vector<int64_t> idx;
  for (int64_t c = 0; c < size; c++) {
    if (slot[c] == 0) {
      slot[c] = static_cast<int32_t>(idx.size());
      idx.push_back(c);
    }
  }
  return idx;
}

Slots makeSlots(const std::vector<at::Tensor> &pairs, int64_t out, int64_t in) {
  Slots s;
  std::vector<int32_t> os, is;
  s.outs = used(pairs, 0, out, os);
  s.cols = used(pairs, 1, in, is);
  for (const auto &pr : pairs) {
    const int64_t n = pr.size(0);
    auto t = at::empty({n, 2}, at::kInt);
    const int64_t *p = pr.data_ptr<int64_t>();
    int32_t *q = t.data_ptr<int32_t>();
    for (int64_t k = 0; k < n; k++) {
      q[2 * k] = os[p[2 * k]];
      q[2 * k + 1] = is[p[2 * k + 1]];
    }
    s.pairs.push_back(t);
  }
  return s;
}

at::Tensor indexTensor(const std::vector<int64_t> &v) {
  auto t = at::empty({static_cast<int64_t>(v.size())}, at::kLong);
  std::copy(v.begin(), v.end(), t.data_ptr<int64_t>());
  return t;
}

std::vector<int64_t> indexVector(const at::Tensor &t) {
  const int64_t *p = t.data_ptr<int64_t>();
  return std::vector<int64_t>(p, p + t.numel());
}

int64_t tiles(int64_t rows) { return (rows + kTile - 1) / kTile; }

// grain is parallel_for's grain size for tiles that each cost about perTile
// multiply-adds or copies: a small layer's tiles run on the calling thread, as waking
// the pool for a few microseconds of work costs more than the work (the small ViT's
// layers: ~100 entries over 1,088 rows).
int64_t grain(int64_t perTile) {
  constexpr int64_t kMinWork = 1 << 17; // per thread, of the units above
  return std::max<int64_t>(1, kMinWork / std::max<int64_t>(perTile, 1));
}

// fb says whether t's dtype is one the kernels read and write in place (float32,
// bfloat16); other dtypes go through a float32 copy.
bool fb(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16; }

// withType calls f with a value of the C++ type of t (float32 or bfloat16).
template <typename F> void withType(at::ScalarType t, F f) {
  if (t == at::kBFloat16) {
    f(c10::BFloat16());
  } else {
    f(0.0f);
  }
}

struct SparseDeltaAdd : public Function<SparseDeltaAdd> {
  // Inputs: y [.., out], x [.., in], vals (one per part), pairs (one per part).
  // add false: y already holds the entries' share (the caller multiplied by W + S, see
  // sptctl_sparse_weight); the op then only records what the values' gradients need
  // and returns y itself.
  //
  // x, y and the output gradient are read, and y and ∂/∂x written, in their own dtype
  // when it is float32 or bfloat16 (the kernels sum in float32 tiles): under bf16
  // autocast no float32 copy of x, y, the gradient or ∂/∂x is made, and the kept
  // tiles of x are bfloat16 when x is (exact). The values equal the float32 op's on
  // the same inputs, rounded once to the output's dtype.
  static variable_list forward(AutogradContext *ctx, at::Tensor y, at::Tensor x,
                               at::TensorList vals, at::TensorList pairs, bool add) {
    const int64_t out = y.size(-1), in = x.size(-1);
    auto xc = (fb(x.scalar_type()) ? x : x.to(at::kFloat)).contiguous();
    // The sum goes into y itself when it is contiguous and float32 or bfloat16 (the
    // fused linear's fresh output: no copy of it); else into a float32 copy.
    at::Tensor res;
    if (!add || (fb(y.scalar_type()) && y.is_contiguous())) {
      ctx->mark_dirty({y});
      res = y;
    } else {
      res = y.to(at::kFloat).contiguous();
      if (res.is_same(y)) {
        res = res.clone();
      }
    }
    const int64_t rows = in == 0 ? 0 : xc.numel() / in;
    std::vector<at::Tensor> prs, vs;
    for (size_t p = 0; p < vals.size(); p++) {
      prs.push_back(pairs[p].contiguous());
      vs.push_back(vals[p].to(at::kFloat).contiguous());
    }
    Slots sl = makeSlots(prs, out, in);
    const int64_t nc = sl.cols.size(), no = sl.outs.size();
    // The backward needs x only at the entries' columns: the forward's transposed tiles
    // of those columns are kept ([tiles, nc, kTile], x's dtype), not x.
    auto xt = at::empty({tiles(rows), nc, kTile}, xc.options());
    int64_t entries = 0;
    for (const auto &v : vs) {
      entries += v.numel();
    }
    withType(xc.scalar_type(), [&](auto xz) {
      withType(res.scalar_type(), [&](auto yz) {
        using TX = decltype(xz);
        using TY = decltype(yz);
        const TX *xp = xc.data_ptr<TX>();
        TX *xtp = xt.data_ptr<TX>();
        TY *rp = add ? res.data_ptr<TY>() : nullptr;
        at::parallel_for(0, tiles(rows), grain((nc + 2 * no + entries) * kTile), [&](int64_t b, int64_t e) {
          std::vector<float> ys(no * kTile), xf(std::is_same<TX, float>::value ? 0 : nc * kTile);
          for (int64_t tile = b; tile < e; tile++) {
            const int64_t t0 = tile * kTile, tb = std::min(kTile, rows - t0);
            float *xs = nullptr;
            if constexpr (std::is_same<TX, float>::value) {
              xs = xtp + tile * nc * kTile;
            } else {
              xs = xf.data();
            }
            gather(xs, xp, in, sl.cols, t0, tb);
            if constexpr (!std::is_same<TX, float>::value) {
              toT(xtp + tile * nc * kTile, xs, nc * kTile);
            }
            if (!add) {
              continue;
            }
            std::fill(ys.begin(), ys.end(), 0.0f);
            for (size_t p = 0; p < vs.size(); p++) {
              axpyT(ys.data(), xs, sl.pairs[p].data_ptr<int32_t>(), 0, vs[p].data_ptr<float>(), vs[p].numel());
            }
            scatterAdd(rp, ys.data(), out, sl.outs, t0, tb);
          }
        });
      });
    });
    std::vector<at::Tensor> save{xt, indexTensor(sl.cols), indexTensor(sl.outs)};
    for (size_t p = 0; p < vs.size(); p++) {
      save.push_back(vs[p]);
      save.push_back(sl.pairs[p]);
    }
    ctx->save_for_backward(save);
    ctx->saved_data["x_sizes"] = x.sizes().vec();
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["y_dtype"] = static_cast<int64_t>(y.scalar_type());
    // In y's dtype, as the unfused linear over W + S gives under autocast: what follows
    // stays in bfloat16.
    return {res.scalar_type() == y.scalar_type() ? res : res.to(y.scalar_type())};
  }

  static variable_list backward(AutogradContext *ctx, variable_list grad) {
    auto saved = ctx->get_saved_variables();
    const auto xt = saved[0];
    const auto cols = indexVector(saved[1]), outs = indexVector(saved[2]);
    const size_t parts = (saved.size() - 3) / 2;
    auto g = (fb(grad[0].scalar_type()) ? grad[0] : grad[0].to(at::kFloat)).contiguous();
    const auto xSizes = ctx->saved_data["x_sizes"].toIntVector();
    const int64_t out = g.size(-1), in = xSizes.back();
    const int64_t rows = in == 0 ? 0 : g.numel() / std::max<int64_t>(out, 1);
    const int64_t nc = cols.size(), no = outs.size();
    const auto xType = static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt());
    const auto yType = static_cast<at::ScalarType>(ctx->saved_data["y_dtype"].toInt());
    const bool wantDX = ctx->needs_input_grad(1);
    std::vector<bool> wantDV(parts);
    std::vector<int64_t> off(parts + 1, 0); // part p's entries in the accumulators
    for (size_t p = 0; p < parts; p++) {
      wantDV[p] = ctx->needs_input_grad(2 + p);
      off[p + 1] = off[p] + saved[3 + 2 * p].numel();
    }
    // dx (in the kept tiles' dtype: x's, or float32) is zeroed tile by tile below, by the
    // thread that fills the tile's rows (no separate pass over it).
    at::Tensor dx = wantDX ? at::empty(xSizes, xt.options()) : at::Tensor();
    // ∂/∂v_k = Σ_t x[t, i_k] g[t, o_k]: each thread sums its tiles into its own row of
    // partial, then the rows are summed.
    const int64_t threads = at::get_num_threads();
    auto partial = at::zeros({threads, off[parts]}, g.options().dtype(at::kFloat));
    float *acc0 = partial.data_ptr<float>();
    withType(xt.scalar_type(), [&](auto xz) {
      withType(g.scalar_type(), [&](auto gz) {
        using TX = decltype(xz);
        using TG = decltype(gz);
        const TX *xtp = xt.data_ptr<TX>();
        const TG *gp = g.data_ptr<TG>();
        TX *dp = wantDX ? dx.data_ptr<TX>() : nullptr;
        at::parallel_for(0, tiles(rows), grain((2 * nc + no + 2 * off[parts] + (wantDX ? in : 0)) * kTile), [&](int64_t b, int64_t e) {
          std::vector<float> gs(no * kTile), dxs(wantDX ? nc * kTile : 0), xf(std::is_same<TX, float>::value ? 0 : nc * kTile);
          float *acc = acc0 + at::get_thread_num() * off[parts];
          for (int64_t tile = b; tile < e; tile++) {
            const int64_t t0 = tile * kTile, tb = std::min(kTile, rows - t0);
            const float *xs = nullptr;
            if constexpr (std::is_same<TX, float>::value) {
              xs = xtp + tile * nc * kTile;
            } else {
              fromT(xf.data(), xtp + tile * nc * kTile, nc * kTile);
              xs = xf.data();
            }
            gather(gs.data(), gp, out, outs, t0, tb);
            if (wantDX) {
              std::fill(dxs.begin(), dxs.end(), 0.0f);
            }
            for (size_t p = 0; p < parts; p++) {
              const auto &v = saved[3 + 2 * p];
              const int32_t *sp = saved[4 + 2 * p].data_ptr<int32_t>();
              if (wantDX) { // the entries' share of ∂/∂x: dx[t, i_k] += v_k g[t, o_k]
                axpyT(dxs.data(), gs.data(), sp, 1, v.data_ptr<float>(), v.numel());
              }
              if (wantDV[p]) {
                dotT(acc + off[p], xs, gs.data(), sp, v.numel());
              }
            }
            if (wantDX) {
              std::fill(dp + t0 * in, dp + (t0 + tb) * in, static_cast<TX>(0.0f));
              scatterAdd(dp, dxs.data(), in, cols, t0, tb);
            }
          }
        });
      });
    });
    variable_list res;
    res.push_back(grad[0].to(yType)); // ∂/∂y: the identity
    res.push_back(wantDX ? dx.to(xType) : at::Tensor());
    auto dv = partial.sum(0);
    for (size_t p = 0; p < parts; p++) {
      res.push_back(wantDV[p] ? dv.slice(0, off[p], off[p + 1]).clone() : at::Tensor());
    }
    for (size_t p = 0; p < parts; p++) {
      res.push_back(at::Tensor()); // pairs: integers, no gradient
    }
    res.push_back(at::Tensor()); // add
    return res;
  }
};

using sptctl::setErr;

} // namespace

extern "C" void *sptctl_sparse_weight(void *w, void **pairs, void **vals, int nparts, char *err, int errlen) {
  try {
    at::NoGradGuard noGrad;
    auto &wt = *static_cast<at::Tensor *>(w);
    if (wt.dim() != 2 || wt.scalar_type() != at::kFloat) {
      setErr(err, errlen, "sparse weight: want a 2-D float32 weight");
      return nullptr;
    }
    const int64_t out = wt.size(0), in = wt.size(1);
    for (int p = 0; p < nparts; p++) {
      const auto &v = *static_cast<at::Tensor *>(vals[p]);
      const auto &pr = *static_cast<at::Tensor *>(pairs[p]);
      if (pr.scalar_type() != at::kLong || pr.dim() != 2 || pr.size(1) != 2 || v.dim() != 1 || v.size(0) != pr.size(0)) {
        setErr(err, errlen, "sparse weight: want index pairs int64 [n, 2] and values [n]");
        return nullptr;
      }
    }
    // One copy of W in the dtype the linear multiplies in: bfloat16 under CPU autocast
    // (the cast autocast would make of a float32 W + S every step, made here at once),
    // else float32; contiguous even when w is a transposed view. Then each entry is
    // written as the float32 sum W + v rounded once to that dtype: the values of
    // (W + S).to(dtype) (the entries are distinct), with no float32 copy of W + S.
    const bool bf = at::autocast::is_cpu_enabled() && at::autocast::get_autocast_cpu_dtype() == at::kBFloat16;
    auto res = wt.detach().to(bf ? at::kBFloat16 : at::kFloat, /*non_blocking=*/false, /*copy=*/true,
                              at::MemoryFormat::Contiguous);
    const float *wp = wt.data_ptr<float>();
    at::BFloat16 *rb = bf ? res.data_ptr<at::BFloat16>() : nullptr;
    float *rf = bf ? nullptr : res.data_ptr<float>();
    const int64_t s0 = wt.stride(0), s1 = wt.stride(1);
    for (int p = 0; p < nparts; p++) {
      const auto v = static_cast<at::Tensor *>(vals[p])->detach().to(at::kFloat).contiguous();
      const auto pr = static_cast<at::Tensor *>(pairs[p])->contiguous();
      const int64_t *ix = pr.data_ptr<int64_t>();
      const float *vp = v.data_ptr<float>();
      for (int64_t k = 0; k < pr.size(0); k++) {
        const int64_t o = ix[2 * k], i = ix[2 * k + 1];
        if (o < 0 || o >= out || i < 0 || i >= in) {
          setErr(err, errlen, "sparse weight: entry out of range");
          return nullptr;
        }
        const float sum = wp[o * s0 + i * s1] + vp[k];
        if (bf) {
          rb[o * in + i] = at::BFloat16(sum);
        } else {
          rf[o * in + i] = sum;
        }
      }
    }
    return new at::Tensor(res);
  } catch (const std::exception &e) {
    setErr(err, errlen, e.what());
  } catch (...) {
    setErr(err, errlen, "sparse weight: unknown C++ exception");
  }
  return nullptr;
}

extern "C" void *sptctl_sparse_delta_add(void *y, void *x, void **pairs, void **vals, int nparts, int add,
                                         char *err, int errlen) {
  try {
    auto &yt = *static_cast<at::Tensor *>(y);
    auto &xt = *static_cast<at::Tensor *>(x);
    if (xt.dim() < 1 || yt.dim() < 1 || xt.numel() / std::max<int64_t>(xt.size(-1), 1) !=
                                             yt.numel() / std::max<int64_t>(yt.size(-1), 1)) {
      setErr(err, errlen, "sparse delta: x and y have different row counts");
      return nullptr;
    }
    std::vector<at::Tensor> vs, ps;
    for (int p = 0; p < nparts; p++) {
      const auto &v = *static_cast<at::Tensor *>(vals[p]);
      const auto &pr = *static_cast<at::Tensor *>(pairs[p]);
      if (pr.scalar_type() != at::kLong || pr.dim() != 2 || pr.size(1) != 2 ||
          v.dim() != 1 || v.size(0) != pr.size(0)) {
        setErr(err, errlen, "sparse delta: want index pairs int64 [n, 2] and values [n]");
        return nullptr;
      }
      vs.push_back(v);
      ps.push_back(pr);
    }
    auto out = SparseDeltaAdd::apply(yt, xt, at::TensorList(vs), at::TensorList(ps), add != 0);
    return new at::Tensor(out[0]);
  } catch (const std::exception &e) {
    setErr(err, errlen, e.what());
  } catch (...) {
    setErr(err, errlen, "sparse delta: unknown C++ exception");
  }
  return nullptr;
}
