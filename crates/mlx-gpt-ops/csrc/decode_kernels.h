// The decoding kernels as plain functions, for primitives that chain them in one task
// (csrc/decode_block.cpp) as well as for their own primitives.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace mlx_gpt {

// A bfloat16 (its 16 bits) as float32: bfloat16 is float32's upper half.
inline float bf16_to_float(uint16_t w) {
  const uint32_t bits = static_cast<uint32_t>(w) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// y = LayerNorm(x; w, b, eps) over `rows` rows of `c` (b may be null). csrc/layer_norm.cpp.
void layer_norm_rows(const float* x, const float* w, const float* b, float* y, size_t rows, size_t c, float eps);

// y = GELU(x), erf form or the tanh approximation; x and y must not overlap. csrc/gelu.cpp.
void gelu_values(const float* x, float* y, size_t n, bool tanh);

// Where the query and the cache lie: element strides of q (B, 1, C) and of the buffers
// (B, capacity, C) over B and positions; the last axis is dense in all three.
struct AttentionLayout {
  size_t batch, len, c, n_head;
  size_t q_b, k_b, k_s, v_b, v_s;
};

// y (B, C) = softmax(scale · q kᵀ) v per head over the first `len` positions, the
// positions split over up to `parts` threads of the pool (the same result on any
// number). csrc/decode_attention.cpp.
void attend_one(const float* q, const float* k, const float* v, float* y, AttentionLayout l, float scale, int parts);

// y (rows, N) = x (rows, K) · W + bias, W (K, N), or (N, K) used transposed when
// `w_transposed`; float32 or bfloat16 (`bf16`) weights; split over `parts` threads of the
// pool. bias may be null. csrc/decode_product.cpp.
void decode_product(bool w_transposed, const float* x, int rows, int k, const void* w, bool bf16, int n,
                    const float* bias, float* y, int parts);

}  // namespace mlx_gpt
