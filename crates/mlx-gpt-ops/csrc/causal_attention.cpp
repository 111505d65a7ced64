// Causal self-attention over whole sequences, and its gradient, as two MLX primitives.
//
// As MLX ops, attention in training is: split q, k, v off c_attn's output and transpose
// each into (B, nh, T, hs) (copies), scale, a batched q·kᵀ (B·nh small products), the
// causal mask, the softmax's kernels, dropout, the product with v, and the transpose
// back; the backward pass repeats the chain and adds zero-filled buffers for the
// gradients of the split. Here the forward pass reads c_attn's output (B, T, 3C) as it
// is and writes the heads' outputs side by side (B, T, C), ready for c_proj; it keeps
// the attention weights before dropout (B, nh, T, T, zero above the diagonal) for the
// backward pass, which writes the gradient of c_attn's output in one piece. The products
// are mlx-gpt's GEMM's (gemm.h), called on the heads where they lie in c_attn's output; the
// softmax, dropout and their gradients are vectorised loops.

#include <mlx/mlx.h>
#include <mlx/primitives.h>

#include "mlx/c/private/array.h"

#include "blas.h"
#include "entry.h"
#include "gemm.h"
#include "pool.h"
#include "primitive.h"
#include "vector.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

namespace mx = mlx::core;

namespace {

struct Dims {
  size_t batch, t, c, n_head;
};

using mlx_gpt::Structure;

// C (m, n) = alpha · op(A) op(B), row-major, skipping the causal zeros `s` says are there
// (gemm.h).
MLX_GPT_INLINE void gemm(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const float* a, size_t lda,
                         const float* b, size_t ldb, float* c, size_t ldc, Structure s) {
  mlx_gpt::gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, c, ldc, mlx_gpt::GemmInit::Zero, nullptr, s);
}

// Row t of the scores (T) in place → the causal softmax: positions 0..=t, zero after.
MLX_GPT_CLONES void causal_softmax_rows(float* __restrict p, size_t T) {
  for (size_t t = 0; t < T; ++t, p += T) {
    const size_t n = t + 1;
    const float m = mlx_gpt::max(p, n);
    for (size_t t2 = 0; t2 < n; ++t2) {
      p[t2] = mlx_gpt::exp1(p[t2] - m);
    }
    const float inv = 1.0f / mlx_gpt::sum(p, n);
    for (size_t t2 = 0; t2 < n; ++t2) {
      p[t2] *= inv;
    }
    for (size_t t2 = n; t2 < T; ++t2) {
      p[t2] = 0.0f;
    }
  }
}

#if MLX_GPT_AVX512
// causal_softmax_rows with AVX-512 intrinsics: a row of the baby GPT is 1 to 64 values,
// and the generic code's reductions (a scalar max, the kLanes partial sums added up
// through shuffles) took most of its time. The same exp formula (exp16); the sum is
// added up in another order. (GCC 12's -Wmaybe-uninitialized on the reduce intrinsics is a known
// false positive.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f"))) void causal_softmax_rows_avx512(float* __restrict p, size_t T) {
  for (size_t t = 0; t < T; ++t, p += T) {
    const size_t n = t + 1;
    __m512 vmax = _mm512_set1_ps(p[0]);
    for (size_t i = 0; i < n; i += 16) {
      const __mmask16 k = mlx_gpt::first_lanes(n - i);
      vmax = _mm512_mask_max_ps(vmax, k, vmax, _mm512_maskz_loadu_ps(k, p + i));
    }
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
    __m512 sum = _mm512_setzero_ps();
    for (size_t i = 0; i < n; i += 16) {
      const __mmask16 k = mlx_gpt::first_lanes(n - i);
      const __m512 e = mlx_gpt::exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, p + i), m));
      sum = _mm512_mask_add_ps(sum, k, sum, e);
      _mm512_mask_storeu_ps(p + i, k, e);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
    for (size_t i = 0; i < T; i += 16) {
      // Positions 0..n scaled, the rest (the future) zero.
      const __mmask16 k = i >= n ? 0 : mlx_gpt::first_lanes(n - i);
      const __mmask16 all = mlx_gpt::first_lanes(T - i);
      _mm512_mask_storeu_ps(p + i, all, _mm512_maskz_mul_ps(k, _mm512_maskz_loadu_ps(k, p + i), inv));
    }
  }
}
#pragma GCC diagnostic pop
#endif

// The softmax kernel for this CPU.
void causal_softmax(float* p, size_t T) {
#if MLX_GPT_AVX512
  if (mlx_gpt::cpu_has_avx512()) {
    causal_softmax_rows_avx512(p, T);
    return;
  }
#endif
  causal_softmax_rows(p, T);
}

// dS = P ∘ (dP − rowsum(P ∘ dP)) · scale, in place over dP (T × T); zero where P is. Only
// dP's lower triangle is read (the product skipped the rest); the upper one is zeroed.
MLX_GPT_CLONES void softmax_backward_rows(const float* __restrict p, float* __restrict dp, size_t T, float scale) {
  for (size_t t = 0; t < T; ++t, p += T, dp += T) {
    const size_t n = t + 1;
    const float pd = mlx_gpt::dot(p, dp, n);
    for (size_t t2 = 0; t2 < n; ++t2) {
      dp[t2] = p[t2] * (dp[t2] - pd) * scale;
    }
    for (size_t t2 = n; t2 < T; ++t2) {
      dp[t2] = 0.0f;
    }
  }
}

// P' = P ∘ M (T × T): the attention weights after dropout, M the dropout multiplier.
MLX_GPT_CLONES void apply_mask(const float* __restrict p, const float* __restrict m, float* __restrict out, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    out[i] = p[i] * m[i];
  }
}

// x ∘= M in place.
MLX_GPT_CLONES void scale_by_mask(float* __restrict x, const float* __restrict m, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    x[i] *= m[i];
  }
}

// f(b, h) for every sequence b and head h: on this thread, or with `threads` > 1 the
// pairs dealt out in turn over that many threads of the persistent pool (pool.h). Each
// pair reads and writes only its own slices, so the results do not depend on the split.
template <typename F>
void for_each_head(const Dims& d, int threads, const F& f) {
  const size_t pairs = d.batch * d.n_head;
  const size_t parts = std::min(pairs, static_cast<size_t>(std::max(threads, 1)));
  if (parts <= 1) {
    for (size_t i = 0; i < pairs; ++i) f(i / d.n_head, i % d.n_head);
    return;
  }
  mlx_gpt::Pool::run(static_cast<int>(parts), [&](int part) {
    for (size_t i = static_cast<size_t>(part); i < pairs; i += parts) f(i / d.n_head, i % d.n_head);
  });
}

// Per (sequence, head): S = scale·Q Kᵀ (gemm.h), P = causal softmax(S) (kept), with dropout
// P' = P ∘ M, Y = P' V (gemm.h), all on c_attn's output in place (row stride 3C). The
// products skip the register tiles that fall in the causal zeros (S's upper triangle is
// not computed; P's is zero), about a third of their work. `mask` (B, nh, T, T) may be
// null (no dropout).
void attention_forward(const float* qkv, const float* mask, float* y, float* att, Dims d, float scale, int threads) {
  const size_t T = d.t, C = d.c, hs = C / d.n_head, ld = 3 * C;
  for_each_head(d, threads, [&](size_t b, size_t h) {
    thread_local std::vector<float> dropped;
    dropped.resize(mask != nullptr ? T * T : 0);
    const float* q = qkv + b * T * ld + h * hs;
    float* p = att + (b * d.n_head + h) * T * T;
    gemm(false, true, T, T, hs, scale, q, ld, q + C, ld, p, T, Structure::LowerC);
    causal_softmax(p, T);
    const float* weights = p;
    if (mask != nullptr) {
      apply_mask(p, mask + (b * d.n_head + h) * T * T, dropped.data(), T * T);
      weights = dropped.data();
    }
    gemm(false, false, T, hs, T, 1.0f, weights, T, q + 2 * C, ld, y + b * T * C + h * hs, C, Structure::LowerA);
  });
}

// With P the weights, M the dropout multiplier (or none), S = scale·Q Kᵀ the scores and
// dY the output's gradient: dV = (P ∘ M)ᵀ dY, dP = (dY Vᵀ) ∘ M,
// dS = P ∘ (dP − rowsum(P ∘ dP)), dQ = scale·dS K, dK = scale·dSᵀ Q, each written into
// its block of dqkv (B, T, 3C).
void attention_backward(const float* qkv, const float* att, const float* mask, const float* dy, float* dqkv, Dims d,
                        float scale, int threads) {
  const size_t T = d.t, C = d.c, hs = C / d.n_head, ld = 3 * C;
  for_each_head(d, threads, [&](size_t b, size_t h) {
    thread_local std::vector<float> ds, dropped;
    ds.resize(T * T);
    dropped.resize(mask != nullptr ? T * T : 0);
    const float* q = qkv + b * T * ld + h * hs;
    const float* p = att + (b * d.n_head + h) * T * T;
    const float* m = mask != nullptr ? mask + (b * d.n_head + h) * T * T : nullptr;
    const float* g = dy + b * T * C + h * hs;
    float* dq = dqkv + b * T * ld + h * hs;
    const float* weights = p;
    if (m != nullptr) {
      apply_mask(p, m, dropped.data(), T * T);
      weights = dropped.data();
    }
    gemm(true, false, T, hs, T, 1.0f, weights, T, g, C, dq + 2 * C, ld, Structure::UpperA);  // dV
    gemm(false, true, T, T, hs, 1.0f, g, C, q + 2 * C, ld, ds.data(), T, Structure::LowerC);  // dP (after dropout)
    if (m != nullptr) {
      scale_by_mask(ds.data(), m, T * T);  // dP (before dropout)
    }
    softmax_backward_rows(p, ds.data(), T, scale);                       // dS (scaled)
    gemm(false, false, T, hs, T, 1.0f, ds.data(), T, q + C, ld, dq, ld, Structure::LowerA);  // dQ
    gemm(true, false, T, hs, T, 1.0f, ds.data(), T, q, ld, dq + C, ld, Structure::UpperA);   // dK
  });
}

Dims dims_of(const mx::array& qkv, int n_head) {
  return Dims{static_cast<size_t>(qkv.shape(0)), static_cast<size_t>(qkv.shape(1)),
              static_cast<size_t>(qkv.shape(2) / 3), static_cast<size_t>(n_head)};
}

// inputs: qkv (B, T, 3C), weights (B, nh, T, T), dy (B, T, C) and, with dropout, its
// multiplier (B, nh, T, T); output: dqkv (B, T, 3C).
class CausalAttentionGrad : public mlx_gpt::CpuPrimitive {
 public:
  CausalAttentionGrad(mx::Stream stream, int n_head, float scale, int threads)
      : mlx_gpt::CpuPrimitive(stream), n_head_(n_head), scale_(scale), threads_(threads) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const mlx_gpt::DenseInputs in(inputs);
    auto& encoder = mlx_gpt::prepare(stream(), inputs, outputs);
    const Dims d = dims_of(inputs[0], n_head_);
    const float *qkv = in[0].data<float>(), *att = in[1].data<float>(), *dy = in[2].data<float>();
    const float* mask = in.size() > 3 ? in[3].data<float>() : nullptr;
    float* dqkv = outputs[0].data<float>();
    const float scale = scale_;
    const int threads = threads_;
    encoder.dispatch([=]() {
      in.fill();
      attention_backward(qkv, att, mask, dy, dqkv, d, scale, threads);
    });
  }
  const char* name() const override {
    return "CausalAttentionGrad";
  }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const CausalAttentionGrad&>(other);
    return n_head_ == o.n_head_ && scale_ == o.scale_ && threads_ == o.threads_;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {inputs[0].shape()};
  }

 private:
  int n_head_;
  float scale_;
  int threads_;  // (sequence, head) pairs split over this many threads
};

// inputs: qkv (B, T, 3C) and, with dropout, the multiplier (B, nh, T, T); outputs:
// y (B, T, C) and the weights before dropout (B, nh, T, T), which only the gradient reads.
class CausalAttention : public mlx_gpt::CpuPrimitive {
 public:
  CausalAttention(mx::Stream stream, int n_head, float scale, int threads)
      : mlx_gpt::CpuPrimitive(stream), n_head_(n_head), scale_(scale), threads_(threads) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const mlx_gpt::DenseInputs in(inputs);
    auto& encoder = mlx_gpt::prepare(stream(), inputs, outputs);
    const Dims d = dims_of(inputs[0], n_head_);
    const float* qkv = in[0].data<float>();
    const float* mask = in.size() > 1 ? in[1].data<float>() : nullptr;
    float *y = outputs[0].data<float>(), *att = outputs[1].data<float>();
    const float scale = scale_;
    const int threads = threads_;
    encoder.dispatch([=]() {
      in.fill();
      attention_forward(qkv, mask, y, att, d, scale, threads);
    });
  }

  std::vector<mx::array> vjp(
      const std::vector<mx::array>& primals,
      const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums,
      const std::vector<mx::array>& outputs) override {
    // Only y is handed out (mlx_gpt_causal_attention), so only its cotangent can be non-zero.
    std::vector<mx::array> inputs = {primals[0], outputs[1], cotangents[0]};
    if (primals.size() > 1) {
      inputs.push_back(primals[1]);
    }
    auto dqkv = mx::array(
        primals[0].shape(), mx::float32, std::make_shared<CausalAttentionGrad>(stream(), n_head_, scale_, threads_), inputs);
    // The dropout multiplier is random, not learned: no gradient flows into it.
    std::vector<mx::array> out;
    for (int arg : argnums) {
      out.push_back(arg == 0 ? dqkv : mx::zeros_like(primals[arg], stream()));
    }
    return out;
  }

  const char* name() const override {
    return "CausalAttention";
  }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const CausalAttention&>(other);
    return n_head_ == o.n_head_ && scale_ == o.scale_ && threads_ == o.threads_;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    const auto& s = inputs[0].shape();
    return {{s[0], s[1], s[2] / 3}, {s[0], n_head_, s[1], s[1]}};
  }

 private:
  int n_head_;
  float scale_;
  int threads_;  // (sequence, head) pairs split over this many threads
};

}  // namespace

extern "C" {

// *res (B, T, C) = causal softmax(scale · q kᵀ) v per head, for float32 qkv (B, T, 3C)
// holding q, k and v side by side (c_attn's output), on this thread's default CPU
// stream, differentiable. `mask` (B, nh, T, T), float32, multiplies the weights
// (dropout); it may be an empty handle. The (sequence, head) pairs are split over
// `threads` threads (1: this stream's thread alone). Returns 0, or 1 with the reason in
// mlx_gpt_last_error().
int mlx_gpt_causal_attention(mlx_array* res, const mlx_array qkv, const mlx_array mask, int n_head, float scale,
                             int threads) {
  return mlx_gpt::guarded([&]() {
    const mx::array& a = mlx_array_get_(qkv);
    if (a.dtype() != mx::float32 || a.ndim() != 3 || a.shape(2) % 3 != 0 || a.shape(1) == 0) {
      throw std::invalid_argument("[CausalAttention] needs float32 qkv (B, T, 3C) with T > 0");
    }
    if (mlx_gpt::sgemm == nullptr) {
      throw std::runtime_error("[CausalAttention] no cblas_sgemm was handed over (mlx_gpt_set_blas)");
    }
    const int c = a.shape(2) / 3;
    if (n_head <= 0 || c % n_head != 0) {
      throw std::invalid_argument("[CausalAttention] C must split into n_head heads");
    }
    auto stream = mx::default_stream(mx::Device::cpu);
    const mx::Shape y_shape = {a.shape(0), a.shape(1), c};
    const mx::Shape w_shape = {a.shape(0), n_head, a.shape(1), a.shape(1)};
    std::vector<mx::array> inputs = {a};
    if (mask.ctx != nullptr) {
      const mx::array& m = mlx_array_get_(mask);
      if (m.dtype() != mx::float32 || m.shape() != w_shape) {
        throw std::invalid_argument("[CausalAttention] the dropout mask must be float32 (B, n_head, T, T)");
      }
      inputs.push_back(m);
    }
    auto outs = mx::array::make_arrays(
        {y_shape, w_shape}, {mx::float32, mx::float32}, std::make_shared<CausalAttention>(stream, n_head, scale, std::max(threads, 1)),
        inputs);
    mlx_array_set_(*res, outs[0]);
    return 0;
  });
}

}  // extern "C"
