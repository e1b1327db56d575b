// Sparse deltas at the cost of their entries (package engine/torch, see sparse.go).
//
// A linear layer whose weight carries a sparse trainable delta, y = x·(W + S)ᵀ + b,
// is run as linear(x, W, b) (W frozen: no weight gradient) plus this op, which adds
// S·x row by row and whose backward computes only what S's entries need: no
// full-size zero tensor, no W + S, no full weight gradient.
#include <torch/csrc/autograd/custom_function.h>
#include <ATen/Parallel.h>
#include <ATen/ATen.h>

#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "sparse.h"

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Function;
using torch::autograd::variable_list;

// Rows per parallel chunk: each row costs one pass over a part's entries.
constexpr int64_t kGrain = 16;

// addRows adds, for every row t of x2 [rows, in] and entry k, v[k]·x2[t, col[k]] to
// y2[t, row[k]] (y2 [rows, out]). pairs is [n, 2] (row, col), contiguous.
void addRows(float *y2, int64_t out, const float *x2, int64_t in, int64_t rows,
             const int64_t *pairs, const float *v, int64_t n) {
  at::parallel_for(0, rows, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; t++) {
      float *yr = y2 + t * out;
      const float *xr = x2 + t * in;
      for (int64_t k = 0; k < n; k++) {
        yr[pairs[2 * k]] += v[k] * xr[pairs[2 * k + 1]];
      }
    }
  });
}

struct SparseDeltaAdd : public Function<SparseDeltaAdd> {
  // Inputs: y [.., out], x [.., in], vals (one per part), pairs (one per part).
  static variable_list forward(AutogradContext *ctx, at::Tensor y, at::Tensor x,
                               at::TensorList vals, at::TensorList pairs) {
    const int64_t out = y.size(-1), in = x.size(-1);
    auto xc = x.to(at::kFloat).contiguous();
    auto res = y.to(at::kFloat).clone(at::MemoryFormat::Contiguous);
    const int64_t rows = in == 0 ? 0 : xc.numel() / in;
    std::vector<at::Tensor> save{xc};
    for (size_t p = 0; p < vals.size(); p++) {
      auto v = vals[p].to(at::kFloat).contiguous();
      auto pr = pairs[p].contiguous();
      addRows(res.data_ptr<float>(), out, xc.data_ptr<float>(), in, rows,
              pr.data_ptr<int64_t>(), v.data_ptr<float>(), v.numel());
      save.push_back(v);
      save.push_back(pr);
    }
    ctx->save_for_backward(save);
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    ctx->saved_data["y_dtype"] = static_cast<int64_t>(y.scalar_type());
    return {res};
  }

  static variable_list backward(AutogradContext *ctx, variable_list grad) {
    auto saved = ctx->get_saved_variables();
    auto xc = saved[0];
    const size_t parts = (saved.size() - 1) / 2;
    auto g = grad[0].to(at::kFloat).contiguous();
    const int64_t out = g.size(-1), in = xc.size(-1);
    const int64_t rows = in == 0 ? 0 : xc.numel() / in;
    const auto xType = static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt());
    const auto yType = static_cast<at::ScalarType>(ctx->saved_data["y_dtype"].toInt());
    variable_list res;
    res.push_back(grad[0].to(yType)); // ∂/∂y: the identity
    at::Tensor dx;
    if (ctx->needs_input_grad(1)) { // the entries' share of ∂/∂x: dx[t, i_k] += v_k g[t, o_k]
      dx = at::zeros_like(xc);
      for (size_t p = 0; p < parts; p++) {
        const auto &v = saved[1 + 2 * p];
        const auto &pr = saved[2 + 2 * p];
        const int64_t *pp = pr.data_ptr<int64_t>();
        const float *vp = v.data_ptr<float>();
        const float *gp = g.data_ptr<float>();
        float *dp = dx.data_ptr<float>();
        const int64_t n = v.numel();
        at::parallel_for(0, rows, kGrain, [&](int64_t b, int64_t e) {
          for (int64_t t = b; t < e; t++) {
            const float *gr = gp + t * out;
            float *dr = dp + t * in;
            for (int64_t k = 0; k < n; k++) {
              dr[pp[2 * k + 1]] += vp[k] * gr[pp[2 * k]];
            }
          }
        });
      }
      dx = dx.to(xType);
    }
    res.push_back(dx);
    // ∂/∂v_k = Σ_t x[t, i_k] g[t, o_k]: each thread sums its rows into its own row of
    // partial, read row-wise (both rows stay in cache), then the rows are summed.
    const int64_t threads = at::get_num_threads();
    for (size_t p = 0; p < parts; p++) {
      if (!ctx->needs_input_grad(2 + p)) {
        res.push_back(at::Tensor());
        continue;
      }
      const auto &v = saved[1 + 2 * p];
      const auto &pr = saved[2 + 2 * p];
      const int64_t n = v.numel();
      auto partial = at::zeros({threads, n}, xc.options());
      const int64_t *pp = pr.data_ptr<int64_t>();
      const float *gp = g.data_ptr<float>();
      const float *xp = xc.data_ptr<float>();
      float *acc0 = partial.data_ptr<float>();
      at::parallel_for(0, rows, kGrain, [&](int64_t b, int64_t e) {
        float *acc = acc0 + at::get_thread_num() * n;
        for (int64_t t = b; t < e; t++) {
          const float *gr = gp + t * out;
          const float *xr = xp + t * in;
          for (int64_t k = 0; k < n; k++) {
            acc[k] += xr[pp[2 * k + 1]] * gr[pp[2 * k]];
          }
        }
      });
      res.push_back(partial.sum(0));
    }
    for (size_t p = 0; p < parts; p++) {
      res.push_back(at::Tensor()); // pairs: integers, no gradient
    }
    return res;
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

extern "C" void *sptctl_sparse_delta_add(void *y, void *x, void **pairs, void **vals, int nparts,
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
    auto out = SparseDeltaAdd::apply(yt, xt, at::TensorList(vs), at::TensorList(ps));
    return new at::Tensor(out[0]);
  } catch (const std::exception &e) {
    setErr(err, errlen, e.what());
  } catch (...) {
    setErr(err, errlen, "sparse delta: unknown C++ exception");
  }
  return nullptr;
}
