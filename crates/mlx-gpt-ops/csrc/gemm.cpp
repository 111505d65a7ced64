// mlx-gpt's own float32 GEMM (gemm.h): a 12 × 32 AVX-512 register tile, op(B) packed in
// 32-column panels, op(A) read in place (Aᵀ copied into 12-wide panels), blocking over k,
// n and m. Every product of the CPU kernels, small or large, runs here where the CPU has
// AVX-512: at a small model's sizes it beats OpenBLAS (which packs both operands and
// clears C first), at the 10M-parameter preset's and GPT-2's it is on par with OpenBLAS's
// own AVX-512 kernel, and it does not depend on which kernel OpenBLAS picked for the CPU
// (OPENBLAS_CORETYPE=Haswell, or an unknown CPU's generic fallback, halves the BLAS's
// speed: docs/performance-history.md). CPUs without AVX-512 and the generic-cpu build go
// to the BLAS's cblas_sgemm.

#include "gemm.h"

#include "blas.h"
#include "pool.h"
#include "vector.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <utility>

// The own kernel is written with AVX-512 intrinsics: built where vector.h can include
// them (and run where the CPU has them).
#define MLX_GPT_OWN_GEMM MLX_GPT_AVX512

namespace mlx_gpt {

void prefetch_to_l2(const float* p, size_t rows, size_t cols, size_t ld, bool write) {
  for (size_t r = 0; r < rows; ++r) {
    // From the line holding the row's first element to the one holding its last.
    const uintptr_t first = reinterpret_cast<uintptr_t>(p + r * ld) & ~uintptr_t{63};
    const char* line = reinterpret_cast<const char*>(first);
    const char* end = reinterpret_cast<const char*>(p + r * ld + cols);
    for (; line < end; line += 64) {
      // Locality 2: towards L2 (prefetcht1 on x86); for writing, fetched for ownership.
      if (write) {
        __builtin_prefetch(line, 1, 2);
      } else {
        __builtin_prefetch(line, 0, 2);
      }
    }
  }
}

namespace {

void blas_gemm(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const float* a, size_t lda, const float* b,
               size_t ldb, float* c, size_t ldc, GemmInit init, const float* bias) {
  if (sgemm == nullptr) {
    throw std::runtime_error("[gemm] no cblas_sgemm was handed over (mlx_gpt_set_blas)");
  }
  if (init == GemmInit::Bias) {
    for (size_t i = 0; i < m; ++i) {
      std::copy(bias, bias + n, c + i * ldc);
    }
  }
  const float beta = init == GemmInit::Zero ? 0.0f : 1.0f;
  sgemm(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, static_cast<int>(m), static_cast<int>(n),
        static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta, c, static_cast<int>(ldc));
}

#if MLX_GPT_OWN_GEMM

constexpr int kMr = 12;     // rows of the register tile: 24 accumulators of 16 floats
constexpr int kNr = 32;     // columns of the register tile (two vectors), and of a B panel
constexpr size_t kNc = 256;  // columns of a packed B block
constexpr size_t kMc = 192;  // rows of op(A) swept per B panel

// The deepest depth block: a product deeper than this is split into equal blocks no
// deeper. Every depth block after the first reads C back and writes it again, and for a
// product of 8192 rows C is 12–50 MB, far outside the caches: with 256-deep blocks (a B
// panel then fits L1) the 10M-parameter preset's products ran at ~200 GFLOP/s on one
// Zen 5 core, with 768 at ~250, on par with OpenBLAS's own AVX-512 kernel. A B panel of
// 768 × 32 floats (96 KiB) is read from L2, 128 bytes per 24 FMAs, which L2 sustains
// (docs/performance-history.md).
constexpr size_t kMaxKc = 768;

// The most bytes of Aᵀ packed at once: its panels are re-read for every column block,
// and a product with tens of thousands of rows (the tied lm_head's weight gradient,
// 50304 rows) would otherwise pack all of them out to memory and stream them back per
// column block.
constexpr size_t kPackedABudget = size_t{2} << 20;

// The depth of the blocks that split k: ceil(k / blocks) for the fewest blocks no deeper
// than kMaxKc, so that no block is left with a thin remainder.
size_t depth_block(size_t k) {
  const size_t blocks = (k + kMaxKc - 1) / kMaxKc;
  return (k + blocks - 1) / blocks;
}

// A 64-byte aligned buffer per thread that only grows.
struct Panels {
  float* data = nullptr;
  size_t size = 0;
  float* get(size_t floats) {
    if (floats > size) {
      std::free(data);
      size = 0;
      data = static_cast<float*>(std::aligned_alloc(64, (floats * sizeof(float) + 63) / 64 * 64));
      if (data == nullptr) {
        throw std::bad_alloc();
      }
      size = floats;
    }
    return data;
  }
  ~Panels() { std::free(data); }
};

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
__attribute__((target("avx512f"))) void pack_b(const float* b, size_t ldb, bool tb, size_t j0, size_t nc,
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
__attribute__((target("avx512f"))) void pack_a_transposed(const float* a, size_t lda, size_t mc, size_t kc,
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

using Tile = void (*)(size_t, const float*, size_t, const float*, float*, size_t, size_t, float, GemmInit,
                      const float*);

// tiles[v][ta][rows]: the tile for `rows` (1..12) rows, v+1 vectors of columns.
template <int V, bool TA, int... Rs>
constexpr std::array<Tile, kMr + 1> tiles_for(std::integer_sequence<int, Rs...>) {
  return {nullptr, tile<Rs + 1, V, TA>...};
}
const std::array<Tile, kMr + 1> kTiles[2][2] = {
    {tiles_for<1, false>(std::make_integer_sequence<int, kMr>{}), tiles_for<1, true>(std::make_integer_sequence<int, kMr>{})},
    {tiles_for<2, false>(std::make_integer_sequence<int, kMr>{}), tiles_for<2, true>(std::make_integer_sequence<int, kMr>{})},
};

// A training step's products read operands written long before (the activations saved
// for the backward pass, last step's weights) that have left L2, and the tiles then
// wait on L3 one line at a time: in place, these products ran at about 100 GFLOP/s
// against 150–180 with warm operands (docs/performance-history.md). Asking for every line up
// front, while the first tiles compute, overlaps those misses. Only for operands that
// fit in L2 together; larger products are left to the hardware prefetchers.
void prefetch_operands(bool ta, bool tb, size_t m, size_t n, size_t k, const float* a, size_t lda, const float* b,
                       size_t ldb, const float* c, size_t ldc) {
  constexpr size_t kL2Budget = 3 << 19;  // bytes, three quarters of a 2 MiB L2
  if ((m * k + k * n + m * n) * sizeof(float) > kL2Budget) {
    return;
  }
  prefetch_to_l2(a, ta ? k : m, ta ? m : k, lda);
  prefetch_to_l2(b, tb ? n : k, tb ? k : n, ldb);
  prefetch_to_l2(c, m, n, ldc, true);
}

void own_gemm(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const float* a, size_t lda, const float* b,
              size_t ldb, float* c, size_t ldc, GemmInit init, const float* bias, Structure structure) {
  thread_local Panels panels, a_panels;
  prefetch_operands(ta, tb, m, n, k, a, lda, b, ldb, c, ldc);
  if (k == 0) {
    // No products: C is what it is added to (alpha · nothing).
    if (init != GemmInit::Accumulate) {
      for (size_t i = 0; i < m; ++i) {
        for (size_t j = 0; j < n; ++j) c[i * ldc + j] = init == GemmInit::Bias ? bias[j] : 0.0f;
      }
    }
    return;
  }
  const size_t kc_max = depth_block(k);
  for (size_t k0 = 0; k0 < k; k0 += kc_max) {
    const size_t kc = std::min(kc_max, k - k0);
    // Later depth blocks add to what the first wrote (which carries the bias).
    const GemmInit block_init = k0 == 0 ? init : GemmInit::Accumulate;
    const float* a_k = ta ? a + k0 * lda : a + k0;
    // op(A) = Aᵀ: its 12 values for one k lie side by side, but consecutive k are a row
    // of A apart; with a row of 2 KiB (a 512-wide layer) they fall into two L1 sets and
    // thrash. Copied into 12-wide panels (the tile reads them with a row stride of 12),
    // they are read in sequence. As many rows at once as kPackedABudget allows (all of
    // them, in a small model), before the column blocks that all read them (it was
    // copied again for each). op(A) = A is read where it lies, all rows in one pass.
    const size_t m_step =
        ta ? std::max(kMc, kPackedABudget / (kc * sizeof(float)) / kMc * kMc) : m;
    for (size_t m0 = 0; m0 < m; m0 += m_step) {
      const size_t mm = std::min(m_step, m - m0);
      float* packed_a = nullptr;
      if (ta) {
        packed_a = a_panels.get((mm + kMr - 1) / kMr * kMr * kc);
        for (size_t i0 = 0; i0 < mm; i0 += kMc) {
          pack_a_transposed(a_k + m0 + i0, lda, std::min(kMc, mm - i0), kc, packed_a + i0 * kc);
        }
      }
      for (size_t j0 = 0; j0 < n; j0 += kNc) {
        const size_t nc = std::min(kNc, n - j0);
        float* packed = panels.get((nc + kNr - 1) / kNr * kNr * kc);
        pack_b(b, ldb, tb, j0, nc, k0, kc, packed);
        for (size_t i0 = m0; i0 < m0 + mm; i0 += kMc) {
          const size_t mc = std::min(kMc, m0 + mm - i0);
          const float* a_block = ta ? packed_a + (i0 - m0) * kc : a_k + i0 * lda;
          const size_t a_ld = ta ? kMr : lda;
          for (size_t p = 0; p < nc; p += kNr) {
            const size_t cols = std::min<size_t>(kNr, nc - p);
            const auto& row_tiles = kTiles[cols > 16 ? 1 : 0][ta ? 1 : 0];
            const float* panel = packed + p * kc;
            const float* bias_p = bias == nullptr ? nullptr : bias + j0 + p;
            for (size_t i = 0; i < mc; i += kMr) {
              const size_t rows = std::min<size_t>(kMr, mc - i);
              const size_t r0 = i0 + i;  // the tile's first row of C
              if (structure == Structure::LowerC && j0 + p > r0 + rows - 1) {
                continue;  // every column of the tile lies above the diagonal
              }
              // The part of this depth block where op(A)'s rows r0..r0+rows can be non-zero.
              size_t k_from = 0, k_to = kc;
              if (structure == Structure::LowerA) {
                k_to = std::min(kc, r0 + rows > k0 ? r0 + rows - k0 : 0);
              } else if (structure == Structure::UpperA) {
                k_from = std::min(kc, r0 > k0 ? r0 - k0 : 0);
              }
              const float* a_i = ta ? a_block + i * kc + k_from * kMr : a_block + i * lda + k_from;
              row_tiles[rows](k_to - k_from, a_i, a_ld, panel + k_from * kNr, c + r0 * ldc + j0 + p, ldc, cols,
                              alpha, block_init, bias_p);
            }
          }
        }
      }
    }
  }
}

// The least work (m·n·k multiply-adds, about 40 µs on one core) split over threads:
// handing a part to the pool's helper and waiting for it costs microseconds (more when
// the helper has gone to sleep), which a smaller product would not win back.
constexpr size_t kMinSplitWork = size_t{1} << 23;

// own_gemm over `threads` threads of the pool: C's rows in bands of whole register tiles
// when it has at least as many rows as columns, else its columns in bands of whole
// panels. Each part is an own_gemm of its own on a band of C, so every element is
// computed exactly as on one thread. Rows: each thread packs all of op(B) (k × n, small
// next to its m/threads × n × k of work); columns: each reads all of op(A).
void split_gemm(int threads, bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const float* a, size_t lda,
                const float* b, size_t ldb, float* c, size_t ldc, GemmInit init, const float* bias) {
  const bool by_rows = m >= n;
  const size_t extent = by_rows ? m : n, unit = by_rows ? kMr : kNr;
  const size_t units = (extent + unit - 1) / unit;
  const size_t parts = std::min<size_t>(static_cast<size_t>(threads), units);
  const size_t band = (units + parts - 1) / parts * unit;
  Pool::run(static_cast<int>(parts), [&](int part) {
    const size_t from = static_cast<size_t>(part) * band;
    if (from >= extent) {
      return;
    }
    const size_t len = std::min(band, extent - from);
    if (by_rows) {
      own_gemm(ta, tb, len, n, k, alpha, ta ? a + from : a + from * lda, lda, b, ldb, c + from * ldc, ldc, init, bias,
               Structure::General);
    } else {
      own_gemm(ta, tb, m, len, k, alpha, a, lda, tb ? b + from * ldb : b + from, ldb, c + from, ldc, init,
               bias == nullptr ? nullptr : bias + from, Structure::General);
    }
  });
}

#endif  // MLX_GPT_OWN_GEMM

}  // namespace

bool own_gemm_active() {
#if MLX_GPT_OWN_GEMM
  return mlx_gpt::cpu_has_avx512();
#else
  return false;
#endif
}

void gemm(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const float* a, size_t lda, const float* b,
          size_t ldb, float* c, size_t ldc, GemmInit init, const float* bias, Structure structure, int threads) {
  if (m == 0 || n == 0) {
    return;
  }
#if MLX_GPT_OWN_GEMM
  if (own_gemm_active()) {
    if (threads > 1 && structure == Structure::General && m * n * k >= kMinSplitWork) {
      split_gemm(threads, ta, tb, m, n, k, alpha, a, lda, b, ldb, c, ldc, init, bias);
    } else {
      own_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, c, ldc, init, bias, structure);
    }
    return;
  }
#endif
  blas_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, c, ldc, init, bias);
}

}  // namespace mlx_gpt

// Whether products run on the own kernel (the CPU has AVX-512, and the build has its
// path) rather than the BLAS; for `mlx-gpt info`.
extern "C" bool mlx_gpt_own_gemm_active() { return mlx_gpt::own_gemm_active(); }
