// mlx-gpt's GEMM kernel for CPUs with AVX2 and FMA but no AVX-512 (AMD Zen 1–3, Intel
// before Skylake-SP and its client parts; gemm.cpp holds the blocking): a 6 × 16
// register tile (12 accumulators of 8 floats, two B vectors and a broadcast: 15 of the 16
// registers), op(B) packed in 16-column panels, Aᵀ in 6-wide ones. The same scheme as the
// AVX-512 kernel (gemm_avx512.h), at half the width. Against OpenBLAS's Haswell kernel,
// on an AVX2 CPU emulated on Zen 5: train_shakespeare_char's step about 10 % faster, the
// baby GPT's no different (docs/performance-history.md, "An AVX2 kernel for the GEMM");
// and it does not depend on the kernel OpenBLAS picks.

#pragma once

#include "gemm.h"
#include "vector.h"

#include <algorithm>
#include <cstddef>

// Built wherever the AVX-512 kernel is (x86-64 with GCC or Clang, not generic-cpu): both
// are compiled with per-function targets and chosen at run time.
#if MLX_GPT_AVX512

namespace mlx_gpt::gemm_avx2 {

constexpr int kMr = 6;   // rows of the register tile: 12 accumulators of 8 floats
constexpr int kNr = 16;  // columns of the register tile (two vectors), and of a B panel

// The mask of the first `n` of 8 lanes (all of them for n ≥ 8), for maskload/maskstore.
__attribute__((target("avx2,fma"))) inline __m256i first_lanes(size_t n) {
  const int lanes = static_cast<int>(std::min<size_t>(n, 8));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// Transposes the 8 × 8 block in r (r[i] is row i) in place: afterwards r[j] holds what
// was column j.
__attribute__((target("avx2,fma"))) inline void transpose8(__m256 r[8]) {
  __m256 t[8], s[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  // s[q + e] holds, rows q..q+3, column e in its low 128-bit lane and column 4 + e in its
  // high one.
  for (int q = 0; q < 8; q += 4) {
    s[q] = _mm256_shuffle_ps(t[q], t[q + 2], _MM_SHUFFLE(1, 0, 1, 0));
    s[q + 1] = _mm256_shuffle_ps(t[q], t[q + 2], _MM_SHUFFLE(3, 2, 3, 2));
    s[q + 2] = _mm256_shuffle_ps(t[q + 1], t[q + 3], _MM_SHUFFLE(1, 0, 1, 0));
    s[q + 3] = _mm256_shuffle_ps(t[q + 1], t[q + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int e = 0; e < 4; ++e) {
    r[e] = _mm256_permute2f128_ps(s[e], s[4 + e], 0x20);
    r[4 + e] = _mm256_permute2f128_ps(s[e], s[4 + e], 0x31);
  }
}

// op(B)'s rows k0..k0+kc, columns j0..j0+nc as ceil(nc/16) panels of kc × 16,
// zero-padded on the right (as gemm_avx512.h's, with 8 × 8 transposes for Bᵀ).
__attribute__((target("avx2,fma"))) inline void pack_b(const float* b, size_t ldb, bool tb, size_t j0, size_t nc,
                                                      size_t k0, size_t kc, float* out) {
  for (size_t p = 0; p < nc; p += kNr) {
    const size_t cols = std::min<size_t>(kNr, nc - p);
    float* dst = out + p * kc;
    if (!tb) {
      const __m256i m0 = first_lanes(cols), m1 = first_lanes(cols > 8 ? cols - 8 : 0);
      for (size_t k = 0; k < kc; ++k) {
        const float* src = b + (k0 + k) * ldb + j0 + p;
        _mm256_store_ps(dst + k * kNr, _mm256_maskload_ps(src, m0));
        _mm256_store_ps(dst + k * kNr + 8, _mm256_maskload_ps(src + 8, m1));
      }
      continue;
    }
    for (size_t c0 = 0; c0 < kNr; c0 += 8) {
      const size_t rows = cols > c0 ? std::min<size_t>(8, cols - c0) : 0;
      for (size_t k = 0; k < kc; k += 8) {
        const size_t depth = std::min<size_t>(8, kc - k);
        const __m256i mk = first_lanes(depth);
        __m256 r[8];
        for (size_t c = 0; c < 8; ++c) {
          r[c] = c < rows ? _mm256_maskload_ps(b + (j0 + p + c0 + c) * ldb + k0 + k, mk) : _mm256_setzero_ps();
        }
        transpose8(r);
        for (size_t kk = 0; kk < depth; ++kk) {
          _mm256_store_ps(dst + (k + kk) * kNr + c0, r[kk]);
        }
      }
    }
  }
}

// Aᵀ's rows 0..mc (columns of A, row stride lda) over k 0..kc as ceil(mc/6) panels of
// kc × 6, zero-padded: panel q holds out[q·6·kc + k·6 + r] = A[k, 6q + r]. Each k stores
// 8 floats, the last 2 overwritten by the next k (or the next panel): a masked store is
// slow on AMD's Zen 2 and 3, and gemm.cpp gives `out` floats to spare after its end.
__attribute__((target("avx2,fma"))) inline void pack_a_transposed(const float* a, size_t lda, size_t mc, size_t kc,
                                                                 float* out) {
  for (size_t q = 0; q < mc; q += kMr) {
    const __m256i rows = first_lanes(std::min<size_t>(kMr, mc - q));
    float* dst = out + q * kc;
    for (size_t k = 0; k < kc; ++k) {
      _mm256_storeu_ps(dst + k * kMr, _mm256_maskload_ps(a + k * lda + q, rows));
    }
  }
}

// R rows × (8·V) columns of C from one B panel: C = alpha·acc [+ C | + bias], only the
// first `cols` columns stored (as gemm_avx512.h's tile; whole rows of C stored without a
// mask).
template <int R, int V, bool TA>
__attribute__((target("avx2,fma"))) void tile(size_t kc, const float* __restrict a, size_t lda,
                                              const float* __restrict panel, float* c, size_t ldc, size_t cols,
                                              float alpha, GemmInit init, const float* bias) {
  __m256 acc0[R], acc1[R];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    acc0[r] = _mm256_setzero_ps();
    acc1[r] = _mm256_setzero_ps();
  }
  for (size_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(panel + k * kNr);
    const __m256 b1 = V == 2 ? _mm256_load_ps(panel + k * kNr + 8) : b0;
    const float* ak = TA ? a + k * lda : a + k;
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m256 x = _mm256_broadcast_ss(TA ? ak + r : ak + r * lda);
      acc0[r] = _mm256_fmadd_ps(x, b0, acc0[r]);
      if (V == 2) acc1[r] = _mm256_fmadd_ps(x, b1, acc1[r]);
    }
  }
  const bool whole = cols == static_cast<size_t>(8 * V);
  const __m256i m0 = first_lanes(cols), m1 = first_lanes(cols > 8 ? cols - 8 : 0);
  const __m256 scale = _mm256_set1_ps(alpha);
  __m256 bias0 = _mm256_setzero_ps(), bias1 = _mm256_setzero_ps();
  if (init == GemmInit::Bias) {
    bias0 = _mm256_maskload_ps(bias, m0);
    if (V == 2) bias1 = _mm256_maskload_ps(bias + 8, m1);
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    float* row = c + r * ldc;
    __m256 y0 = _mm256_mul_ps(acc0[r], scale), y1 = _mm256_mul_ps(acc1[r], scale);
    if (init == GemmInit::Accumulate) {
      y0 = _mm256_add_ps(y0, whole ? _mm256_loadu_ps(row) : _mm256_maskload_ps(row, m0));
      if (V == 2) y1 = _mm256_add_ps(y1, whole ? _mm256_loadu_ps(row + 8) : _mm256_maskload_ps(row + 8, m1));
    } else if (init == GemmInit::Bias) {
      y0 = _mm256_add_ps(y0, bias0);
      y1 = _mm256_add_ps(y1, bias1);
    }
    if (whole) {
      _mm256_storeu_ps(row, y0);
      if (V == 2) _mm256_storeu_ps(row + 8, y1);
    } else {
      _mm256_maskstore_ps(row, m0, y0);
      if (V == 2) _mm256_maskstore_ps(row + 8, m1, y1);
    }
  }
}

// The kernel as gemm.cpp's blocking takes it.
struct Kernel {
  static constexpr int kMr = gemm_avx2::kMr;
  static constexpr int kNr = gemm_avx2::kNr;
  static constexpr auto pack_b = &gemm_avx2::pack_b;
  static constexpr auto pack_a_transposed = &gemm_avx2::pack_a_transposed;
  template <int R, int V, bool TA>
  static constexpr auto tile = &gemm_avx2::tile<R, V, TA>;
};

}  // namespace mlx_gpt::gemm_avx2

#endif  // MLX_GPT_AVX512
