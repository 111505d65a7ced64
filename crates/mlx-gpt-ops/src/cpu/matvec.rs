//! Products of a few rows by a weight matrix, for decoding on the CPU: a batch of decoded
//! tokens (or a short prompt) times each weight matrix.
//!
//! MLX's CPU matmul calls `sgemm`, and OpenBLAS's `sgemm` first copies ("packs") the whole
//! weight matrix into its own layout, then multiplies. For a matrix read once per token
//! that copy is most of the work: GPT-2's 768 × 50257 head took 10–14 ms through MLX and
//! about 4.5 ms streamed once (docs/performance-history.md). Decoding with the KV cache is
//! nothing but such products, so generation runs with [`crate::Kernels::for_decoding`];
//! there dense layers and the tied head call [`matmul`], which takes float32 inputs of at
//! most [`MAX_ROWS`] rows and float32 or bfloat16 weights, and leaves everything else to
//! MLX.
//!
//! The product is a custom MLX primitive written in C++ (`csrc/decode_product.cpp`,
//! built by build.rs against MLX's headers): each weight is read once for all rows, where
//! it lies, widened to float32 in registers when it is bfloat16, and the outputs are split
//! over [`crate::Kernels::threads`] threads of a persistent pool (`csrc/pool.h`). It stays
//! in the lazy graph and runs on the stream's worker thread like MLX's own kernels, so a
//! decoded token is still a single `eval`. It has no gradient (decoding only).

use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype};
use std::cell::Cell;

/// Inputs with more rows than this go to MLX's matmul: `sgemm` is the better kernel once
/// the packing cost is shared by many rows (a long prompt, a large batch). A batch of 16
/// decoded tokens still reads the weights once here, and its arithmetic (16 multiply-adds
/// per weight) stays below the time to read it.
pub const MAX_ROWS: usize = 16;

thread_local! {
    /// Products this thread has built through the primitive (see [`calls`]).
    static CALLS: Cell<usize> = const { Cell::new(0) };
}

/// How many products this thread has routed through the decoding product (for tests and
/// diagnostics).
pub fn calls() -> usize {
    CALLS.with(Cell::get)
}

/// Whether the decoding product asks for the weights ahead as non-temporal
/// (`prefetchnta`: on AMD CPUs, csrc/decode_product.cpp) rather than into every cache.
pub fn weights_non_temporal() -> bool {
    // SAFETY: reads a flag computed once on the C++ side.
    unsafe { super::ffi::mlx_gpt_decode_weights_non_temporal() }
}

/// `x @ w` (`w` of shape (K, N)), or `x @ wᵀ` when `w_transposed` (`w` of shape (N, K)),
/// plus `bias` (N,), as a lazy decoding-product primitive on `threads` threads. `x` and
/// `bias` float32, `w` float32 or bfloat16; the result is float32. `Ok(None)` when not
/// applicable: other dtypes, shapes that do not fit, more than [`MAX_ROWS`] rows, or a
/// weight (or bias) that is not an evaluated dense array.
pub fn matmul(
    x: &Array,
    w: &Array,
    w_transposed: bool,
    bias: Option<&Array>,
    threads: usize,
) -> Result<Option<Array>, Exception> {
    if x.dtype() != Dtype::Float32
        || !matches!(w.dtype(), Dtype::Float32 | Dtype::Bfloat16)
        || w.ndim() != 2
        || x.ndim() == 0
    {
        return Ok(None);
    }
    let (rows_w, cols_w) = (w.shape()[0] as usize, w.shape()[1] as usize);
    let (k, n) = if w_transposed { (cols_w, rows_w) } else { (rows_w, cols_w) };
    if *x.shape().last().expect("ndim > 0") as usize != k {
        return Ok(None); // MLX's matmul reports the shape error
    }
    let rows = x.size() / k.max(1);
    if rows == 0 || rows > MAX_ROWS || bias.is_some_and(|b| b.dtype() != Dtype::Float32 || b.size() != n) {
        return Ok(None);
    }
    // SAFETY: mlx_gpt_decode_product with the given handles (an empty one for "no
    // bias"); the arrays outlive the call.
    let out = unsafe {
        super::ffi::call_with_optional(bias, |res, b| {
            super::ffi::mlx_gpt_decode_product(res, x.as_ptr(), w.as_ptr(), b, w_transposed, threads as libc::c_int)
        })?
    };
    if out.is_some() {
        CALLS.with(|c| c.set(c.get() + 1));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::ops::indexing::IndexOp;
    use mlx_rs::{ops, random};
    use proptest::prelude::*;

    fn close(a: &Array, b: &Array) {
        assert_eq!(a.shape(), b.shape());
        for (x, y) in a.as_slice::<f32>().iter().zip(b.as_slice::<f32>()) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Both weight orientations, float32 and bfloat16 weights, with and without bias,
        /// 1–16 rows in any leading shape, on 1–3 threads, equal MLX's own matmul (on the
        /// bfloat16 weights widened to float32).
        #[test]
        fn decoding_products_equal_mlx_matmul(
            rows in 1usize..=MAX_ROWS, k in 1i32..400, n in 1i32..300, lead in 0usize..3, threads in 1usize..4,
            bf16 in proptest::bool::ANY, seed in 0u64..1000,
        ) {
            let key = |i: u64| random::key(seed * 4 + i).unwrap();
            let shape: Vec<i32> = match lead { 0 => vec![rows as i32, k], 1 => vec![1, rows as i32, k], _ => vec![rows as i32, 1, k] };
            let x = random::normal::<f32>(&shape, None, None, &key(0)).unwrap();
            let dtype = if bf16 { Dtype::Bfloat16 } else { Dtype::Float32 };
            let w = random::normal::<f32>(&[k, n], None, None, &key(1)).unwrap().as_dtype(dtype).unwrap();
            let wt = random::normal::<f32>(&[n, k], None, None, &key(2)).unwrap().as_dtype(dtype).unwrap();
            let b = random::normal::<f32>(&[n], None, None, &key(3)).unwrap();
            // Weights are used in place, so they must be evaluated (parameters always are).
            mlx_rs::transforms::eval([&w, &wt, &b]).unwrap();
            let (w32, wt32) = (w.as_dtype(Dtype::Float32).unwrap(), wt.as_dtype(Dtype::Float32).unwrap());
            let product = |w: &Array, tr: bool, b: Option<&Array>| {
                let y = matmul(&x, w, tr, b, threads).unwrap().expect("decoding product");
                assert_eq!(y.dtype(), Dtype::Float32);
                y
            };
            close(&product(&w, false, None), &x.matmul(&w32).unwrap());
            close(&product(&wt, true, None), &x.matmul(wt32.t()).unwrap());
            close(&product(&wt, true, Some(&b)), &ops::add(x.matmul(wt32.t()).unwrap(), &b).unwrap());
            close(&product(&w, false, Some(&b)), &ops::addmm(&b, &x, &w32, None, None).unwrap());
            // Stored transposed (decoding's layout, crate::layout): read as it lies, the
            // kernel of the transposed operand over the same memory, so the same bits.
            let ws = crate::store_transposed(&w).unwrap();
            close(&product(&ws, false, Some(&b)), &ops::addmm(&b, &x, &w32, None, None).unwrap());
            if k > 1 && n > 1 {
                let same_memory = crate::row_major(&w.t()).unwrap(); // (n, k)
                let (stored, transposed) = (product(&ws, false, Some(&b)), product(&same_memory, true, Some(&b)));
                prop_assert_eq!(stored.as_slice::<f32>(), transposed.as_slice::<f32>());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// The output-by-output kernels (W (N, K), decoding's layout; float32 and bfloat16)
        /// and the row-after-row bfloat16 one (W (K, N), one row), in vectors of 8 floats
        /// (CPUs without AVX-512) and of 16 (with it), whichever this CPU has: both equal a
        /// float64 product of the same values, for every group of rows (8, 4, 2, 1) and
        /// every tail of K and N.
        #[test]
        fn both_vector_widths_equal_float64(
            rows in 1usize..=MAX_ROWS, k in 1usize..200, n in 1usize..40, with_bias in any::<bool>(),
            bf16 in any::<bool>(), seed in 0u64..1000,
        ) {
            let values = |len: usize, salt: u64| -> Vec<f32> {
                (0..len).map(|i| (((i as u64 * 2654435761 + seed * 97 + salt) % 2001) as f32 - 1000.0) / 1000.0).collect()
            };
            let (x, mut w, b) = (values(rows * k, 1), values(n * k, 2), values(n, 3));
            // bfloat16 weights: the upper halves of float32 values, so that float64 can
            // compute with exactly the weights the kernel reads.
            let w16: Vec<u16> = w.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
            if bf16 {
                w = w16.iter().map(|&h| f32::from_bits((h as u32) << 16)).collect();
            }
            let w_ptr: *const libc::c_void = if bf16 { w16.as_ptr().cast() } else { w.as_ptr().cast() };
            let want = |r: usize, j: usize, w_at: &dyn Fn(usize, usize) -> f32| {
                let (mut sum, mut size) = (if with_bias { b[j] as f64 } else { 0.0 }, 0.0f64);
                for kk in 0..k {
                    let p = x[r * k + kk] as f64 * w_at(kk, j) as f64;
                    sum += p;
                    size += p.abs();
                }
                (sum, size)
            };
            for lanes in [8, 16] {
                let mut y = vec![f32::NAN; rows * n];
                let bias = if with_bias { b.as_ptr() } else { std::ptr::null() };
                // SAFETY: x is rows × k, the weights n × k, b has n values, y rows × n.
                let ran = unsafe {
                    crate::cpu::ffi::mlx_gpt_decode_rows_by_nk_for_test(
                        lanes, x.as_ptr(), rows as i32, k as i32, w_ptr, bf16, n as i32, bias, y.as_mut_ptr(),
                    )
                };
                prop_assert!(ran);
                for r in 0..rows {
                    for j in 0..n {
                        let (want, size) = want(r, j, &|kk, j| w[j * k + kk]);
                        let got = y[r * n + j] as f64;
                        prop_assert!(
                            (got - want).abs() <= 1e-6 * (size + 1.0),
                            "{} lanes, bf16 {}, row {}, output {}: {} against {}", lanes, bf16, r, j, got, want
                        );
                    }
                }
                // The same weights laid out (K, N), one row (the bfloat16 row-after-row kernel).
                if bf16 {
                    let wkn: Vec<u16> = (0..k * n).map(|i| w16[(i % n) * k + i / n]).collect();
                    let mut y1 = vec![f32::NAN; n];
                    // SAFETY: x's first row has k values, wkn is k × n, b has n values, y1 n.
                    let ran = unsafe {
                        crate::cpu::ffi::mlx_gpt_decode_add_rows_bf16_for_test(
                            lanes, x.as_ptr(), k as i32, wkn.as_ptr(), n as i32, bias, y1.as_mut_ptr(),
                        )
                    };
                    prop_assert!(ran);
                    for (j, &got) in y1.iter().enumerate() {
                        let (want, size) = want(0, j, &|kk, j| w[j * k + kk]);
                        let got = got as f64;
                        prop_assert!(
                            (got - want).abs() <= 1e-6 * (size + 1.0),
                            "{} lanes, (K, N) bfloat16, output {}: {} against {}", lanes, j, got, want
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn declines_beyond_its_limits() {
        let w = random::normal::<f32>(&[8, 3], None, None, None).unwrap();
        let x1 = random::normal::<f32>(&[1, 8], None, None, None).unwrap();
        // An unevaluated weight is left to MLX (the product reads weights in place).
        assert!(matmul(&x1, &w, false, None, 2).unwrap().is_none());
        w.eval().unwrap();
        {
            assert!(matmul(&x1, &w, false, None, 2).unwrap().is_some());
            // Too many rows, another dtype, mismatched shapes: MLX's matmul.
            let x17 = random::normal::<f32>(&[MAX_ROWS as i32 + 1, 8], None, None, None).unwrap();
            assert!(matmul(&x17, &w, false, None, 2).unwrap().is_none());
            assert!(matmul(&x1.as_dtype(Dtype::Float16).unwrap(), &w, false, None, 2).unwrap().is_none());
            let w16 = w.as_dtype(Dtype::Float16).unwrap();
            w16.eval().unwrap();
            assert!(matmul(&x1, &w16, false, None, 2).unwrap().is_none());
            assert!(matmul(&x1, &w, true, None, 2).unwrap().is_none());
            // A transposed view (column-major) is read as it lies; a view with gaps is left
            // to MLX; a strided input is copied.
            let w_view = random::normal::<f32>(&[3, 8], None, None, None).unwrap().t(); // (8, 3)
            w_view.eval().unwrap();
            close(
                &matmul(&x1, &w_view, false, None, 2).unwrap().expect("decoding product"),
                &x1.matmul(&w_view).unwrap(),
            );
            let w_gaps = random::normal::<f32>(&[8, 6], None, None, None).unwrap().index((.., ..3)); // (8, 3)
            w_gaps.eval().unwrap();
            assert!(matmul(&x1, &w_gaps, false, None, 2).unwrap().is_none());
            let x_view = random::normal::<f32>(&[8, 1], None, None, None).unwrap().t(); // (1, 8)
            close(
                &matmul(&x_view, &w, false, None, 2).unwrap().expect("decoding product"),
                &x_view.matmul(&w).unwrap(),
            );
        }
    }
}
