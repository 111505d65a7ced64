// mlx-gpt's GEMM kernel for AVX-512 CPUs (gemm.cpp holds the blocking): a 12 × 32
// register tile (24 accumulators of 16 floats, two B vectors and a broadcast: 27 of the
// 32 registers), op(B) packed in 32-column panels, Aᵀ in 12-wide ones.

#pragma once

#include "gemm.h"
#include "vector.h"

#include <algorithm>
#include <cstddef>

#if MLX_GPT_AVX512

namespace mlx_gpt::gemm_avx512 {

constexpr int kMr = 12;  // rows of the register tile: 24 accumulators of 16 floats
constexpr int kNr = 32;  // columns of the register tile (two vectors), and of a B panel

// Transposes the 16 × 16 block in r (r[i] is row i) in place: afterwards r[j] holds
// what was column j. (GCC 12 warns that the intrinsics' unused "undefined" source
// operand may be uninitialised: a known false positive.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f"))) inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  // Within each 128-bit lane: t[4q + {0, 1, 2, 3}] hold pairs of rows 4q..4q+3; gather
  // the four rows' element 0, 1, 2, 3 of each lane.
  for (int q = 0; q < 16; q += 4) {
    r[q] = _mm512_shuffle_ps(t[q], t[q + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[q + 1] = _mm512_shuffle_ps(t[q], t[q + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[q + 2] = _mm512_shuffle_ps(t[q + 1], t[q + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[q + 3] = _mm512_shuffle_ps(t[q + 1], t[q + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  // r[4q + e] now holds, in 128-bit lane L, element 4L + e of rows 4q..4q+3. Interleave
  // the lanes of the four row groups.
  for (int e = 0; e < 4; ++e) {
    const __m512 a = _mm512_shuffle_f32x4(r[e], r[4 + e], _MM_SHUFFLE(2, 0, 2, 0));
    const __m512 b = _mm512_shuffle_f32x4(r[8 + e], r[12 + e], _MM_SHUFFLE(2, 0, 2, 0));
    const __m512 c = _mm512_shuffle_f32x4(r[e], r[4 + e], _MM_SHUFFLE(3, 1, 3, 1));
    const __m512 d = _mm512_shuffle_f32x4(r[8 + e], r[12 + e], _MM_SHUFFLE(3, 1, 3, 1));
    t[e] = _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0));       // lane 0: column e
    t[8 + e] = _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1));   // lane 2: column 8 + e
    t[4 + e] = _mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(2, 0, 2, 0));   // lane 1: column 4 + e
    t[12 + e] = _mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(3, 1, 3, 1));  // lane 3: column 12 + e
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}
#pragma GCC diagnostic pop

// op(B)'s rows k0..k0+kc, columns j0..j0+nc (nc ≤ kNc) as ceil(nc/32) panels of kc × 32,
// zero-padded on the right. Vectorised: as scalar code (the transposed case a value at a
// time) the packing took as long as the prefetching (docs/performance-history.md).
__attribute__((target("avx512f"))) inline void pack_b(const float* b, size_t ldb, bool tb, size_t j0, size_t nc,
                                              size_t k0, size_t kc, float* out) {
  for (size_t p = 0; p < nc; p += kNr) {
    const size_t cols = std::min<size_t>(kNr, nc - p);
    float* dst = out + p * kc;
    if (!tb) {
      const __mmask16 m0 = mlx_gpt::first_lanes(cols), m1 = cols > 16 ? mlx_gpt::first_lanes(cols - 16) : 0;
      for (size_t k = 0; k < kc; ++k) {
        const float* src = b + (k0 + k) * ldb + j0 + p;
        _mm512_store_ps(dst + k * kNr, _mm512_maskz_loadu_ps(m0, src));
        _mm512_store_ps(dst + k * kNr + 16, _mm512_maskz_loadu_ps(m1, src + 16));
      }
      continue;
    }
    // op(B) = Bᵀ: panel column c is B's row j0 + p + c. Blocks of 16 × 16 are transposed
    // in registers; missing columns are zeros.
    for (size_t c0 = 0; c0 < kNr; c0 += 16) {
      const size_t rows = cols > c0 ? std::min<size_t>(16, cols - c0) : 0;
      for (size_t k = 0; k < kc; k += 16) {
        const size_t depth = std::min<size_t>(16, kc - k);
        const __mmask16 mk = mlx_gpt::first_lanes(depth);
        __m512 r[16];
        for (size_t c = 0; c < 16; ++c) {
          r[c] = c < rows ? _mm512_maskz_loadu_ps(mk, b + (j0 + p + c0 + c) * ldb + k0 + k) : _mm512_setzero_ps();
        }
        transpose16(r);
        for (size_t kk = 0; kk < depth; ++kk) {
          _mm512_store_ps(dst + (k + kk) * kNr + c0, r[kk]);
        }
      }
    }
  }
}

// Aᵀ's rows 0..mc (columns of A, row stride lda) over k 0..kc as ceil(mc/12) panels of
// kc × 12, zero-padded: panel q holds out[q·12·kc + k·12 + r] = A[k, 12q + r].
__attribute__((target("avx512f"))) inline void pack_a_transposed(const float* a, size_t lda, size_t mc, size_t kc,
                                                          float* out) {
  for (size_t q = 0; q < mc; q += kMr) {
    const __mmask16 rows = mlx_gpt::first_lanes(std::min<size_t>(kMr, mc - q));
    float* dst = out + q * kc;
    for (size_t k = 0; k < kc; ++k) {
      _mm512_mask_storeu_ps(dst + k * kMr, mlx_gpt::first_lanes(kMr), _mm512_maskz_loadu_ps(rows, a + k * lda + q));
    }
  }
}

// R rows × (16·V) columns of C from one B panel: C = alpha·acc [+ C | + bias], only the
// first `cols` columns stored. op(A)'s element (r, k) is a[r·lda + k], or a[k·lda + r]
// when TA (Aᵀ's panels, lda = 12): one broadcast per row and k either way.
template <int R, int V, bool TA>
__attribute__((target("avx512f"))) void tile(size_t kc, const float* __restrict a, size_t lda,
                                             const float* __restrict panel, float* c, size_t ldc, size_t cols,
                                             float alpha, GemmInit init, const float* bias) {
  __m512 acc0[R], acc1[R];
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) {
    acc0[r] = _mm512_setzero_ps();
    acc1[r] = _mm512_setzero_ps();
  }
  for (size_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_load_ps(panel + k * kNr);
    const __m512 b1 = V == 2 ? _mm512_load_ps(panel + k * kNr + 16) : b0;
    const float* ak = TA ? a + k * lda : a + k;
#pragma GCC unroll 12
    for (int r = 0; r < R; ++r) {
      const __m512 x = _mm512_set1_ps(TA ? ak[r] : ak[r * lda]);
      acc0[r] = _mm512_fmadd_ps(x, b0, acc0[r]);
      if (V == 2) acc1[r] = _mm512_fmadd_ps(x, b1, acc1[r]);
    }
  }
  const __mmask16 m0 = mlx_gpt::first_lanes(cols), m1 = cols > 16 ? mlx_gpt::first_lanes(cols - 16) : 0;
  const __m512 scale = _mm512_set1_ps(alpha);
  __m512 bias0 = _mm512_setzero_ps(), bias1 = _mm512_setzero_ps();
  if (init == GemmInit::Bias) {
    bias0 = _mm512_maskz_loadu_ps(m0, bias);
    if (V == 2) bias1 = _mm512_maskz_loadu_ps(m1, bias + 16);
  }
#pragma GCC unroll 12
  for (int r = 0; r < R; ++r) {
    float* row = c + r * ldc;
    __m512 y0 = _mm512_mul_ps(acc0[r], scale), y1 = _mm512_mul_ps(acc1[r], scale);
    if (init == GemmInit::Accumulate) {
      y0 = _mm512_add_ps(y0, _mm512_maskz_loadu_ps(m0, row));
      if (V == 2) y1 = _mm512_add_ps(y1, _mm512_maskz_loadu_ps(m1, row + 16));
    } else if (init == GemmInit::Bias) {
      y0 = _mm512_add_ps(y0, bias0);
      y1 = _mm512_add_ps(y1, bias1);
    }
    _mm512_mask_storeu_ps(row, m0, y0);
    if (V == 2) _mm512_mask_storeu_ps(row + 16, m1, y1);
  }
}

// The kernel as gemm.cpp's blocking takes it.
struct Kernel {
  static constexpr int kMr = gemm_avx512::kMr;
  static constexpr int kNr = gemm_avx512::kNr;
  static constexpr auto pack_b = &gemm_avx512::pack_b;
  static constexpr auto pack_a_transposed = &gemm_avx512::pack_a_transposed;
  template <int R, int V, bool TA>
  static constexpr auto tile = &gemm_avx512::tile<R, V, TA>;
};

}  // namespace mlx_gpt::gemm_avx512

#endif  // MLX_GPT_AVX512
