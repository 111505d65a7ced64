// Shared by the element-wise and per-row kernels in csrc/: how they are compiled for the
// CPU's vector units.
//
// `MLX_GPT_CLONES` builds a function once per x86-64 feature level (v4: AVX-512, v3:
// AVX2 + FMA, and the baseline); the loader picks the copy for the CPU it runs on.
// (`target_clones("arch=skylake-avx512")` never matched this project's AVX-512 VM; the
// feature levels do.) Helpers called from such a function must be `MLX_GPT_INLINE`, or
// they stay scalar calls outside the clones.

#pragma once

#include <cstddef>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MLX_GPT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MLX_GPT_CLONES
#endif

#define MLX_GPT_INLINE inline __attribute__((always_inline))

namespace mlx_gpt {

// Lanes of the partial sums below: one AVX-512 register of floats. The compiler keeps
// the lanes in registers and vectorises the loop, which it may not do for a single
// accumulator (float addition is not associative).
constexpr int kLanes = 16;

// exp(x) with MLX's CPU formula (mlx/backend/cpu/simd/math.h: Cephes' polynomial),
// restated as inline scalar code so that each target_clones copy inlines it and the
// loops calling it vectorise (MLX's own templates are not inlined into the clones and
// would run as scalar calls).
MLX_GPT_INLINE float exp1(float x0) {
  float x = x0 * 1.442695f;  // log2(e)
  const float ipart = __builtin_floorf(x + 0.5f);
  const float f = x - ipart;
  x = 1.535336188319500e-4f;
  x = __builtin_fmaf(x, f, 1.339887440266574e-3f);
  x = __builtin_fmaf(x, f, 9.618437357674640e-3f);
  x = __builtin_fmaf(x, f, 5.550332471162809e-2f);
  x = __builtin_fmaf(x, f, 2.402264791363012e-1f);
  x = __builtin_fmaf(x, f, 6.931472028550421e-1f);
  x = __builtin_fmaf(x, f, 1.0f);
  const int bits = (static_cast<int>(ipart) + 127) << 23;
  float scale;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  float r = scale * x;
  r = x0 > 88.0f ? __builtin_inff() : r;
  r = x0 < -88.0f ? 0.0f : r;
  return x0 != x0 ? x0 : r;
}

// Σ a[i]·b[i] over n, in kLanes partial sums.
MLX_GPT_INLINE float dot(const float* a, const float* b, size_t n) {
  float acc[kLanes] = {};
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      acc[l] += a[i + l] * b[i + l];
    }
  }
  float s = 0.0f;
  for (; i < n; ++i) {
    s += a[i] * b[i];
  }
  for (int l = 0; l < kLanes; ++l) {
    s += acc[l];
  }
  return s;
}

// Σ a[i] over n, in kLanes partial sums.
MLX_GPT_INLINE float sum(const float* a, size_t n) {
  float acc[kLanes] = {};
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      acc[l] += a[i + l];
    }
  }
  float s = 0.0f;
  for (; i < n; ++i) {
    s += a[i];
  }
  for (int l = 0; l < kLanes; ++l) {
    s += acc[l];
  }
  return s;
}

}  // namespace mlx_gpt
