//! One new position's attention over the KV cache as a custom MLX primitive
//! (`csrc/decode_attention.cpp`): one kernel per layer and token where MLX ops make about
//! ten (scale, q·kᵀ, the softmax's five, the product with v, the heads' transposes), each
//! a task handed to the stream's thread. Generation only (not differentiable), float32
//! only; [`crate::cached_attention()`] uses it with the CPU kernels for a single new
//! position. Results agree with MLX ops to float rounding (tested here, and by
//! generation's cached-equals-uncached test).

use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype};

/// softmax(scale · q kᵀ) v for each of `n_head` heads: `q` (B, 1, C) the new position's
/// queries, `k` and `v` (B, capacity, C) the cache buffers of which the first `len`
/// positions are attended to. Returns (B, 1, C), heads side by side, or `Ok(None)` when
/// the primitive does not apply (not float32).
pub fn attend(q: &Array, k: &Array, v: &Array, n_head: i32, len: i32, scale: f32) -> Result<Option<Array>, Exception> {
    if [q, k, v].iter().any(|a| a.dtype() != Dtype::Float32) {
        return Ok(None);
    }
    // SAFETY: mlx_gpt_decode_attention with the given handle; the arrays outlive the call.
    unsafe {
        super::ffi::call(|res| {
            super::ffi::mlx_gpt_decode_attention(res, q.as_ptr(), k.as_ptr(), v.as_ptr(), n_head, len, scale)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::ops::indexing::IndexOp;
    use mlx_rs::random;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Against MLX's softmax attention over the held positions, with the query a
        /// strided slice (as it is split off c_attn's output) and unused buffer rows that
        /// must be ignored.
        #[test]
        fn matches_mlx_attention_over_the_held_positions(
            batch in 1i32..3, n_head in 1i32..5, hs in 1i32..40, len in 1i32..70, spare in 0i32..9, seed in 0u64..1000,
        ) {
            let c = n_head * hs;
            let cap = len + spare;
            let key = |i: u64| random::key(seed * 4 + i).unwrap();
            let qkv = random::normal::<f32>(&[batch, 1, 3 * c], None, None, &key(0)).unwrap();
            let q = qkv.index((.., .., 0..c));
            let k = random::normal::<f32>(&[batch, cap, c], None, None, &key(1)).unwrap();
            let v = random::normal::<f32>(&[batch, cap, c], None, None, &key(2)).unwrap();
            let scale = 1.0 / (hs as f32).sqrt();
            let got = attend(&q, &k, &v, n_head, len, scale).unwrap().expect("float32 on the CPU");

            let heads = |a: &Array, s: i32| a.index((.., 0..s, ..)).reshape(&[batch, s, n_head, hs]).unwrap()
                .transpose_axes(&[0, 2, 1, 3]).unwrap();
            let att = heads(&q, 1).multiply(Array::from_f32(scale)).unwrap()
                .matmul(heads(&k, len).swap_axes(-2, -1).unwrap()).unwrap();
            let want = mlx_rs::ops::softmax_axis(&att, -1, None).unwrap().matmul(heads(&v, len)).unwrap()
                .transpose_axes(&[0, 2, 1, 3]).unwrap().reshape(&[batch, 1, c]).unwrap();
            prop_assert_eq!(got.shape(), want.shape());
            for (p, q) in got.as_slice::<f32>().iter().zip(want.as_slice::<f32>()) {
                prop_assert!((p - q).abs() <= 1e-5 * (1.0 + q.abs()), "{} vs {}", p, q);
            }
        }
    }

    #[test]
    fn bad_lengths_are_errors_and_other_dtypes_decline() {
        let q = Array::from_slice(&[1.0f32; 4], &[1, 1, 4]);
        let kv = Array::from_slice(&[1.0f32; 8], &[1, 2, 4]);
        let err = attend(&q, &kv, &kv, 2, 3, 1.0).unwrap_err().to_string();
        assert!(err.contains("len must be in 1..=capacity"), "{err}");
        assert!(attend(&q, &kv, &kv, 3, 1, 1.0).is_err()); // 4 columns do not split into 3 heads
        let half = kv.as_dtype(Dtype::Float16).unwrap();
        assert!(attend(&q, &half, &half, 2, 1, 1.0).unwrap().is_none());
    }
}
