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
#include "pool.h"
#include "primitive.h"
#include "vector.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

namespace mx = mlx::core;

namespace {

// The cache is taken in chunks of kChunk positions: each chunk's softmax is computed
// against its own maximum, and the chunks are merged after (each rescaled by
// exp(its maximum - the overall one), as flash-decoding does). The chunks are the same
// whatever the number of threads, and are merged in their order, so the result is the
// same to the bit on any number of threads; threads take contiguous runs of chunks, so
// each reads whole cached rows, one stretch of memory.
constexpr size_t kChunk = 16;

// What one chunk of one sequence leaves for the merge: per head its maximum score m,
// the sum l of exp(score - m), and acc (hs values) = Σ exp(score - m) · v.
struct ChunkLayout {
  size_t nh, hs;
  size_t floats() const {
    return nh * (2 + hs);
  }
};

// Chunk `chunk` of sequence b, into out (ChunkLayout::floats()). Position-major: each
// cached row (all heads' keys, then values) is read once, front to back, so the cache
// streams through memory; a head-major order would revisit every row once per head.
MLX_GPT_CLONES void attend_chunk(const float* __restrict q, const float* __restrict k, const float* __restrict v,
                                 mlx_gpt::AttentionLayout l, float scale, size_t b, size_t chunk,
                                 float* __restrict out) {
  const size_t hs = l.c / l.n_head, nh = l.n_head;
  const size_t s0 = chunk * kChunk, s1 = std::min(l.len, s0 + kChunk), n = s1 - s0;
  thread_local std::vector<float> scores;
  scores.resize(nh * kChunk);
  float* p = scores.data();  // (nh, n): the scores, then their weights
  float *m = out, *sum = out + nh, *acc = out + 2 * nh;
  const float* qb = q + b * l.q_b;
  for (size_t s = s0; s < s1; ++s) {
    const float* ks = k + b * l.k_b + s * l.k_s;
    for (size_t h = 0; h < nh; ++h) {
      p[h * n + s - s0] = scale * mlx_gpt::dot(qb + h * hs, ks + h * hs, hs);
    }
  }
  for (size_t h = 0; h < nh; ++h) {
    float* ph = p + h * n;
    float mh = -INFINITY;
    for (size_t i = 0; i < n; ++i) {
      mh = ph[i] > mh ? ph[i] : mh;
    }
    float t = 0.0f;
    for (size_t i = 0; i < n; ++i) {
      ph[i] = mlx_gpt::exp1(ph[i] - mh);
      t += ph[i];
    }
    m[h] = mh;
    sum[h] = t;
  }
  for (size_t i = 0; i < nh * hs; ++i) {
    acc[i] = 0.0f;
  }
  for (size_t s = s0; s < s1; ++s) {
    const float* vs = v + b * l.v_b + s * l.v_s;
    for (size_t h = 0; h < nh; ++h) {
      const float w = p[h * n + s - s0];
      float* ah = acc + h * hs;
      const float* vh = vs + h * hs;
      for (size_t d = 0; d < hs; ++d) {
        ah[d] += w * vh[d];
      }
    }
  }
}

// y (hs values per head) of sequence b from its `chunks` chunks' results, in order.
MLX_GPT_CLONES void merge_chunks(const float* __restrict parts, size_t chunks, ChunkLayout cl, float* __restrict y) {
  const size_t nh = cl.nh, hs = cl.hs;
  for (size_t h = 0; h < nh; ++h) {
    float mh = -INFINITY;
    for (size_t c = 0; c < chunks; ++c) {
      const float mc = parts[c * cl.floats() + h];
      mh = mc > mh ? mc : mh;
    }
    float* yh = y + h * hs;
    for (size_t d = 0; d < hs; ++d) {
      yh[d] = 0.0f;
    }
    float total = 0.0f;
    for (size_t c = 0; c < chunks; ++c) {
      const float* pc = parts + c * cl.floats();
      const float e = mlx_gpt::exp1(pc[h] - mh);
      total += e * pc[nh + h];
      const float* ah = pc + 2 * nh + h * hs;
      for (size_t d = 0; d < hs; ++d) {
        yh[d] += e * ah[d];
      }
    }
    const float inv = 1.0f / total;
    for (size_t d = 0; d < hs; ++d) {
      yh[d] *= inv;
    }
  }
}

// The whole attention: every (sequence, chunk) pair, split over up to `requested_parts`
// threads of the pool in contiguous runs, then each sequence's chunks merged.
void decode_attention(const float* q, const float* k, const float* v, float* y, mlx_gpt::AttentionLayout l,
                      float scale, int requested_parts) {
  const ChunkLayout cl{l.n_head, l.c / l.n_head};
  const size_t chunks = (l.len + kChunk - 1) / kChunk, items = l.batch * chunks;
  thread_local std::vector<float> scratch;
  scratch.resize(items * cl.floats());
  float* out = scratch.data();
  // At least two chunks a thread: a chunk is a microsecond or two of work, about what
  // handing it to another thread costs.
  const int parts = static_cast<int>(std::max<size_t>(1, std::min<size_t>(requested_parts, items / 2)));
  mlx_gpt::Pool::run(parts, [&](int part) {
    for (size_t i = items * part / parts; i < items * (part + 1) / parts; ++i) {
      attend_chunk(q, k, v, l, scale, i / chunks, i % chunks, out + i * cl.floats());
    }
  });
  for (size_t b = 0; b < l.batch; ++b) {
    merge_chunks(out + b * chunks * cl.floats(), chunks, cl, y + b * l.c);
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
    encoder.dispatch([=]() { decode_attention(qp, kp, vp, yp, l, scale, 1); });
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

void mlx_gpt::attend_one(const float* q, const float* k, const float* v, float* y, AttentionLayout l, float scale,
                         int parts) {
  decode_attention(q, k, v, y, l, scale, parts);
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
