// Attention of one new position over the KV cache, as one MLX primitive.
//
// When generating, each layer's query is a single row per head. As MLX ops its
// attention is a chain of small kernels (scale, q·kᵀ, the softmax's max, subtraction,
// exp, sum and division, the product with v, the heads' transposes back), each a task
// handed to the stream's thread and each costing more in hand-offs than in arithmetic.
// Here it is one kernel that reads the cache where it lies: keys and values in
// (B, capacity, C) buffers whose first `len` positions are held (LayerKv in
// attention.rs), head h in columns h·hs .. (h+1)·hs, and writes the heads' outputs side
// by side, (B, 1, C), ready for c_proj. No mask: the new position sees every held one.

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
#include <vector>

namespace mx = mlx::core;

namespace {

// Position-major: each cached row (all heads' keys, then values) is read once, front to
// back, so the cache streams through memory; a head-major order would revisit every
// row once per head.
MLX_GPT_CLONES void decode_attention(const float* __restrict q, const float* __restrict k, const float* __restrict v,
                                     float* __restrict y, mlx_gpt::AttentionLayout l, float scale) {
  const size_t hs = l.c / l.n_head, nh = l.n_head, len = l.len;
  std::vector<float> p(nh * len), m(nh), total(nh);  // p: (nh, len)
  for (size_t b = 0; b < l.batch; ++b) {
    const float* qb = q + b * l.q_b;
    for (size_t s = 0; s < len; ++s) {
      const float* ks = k + b * l.k_b + s * l.k_s;
      for (size_t h = 0; h < nh; ++h) {
        p[h * len + s] = scale * mlx_gpt::dot(qb + h * hs, ks + h * hs, hs);
      }
    }
    for (size_t h = 0; h < nh; ++h) {
      float* ph = p.data() + h * len;
      float mh = -INFINITY;
      for (size_t s = 0; s < len; ++s) {
        mh = ph[s] > mh ? ph[s] : mh;
      }
      float t = 0.0f;
      for (size_t s = 0; s < len; ++s) {
        ph[s] = mlx_gpt::exp1(ph[s] - mh);
        t += ph[s];
      }
      total[h] = t;
    }
    float* yb = y + b * l.c;
    for (size_t i = 0; i < l.c; ++i) {
      yb[i] = 0.0f;
    }
    for (size_t s = 0; s < len; ++s) {
      const float* vs = v + b * l.v_b + s * l.v_s;
      for (size_t h = 0; h < nh; ++h) {
        const float w = p[h * len + s];
        float* yh = yb + h * hs;
        const float* vh = vs + h * hs;
        for (size_t d = 0; d < hs; ++d) {
          yh[d] += w * vh[d];
        }
      }
    }
    for (size_t h = 0; h < nh; ++h) {
      const float inv = 1.0f / total[h];
      for (size_t d = 0; d < hs; ++d) {
        yb[h * hs + d] *= inv;
      }
    }
  }
}

class DecodeAttention : public mlx_gpt::CpuPrimitive {
 public:
  DecodeAttention(mx::Stream stream, int n_head, int len, float scale)
      : mlx_gpt::CpuPrimitive(stream), n_head_(n_head), len_(len), scale_(scale) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const mx::array &q = inputs[0], &k = inputs[1], &v = inputs[2];
    mx::array& out = outputs[0];
    for (auto* a : {&q, &k, &v}) {
      if (a->strides().back() != 1) {
        throw std::runtime_error("[DecodeAttention] the last axis of q, k and v must be dense");
      }
    }
    auto& encoder = mlx_gpt::prepare(stream(), inputs, outputs);
    const mlx_gpt::AttentionLayout l{
        static_cast<size_t>(q.shape(0)),
        static_cast<size_t>(len_),
        static_cast<size_t>(q.shape(2)),
        static_cast<size_t>(n_head_),
        static_cast<size_t>(q.strides()[0]),
        static_cast<size_t>(k.strides()[0]),
        static_cast<size_t>(k.strides()[1]),
        static_cast<size_t>(v.strides()[0]),
        static_cast<size_t>(v.strides()[1])};
    const float *qp = q.data<float>(), *kp = k.data<float>(), *vp = v.data<float>();
    float* yp = out.data<float>();
    const float scale = scale_;
    encoder.dispatch([=]() { decode_attention(qp, kp, vp, yp, l, scale); });
  }
  const char* name() const override {
    return "DecodeAttention";
  }
  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const DecodeAttention&>(other);
    return n_head_ == o.n_head_ && len_ == o.len_ && scale_ == o.scale_;
  }

 private:
  int n_head_, len_;
  float scale_;
};

}  // namespace

void mlx_gpt::attend_one(const float* q, const float* k, const float* v, float* y, AttentionLayout l, float scale) {
  decode_attention(q, k, v, y, l, scale);
}

extern "C" {

// *res (B, 1, C) = softmax(scale · q kᵀ) v per head over the first `len` positions of
// the float32 buffers k and v (B, capacity, C), for the float32 query q (B, 1, C), on
// this thread's default CPU stream. Not differentiable (generation only). Returns 0, or
// 1 with the reason in mlx_gpt_last_error().
int mlx_gpt_decode_attention(
    mlx_array* res, const mlx_array q, const mlx_array k, const mlx_array v, int n_head, int len, float scale) {
  return mlx_gpt::guarded([&]() {
    const mx::array& qa = mlx_array_get_(q);
    const mx::array& ka = mlx_array_get_(k);
    const mx::array& va = mlx_array_get_(v);
    for (auto* a : {&qa, &ka, &va}) {
      if (a->dtype() != mx::float32 || a->ndim() != 3) {
        throw std::invalid_argument("[DecodeAttention] needs float32 q (B, 1, C), k and v (B, capacity, C)");
      }
    }
    const int c = qa.shape(2);
    if (qa.shape(1) != 1 || ka.shape() != va.shape() || ka.shape(0) != qa.shape(0) || ka.shape(2) != c) {
      throw std::invalid_argument("[DecodeAttention] q must be (B, 1, C) and k, v (B, capacity, C)");
    }
    if (n_head <= 0 || c % n_head != 0 || len <= 0 || len > ka.shape(1)) {
      throw std::invalid_argument(
          "[DecodeAttention] C must split into n_head heads and len must be in 1..=capacity");
    }
    auto stream = mx::default_stream(mx::Device::cpu);
    mlx_array_set_(
        *res,
        mx::array(qa.shape(), mx::float32, std::make_shared<DecodeAttention>(stream, n_head, len, scale), {qa, ka, va}));
    return 0;
  });
}

}  // extern "C"
