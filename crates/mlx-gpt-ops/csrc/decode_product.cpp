// Products of a few rows by a weight matrix, for decoding: x (R, K) · W with R at most
// a batch of decoded tokens (src/cpu/matvec.rs: MAX_ROWS), W float32 or bfloat16.
//
// MLX's CPU matmul calls `sgemm`, and OpenBLAS's `sgemm` first copies ("packs") the whole
// weight matrix into its own layout: for a matrix read once per token that copy costs
// more than the product. Decoding is bound by reading the weights (GPT-2 124M in float32
// is about 500 MB per token), so this kernel reads each weight once, straight from where
// it lies, and does all R rows' arithmetic on it while it is in registers; with bfloat16
// weights it reads half the bytes and widens them to float32 in registers (products and
// sums stay float32). W is (K, N) or (N, K) in memory, whichever way it lies (a weight
// laid out for decoding is a column-major (K, N) view of (N, K) memory, src/layout.rs):
// the kernels walk it in memory order. The work is split into one part per thread of a
// persistent pool (csrc/pool.h), each reading its own contiguous stretch of W: one core
// cannot read memory as fast as two.
//
// As an MLX primitive the product stays in the lazy graph and runs on the stream's
// worker thread like MLX's own kernels, so a decoded token is still a single `eval`.
//
// The C entry point follows mlx-c's conventions (mlx_array in and out, 0 on success) and
// uses mlx-c's private header to convert between `mlx_array` and `mlx::core::array`.

#include <mlx/mlx.h>
#include <mlx/primitives.h>

#include "mlx/c/private/array.h"

#include "decode_kernels.h"
#include "entry.h"
#include "pool.h"
#include "primitive.h"
#include "vector.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace mx = mlx::core;

namespace {

// Sixteen floats as one value: GCC's vector extension, which each feature level's copy
// (csrc/vector.h) compiles to one AVX-512 register, two AVX2 registers or four SSE ones.
// Written this way, the sums below stay in registers: the same loops over plain arrays
// were vectorised with the sums in memory, a load and a store per multiply-add.
// (Only inlined helpers take or return them, so GCC's note that passing 64-byte vectors
// by value differs between feature levels does not apply.)
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float f32x16 __attribute__((vector_size(64), aligned(4)));
typedef uint32_t u32x16 __attribute__((vector_size(64), aligned(4)));
typedef int32_t i32x16 __attribute__((vector_size(64)));

MLX_GPT_INLINE f32x16 load16(const float* p) {
  f32x16 v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
MLX_GPT_INLINE void store16(float* p, const f32x16& v) {
  __builtin_memcpy(p, &v, sizeof(v));
}

// Thirty-two bfloat16 weights as float32: those at even positions and those at odd ones.
// Two neighbours share one 32-bit lane, the even one in its low half (little-endian):
// shifting the lane left by 16 gives it as a float32 (bfloat16 is float32's upper half),
// and clearing the low half gives the odd one. Only 32-bit lane operations, which every
// vector unit has; widening 16-bit lanes one by one (__builtin_convertvector) compiled to
// scalar code.
MLX_GPT_INLINE void load32_pairs(const uint16_t* p, f32x16& even, f32x16& odd) {
  u32x16 v;
  __builtin_memcpy(&v, p, sizeof(v));
  even = reinterpret_cast<f32x16>(v << 16);
  odd = reinterpret_cast<f32x16>(v & 0xFFFF0000u);
}

// Lane indices into two vectors (a: 0..15, b: 16..31) that split 32 consecutive floats
// into their even and odd positions, and that interleave them back.
constexpr i32x16 kEven = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
constexpr i32x16 kOdd = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
constexpr i32x16 kLow = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23};
constexpr i32x16 kHigh = {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};

// One weight as float32.
MLX_GPT_INLINE float widen(float w) {
  return w;
}
MLX_GPT_INLINE float widen(uint16_t w) {
  return mlx_gpt::bf16_to_float(w);
}

// The sum of the sixteen lanes, halving: 4 shuffles and 4 adds.
MLX_GPT_INLINE float lane_sum(const f32x16& sums) {
  f32x16 v = sums;
  v += __builtin_shuffle(v, i32x16{8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15});
  v += __builtin_shuffle(v, i32x16{4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7});
  v += __builtin_shuffle(v, i32x16{2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3});
  v += __builtin_shuffle(v, i32x16{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1});
  return v[0];
}

// Rows of W taken together in the (K, N) kernel: each pass over a tile of columns walks
// this many rows side by side, which the prefetchers follow as that many sequential
// streams, and keeps the tile's sums in registers between them.
constexpr int kRowBlock = 16;

// How far ahead (in weights) the kernels reading W in memory order ask for the weights
// they will read: on this project's machines the hardware prefetchers alone left one
// core reading well below its bandwidth (the bfloat16 head took 10 ms on one core, 6 ms
// with this). rows_by_kn's blocks ask for the next block of rows instead. A prefetch
// never faults, so asking past the end of W is harmless. (2048 measured no better on
// one row and slower on a batch of 8: AMD EPYC Zen 5, docs/performance-history.md.)
constexpr int kPrefetch = 1024;

// Whether the walks of W output by output or one row at a time (rows_by_nk,
// rows_by_nk_bf16, add_row) ask for it as non-temporal (prefetchnta) rather than into
// every cache level: on AMD CPUs. A weight is read once a token and 500 MB pass before it
// is read again, so keeping it in the outer caches only pushes out what a token reads
// again soon, the KV cache and the activations (alternating, 16 rounds each: float32
// decoding 93.0 -> 95.3 % of the bandwidth floor, bfloat16 no different; AMD EPYC Zen 5,
// docs/performance-history.md). On Intel's server cores such a prefetch bypasses the L2
// and its streamer, which leaves one core's reads in flight to the first-level cache's
// dozen or so fill buffers: not measured here, so those keep the ordinary prefetch.
bool weights_non_temporal() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool amd = [] {
    __builtin_cpu_init();
    return __builtin_cpu_is("amd") != 0;
  }();
  return amd;
#else
  return false;
#endif
}

MLX_GPT_INLINE void prefetch_weights(const void* p, bool non_temporal) {
  if (non_temporal) {
    __builtin_prefetch(p, 0, 0);
  } else {
    __builtin_prefetch(p);
  }
}

// Columns [n, N) of rows_by_kn's block of rows [k0, k1), one at a time.
template <typename WT, int R>
MLX_GPT_INLINE void kn_columns(const float* x, int K, const WT* w, int N, int k0, int k1, int n, bool first,
                               const float* bias, float* y) {
  for (; n < N; ++n) {
    for (int r = 0; r < R; ++r) {
      float a = !first ? y[static_cast<size_t>(r) * N + n] : (bias ? bias[n] : 0.0f);
      for (int k = k0; k < k1; ++k) {
        a += x[static_cast<size_t>(r) * K + k] * widen(w[static_cast<size_t>(k) * N + n]);
      }
      y[static_cast<size_t>(r) * N + n] = a;
    }
  }
}

// y[r, :] = init + Σ_{k in [k_begin, k_end)} x[r, k] · W[k, :] for R rows, W (K, N)
// row-major, init the bias (or zero). Blocks of kRowBlock rows of W, each walked in tiles
// of V vectors of 16 columns: R·V sums in registers (at most 8 vectors: AVX2 has 16
// registers of half the width), each weight widened once and used R times. The rows a
// call reads are one contiguous stretch of memory.
template <typename WT, int R>
MLX_GPT_INLINE void rows_by_kn(const float* x, int K, const WT* w, int N, int k_begin, int k_end, const float* bias,
                               float* y) {
  constexpr int V = R >= 8 ? 1 : (R >= 4 ? 2 : 4);
  constexpr int T = 16 * V;
  for (int k0 = k_begin; k0 < k_end; k0 += kRowBlock) {
    const int k1 = std::min(k_end, k0 + kRowBlock);
    const bool first = k0 == k_begin;
    int n = 0;
    for (; n + T <= N; n += T) {
      f32x16 acc[R][V];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
        for (int j = 0; j < V; ++j) {
          acc[r][j] = !first ? load16(y + static_cast<size_t>(r) * N + n + 16 * j)
                             : (bias ? load16(bias + n + 16 * j) : f32x16{});
        }
      }
      for (int k = k0; k < k1; ++k) {
        const WT* wk = w + static_cast<size_t>(k) * N + n;
        f32x16 wv[V];
#pragma GCC unroll 4
        for (int j = 0; j < V; ++j) {
          __builtin_prefetch(wk + static_cast<size_t>(kRowBlock) * N + 16 * j);  // the next block's
          wv[j] = load16(wk + 16 * j);
        }
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const f32x16 xv = f32x16{} + x[static_cast<size_t>(r) * K + k];
#pragma GCC unroll 4
          for (int j = 0; j < V; ++j) {
            acc[r][j] += xv * wv[j];
          }
        }
      }
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
        for (int j = 0; j < V; ++j) {
          store16(y + static_cast<size_t>(r) * N + n + 16 * j, acc[r][j]);
        }
      }
    }
    kn_columns<WT, R>(x, K, w, N, k0, k1, n, first, bias, y);  // the columns left over
  }
}

// Vectors of L floats for decoding's one-row kernels (rows_by_nk, rows_by_nk_bf16,
// add_row_bf16): 16 (one AVX-512 register) where the CPU has AVX-512, else 8 (one AVX2
// register); both are compiled into every per-feature-level copy. In the x86-64-v3 copy
// GCC 12 splits a 16-float vector into two halves but carries sums of them from one
// iteration to the next through the stack: float32 decoding ran at 42 % of the bandwidth
// floor on an AVX2 CPU (docs/performance-history.md, "An AVX2 kernel for the GEMM"),
// bfloat16 at 19 % of its own. Lanes<16> is the code as it was. The 8-float vectors are
// loaded through a may_alias type rather than memcpy, which that copy's tuning (split
// unaligned 32-byte loads) also sent through the stack.
template <int L>
struct Lanes;

// Whether the one-row kernels take 16 floats: on x86 where the CPU has AVX-512; on other
// CPUs (Arm's NEON, built with Clang, which keeps wide vectors in registers) as they did
// before the width became a choice.
bool wide_lanes() {
#if defined(__x86_64__)
  return mlx_gpt::cpu_has_avx512();
#else
  return true;
#endif
}

template <>
struct Lanes<16> {
  using V = f32x16;
  static MLX_GPT_INLINE V load(const float* p) { return load16(p); }
  static MLX_GPT_INLINE void load_pairs(const uint16_t* p, V& even, V& odd) { load32_pairs(p, even, odd); }
  static MLX_GPT_INLINE float sum(const V& v) { return lane_sum(v); }
};
template <>
struct Lanes<8> {
  typedef float V __attribute__((vector_size(32)));
  typedef float Unaligned __attribute__((vector_size(32), aligned(4), may_alias));
  typedef int32_t Index __attribute__((vector_size(32)));
  typedef uint32_t Pairs __attribute__((vector_size(32)));
  typedef uint32_t UnalignedPairs __attribute__((vector_size(32), aligned(2), may_alias));
  static MLX_GPT_INLINE V load(const float* p) { return *reinterpret_cast<const Unaligned*>(p); }
  static MLX_GPT_INLINE void store(float* p, const V& v) { *reinterpret_cast<Unaligned*>(p) = v; }
  // Sixteen bfloat16 weights as float32, as load32_pairs.
  static MLX_GPT_INLINE void load_pairs(const uint16_t* p, V& even, V& odd) {
    const Pairs v = *reinterpret_cast<const UnalignedPairs*>(p);
    even = reinterpret_cast<V>(v << 16);
    odd = reinterpret_cast<V>(v & 0xFFFF0000u);
  }
  // Halving, as lane_sum: 3 shuffles and 3 adds.
  static MLX_GPT_INLINE float sum(const V& sums) {
    V v = sums;
    v += __builtin_shuffle(v, Index{4, 5, 6, 7, 4, 5, 6, 7});
    v += __builtin_shuffle(v, Index{2, 3, 2, 3, 2, 3, 2, 3});
    v += __builtin_shuffle(v, Index{1, 1, 1, 1, 1, 1, 1, 1});
    return v[0];
  }
};

// y[r, n] = bias + Σ_k W[n, k] · x[r, k] for n in [n0, n1), R rows, W (N, K) row-major
// float32 (the tied head reads wte (V, C) this way), in vectors of L lanes: one output at
// a time, its R dot products in registers, each weight used R times. W is read in memory
// order, one sequential stream per thread: four outputs side by side (four streams) took
// the head a third longer (AMD EPYC Zen 5, docs/performance-history.md).
template <int L, int R>
MLX_GPT_INLINE void rows_by_nk(const float* x, int K, const float* w, int N, int n0, int n1, const float* bias,
                               float* y) {
  using V = typename Lanes<L>::V;
  // One row's sum alone would be one chain of dependent multiply-adds, each waiting for
  // the one before (4 cycles): two sums of 16 lanes, over alternate vectors, halve the
  // chain (one row read 5-7 % faster; AMD EPYC Zen 5, docs/performance-history.md).
  // Several rows are several chains already. With 8 lanes, twice the sums: the same
  // floats a step.
  constexpr int S = (R == 1 ? 2 : 1) * (16 / L);
  const bool nta = weights_non_temporal();
  for (int n = n0; n < n1; ++n) {
    const float* wn = w + static_cast<size_t>(n) * K;
    V acc[S][R] = {};
    int k = 0;
    for (; k + L * S <= K; k += L * S) {
#pragma GCC unroll 4
      for (int s = 0; s < S; ++s) {
        if (L * s % 16 == 0) {
          prefetch_weights(wn + k + L * s + kPrefetch, nta);
        }
        const V wv = Lanes<L>::load(wn + k + L * s);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          acc[s][r] += wv * Lanes<L>::load(x + static_cast<size_t>(r) * K + k + L * s);
        }
      }
    }
    for (; k + L <= K; k += L) {
      const V wv = Lanes<L>::load(wn + k);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        acc[0][r] += wv * Lanes<L>::load(x + static_cast<size_t>(r) * K + k);
      }
    }
    for (int r = 0; r < R; ++r) {
      float tail = 0.0f;
      for (int kk = k; kk < K; ++kk) {
        tail += wn[kk] * x[static_cast<size_t>(r) * K + kk];
      }
      V sum = acc[0][r];
      for (int s = 1; s < S; ++s) {
        sum += acc[s][r];
      }
      y[static_cast<size_t>(r) * N + n] = (bias ? bias[n] : 0.0f) + Lanes<L>::sum(sum) + tail;
    }
  }
}

// rows_by_kn for bfloat16 W: tiles of V pairs of vectors (32 columns each), the sums of
// the even and of the odd columns apart, split and interleaved only where a block of rows
// begins and ends. Each column's sum takes the same steps as in rows_by_kn.
template <int R>
MLX_GPT_INLINE void rows_by_kn_bf16(const float* x, int K, const uint16_t* w, int N, int k_begin, int k_end,
                                    const float* bias, float* y) {
  constexpr int V = R >= 4 ? 1 : (R >= 2 ? 2 : 4);
  constexpr int T = 32 * V;
  for (int k0 = k_begin; k0 < k_end; k0 += kRowBlock) {
    const int k1 = std::min(k_end, k0 + kRowBlock);
    const bool first = k0 == k_begin;
    int n = 0;
    for (; n + T <= N; n += T) {
      f32x16 ev[R][V], od[R][V];
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
        for (int j = 0; j < V; ++j) {
          const float* from = !first ? y + static_cast<size_t>(r) * N + n + 32 * j : (bias ? bias + n + 32 * j : nullptr);
          const f32x16 a = from ? load16(from) : f32x16{}, b = from ? load16(from + 16) : f32x16{};
          ev[r][j] = __builtin_shuffle(a, b, kEven);
          od[r][j] = __builtin_shuffle(a, b, kOdd);
        }
      }
      for (int k = k0; k < k1; ++k) {
        const uint16_t* wk = w + static_cast<size_t>(k) * N + n;
        f32x16 we[V], wo[V];
#pragma GCC unroll 4
        for (int j = 0; j < V; ++j) {
          __builtin_prefetch(wk + static_cast<size_t>(kRowBlock) * N + 32 * j);  // the next block's
          load32_pairs(wk + 32 * j, we[j], wo[j]);
        }
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const f32x16 xv = f32x16{} + x[static_cast<size_t>(r) * K + k];
#pragma GCC unroll 4
          for (int j = 0; j < V; ++j) {
            ev[r][j] += xv * we[j];
            od[r][j] += xv * wo[j];
          }
        }
      }
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
        for (int j = 0; j < V; ++j) {
          float* to = y + static_cast<size_t>(r) * N + n + 32 * j;
          store16(to, __builtin_shuffle(ev[r][j], od[r][j], kLow));
          store16(to + 16, __builtin_shuffle(ev[r][j], od[r][j], kHigh));
        }
      }
    }
    kn_columns<uint16_t, R>(x, K, w, N, k0, k1, n, first, bias, y);  // the columns left over
  }
}

// x (R, K) rearranged for rows_by_nk_bf16: in each whole block of 32 values, the 16 at
// even positions, then the 16 at odd ones; the values after the last whole block as
// they are.
inline void split_pairs(const float* x, int rows, int K, float* xs) {
  for (int r = 0; r < rows; ++r) {
    const float* from = x + static_cast<size_t>(r) * K;
    float* to = xs + static_cast<size_t>(r) * K;
    int k = 0;
    for (; k + 32 <= K; k += 32) {
      for (int i = 0; i < 16; ++i) {
        to[k + i] = from[k + 2 * i];
        to[k + 16 + i] = from[k + 2 * i + 1];
      }
    }
    for (; k < K; ++k) {
      to[k] = from[k];
    }
  }
}

// rows_by_nk for bfloat16 W, with xs = x split by split_pairs: the even weights meet the
// even values, the odd the odd; in vectors of L floats (see Lanes), each block of 32
// weights as 16 / L loads of 2L.
template <int L, int R>
MLX_GPT_INLINE void rows_by_nk_bf16(const float* xs, int K, const uint16_t* w, int N, int n0, int n1,
                                    const float* bias, float* y) {
  using V = typename Lanes<L>::V;
  constexpr int H = 16 / L;
  auto tail = [&](int n, int r, int k) {
    float a = 0.0f;
    for (int kk = k; kk < K; ++kk) {
      a += widen(w[static_cast<size_t>(n) * K + kk]) * xs[static_cast<size_t>(r) * K + kk];
    }
    return a;
  };
  // One output at a time, the even and the odd products in sums of their own: two
  // independent chains of multiply-adds per row. (Several outputs at a time, as
  // rows_by_nk does, measured slower here.) With 8 lanes and one row, a pair of sums per
  // half block: four chains, as the 16-lane loop's two chains do twice the work a step.
  constexpr int A = R == 1 ? H : 1;
  const bool nta = weights_non_temporal();
  int n = n0;
  for (; n < n1; ++n) {
    V even[A][R] = {}, odd[A][R] = {};
    const uint16_t* wn = w + static_cast<size_t>(n) * K;
    int k = 0;
    for (; k + 32 <= K; k += 32) {
      prefetch_weights(wn + k + kPrefetch, nta);
#pragma GCC unroll 2
      for (int h = 0; h < H; ++h) {
        V we, wo;
        Lanes<L>::load_pairs(wn + k + 2 * L * h, we, wo);
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
          const float* xr = xs + static_cast<size_t>(r) * K + k;
          even[h % A][r] += we * Lanes<L>::load(xr + L * h);
          odd[h % A][r] += wo * Lanes<L>::load(xr + 16 + L * h);
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      V sum = even[0][r] + odd[0][r];
      for (int a = 1; a < A; ++a) {
        sum += even[a][r] + odd[a][r];
      }
      y[static_cast<size_t>(r) * N + n] = (bias ? bias[n] : 0.0f) + Lanes<L>::sum(sum) + tail(n, r, k);
    }
  }
}

// Asks for p[begin, end) at once, a cache line at a time. Before a kernel walks W (K, N):
// x, written by the thread that ran the step before (often on another core), which the
// walk needs a new line of only every sixteen rows of W, so each line would otherwise
// arrive late, one at a time, with the multiply-adds of its rows waiting on it; and the
// first kPrefetch weights, which the walk's own prefetches never ask for.
template <typename T>
MLX_GPT_INLINE void prefetch_range(const T* p, size_t begin, size_t end) {
  for (size_t i = begin; i < end; i += 64 / sizeof(T)) {
    __builtin_prefetch(p + i);
  }
}

// y += xk · wk for one row wk of W (K, N), in float32 ...
MLX_GPT_INLINE void add_row(float* y, const float* wk, float xk, int N, bool nta) {
  const f32x16 xv = f32x16{} + xk;
  int n = 0;
#pragma GCC unroll 4
  for (; n + 16 <= N; n += 16) {
    prefetch_weights(wk + n + kPrefetch, nta);
    store16(y + n, load16(y + n) + xv * load16(wk + n));
  }
  for (; n < N; ++n) {
    y[n] += xk * wk[n];
  }
}

// ... and in bfloat16, in vectors of L floats (see Lanes). With 16: 32 columns at a time,
// their sums split into the even and the odd columns around the multiply-adds (as in
// rows_by_kn_bf16). With 8: 16 columns at a time, the even and the odd products
// interleaved back into column order and added to y as it lies (two-input shuffles of
// 16-float vectors compiled to code through the stack in the x86-64-v3 copy: bfloat16
// decoding ran at 19 % of its floor on an AVX2 CPU). Either way each column gets
// y + xk·w, so the results are the same.
template <int L>
MLX_GPT_INLINE void add_row_bf16(float* y, const uint16_t* wk, float xk, int N, bool nta) {
  int n = 0;
  if constexpr (L == 16) {
    const f32x16 xv = f32x16{} + xk;
#pragma GCC unroll 2
    for (; n + 32 <= N; n += 32) {
      prefetch_weights(wk + n + kPrefetch, nta);
      f32x16 we, wo;
      load32_pairs(wk + n, we, wo);
      const f32x16 a = load16(y + n), b = load16(y + n + 16);
      const f32x16 ev = __builtin_shuffle(a, b, kEven) + xv * we, od = __builtin_shuffle(a, b, kOdd) + xv * wo;
      store16(y + n, __builtin_shuffle(ev, od, kLow));
      store16(y + n + 16, __builtin_shuffle(ev, od, kHigh));
    }
  } else {
    using V = typename Lanes<8>::V;
    using Index = typename Lanes<8>::Index;
    const V xv = V{} + xk;
#pragma GCC unroll 2
    for (; n + 16 <= N; n += 16) {
      if (n % 32 == 0) {
        prefetch_weights(wk + n + kPrefetch, nta);
      }
      V we, wo;
      Lanes<8>::load_pairs(wk + n, we, wo);
      const V pe = xv * we, po = xv * wo;
      Lanes<8>::store(y + n, Lanes<8>::load(y + n) + __builtin_shuffle(pe, po, Index{0, 8, 1, 9, 2, 10, 3, 11}));
      Lanes<8>::store(y + n + 8,
                      Lanes<8>::load(y + n + 8) + __builtin_shuffle(pe, po, Index{4, 12, 5, 13, 6, 14, 7, 15}));
    }
  }
  for (; n < N; ++n) {
    y[n] += xk * widen(wk[n]);
  }
}

// y += Σ_{k in [k_begin, k_end)} x[k] · W[k, :] for bfloat16 W (K, N), row after row.
template <int L>
MLX_GPT_INLINE void add_rows_bf16(float* y, const uint16_t* w, const float* x, int N, int k_begin, int k_end,
                                  bool nta) {
  for (int k = k_begin; k < k_end; ++k) {
    add_row_bf16<L>(y, w + static_cast<size_t>(k) * N, x[k], N, nta);
  }
}

// rows_by_kn for a single row (a batch of one, decoding's common case): W's rows one
// after the other in memory order, y (N sums, a few KiB) staying in the first-level cache
// between them, so each thread reads one sequential stream. Each column's sum takes the
// same steps as in rows_by_kn (the bias, then k upwards), so the results are the same to
// the bit. rows_by_kn's blocks of sixteen rows side by side (sixteen streams) measured
// 3-7 % slower for one row (AMD EPYC Zen 5, docs/performance-history.md).
template <typename WT>
MLX_GPT_INLINE void row_by_kn(const float* x, const WT* w, int N, int k_begin, int k_end, const float* bias,
                              float* y) {
  prefetch_range(x, k_begin, k_end);
  prefetch_range(w + static_cast<size_t>(k_begin) * N, 0, kPrefetch);
  for (int n = 0; n < N; ++n) {
    y[n] = bias ? bias[n] : 0.0f;
  }
  const bool nta = weights_non_temporal();
  if constexpr (std::is_same_v<WT, uint16_t>) {
    // Both widths built into every copy; the CPU picks (see add_row_bf16).
    if (wide_lanes()) {
      add_rows_bf16<16>(y, w, x, N, k_begin, k_end, nta);
    } else {
      add_rows_bf16<8>(y, w, x, N, k_begin, k_end, nta);
    }
  } else {
    for (int k = k_begin; k < k_end; ++k) {
      add_row(y, w + static_cast<size_t>(k) * N, x[k], N, nta);
    }
  }
}

template <typename WT, int R>
MLX_GPT_INLINE void rows_group(bool w_transposed, const float* x, int K, const WT* w, int N, int n0, int n1,
                               const float* bias, float* y) {
  if (w_transposed) {
    if constexpr (std::is_same_v<WT, uint16_t>) {
      // x split by split_pairs; both widths built into every copy, the CPU picks.
      if (wide_lanes()) {
        rows_by_nk_bf16<16, R>(x, K, w, N, n0, n1, bias, y);
      } else {
        rows_by_nk_bf16<8, R>(x, K, w, N, n0, n1, bias, y);
      }
    } else {
      // Both widths are built into every copy of rows_by_f32; the CPU picks.
      if (wide_lanes()) {
        rows_by_nk<16, R>(x, K, w, N, n0, n1, bias, y);
      } else {
        rows_by_nk<8, R>(x, K, w, N, n0, n1, bias, y);
      }
    }
  } else if constexpr (R == 1) {
    row_by_kn(x, w, N, n0, n1, bias, y);
  } else if constexpr (std::is_same_v<WT, uint16_t>) {
    rows_by_kn_bf16<R>(x, K, w, N, n0, n1, bias, y);
  } else {
    rows_by_kn<WT, R>(x, K, w, N, n0, n1, bias, y);
  }
}

// y[i] += a[i]
inline void add_to(float* y, const float* a, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    y[i] += a[i];
  }
}

// Calls group.template operator()<R>(r) for rows [r, r + R) in groups of R = 8, 4, 2
// and 1, largest first.
template <typename F>
MLX_GPT_INLINE void for_row_groups(int rows, F&& group) {
  for (int r = 0; r < rows;) {
    const int left = rows - r;
    if (left >= 8) {
      group.template operator()<8>(r);
      r += 8;
    } else if (left >= 4) {
      group.template operator()<4>(r);
      r += 4;
    } else if (left >= 2) {
      group.template operator()<2>(r);
      r += 2;
    } else {
      group.template operator()<1>(r);
      r += 1;
    }
  }
}

// The rows in groups of 8, 4, 2 and 1 (each group reads W once). [p0, p1) is the range
// this call covers: of K (W's rows) for W (K, N), of N (the outputs) for W (N, K).
template <typename WT>
MLX_GPT_INLINE void rows_by(bool w_transposed, const float* x, int rows, int K, const WT* w, int N, int n0, int n1,
                            const float* bias, float* y) {
  for_row_groups(rows, [&]<int R>(int r) {
    rows_group<WT, R>(w_transposed, x + static_cast<size_t>(r) * K, K, w, N, n0, n1, bias,
                      y + static_cast<size_t>(r) * N);
  });
}

// One copy per CPU feature level (csrc/vector.h), the templates above inlined into each.
MLX_GPT_CLONES void rows_by_f32(bool tr, const float* x, int rows, int K, const float* w, int N, int n0, int n1,
                                const float* bias, float* y) {
  rows_by(tr, x, rows, K, w, N, n0, n1, bias, y);
}
MLX_GPT_CLONES void rows_by_bf16(bool tr, const float* x, int rows, int K, const uint16_t* w, int N, int n0, int n1,
                                 const float* bias, float* y) {
  rows_by(tr, x, rows, K, w, N, n0, n1, bias, y);
}

// out (..., N) = x (..., K) · w + bias: w is (K, N), or (N, K) used transposed; float32
// or bfloat16, row-major or column-major (the kernels walk W as it lies in memory). Split
// into `parts` ranges of outputs, one per thread.
class DecodeProduct : public mlx_gpt::CpuPrimitive {
 public:
  DecodeProduct(mx::Stream stream, bool w_transposed, int parts)
      : mlx_gpt::CpuPrimitive(stream), w_transposed_(w_transposed), parts_(parts) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const mx::array& x = inputs[0];
    const mx::array& w = inputs[1];
    auto& encoder = mlx_gpt::prepare(stream(), inputs, outputs);
    const int rows_w = w.shape(0), cols_w = w.shape(1);
    const int k = w_transposed_ ? cols_w : rows_w;
    const int n = w_transposed_ ? rows_w : cols_w;
    const int rows = static_cast<int>(x.size() / k);
    const float* xp = x.data<float>();
    const void* wp = w.data<void>();
    const bool bf16 = w.dtype() == mx::bfloat16;
    const float* bp = inputs.size() > 2 ? inputs[2].data<float>() : nullptr;
    float* yp = outputs[0].data<float>();
    // W's memory holds (N, K) rows when it is used transposed or stored column-major
    // (not both: then it holds (K, N)).
    const bool tr = w_transposed_ != mlx_gpt::column_major(w);
    const int parts = parts_;
    encoder.dispatch([=]() { mlx_gpt::decode_product(tr, xp, rows, k, wp, bf16, n, bp, yp, parts); });
  }

  const char* name() const override {
    return "DecodeProduct";
  }

  bool is_equivalent(const mx::Primitive& other) const override {
    auto& o = static_cast<const DecodeProduct&>(other);
    return w_transposed_ == o.w_transposed_ && parts_ == o.parts_;
  }

 private:
  bool w_transposed_;
  int parts_;
};

}  // namespace

void mlx_gpt::decode_product(bool tr, const float* xp, int rows, int k, const void* wp, bool bf16, int n,
                             const float* bp, float* yp, int requested_parts) {
  // Each thread reads one contiguous stretch of W: for W (N, K) a range of outputs
  // (whole cache lines of them; see below for its last quarter), for W (K, N) a range of
  // W's rows, whose partial sums (all N outputs) the first thread's add up at the end.
  // Threads that read next to each other's rows measured slower than each reading its
  // own stretch.
  const int extent = tr ? n : k;
  const int parts = std::max(1, std::min({requested_parts, extent / 64, mlx_gpt::Pool::kMaxParts}));
  const int per = (extent / parts + 15) / 16 * 16;
  thread_local std::vector<float> partial, split;
  const size_t out_size = static_cast<size_t>(rows) * n;
  if (!tr && parts > 1) {
    partial.resize(out_size * (parts - 1));
  }
  float* scratch = partial.data();
  const float* xin = xp;
  if (bf16 && tr) {
    split.resize(static_cast<size_t>(rows) * k);
    split_pairs(xp, rows, k, split.data());
    xin = split.data();
  }
  auto stretch = [&](int part) {
    const int p0 = std::min(extent, part * per);
    return std::make_pair(p0, part + 1 == parts ? extent : std::min(extent, p0 + per));
  };
  if (tr) {
    // The outputs are independent, so the threads need not wait for the slowest: each
    // takes the first three quarters of its stretch alone and the last quarter in chunks
    // (whole cache lines of outputs) that a thread done with its own may take instead.
    // On the 2-vCPU machines one thread often read 5-15 % slower than the other in a
    // product, which of the two changing within seconds (docs/performance-history.md).
    // Each output is the same dot product whichever thread computes it.
    constexpr int kMax = mlx_gpt::Pool::kMaxParts;
    std::atomic<int> next[kMax];  // the next chunk of each stretch's last quarter
    int zone_begin[kMax], zone_end[kMax], chunk[kMax];
    for (int part = 0; part < parts; ++part) {
      const auto [p0, p1] = stretch(part);
      zone_begin[part] = p0 + (p1 - p0) * 3 / 4 / 16 * 16;
      zone_end[part] = p1;
      chunk[part] = std::max(16, (p1 - zone_begin[part]) / 8 / 16 * 16);
      next[part].store(zone_begin[part], std::memory_order_relaxed);
    }
    mlx_gpt::Pool::run(parts, [&](int part) {
      auto outputs = [&](int n0, int n1) {
        if (bf16) {
          rows_by_bf16(true, xin, rows, k, static_cast<const uint16_t*>(wp), n, n0, n1, bp, yp);
        } else {
          rows_by_f32(true, xp, rows, k, static_cast<const float*>(wp), n, n0, n1, bp, yp);
        }
      };
      outputs(stretch(part).first, zone_begin[part]);
      // Its own chunks, then the others'.
      for (int i = 0; i < parts; ++i) {
        const int z = (part + i) % parts;
        for (int c; (c = next[z].fetch_add(chunk[z], std::memory_order_relaxed)) < zone_end[z];) {
          outputs(c, std::min(c + chunk[z], zone_end[z]));
        }
      }
    });
    return;
  }
  mlx_gpt::Pool::run(parts, [&](int part) {
    const auto [p0, p1] = stretch(part);
    // Part 0 writes the output (with the bias); the others their partial sums.
    float* out = part == 0 ? yp : scratch + out_size * (part - 1);
    const float* b = part == 0 ? bp : nullptr;
    if (p0 >= p1) {
      std::fill(out, out + out_size, 0.0f);
    } else if (bf16) {
      rows_by_bf16(false, xp, rows, k, static_cast<const uint16_t*>(wp), n, p0, p1, b, out);
    } else {
      rows_by_f32(false, xp, rows, k, static_cast<const float*>(wp), n, p0, p1, b, out);
    }
  });
  for (int part = 1; part < parts; ++part) {
    add_to(yp, scratch + out_size * (part - 1), out_size);
  }
}

namespace {

// rows_by_nk (float32 W) or rows_by_nk_bf16 (bfloat16 W, x split by split_pairs first)
// over `rows` rows, in groups of 8, 4, 2 and 1 (for_row_groups), in vectors of `lanes` (8 or
// 16) floats, whichever this CPU would take: for the tests, so that an AVX-512 CPU checks
// the 8-float path too.
MLX_GPT_CLONES void rows_by_nk_lanes(int lanes, const float* x, int rows, int K, const void* w, bool bf16, int N,
                                     const float* bias, float* y) {
  std::vector<float> split;
  if (bf16) {
    split.resize(static_cast<size_t>(rows) * K);
    split_pairs(x, rows, K, split.data());
    x = split.data();
  }
  const auto* w32 = static_cast<const float*>(w);
  const auto* w16 = static_cast<const uint16_t*>(w);
  for_row_groups(rows, [&]<int R>(int r) {
    const float* xr = x + static_cast<size_t>(r) * K;
    float* yr = y + static_cast<size_t>(r) * N;
    if (lanes == 16) {
      bf16 ? rows_by_nk_bf16<16, R>(xr, K, w16, N, 0, N, bias, yr) : rows_by_nk<16, R>(xr, K, w32, N, 0, N, bias, yr);
    } else {
      bf16 ? rows_by_nk_bf16<8, R>(xr, K, w16, N, 0, N, bias, yr) : rows_by_nk<8, R>(xr, K, w32, N, 0, N, bias, yr);
    }
  });
}

// y (N) = bias + x (K) · W for one row and bfloat16 W (K, N), through add_rows_bf16 in
// vectors of `lanes` (8 or 16) floats: for the tests.
MLX_GPT_CLONES void add_rows_bf16_lanes(int lanes, const float* x, int K, const uint16_t* w, int N, const float* bias,
                                        float* y) {
  for (int n = 0; n < N; ++n) {
    y[n] = bias ? bias[n] : 0.0f;
  }
  if (lanes == 16) {
    add_rows_bf16<16>(y, w, x, N, 0, K, false);
  } else {
    add_rows_bf16<8>(y, w, x, N, 0, K, false);
  }
}

}  // namespace

extern "C" {

// y (N) = x (K) · W + bias for one row and bfloat16 W (K, N), row after row, in vectors
// of `lanes` floats (8 or 16; false for any other); bias may be null. For the tests.
bool mlx_gpt_decode_add_rows_bf16_for_test(int lanes, const float* x, int K, const uint16_t* w, int N,
                                           const float* bias, float* y) {
  if (lanes != 8 && lanes != 16) {
    return false;
  }
  add_rows_bf16_lanes(lanes, x, K, w, N, bias, y);
  return true;
}

// y (rows, N) = x (rows, K) · Wᵀ + bias for W (N, K), float32 or (bf16) bfloat16, with
// the output-by-output kernels in vectors of `lanes` floats (8 or 16; false for any
// other); bias may be null. For the tests.
bool mlx_gpt_decode_rows_by_nk_for_test(int lanes, const float* x, int rows, int K, const void* w, bool bf16, int N,
                                        const float* bias, float* y) {
  if (lanes != 8 && lanes != 16) {
    return false;
  }
  rows_by_nk_lanes(lanes, x, rows, K, w, bf16, N, bias, y);
  return true;
}

// Whether the decoding product asks for weights ahead as non-temporal here (see
// weights_non_temporal above).
bool mlx_gpt_decode_weights_non_temporal() {
  return weights_non_temporal();
}

// *res = x · w (+ bias): x (..., K) float32; w (K, N), or (N, K) with w_transposed,
// float32 or bfloat16; bias (N,) float32 or an empty mlx_array (ctx null); the work
// split over `threads` threads. On this thread's default CPU stream. w may lie
// column-major (a transposed view: decoding's layout, src/layout.rs). Returns 0; 2 (and
// *res untouched) when the weight or bias is not an evaluated, dense array (the caller
// falls back to MLX's matmul); or 1 with the reason in mlx_gpt_last_error().
int mlx_gpt_decode_product(mlx_array* res, const mlx_array x, const mlx_array w, const mlx_array bias,
                           bool w_transposed, int threads) {
  return mlx_gpt::guarded([&]() {
    const mx::array& xa = mlx_array_get_(x);
    const mx::array& wa = mlx_array_get_(w);
    if (xa.dtype() != mx::float32 || (wa.dtype() != mx::float32 && wa.dtype() != mx::bfloat16) || wa.ndim() != 2 ||
        xa.ndim() == 0) {
      throw std::invalid_argument("[DecodeProduct] needs float32 x (..., K) and a 2-D float32 or bfloat16 weight");
    }
    const int k = w_transposed ? wa.shape(1) : wa.shape(0);
    const int n = w_transposed ? wa.shape(0) : wa.shape(1);
    if (xa.shape(-1) != k) {
      throw std::invalid_argument("[DecodeProduct] x's last dimension does not match the weight");
    }
    // Weights must already be materialised and dense (row- or column-major): the product
    // reads them in place (making a copy per token would cost more than it saves).
    // Otherwise decline.
    if (!wa.is_available() || !(wa.flags().row_contiguous || mlx_gpt::column_major(wa)) ||
        (bias.ctx != nullptr && !mlx_gpt::evaluated_dense(mlx_array_get_(bias)))) {
      return 2;
    }
    auto stream = mx::default_stream(mx::Device::cpu);
    // The activation rows are small: copy them if they are strided.
    std::vector<mx::array> inputs = {mlx_gpt::dense(xa, stream), wa};
    if (bias.ctx != nullptr) {
      const mx::array& ba = mlx_array_get_(bias);
      if (ba.dtype() != mx::float32 || ba.size() != static_cast<size_t>(n)) {
        throw std::invalid_argument("[DecodeProduct] the bias must be float32 of the output's width");
      }
      inputs.push_back(ba);
    }
    mx::Shape shape = xa.shape();
    shape.back() = n;
    mlx_array_set_(*res, mx::array(shape, mx::float32,
                                   std::make_shared<DecodeProduct>(stream, w_transposed, std::max(1, threads)),
                                   inputs));
    return 0;
  });
}

}  // extern "C"
