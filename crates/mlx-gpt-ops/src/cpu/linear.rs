//! Dense layers as a custom MLX primitive (`csrc/linear.cpp`) on mlx-gpt's own GEMM
//! (`csrc/gemm.cpp`): `y = x·W + b` in one product with the bias added in its store, and
//! the gradient (dx, dW, db) in one task, where MLX ops make a matmul and an add forward
//! and two matmuls and a reduction backward, each through the BLAS.
//!
//! The GEMM is an AVX-512 kernel that packs only one operand, never clears its output
//! first, and asks for all of its operands' cache lines before it starts: in a training
//! step they were written long before, and waiting on them one line at a time cost more
//! than OpenBLAS's packing did (docs/performance-history.md, third round). Each product
//! runs on the stream's thread, or split over the persistent pool's threads
//! ([`Kernels::layer_threads`]). On a CPU without AVX-512 (or built with `generic-cpu`)
//! the primitive calls the BLAS's `cblas_sgemm`; the causal-attention primitive's
//! products follow the same rules.
//!
//! [`crate::linear()`] uses it where the [`Kernels`] say so
//! ([`Kernels::with_gemm_layers`]: training); on the BLAS the primitive measured no
//! faster than MLX's matmul. Results agree with MLX ops to float rounding (tested here,
//! in tests/kernels_choice.rs, and by the training tests); split over threads, every
//! element is computed as on one thread.

use crate::kernels::{KernelSet, Kernels};
use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype};

/// The CPU kernel for a dense layer under `k`, if one applies: the decoding product for a decoded
/// token's few rows ([`Kernels::for_decoding`]), else the primitive when the kernels put
/// dense layers on the GEMM; `Ok(None)` otherwise.
pub fn for_kernels(
    k: &Kernels,
    x: &Array,
    w: &Array,
    bias: Option<&Array>,
    w_transposed: bool,
) -> Result<Option<Array>, Exception> {
    if k.set() != KernelSet::Cpu {
        return Ok(None);
    }
    if k.decoding() {
        if let Some(y) = super::matvec::matmul(x, w, w_transposed, bias, k.threads())? {
            return Ok(Some(y));
        }
    }
    if k.gemm_layers() {
        return linear(x, w, bias, w_transposed, k.layer_threads());
    }
    Ok(None)
}

/// `x·W + bias` for x (..., in) and W (in, out), or `x·Wᵀ + bias` with `w_transposed`
/// (W stored (out, in), as the tied head reads wte), through the primitive, each product
/// on `threads` threads; `Ok(None)` when it does not apply (not all float32, no CBLAS for
/// the fallback). A shape mismatch is an error naming both sizes.
pub fn linear(
    x: &Array,
    w: &Array,
    bias: Option<&Array>,
    w_transposed: bool,
    threads: usize,
) -> Result<Option<Array>, Exception> {
    if x.dtype() != Dtype::Float32
        || w.dtype() != Dtype::Float32
        || bias.is_some_and(|b| b.dtype() != Dtype::Float32)
        || !super::ffi::blas_ready()
    {
        return Ok(None);
    }
    // SAFETY: mlx_gpt_linear with the given handles (an empty one for "no bias"); the
    // arrays outlive the call.
    unsafe {
        super::ffi::call_with_optional(bias, |res, b| {
            super::ffi::mlx_gpt_linear(
                res,
                x.as_ptr(),
                w.as_ptr(),
                b,
                w_transposed,
                threads.clamp(1, 64) as libc::c_int,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::{ops, random, transforms};

    fn close(a: &Array, b: &Array, what: &str) {
        assert_eq!(a.shape(), b.shape(), "{what}");
        let (a, b) = (a.reshape(&[-1]).unwrap(), b.reshape(&[-1]).unwrap());
        for (i, (p, q)) in a.as_slice::<f32>().iter().zip(b.as_slice::<f32>()).enumerate() {
            assert!((p - q).abs() <= 1e-4 * (1.0 + q.abs()), "{what}[{i}]: {p} vs {q}");
        }
    }

    /// MLX ops: the reference the primitive is checked against.
    fn reference(x: &Array, w: &Array, b: Option<&Array>, w_t: bool) -> Array {
        let w = if w_t { w.t() } else { w.clone() };
        let y = ops::matmul(x, &w).unwrap();
        b.map_or(y.clone(), |b| y.add(b).unwrap())
    }

    /// Gradients of Σ cot · f(x, w[, b]) with respect to the inputs in `argnums`, through the
    /// primitive on `threads` threads (`Some`) or MLX ops (`None`).
    fn grads(threads: Option<usize>, args: &[Array], argnums: &[i32], cot: &Array, w_t: bool) -> Vec<Array> {
        let cot = cot.clone();
        let f = move |a: &[Array]| -> Result<Vec<Array>, Exception> {
            let y = if let Some(threads) = threads {
                linear(&a[0], &a[1], a.get(2), w_t, threads)?.expect("float32 on the CPU")
            } else {
                reference(&a[0], &a[1], a.get(2), w_t)
            };
            Ok(vec![y.multiply(&cot)?.sum(None)?])
        };
        let mut vg = transforms::value_and_grad_with_argnums(f, argnums);
        let (_, g) = vg(args).unwrap();
        g
    }

    /// Forward and all three gradients against MLX ops, over shapes that cover every tile
    /// edge and block of the GEMM: rows not a multiple of 12, 1–70 outputs, rows past the
    /// 192-row block (300), a depth past one 768-deep block in the forward product (900
    /// inputs: two blocks of 450) and in the weight gradient (800 rows), a weight
    /// gradient whose Aᵀ is packed in two parts (700 × 768 floats, past the 2 MiB
    /// budget), both weight orientations, with and without bias. On two threads the
    /// products large enough to be split (the last three shapes: by rows, and by columns
    /// where the output is wider than tall) must give the very same numbers as on one.
    #[test]
    fn forward_and_gradients_match_mlx_ops() {
        let key = |k| random::key(k).unwrap();
        let normal = |shape: &[i32], k| random::normal::<f32>(shape, None, None, &key(k)).unwrap();
        for &(lead, n_in, n_out) in &[
            (&[1][..], 5, 1),
            (&[13][..], 7, 16),
            (&[2, 11][..], 33, 17),
            (&[3, 9][..], 300, 65),
            (&[25][..], 64, 32),
            (&[2, 150][..], 20, 70),
            (&[2, 400][..], 900, 33),
            (&[768][..], 700, 40),
            (&[30][..], 600, 1000),
        ] {
            let x_shape: Vec<i32> = lead.iter().copied().chain([n_in]).collect();
            let x = normal(&x_shape, 1);
            let b = normal(&[n_out], 3);
            let cot_shape: Vec<i32> = lead.iter().copied().chain([n_out]).collect();
            let cot = normal(&cot_shape, 4);
            for w_t in [false, true] {
                let w_shape = if w_t { [n_out, n_in] } else { [n_in, n_out] };
                let w = normal(&w_shape, 2);
                for bias in [Some(&b), None] {
                    let what = format!("x {x_shape:?}, w_t {w_t}, bias {}", bias.is_some());
                    let custom = linear(&x, &w, bias, w_t, 1).unwrap().expect("float32 on the CPU");
                    close(&custom, &reference(&x, &w, bias, w_t), &what);
                    let split = linear(&x, &w, bias, w_t, 2).unwrap().expect("float32 on the CPU");
                    assert_eq!(split.as_slice::<f32>(), custom.as_slice::<f32>(), "{what}, 2 threads");
                    let mut args = vec![x.clone(), w.clone()];
                    args.extend(bias.cloned());
                    let argnums: Vec<i32> = (0..args.len() as i32).collect();
                    let (mine, theirs) =
                        (grads(Some(1), &args, &argnums, &cot, w_t), grads(None, &args, &argnums, &cot, w_t));
                    assert_eq!(mine.len(), argnums.len());
                    for (i, (p, q)) in mine.iter().zip(&theirs).enumerate() {
                        close(p, q, &format!("{what}, gradient {i}"));
                    }
                    for (i, (p, q)) in grads(Some(2), &args, &argnums, &cot, w_t).iter().zip(&mine).enumerate() {
                        assert_eq!(p.as_slice::<f32>(), q.as_slice::<f32>(), "{what}, gradient {i}, 2 threads");
                    }
                }
            }
        }
    }

    /// Asked for some of the gradients only (x alone, W alone, the bias alone), the
    /// gradient primitive returns those, right.
    #[test]
    fn gradients_for_some_inputs_only() {
        let normal = |shape: &[i32], k| random::normal::<f32>(shape, None, None, &random::key(k).unwrap()).unwrap();
        let (x, w, b, cot) = (normal(&[30, 24], 1), normal(&[24, 40], 2), normal(&[40], 3), normal(&[30, 40], 4));
        let args = [x, w, b];
        for argnums in [&[0][..], &[1], &[2], &[2, 0]] {
            let (mine, theirs) =
                (grads(Some(1), &args, argnums, &cot, false), grads(None, &args, argnums, &cot, false));
            assert_eq!(mine.len(), argnums.len());
            for (p, q) in mine.iter().zip(&theirs) {
                close(p, q, &format!("argnums {argnums:?}"));
            }
        }
    }

    /// Inputs that are views (a transposed x; the broadcast cotangent that the gradient of
    /// a plain sum hands the gradient primitive) are read correctly, other dtypes are
    /// declined, and a wrong width is an error that names both sizes.
    #[test]
    fn strided_inputs_other_dtypes_and_bad_shapes() {
        let x = random::normal::<f32>(&[20, 6], None, None, &random::key(7).unwrap()).unwrap().t(); // (6, 20)
        let w = random::normal::<f32>(&[20, 3], None, None, &random::key(8).unwrap()).unwrap();
        close(&linear(&x, &w, None, false, 1).unwrap().unwrap(), &reference(&x, &w, None, false), "strided x");
        let sum_grad = |custom: bool| {
            let f = move |a: &[Array]| -> Result<Vec<Array>, Exception> {
                let y = if custom {
                    linear(&a[0], &a[1], None, false, 1)?.expect("float32")
                } else {
                    reference(&a[0], &a[1], None, false)
                };
                Ok(vec![y.sum(None)?])
            };
            let mut vg = transforms::value_and_grad_with_argnums(f, &[0, 1][..]);
            vg(&[x.clone(), w.clone()]).unwrap().1
        };
        for (i, (p, q)) in sum_grad(true).iter().zip(&sum_grad(false)).enumerate() {
            close(p, q, &format!("gradient {i} of a sum (broadcast cotangent)"));
        }
        assert!(linear(&x.as_dtype(Dtype::Float16).unwrap(), &w, None, false, 1).unwrap().is_none());
        let err = linear(&x, &w.t(), None, false, 1).unwrap_err().to_string();
        assert!(err.contains("20 features") && err.contains("takes 3"), "{err}");
    }
}
