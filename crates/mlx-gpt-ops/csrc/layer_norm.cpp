// LayerNorm and its gradient as two MLX primitives: one kernel each, per row of C
// features.
//
// Written as MLX ops a LayerNorm is a chain of reductions and element-wise ops: under
// compile several kernels forward and more backward, and eagerly (generation) about eight
// kernels, each a task handed to the stream's thread. Here the forward pass keeps each
// row's mean and 1/σ as two extra outputs, and the backward pass uses them (as llm.c's
// layernorm_backward does): dx in one pass per row, dw and db summed over the rows in
// the same loop.

#include <mlx/mlx.h>
#include <mlx/primitives.h>

#include "mlx/c/private/array.h"

#include "decode_kernels.h"
#include "entry.h"
#include "primitive.h"
#include "vector.h"

#include <cmath>
#include <stdexcept>
#include <string>

namespace mx = mlx::core;

namespace {

// Σ (a[i] - m)² over n, in partial sums (see vector.h).
MLX_GPT_INLINE float centred_square_sum(const float* a, float m, size_t n) {
  float acc[mlx_gpt::kLanes] = {};
  size_t i = 0;
  for (; i + mlx_gpt::kLanes <= n; i += mlx_gpt::kLanes) {
    for (int l = 0; l < mlx_gpt::kLanes; ++l) {
      const float d = a[i + l] - m;
      acc[l] += d * d;
    }
  }
  float s = 0.0f;
  for (; i < n; ++i) {
    s += (a[i] - m) * (a[i] - m);
  }
  for (int l = 0; l < mlx_gpt::kLanes; ++l) {
    s += acc[l];
  }
  return s;
}

// y = (x - mean) / sqrt(var + eps) · w + b per row (the biased variance, as PyTorch).
// (`__restrict`: the compiler may then vectorise, knowing the outputs alias no input.)
MLX_GPT_CLONES void ln_forward(
    const float* __restrict x, const float* __restrict w, const float* __restrict b, float* __restrict y,
    float* __restrict mean, float* __restrict rstd, size_t rows, size_t c, float eps) {
  const float inv_c = 1.0f / static_cast<float>(c);
  for (size_t r = 0; r < rows; ++r) {
    const float* xr = x + r * c;
    float* yr = y + r * c;
    const float m = mlx_gpt::sum(xr, c) * inv_c;
    const float rs = 1.0f / std::sqrt(centred_square_sum(xr, m, c) * inv_c + eps);
    if (b != nullptr) {
      for (size_t i = 0; i < c; ++i) {
        yr[i] = (xr[i] - m) * rs * w[i] + b[i];
      }
    } else {
      for (size_t i = 0; i < c; ++i) {
        yr[i] = (xr[i] - m) * rs * w[i];
      }
    }
    mean[r] = m;
    rstd[r] = rs;
  }
}

// With n = (x - mean)·rstd and g = dy·w: dx = (g - mean(g) - n·mean(g·n))·rstd;
// dw = Σ_rows dy·n; db = Σ_rows dy.
MLX_GPT_CLONES void ln_backward(
    const float* __restrict x, const float* __restrict w, const float* __restrict mean, const float* __restrict rstd,
    const float* __restrict dy, float* __restrict dx, float* __restrict dw, float* __restrict db, size_t rows,
    size_t c) {
  const float inv_c = 1.0f / static_cast<float>(c);
  for (size_t i = 0; i < c; ++i) {
    dw[i] = 0.0f;
    db[i] = 0.0f;
  }
  for (size_t r = 0; r < rows; ++r) {
    const float* xr = x + r * c;
    const float* gr = dy + r * c;
    float* dxr = dx + r * c;
    const float m = mean[r], rs = rstd[r];
    float acc_g[mlx_gpt::kLanes] = {}, acc_gn[mlx_gpt::kLanes] = {};
    size_t i = 0;
    for (; i + mlx_gpt::kLanes <= c; i += mlx_gpt::kLanes) {
      for (int l = 0; l < mlx_gpt::kLanes; ++l) {
        const float g = gr[i + l] * w[i + l];
        acc_g[l] += g;
        acc_gn[l] += g * (xr[i + l] - m) * rs;
      }
    }
    float sg = 0.0f, sgn = 0.0f;
    for (; i < c; ++i) {
      const float g = gr[i] * w[i];
      sg += g;
      sgn += g * (xr[i] - m) * rs;
    }
    for (int l = 0; l < mlx_gpt::kLanes; ++l) {
      sg += acc_g[l];
      sgn += acc_gn[l];
    }
    const float mg = sg * inv_c, mgn = sgn * inv_c;
    for (size_t j = 0; j < c; ++j) {
      const float n = (xr[j] - m) * rs;
      dxr[j] = (gr[j] * w[j] - mg - n * mgn) * rs;
      dw[j] += gr[j] * n;
      db[j] += gr[j];
    }
  }
}

#if MLX_GPT_AVX512
// The same two kernels with AVX-512 intrinsics, for C a multiple of 16 (the models'
// widths). With the generic code above, GCC kept the kLanes partial sums on the stack and
// added them up through a long chain of shuffles and scalar adds: for the baby GPT's
// 128 features that was most of a row's time (docs/performance-history.md). Here the sums stay in
// registers and are reduced as a tree. The results agree with the generic kernels' to
// rounding: the additions come in another order, and products are grouped and fused
// (FMA) differently. (GCC 12 warns that _mm512_reduce_add_ps's unused
// "undefined" operand may be uninitialised: a known false positive.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f"))) void ln_forward_avx512(const float* __restrict x, const float* __restrict w,
                                                         const float* __restrict b, float* __restrict y,
                                                         float* __restrict mean, float* __restrict rstd, size_t rows,
                                                         size_t c, float eps) {
  const float inv_c = 1.0f / static_cast<float>(c);
  for (size_t r = 0; r < rows; ++r) {
    const float* xr = x + r * c;
    float* yr = y + r * c;
    __m512 s = _mm512_setzero_ps();
    for (size_t i = 0; i < c; i += 16) {
      s = _mm512_add_ps(s, _mm512_loadu_ps(xr + i));
    }
    const float m = _mm512_reduce_add_ps(s) * inv_c;
    const __m512 vm = _mm512_set1_ps(m);
    __m512 q = _mm512_setzero_ps();
    for (size_t i = 0; i < c; i += 16) {
      const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(xr + i), vm);
      q = _mm512_fmadd_ps(d, d, q);
    }
    const float rs = 1.0f / std::sqrt(_mm512_reduce_add_ps(q) * inv_c + eps);
    const __m512 vrs = _mm512_set1_ps(rs);
    for (size_t i = 0; i < c; i += 16) {
      const __m512 n = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(xr + i), vm), vrs);
      const __m512 bias = b != nullptr ? _mm512_loadu_ps(b + i) : _mm512_setzero_ps();
      _mm512_storeu_ps(yr + i, _mm512_fmadd_ps(n, _mm512_loadu_ps(w + i), bias));
    }
    mean[r] = m;
    rstd[r] = rs;
  }
}

__attribute__((target("avx512f"))) void ln_backward_avx512(const float* __restrict x, const float* __restrict w,
                                                          const float* __restrict mean, const float* __restrict rstd,
                                                          const float* __restrict dy, float* __restrict dx,
                                                          float* __restrict dw, float* __restrict db, size_t rows,
                                                          size_t c) {
  const float inv_c = 1.0f / static_cast<float>(c);
  for (size_t i = 0; i < c; ++i) {
    dw[i] = 0.0f;
    db[i] = 0.0f;
  }
  for (size_t r = 0; r < rows; ++r) {
    const float* xr = x + r * c;
    const float* gr = dy + r * c;
    float* dxr = dx + r * c;
    const __m512 vm = _mm512_set1_ps(mean[r]), vrs = _mm512_set1_ps(rstd[r]);
    __m512 sg = _mm512_setzero_ps(), sgn = _mm512_setzero_ps();
    for (size_t i = 0; i < c; i += 16) {
      const __m512 g = _mm512_mul_ps(_mm512_loadu_ps(gr + i), _mm512_loadu_ps(w + i));
      const __m512 n = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(xr + i), vm), vrs);
      sg = _mm512_add_ps(sg, g);
      sgn = _mm512_fmadd_ps(g, n, sgn);
    }
    const __m512 mg = _mm512_set1_ps(_mm512_reduce_add_ps(sg) * inv_c);
    const __m512 mgn = _mm512_set1_ps(_mm512_reduce_add_ps(sgn) * inv_c);
    for (size_t i = 0; i < c; i += 16) {
      const __m512 gi = _mm512_loadu_ps(gr + i);
      const __m512 n = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(xr + i), vm), vrs);
      // (g·w − mean(g·w) − n·mean(g·w·n))·rstd
      const __m512 t = _mm512_fnmadd_ps(n, mgn, _mm512_sub_ps(_mm512_mul_ps(gi, _mm512_loadu_ps(w + i)), mg));
      _mm512_storeu_ps(dxr + i, _mm512_mul_ps(t, vrs));
      _mm512_storeu_ps(dw + i, _mm512_fmadd_ps(gi, n, _mm512_loadu_ps(dw + i)));
      _mm512_storeu_ps(db + i, _mm512_add_ps(gi, _mm512_loadu_ps(db + i)));
    }
  }
}
#pragma GCC diagnostic pop
#endif

// The kernels for this CPU and width.
void layer_norm_forward(const float* x, const float* w, const float* b, float* y, float* mean, float* rstd,
                        size_t rows, size_t c, float eps) {
#if MLX_GPT_AVX512
  if (c % 16 == 0 && mlx_gpt::cpu_has_avx512()) {
    ln_forward_avx512(x, w, b, y, mean, rstd, rows, c, eps);
    return;
  }
#endif
  ln_forward(x, w, b, y, mean, rstd, rows, c, eps);
}

void layer_norm_backward(const float* x, const float* w, const float* mean, const float* rstd, const float* dy,
                         float* dx, float* dw, float* db, size_t rows, size_t c) {
#if MLX_GPT_AVX512
  if (c % 16 == 0 && mlx_gpt::cpu_has_avx512()) {
    ln_backward_avx512(x, w, mean, rstd, dy, dx, dw, db, rows, c);
    return;
  }
#endif
  ln_backward(x, w, mean, rstd, dy, dx, dw, db, rows, c);
}

// inputs: x (..., C), w (C), mean (rows), rstd (rows), dy (..., C); outputs: dx (..., C),
// dw (C), db (C).
class LayerNormGrad : public mlx_gpt::CpuPrimitive {
 public:
  explicit LayerNormGrad(mx::Stream stream) : mlx_gpt::CpuPrimitive(stream) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const mlx_gpt::DenseInputs in(inputs);
    auto& encoder = mlx_gpt::prepare(stream(), inputs, outputs);
    const size_t c = inputs[1].size(), rows = inputs[2].size();
    const float *x = in[0].data<float>(), *w = in[1].data<float>(), *mean = in[2].data<float>(),
                *rstd = in[3].data<float>(), *dy = in[4].data<float>();
    float *dx = outputs[0].data<float>(), *dw = outputs[1].data<float>(), *db = outputs[2].data<float>();
    encoder.dispatch([=]() {
      in.fill();
      layer_norm_backward(x, w, mean, rstd, dy, dx, dw, db, rows, c);
    });
  }
  const char* name() const override {
    return "LayerNormGrad";
  }
  bool is_equivalent(const mx::Primitive&) const override {
    return true;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {inputs[0].shape(), inputs[1].shape(), inputs[1].shape()};
  }
};

// inputs: x (..., C), w (C) and optionally b (C); outputs: y (..., C), and each row's
// mean and 1/σ (rows), which only the gradient reads.
class LayerNorm : public mlx_gpt::CpuPrimitive {
 public:
  LayerNorm(mx::Stream stream, float eps) : mlx_gpt::CpuPrimitive(stream), eps_(eps) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const mlx_gpt::DenseInputs in(inputs);
    auto& encoder = mlx_gpt::prepare(stream(), inputs, outputs);
    const size_t c = inputs[1].size(), rows = outputs[1].size();
    const float *x = in[0].data<float>(), *w = in[1].data<float>();
    const float* b = in.size() > 2 ? in[2].data<float>() : nullptr;
    float *y = outputs[0].data<float>(), *mean = outputs[1].data<float>(), *rstd = outputs[2].data<float>();
    const float eps = eps_;
    encoder.dispatch([=]() {
      in.fill();
      layer_norm_forward(x, w, b, y, mean, rstd, rows, c, eps);
    });
  }

  std::vector<mx::array> vjp(
      const std::vector<mx::array>& primals,
      const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums,
      const std::vector<mx::array>& outputs) override {
    // Only y is handed out (mlx_gpt_layer_norm), so only its cotangent can be non-zero.
    const auto& dy = cotangents[0];
    auto grads = mx::array::make_arrays(
        {primals[0].shape(), primals[1].shape(), primals[1].shape()},
        {mx::float32, mx::float32, mx::float32},
        std::make_shared<LayerNormGrad>(stream()),
        {primals[0], primals[1], outputs[1], outputs[2], dy});
    std::vector<mx::array> out;
    for (int arg : argnums) {
      out.push_back(grads.at(arg));  // x → dx, w → dw, b → db
    }
    return out;
  }

  const char* name() const override {
    return "LayerNorm";
  }
  bool is_equivalent(const mx::Primitive& other) const override {
    return eps_ == static_cast<const LayerNorm&>(other).eps_;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    const mx::Shape rows = {static_cast<int>(inputs[0].size() / inputs[1].size())};
    return {inputs[0].shape(), rows, rows};
  }

 private:
  float eps_;
};

}  // namespace

void mlx_gpt::layer_norm_rows(const float* x, const float* w, const float* b, float* y, size_t rows, size_t c,
                              float eps) {
  thread_local std::vector<float> mean, rstd;
  mean.resize(rows);
  rstd.resize(rows);
  layer_norm_forward(x, w, b, y, mean.data(), rstd.data(), rows, c, eps);
}

extern "C" {

// *res = LayerNorm(x; w, bias, eps) over x's last axis for float32 arrays, on this
// thread's default CPU stream, differentiable. `bias` may be an empty handle. Returns 0,
// or 1 with the reason in mlx_gpt_last_error().
int mlx_gpt_layer_norm(mlx_array* res, const mlx_array x, const mlx_array w, const mlx_array bias, float eps) {
  return mlx_gpt::guarded([&]() {
    const mx::array& xa = mlx_array_get_(x);
    const mx::array& wa = mlx_array_get_(w);
    if (xa.dtype() != mx::float32 || wa.dtype() != mx::float32 || xa.ndim() == 0 || wa.ndim() != 1 ||
        wa.shape(0) == 0 || xa.shape(-1) != wa.shape(0)) {
      throw std::invalid_argument("[LayerNorm] needs float32 x (..., C) and a float32 weight (C)");
    }
    auto stream = mx::default_stream(mx::Device::cpu);
    std::vector<mx::array> inputs = {xa, wa};
    if (bias.ctx != nullptr) {
      const mx::array& ba = mlx_array_get_(bias);
      if (ba.dtype() != mx::float32 || ba.shape() != wa.shape()) {
        throw std::invalid_argument("[LayerNorm] the bias must be float32 of the weight's shape");
      }
      inputs.push_back(ba);
    }
    const mx::Shape rows = {static_cast<int>(xa.size() / wa.size())};
    auto outs = mx::array::make_arrays(
        {xa.shape(), rows, rows}, {mx::float32, mx::float32, mx::float32}, std::make_shared<LayerNorm>(stream, eps),
        inputs);
    mlx_array_set_(*res, outs[0]);
    return 0;
  });
}

}  // extern "C"
