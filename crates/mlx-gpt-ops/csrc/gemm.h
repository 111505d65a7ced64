// The matrix products of the primitives in csrc/: mlx-gpt's own float32 GEMM for CPUs
// with AVX-512 or AVX2 and FMA (gemm.cpp), and the BLAS MLX calls (blas.h) everywhere
// else.
//
// Why its own: OpenBLAS spends about a third of its time on a small model's products (a
// few hundred rows, 64–512 wide) outside its compute kernel, packing both operands and
// clearing the output before accumulating into it (perf on the baby GPT's step). This
// one packs only op(B) (and Aᵀ, whose rows would thrash L1), reads op(A) where it lies,
// writes each output block once per depth block (up to 768 deep), with the bias or old
// contents added in the same store, and first asks for all of its operands' lines at
// once: in a training step they were written long before and sit in L3, and waiting for
// them one line at a time cost more than the packing did (docs/performance-history.md).
// Large products run here too (gemm.cpp).

#pragma once

#include <cstddef>

namespace mlx_gpt {

// What the product is added to: nothing, the output's old contents, or a bias row
// (n values, broadcast over the rows).
enum class GemmInit { Zero, Accumulate, Bias };

// Zeros a product may skip, for causal attention's T × T matrices (position r attends to
// positions k ≤ r): op(A) lower triangular (op(A)[r, k] = 0 for k > r: P·V), op(A) upper
// triangular (zero for k < r: Pᵀ·dY), or only C's lower triangle wanted (Q·Kᵀ: C[r, j]
// for j > r may be left as it was). The own kernel skips the work of whole register
// tiles that fall in the zeros; the BLAS computes everything, which is as correct.
enum class Structure { General, LowerA, UpperA, LowerC };

// C (m × n, row stride ldc) = alpha · op(A) · op(B) [+ C | + bias], row-major; op(A) is
// m × k (A stored k × m when ta), op(B) is k × n (B stored n × k when tb). Runs on the
// calling thread, or with `threads` > 1 split over that many threads of the persistent
// pool (pool.h; the own kernel, General structure, and a product large enough to pay for
// the hand-over). Throws when neither the own kernel nor a CBLAS is available.
void gemm(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const float* a, size_t lda, const float* b,
          size_t ldb, float* c, size_t ldc, GemmInit init = GemmInit::Zero, const float* bias = nullptr,
          Structure structure = Structure::General, int threads = 1);

// Asks for the lines of a rows × cols block (row stride ld) to be brought towards L2,
// without waiting for them; `write`: for writing (fetched for ownership).
void prefetch_to_l2(const float* p, size_t rows, size_t cols, size_t ld, bool write = false);

// Which kernel runs the products: the BLAS's cblas_sgemm, or the own kernel for CPUs with
// AVX2 and FMA (gemm_avx2.h) or AVX-512 (gemm_avx512.h).
enum class GemmPath { Blas = 0, Avx2 = 1, Avx512 = 2 };

// Whether this CPU and build can run `path` (the BLAS: once a CBLAS was handed over).
bool path_available(GemmPath path);

// The path gemm takes: the widest own kernel the CPU has, else the BLAS (chosen once).
GemmPath gemm_path();

// Whether gemm runs an own kernel: the CPU has AVX2 and FMA, or AVX-512, and the build
// has the kernels (not MLX_GPT_GENERIC_CPU).
bool own_gemm_active();

// gemm on the given path, which must be available (for tests of each kernel).
void gemm_on(GemmPath path, bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const float* a, size_t lda,
             const float* b, size_t ldb, float* c, size_t ldc, GemmInit init, const float* bias, Structure structure,
             int threads);

}  // namespace mlx_gpt
