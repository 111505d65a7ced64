//! Causal self-attention over whole sequences as a custom MLX primitive
//! (`csrc/causal_attention.cpp`), forward and gradient: it reads c_attn's output
//! (B, T, 3C) as it is and returns the heads' outputs side by side (B, T, C), where MLX
//! ops need the heads transposed apart and back (copies), a batch of small products, the
//! mask and the softmax's kernels, and in the backward pass zero-filled buffers for the
//! gradient of the q/k/v split. Used for training and full forwards (with attention
//! dropout, its multiplier is an input and applied inside), float32 only;
//! [`crate::causal_attention()`] uses it with the CPU kernels. Results agree with MLX ops
//! to float rounding (tested here).

use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype};

/// Whether [`attend`] runs for a `dtype` qkv here (float32, a CBLAS found).
pub fn applies(dtype: Dtype) -> bool {
    dtype == Dtype::Float32 && super::ffi::blas_ready()
}

/// Causal softmax(scale · q kᵀ) v per head, for `qkv` (B, T, 3C) holding q, k and v side
/// by side; returns (B, T, C), heads side by side. With `dropout`, the weights are
/// multiplied by it (B, nh, T, T) before the product with v (see
/// `Dropout::multiplier` in mlx-gpt-model). The (sequence, head) pairs are split over
/// `threads` threads. `Ok(None)` when the primitive does not apply (not float32, no CBLAS
/// found).
pub fn attend(
    qkv: &Array,
    dropout: Option<&Array>,
    n_head: i32,
    scale: f32,
    threads: usize,
) -> Result<Option<Array>, Exception> {
    if !applies(qkv.dtype()) || dropout.is_some_and(|m| m.dtype() != Dtype::Float32) {
        return Ok(None);
    }
    // SAFETY: mlx_gpt_causal_attention with the given handles (an empty one for "no
    // dropout"); the arrays outlive the call.
    unsafe {
        super::ffi::call_with_optional(dropout, |res, mask| {
            super::ffi::mlx_gpt_causal_attention(res, qkv.as_ptr(), mask, n_head, scale, threads.clamp(1, 64) as i32)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::{random, transforms};
    use proptest::prelude::*;

    /// The same attention as MLX ops (the model's own formulation without the primitive).
    fn reference(qkv: &Array, dropout: Option<&Array>, n_head: i32, scale: f32) -> Result<Array, Exception> {
        let (b, t, c3) = (qkv.shape()[0], qkv.shape()[1], qkv.shape()[2]);
        let c = c3 / 3;
        let parts = qkv.split_equal(3, -1)?;
        let heads = |a: &Array| a.reshape(&[b, t, n_head, c / n_head])?.transpose_axes(&[0, 2, 1, 3]);
        let (q, k, v) = (heads(&parts[0])?, heads(&parts[1])?, heads(&parts[2])?);
        let att = q.multiply(Array::from_f32(scale))?.matmul(k.swap_axes(-2, -1)?)?;
        let att = att.add(crate::attention::causal_mask(t, 0, att.dtype())?)?;
        let att = mlx_rs::ops::softmax_axis(&att, -1, None)?;
        let att = match dropout {
            Some(m) => att.multiply(m)?,
            None => att,
        };
        let y = att.matmul(&v)?;
        y.transpose_axes(&[0, 2, 1, 3])?.reshape(&[b, t, c])
    }

    /// Output and gradient of the primitive against MLX ops for one configuration, on one
    /// thread; on two, the very same numbers.
    fn compare(
        batch: i32,
        n_head: i32,
        hs: i32,
        t: i32,
        strided: bool,
        dropout: bool,
        seed: u64,
    ) -> Result<(), TestCaseError> {
        let c = n_head * hs;
        let key = |i: u64| random::key(seed * 4 + i).unwrap();
        let qkv = if strided {
            random::normal::<f32>(&[t, batch, 3 * c], None, None, &key(0)).unwrap().transpose_axes(&[1, 0, 2]).unwrap()
        } else {
            random::normal::<f32>(&[batch, t, 3 * c], None, None, &key(0)).unwrap()
        };
        let scale = 1.0 / (hs as f32).sqrt();
        // A dropout multiplier as `Dropout::multiplier` draws it: 0 or 1/(1 − p).
        let mask = dropout.then(|| {
            let keep = random::bernoulli(&Array::from_f32(0.7), &[batch, n_head, t, t], &key(2)).unwrap();
            keep.as_dtype(Dtype::Float32).unwrap().multiply(Array::from_f32(1.0 / 0.7)).unwrap()
        });
        let close = |a: &Array, b: &Array| -> Result<(), TestCaseError> {
            prop_assert_eq!(a.shape(), b.shape());
            let (a, b) = (a.reshape(&[-1]).unwrap(), b.reshape(&[-1]).unwrap());
            for (p, q) in a.as_slice::<f32>().iter().zip(b.as_slice::<f32>()) {
                prop_assert!((p - q).abs() <= 2e-5 * (1.0 + q.abs()), "{} vs {}", p, q);
            }
            Ok(())
        };
        let got = attend(&qkv, mask.as_ref(), n_head, scale, 1).unwrap().expect("float32 on the CPU");
        close(&got, &reference(&qkv, mask.as_ref(), n_head, scale).unwrap())?;
        let split = attend(&qkv, mask.as_ref(), n_head, scale, 2).unwrap().expect("float32 on the CPU");
        prop_assert_eq!(split.as_slice::<f32>(), got.as_slice::<f32>());
        // Gradient of Σ g·attention(qkv) for a non-trivial cotangent g.
        let g = random::normal::<f32>(&[batch, t, c], None, None, &key(1)).unwrap();
        // `threads`: the primitive on that many threads; None: MLX ops.
        let grad_of = |threads: Option<usize>| {
            let (g, mask) = (g.clone(), mask.clone());
            let mut f = transforms::grad(move |x: &Array| -> Result<Array, Exception> {
                let y = if let Some(threads) = threads {
                    attend(x, mask.as_ref(), n_head, scale, threads)?.expect("float32 on the CPU")
                } else {
                    reference(x, mask.as_ref(), n_head, scale)?
                };
                y.multiply(&g)?.sum(None)
            });
            f(&qkv).unwrap()
        };
        let mine = grad_of(Some(1));
        close(&mine, &grad_of(None))?;
        let split = grad_of(Some(2));
        prop_assert_eq!(split.as_slice::<f32>(), mine.as_slice::<f32>());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20))]
        /// Output and gradient against MLX ops, for head sizes that do and do not fill the
        /// vector lanes, one or many positions, a qkv that is a strided view, and with or
        /// without a dropout multiplier.
        #[test]
        fn forward_and_gradient_match_mlx_ops(
            batch in 1i32..3, n_head in 1i32..4, hs in 1i32..20, t in 1i32..40, strided in any::<bool>(),
            dropout in any::<bool>(), seed in 0u64..1000,
        ) {
            compare(batch, n_head, hs, t, strided, dropout, seed)?;
        }
    }

    /// Sequences longer than the GEMM's row (192) and depth (768) blocks, and (1000) long
    /// enough that the T × T Aᵀ is packed in parts: the products that skip the causal
    /// zeros (gemm.h's Structure) must find the diagonal in every block.
    #[test]
    fn long_sequences_match_mlx_ops() {
        if !crate::cpu::ffi::own_gemm_active() {
            eprintln!("note: mlx-gpt's GEMM is not active on this CPU (neither AVX-512 nor AVX2): the products run on the BLAS");
        }
        for (t, dropout) in [(200, false), (300, true), (1000, true)] {
            compare(1, 1, 8, t, false, dropout, 7).unwrap();
        }
    }

    #[test]
    fn bad_shapes_are_errors_and_other_dtypes_decline() {
        let qkv = Array::from_slice(&[1.0f32; 12], &[1, 2, 6]);
        let err = attend(&qkv, None, 4, 1.0, 1).unwrap_err().to_string();
        assert!(err.contains("n_head"), "{err}");
        assert!(attend(&Array::from_slice(&[1.0f32; 10], &[1, 2, 5]), None, 1, 1.0, 1).is_err());
        let wrong_mask = Array::from_slice(&[1.0f32; 4], &[1, 1, 2, 2]);
        let err = attend(&qkv, Some(&wrong_mask), 2, 1.0, 1).unwrap_err().to_string();
        assert!(err.contains("dropout mask"), "{err}");
        assert!(attend(&qkv.as_dtype(Dtype::Float16).unwrap(), None, 1, 1.0, 1).unwrap().is_none());
    }
}
