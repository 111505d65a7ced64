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
