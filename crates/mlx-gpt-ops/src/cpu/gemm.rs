//! mlx-gpt's own float32 GEMM (csrc/gemm.cpp), which the `Linear` and causal-attention
//! primitives call: which kernel runs their products on this CPU. The CPU decides, once:
//! the 12 × 32 AVX-512 kernel, else the 6 × 16 AVX2 + FMA one, else the BLAS
//! (`cblas_sgemm`). The tests run each kernel the CPU has against a plain product in
//! float64, so an AVX-512 CPU tests the AVX2 kernel too.

use super::ffi;

/// The kernel that runs the products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmPath {
    /// The BLAS MLX calls (a CPU without AVX2, or a `generic-cpu` build).
    Blas,
    /// mlx-gpt's kernel for CPUs with AVX2 and FMA (csrc/gemm_avx2.h).
    Avx2,
    /// mlx-gpt's kernel for CPUs with AVX-512 (csrc/gemm_avx512.h).
    Avx512,
}

/// The kernel that runs the primitives' products on this CPU and build.
pub fn gemm_path() -> GemmPath {
    // SAFETY: reads a value computed once on the C++ side.
    match unsafe { ffi::mlx_gpt_gemm_path() } {
        2 => GemmPath::Avx512,
        1 => GemmPath::Avx2,
        _ => GemmPath::Blas,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the product is added to (csrc/gemm.h's GemmInit).
    #[derive(Clone, Copy, Debug)]
    enum Init {
        Zero = 0,
        Accumulate = 1,
        Bias = 2,
    }

    /// The zeros a product may skip (csrc/gemm.h's Structure).
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Structure {
        General = 0,
        LowerA = 1,
        UpperA = 2,
        LowerC = 3,
    }

    /// One product: op(A) is m × k (A stored k × m when `ta`), op(B) k × n (B stored
    /// n × k when `tb`), each stored row with `pad` floats to spare.
    #[derive(Clone, Debug)]
    struct Case {
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        pad: usize,
        alpha: f32,
        init: Init,
        structure: Structure,
        threads: i32,
        seed: u64,
    }

    fn values(len: usize, seed: u64) -> Vec<f32> {
        // A small LCG: reproducible values in [-1, 1).
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Runs the case on `path`, checks it against float64, and says whether the path ran.
    fn check(path: GemmPath, case: &Case) -> Result<bool, TestCaseError> {
        let Case { ta, tb, m, n, k, pad, alpha, init, structure, threads, seed } = case.clone();
        let (a_rows, a_cols) = if ta { (k, m) } else { (m, k) };
        let (b_rows, b_cols) = if tb { (n, k) } else { (k, n) };
        let (lda, ldb, ldc) = (a_cols + pad, b_cols + pad, n + pad);
        let mut a = values(a_rows * lda, seed);
        let b = values(b_rows * ldb, seed + 1);
        let bias = values(n, seed + 2);
        let c0 = values(m * ldc, seed + 3);
        // op(A)'s element (r, kk), and the zeros the structure promises.
        let a_at = |r: usize, kk: usize| if ta { kk * lda + r } else { r * lda + kk };
        for r in 0..m {
            for kk in 0..k {
                let zero = match structure {
                    Structure::LowerA => kk > r,
                    Structure::UpperA => kk < r,
                    _ => false,
                };
                if zero {
                    a[a_at(r, kk)] = 0.0;
                }
            }
        }
        let b_at = |kk: usize, j: usize| if tb { j * ldb + kk } else { kk * ldb + j };
        let mut c = c0.clone();
        // SAFETY: every buffer holds what the shapes and strides above read and write.
        let ran = unsafe {
            ffi::mlx_gpt_gemm_on_path(
                path as libc::c_int,
                ta,
                tb,
                m,
                n,
                k,
                alpha,
                a.as_ptr(),
                lda,
                b.as_ptr(),
                ldb,
                c.as_mut_ptr(),
                ldc,
                init as libc::c_int,
                bias.as_ptr(),
                structure as libc::c_int,
                threads,
            )
        };
        if !ran {
            prop_assert_eq!(&c, &c0, "a path that did not run left C as it was");
            return Ok(false);
        }
        for r in 0..m {
            for j in 0..n {
                let idx = r * ldc + j;
                if structure == Structure::LowerC && j > r {
                    continue;
                }
                let (mut sum, mut size) = (0.0f64, 0.0f64);
                for kk in 0..k {
                    let p = a[a_at(r, kk)] as f64 * b[b_at(kk, j)] as f64;
                    sum += p;
                    size += p.abs();
                }
                let base = match init {
                    Init::Zero => 0.0,
                    Init::Accumulate => c0[idx] as f64,
                    Init::Bias => bias[j] as f64,
                };
                let want = alpha as f64 * sum + base;
                let tol = 2e-6 * (alpha.abs() as f64 * size + base.abs()) + 1e-6;
                prop_assert!(
                    (c[idx] as f64 - want).abs() <= tol,
                    "{path:?} {case:?}: C[{r}, {j}] = {} against {want}",
                    c[idx]
                );
            }
            // The padding between rows is never written.
            for j in n..ldc {
                prop_assert_eq!(c[r * ldc + j], c0[r * ldc + j], "{:?}: padding of row {} written", path, r);
            }
        }
        Ok(true)
    }

    fn init_strategy() -> impl Strategy<Value = Init> {
        prop_oneof![Just(Init::Zero), Just(Init::Accumulate), Just(Init::Bias)]
    }

    fn structure_strategy() -> impl Strategy<Value = Structure> {
        prop_oneof![
            4 => Just(Structure::General),
            1 => Just(Structure::LowerA),
            1 => Just(Structure::UpperA),
            1 => Just(Structure::LowerC),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Every shape around the register tiles (6 × 16 and 12 × 32) and their edges,
        /// with and without transposes, strides, bias or accumulation, and the zeros of
        /// causal attention's products: both own kernels equal float64's product.
        #[test]
        fn own_kernels_match_float64(
            ta in any::<bool>(), tb in any::<bool>(), m in 1usize..40, n in 1usize..72, k in 0usize..40,
            pad in 0usize..3, alpha in prop_oneof![Just(1.0f32), -2.0f32..2.0], init in init_strategy(),
            structure in structure_strategy(), seed in 0u64..1000,
        ) {
            let case = Case { ta, tb, m, n, k, pad, alpha, init, structure, threads: 1, seed };
            for path in [GemmPath::Avx2, GemmPath::Avx512] {
                check(path, &case)?;
            }
        }
    }

    /// Products past the blocking's sizes (192 rows, 256 columns, 768 deep; Aᵀ packed in
    /// parts past 2 MiB), on one thread and split over two, with each structure.
    #[test]
    fn large_products_match_float64() {
        let mut ran = Vec::new();
        for path in [GemmPath::Avx2, GemmPath::Avx512] {
            let cases = [
                (false, false, 200, 300, 800, Structure::General, 1),
                (true, true, 200, 300, 800, Structure::General, 2),
                (false, true, 300, 200, 770, Structure::General, 2),
                (true, false, 1000, 40, 800, Structure::General, 1),
                (false, false, 260, 260, 260, Structure::LowerA, 1),
                (true, false, 260, 260, 260, Structure::UpperA, 1),
                (false, true, 260, 260, 100, Structure::LowerC, 1),
            ];
            for (i, &(ta, tb, m, n, k, structure, threads)) in cases.iter().enumerate() {
                let case = Case {
                    ta,
                    tb,
                    m,
                    n,
                    k,
                    pad: 1,
                    alpha: 0.5,
                    init: [Init::Zero, Init::Accumulate, Init::Bias][i % 3],
                    structure,
                    threads,
                    seed: i as u64,
                };
                if check(path, &case).unwrap() {
                    ran.push(path);
                }
            }
        }
        if gemm_path() != GemmPath::Blas {
            assert!(ran.contains(&gemm_path()), "the path this CPU takes ({:?}) ran", gemm_path());
        } else {
            eprintln!("note: no own GEMM kernel on this CPU or build: the products run on the BLAS");
        }
    }

    #[test]
    fn the_widest_kernel_the_cpu_has_is_chosen() {
        let path = gemm_path();
        #[cfg(target_arch = "x86_64")]
        let want = if cfg!(feature = "generic-cpu") {
            GemmPath::Blas
        } else if std::arch::is_x86_feature_detected!("avx512f") {
            GemmPath::Avx512
        } else if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            GemmPath::Avx2
        } else {
            GemmPath::Blas
        };
        #[cfg(not(target_arch = "x86_64"))]
        let want = GemmPath::Blas;
        assert_eq!(path, want);
    }
}
