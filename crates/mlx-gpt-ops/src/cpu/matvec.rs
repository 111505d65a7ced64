//! Matrix–vector products through the BLAS's `cblas_sgemv`, for decoding one token at a
//! time on the CPU.
//!
//! With a single row, MLX's CPU matmul still calls `sgemm`, and OpenBLAS's `sgemm` first
//! copies ("packs") the whole weight matrix into its own layout, then multiplies. For a
//! matrix that is read once per token that copy is most of the work: GPT-2's 768 × 50257
//! head takes 10–14 ms through MLX and about 4.5 ms through `cblas_sgemv`, which streams
//! the weights once (docs/performance-history.md). Decoding with the KV cache is nothing but such
//! products, so generation runs with [`crate::Kernels::for_decoding`]; there dense layers
//! and the tied head call [`matmul`], which takes inputs of at most [`MAX_ROWS`] rows in
//! float32 and leaves everything else to MLX.
//!
//! The product is a custom MLX primitive written in C++ (`csrc/host_gemv.cpp`, built by
//! build.rs against MLX's headers): it stays in the lazy graph and runs on the stream's
//! worker thread like MLX's own kernels, so a decoded token is still a single `eval`. It
//! has no gradient (decoding only).

use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype};
use std::cell::Cell;

/// Inputs with more rows than this go to MLX's matmul: `sgemm` is the better kernel once
/// the packing cost is shared by several rows (a prompt, a batch).
pub const MAX_ROWS: usize = 4;

thread_local! {
    /// Products this thread has built through the primitive (see [`calls`]).
    static CALLS: Cell<usize> = const { Cell::new(0) };
}

/// How many products this thread has routed through `sgemv` (for tests and diagnostics).
pub fn calls() -> usize {
    CALLS.with(Cell::get)
}

/// `x @ w` (`w` of shape (K, N)), or `x @ wᵀ` when `w_transposed` (`w` of shape (N, K)),
/// plus `bias` (N,), as a lazy `sgemv` primitive (one call per row). `Ok(None)` when not
/// applicable: not float32,
/// shapes that do not fit, more than [`MAX_ROWS`] rows, a weight (or bias) that is not an
/// evaluated dense array, or no `cblas_sgemv` in the process.
pub fn matmul(x: &Array, w: &Array, w_transposed: bool, bias: Option<&Array>) -> Result<Option<Array>, Exception> {
    if x.dtype() != Dtype::Float32 || w.dtype() != Dtype::Float32 || w.ndim() != 2 || x.ndim() == 0 {
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
    if !super::ffi::blas_ready() {
        return Ok(None);
    }
    // SAFETY: mlx_gpt_host_gemv with the given handles (an empty one for "no bias"); the
    // arrays outlive the call.
    let out = unsafe {
        super::ffi::call_with_optional(bias, |res, b| {
            super::ffi::mlx_gpt_host_gemv(res, x.as_ptr(), w.as_ptr(), b, w_transposed)
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
        /// Both weight orientations, with and without bias, 1–4 rows in any leading shape,
        /// equal MLX's own matmul.
        #[test]
        fn host_products_equal_mlx_matmul(rows in 1usize..=4, k in 1i32..70, n in 1i32..90, lead in 0usize..3, seed in 0u64..1000) {
            let key = |i: u64| random::key(seed * 4 + i).unwrap();
            let shape: Vec<i32> = match lead { 0 => vec![rows as i32, k], 1 => vec![1, rows as i32, k], _ => vec![rows as i32, 1, k] };
            let x = random::normal::<f32>(&shape, None, None, &key(0)).unwrap();
            let w = random::normal::<f32>(&[k, n], None, None, &key(1)).unwrap();
            let wt = random::normal::<f32>(&[n, k], None, None, &key(2)).unwrap();
            let b = random::normal::<f32>(&[n], None, None, &key(3)).unwrap();
            // Weights are used in place, so they must be evaluated (parameters always are).
            mlx_rs::transforms::eval([&w, &wt, &b]).unwrap();
            close(&matmul(&x, &w, false, None).unwrap().expect("host path"), &x.matmul(&w).unwrap());
            close(&matmul(&x, &wt, true, None).unwrap().expect("host path"), &x.matmul(wt.t()).unwrap());
            let want = ops::addmm(&b, &x, &w, None, None).unwrap();
            close(&matmul(&x, &w, false, Some(&b)).unwrap().expect("host path"), &want);
        }
    }

    #[test]
    fn declines_beyond_its_limits() {
        let w = random::normal::<f32>(&[8, 3], None, None, None).unwrap();
        let x1 = random::normal::<f32>(&[1, 8], None, None, None).unwrap();
        // An unevaluated weight is left to MLX (the product reads weights in place).
        assert!(matmul(&x1, &w, false, None).unwrap().is_none());
        w.eval().unwrap();
        {
            assert!(matmul(&x1, &w, false, None).unwrap().is_some());
            // Too many rows, another dtype, mismatched shapes: MLX's matmul.
            let x5 = random::normal::<f32>(&[MAX_ROWS as i32 + 1, 8], None, None, None).unwrap();
            assert!(matmul(&x5, &w, false, None).unwrap().is_none());
            assert!(matmul(&x1.as_dtype(Dtype::Float16).unwrap(), &w, false, None).unwrap().is_none());
            assert!(matmul(&x1, &w, true, None).unwrap().is_none());
            // A strided (transposed) weight is left to MLX; a strided input is copied.
            let w_view = random::normal::<f32>(&[3, 8], None, None, None).unwrap().t(); // (8, 3), strided
            w_view.eval().unwrap();
            assert!(matmul(&x1, &w_view, false, None).unwrap().is_none());
            let x_view = random::normal::<f32>(&[8, 1], None, None, None).unwrap().t(); // (1, 8)
            close(&matmul(&x_view, &w, false, None).unwrap().expect("host path"), &x_view.matmul(&w).unwrap());
        }
    }
}
