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

// MLX_GPT_GENERIC_CPU (the `generic-cpu` feature) builds the portable paths only, as on a
// CPU without AVX-512 or AVX2, so that they can be tested on one that has them.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(MLX_GPT_GENERIC_CPU)
#define MLX_GPT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MLX_GPT_CLONES
#endif

#define MLX_GPT_INLINE inline __attribute__((always_inline))

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(MLX_GPT_GENERIC_CPU)
#define MLX_GPT_AVX512 1
#include <immintrin.h>
#else
#define MLX_GPT_AVX512 0
#endif

namespace mlx_gpt {

// Whether this CPU has AVX-512 (for kernels written with its intrinsics, in functions
// marked target("avx512f")).
inline bool cpu_has_avx512() {
#if MLX_GPT_AVX512
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") != 0;
  }();
  return has;
#else
  return false;
#endif
}

// Whether this CPU has AVX2 and FMA (for kernels written with their intrinsics, in
// functions marked target("avx2,fma")).
inline bool cpu_has_avx2_fma() {
#if MLX_GPT_AVX512
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0 && __builtin_cpu_supports("fma") != 0;
  }();
  return has;
#else
  return false;
#endif
}

#if MLX_GPT_AVX512
// The mask of the first `n` lanes (all 16 for n ≥ 16).
inline __mmask16 first_lanes(size_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1);
}

// exp1 on 16 lanes: the same operations in the same order (whether the compiler fuses a
// product and a sum into one FMA may differ between the two, so the values agree to
// rounding, not necessarily bit for bit).
__attribute__((target("avx512f"))) inline __m512 exp16(__m512 x0) {
  const __m512 x = _mm512_mul_ps(x0, _mm512_set1_ps(1.442695f));
  const __m512 ipart = _mm512_roundscale_ps(_mm512_add_ps(x, _mm512_set1_ps(0.5f)), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, ipart);
  __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(ipart), _mm512_set1_epi32(127)), 23);
  __m512 r = _mm512_mul_ps(_mm512_castsi512_ps(bits), p);
  r = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x0, _mm512_set1_ps(88.0f), _CMP_GT_OQ), r,
                           _mm512_set1_ps(__builtin_inff()));
  r = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x0, _mm512_set1_ps(-88.0f), _CMP_LT_OQ), r, _mm512_setzero_ps());
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x0, x0, _CMP_UNORD_Q), r, x0);
}
#endif

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

// Σ acc[0..kLanes) as a tree (lane l plus lane l + 8, then + 4, + 2, + 1), overwriting
// acc: a few shuffles and vector adds. Adding the lanes in order was a chain of 16
// dependent scalar adds, which took most of the time of a row as short as the baby
// GPT's 128 features or a causal softmax row (docs/performance-history.md).
MLX_GPT_INLINE float hsum(float* acc) {
  for (int w = kLanes / 2; w > 0; w /= 2) {
    for (int l = 0; l < w; ++l) {
      acc[l] += acc[l + w];
    }
  }
  return acc[0];
}

// max(acc[0..kLanes)) as a tree, overwriting acc.
MLX_GPT_INLINE float hmax(float* acc) {
  for (int w = kLanes / 2; w > 0; w /= 2) {
    for (int l = 0; l < w; ++l) {
      acc[l] = acc[l + w] > acc[l] ? acc[l + w] : acc[l];
    }
  }
  return acc[0];
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
  return hsum(acc) + s;
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
  return hsum(acc) + s;
}

// max a[i] over n ≥ 1, in kLanes partial maxima.
MLX_GPT_INLINE float max(const float* a, size_t n) {
  float acc[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    acc[l] = a[0];
  }
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      acc[l] = a[i + l] > acc[l] ? a[i + l] : acc[l];
    }
  }
  for (; i < n; ++i) {
    acc[0] = a[i] > acc[0] ? a[i] : acc[0];
  }
  return hmax(acc);
}

}  // namespace mlx_gpt
