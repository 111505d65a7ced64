// mlx-gpt's own float32 GEMM (gemm.h): op(B) packed in panels as wide as the register
// tile, op(A) read in place (Aᵀ copied into panels as tall as the tile), blocking over k,
// n and m; the register tiles and packing are the CPU's kernel's: 12 × 32 on AVX-512
// (gemm_avx512.h), 6 × 16 on AVX2 and FMA (gemm_avx2.h). Every product of the CPU
// kernels, small or large, runs here where the CPU has either: at a small model's sizes
// it beats OpenBLAS (which packs both operands and clears C first), at the 10M-parameter
// preset's and GPT-2's it is on par with OpenBLAS's own kernel, and it does not depend on
// which kernel OpenBLAS picked for the CPU (OPENBLAS_CORETYPE=Haswell, or an unknown
// CPU's generic fallback, halves the BLAS's speed: docs/performance-history.md). Other
// CPUs and the generic-cpu build go to the BLAS's cblas_sgemm.

#include "gemm.h"

#include "blas.h"
#include "gemm_avx2.h"
#include "gemm_avx512.h"
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

// The blocking below is the same for both kernels (gemm_avx512.h, gemm_avx2.h); each
// brings its register tile (K::kMr rows × K::kNr columns), packing and tiles.
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

// The tiles of kernel K for every row count: tiles[v][ta][rows] for `rows` (1..K::kMr)
// rows and v + 1 vectors of columns.
template <class K>
struct Tiles {
  using Tile = void (*)(size_t, const float*, size_t, const float*, float*, size_t, size_t, float, GemmInit,
                        const float*);
  using Row = std::array<Tile, K::kMr + 1>;
  template <int V, bool TA, int... Rs>
  static constexpr Row row(std::integer_sequence<int, Rs...>) {
    return {nullptr, K::template tile<Rs + 1, V, TA>...};
  }
  static constexpr Row kAll[2][2] = {
      {row<1, false>(std::make_integer_sequence<int, K::kMr>{}), row<1, true>(std::make_integer_sequence<int, K::kMr>{})},
      {row<2, false>(std::make_integer_sequence<int, K::kMr>{}), row<2, true>(std::make_integer_sequence<int, K::kMr>{})},
  };
};

// Floats to spare after the packed Aᵀ: a kernel may store a whole vector for a panel's
// last row (gemm_avx2.h).
constexpr size_t kPanelSlack = 16;

template <class K>
void own_gemm(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const float* a, size_t lda, const float* b,
              size_t ldb, float* c, size_t ldc, GemmInit init, const float* bias, Structure structure) {
  constexpr size_t kMr = K::kMr, kNr = K::kNr;
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
        packed_a = a_panels.get((mm + kMr - 1) / kMr * kMr * kc + kPanelSlack);
        for (size_t i0 = 0; i0 < mm; i0 += kMc) {
          K::pack_a_transposed(a_k + m0 + i0, lda, std::min(kMc, mm - i0), kc, packed_a + i0 * kc);
        }
      }
      for (size_t j0 = 0; j0 < n; j0 += kNc) {
        const size_t nc = std::min(kNc, n - j0);
        float* packed = panels.get((nc + kNr - 1) / kNr * kNr * kc);
        K::pack_b(b, ldb, tb, j0, nc, k0, kc, packed);
        for (size_t i0 = m0; i0 < m0 + mm; i0 += kMc) {
          const size_t mc = std::min(kMc, m0 + mm - i0);
          const float* a_block = ta ? packed_a + (i0 - m0) * kc : a_k + i0 * lda;
          const size_t a_ld = ta ? kMr : lda;
          for (size_t p = 0; p < nc; p += kNr) {
            const size_t cols = std::min<size_t>(kNr, nc - p);
            const auto& row_tiles = Tiles<K>::kAll[cols > kNr / 2 ? 1 : 0][ta ? 1 : 0];
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
template <class K>
void split_gemm(int threads, bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const float* a, size_t lda,
                const float* b, size_t ldb, float* c, size_t ldc, GemmInit init, const float* bias) {
  const bool by_rows = m >= n;
  const size_t extent = by_rows ? m : n, unit = by_rows ? K::kMr : K::kNr;
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
      own_gemm<K>(ta, tb, len, n, k, alpha, ta ? a + from : a + from * lda, lda, b, ldb, c + from * ldc, ldc, init, bias,
               Structure::General);
    } else {
      own_gemm<K>(ta, tb, m, len, k, alpha, a, lda, tb ? b + from * ldb : b + from, ldb, c + from, ldc, init,
               bias == nullptr ? nullptr : bias + from, Structure::General);
    }
  });
}

// The product on kernel K: split over `threads` threads where it pays (split_gemm), else
// on the calling thread.
template <class K>
void run_own(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const float* a, size_t lda, const float* b,
             size_t ldb, float* c, size_t ldc, GemmInit init, const float* bias, Structure structure, int threads) {
  if (threads > 1 && structure == Structure::General && m * n * k >= kMinSplitWork) {
    split_gemm<K>(threads, ta, tb, m, n, k, alpha, a, lda, b, ldb, c, ldc, init, bias);
  } else {
    own_gemm<K>(ta, tb, m, n, k, alpha, a, lda, b, ldb, c, ldc, init, bias, structure);
  }
}

#endif  // MLX_GPT_OWN_GEMM

}  // namespace

bool path_available(GemmPath path) {
  switch (path) {
    case GemmPath::Avx512:
      return MLX_GPT_OWN_GEMM && cpu_has_avx512();
    case GemmPath::Avx2:
      return MLX_GPT_OWN_GEMM && cpu_has_avx2_fma();
    case GemmPath::Blas:
      return sgemm != nullptr;
  }
  return false;
}

GemmPath gemm_path() {
  static const GemmPath path = path_available(GemmPath::Avx512) ? GemmPath::Avx512
                               : path_available(GemmPath::Avx2) ? GemmPath::Avx2
                                                                : GemmPath::Blas;
  return path;
}

bool own_gemm_active() { return gemm_path() != GemmPath::Blas; }

void gemm_on(GemmPath path, bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const float* a, size_t lda,
             const float* b, size_t ldb, float* c, size_t ldc, GemmInit init, const float* bias, Structure structure,
             int threads) {
  if (m == 0 || n == 0) {
    return;
  }
#if MLX_GPT_OWN_GEMM
  if (path == GemmPath::Avx512) {
    run_own<gemm_avx512::Kernel>(ta, tb, m, n, k, alpha, a, lda, b, ldb, c, ldc, init, bias, structure, threads);
    return;
  }
  if (path == GemmPath::Avx2) {
    run_own<gemm_avx2::Kernel>(ta, tb, m, n, k, alpha, a, lda, b, ldb, c, ldc, init, bias, structure, threads);
    return;
  }
#endif
  blas_gemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, c, ldc, init, bias);
}

void gemm(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const float* a, size_t lda, const float* b,
          size_t ldb, float* c, size_t ldc, GemmInit init, const float* bias, Structure structure, int threads) {
  gemm_on(gemm_path(), ta, tb, m, n, k, alpha, a, lda, b, ldb, c, ldc, init, bias, structure, threads);
}

}  // namespace mlx_gpt

// Which kernel runs the products here (GemmPath's value: 0 the BLAS, 1 AVX2, 2 AVX-512);
// for `mlx-gpt info`.
extern "C" int mlx_gpt_gemm_path() { return static_cast<int>(mlx_gpt::gemm_path()); }

// For the tests (src/cpu/gemm.rs): C = alpha·op(A)·op(B) [+ C | + bias] on the given path
// (GemmPath's value), so that an AVX-512 CPU tests the AVX2 kernel too. `init` and
// `structure` are GemmInit's and Structure's values. False, with C untouched, where this
// CPU or build has no such path or the arguments name none.
extern "C" bool mlx_gpt_gemm_on_path(int path, bool ta, bool tb, size_t m, size_t n, size_t k, float alpha,
                                     const float* a, size_t lda, const float* b, size_t ldb, float* c, size_t ldc,
                                     int init, const float* bias, int structure, int threads) {
  using mlx_gpt::GemmInit;
  using mlx_gpt::GemmPath;
  using mlx_gpt::Structure;
  if (path < 0 || path > 2 || init < 0 || init > 2 || structure < 0 || structure > 3 ||
      !mlx_gpt::path_available(static_cast<GemmPath>(path))) {
    return false;
  }
  mlx_gpt::gemm_on(static_cast<GemmPath>(path), ta, tb, m, n, k, alpha, a, lda, b, ldb, c, ldc,
                   static_cast<GemmInit>(init), bias, static_cast<Structure>(structure), threads);
  return true;
}
