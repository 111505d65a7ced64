//! LayerNorm as a custom MLX primitive (`csrc/layer_norm.cpp`): one kernel forward and
//! one backward, where MLX ops make a chain of reductions and element-wise kernels (about
//! eight tasks per LayerNorm when not compiled, as in generation). float32 only;
//! [`crate::layer_norm()`] uses it with the CPU kernels. Results agree with
//! [`crate::layer_norm::layer_norm_mlx`] to float rounding (tested here).

use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype};

/// LayerNorm of `x` over its last axis through the primitive, or `Ok(None)` when it does
/// not apply (not float32).
pub fn layer_norm(x: &Array, w: &Array, b: Option<&Array>, eps: f32) -> Result<Option<Array>, Exception> {
    let f32s =
        x.dtype() == Dtype::Float32 && w.dtype() == Dtype::Float32 && b.is_none_or(|b| b.dtype() == Dtype::Float32);
    if !f32s {
        return Ok(None);
    }
    // SAFETY: mlx_gpt_layer_norm with the given handles (an empty one for "no bias"); the
    // arrays outlive the call.
    unsafe {
        super::ffi::call_with_optional(b, |res, bias| {
            super::ffi::mlx_gpt_layer_norm(res, x.as_ptr(), w.as_ptr(), bias, eps)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::{random, transforms};
    use proptest::prelude::*;

    fn close(a: &Array, b: &Array, tol: f32) {
        assert_eq!(a.shape(), b.shape());
        let (a, b) = (a.reshape(&[-1]).unwrap(), b.reshape(&[-1]).unwrap());
        for (p, q) in a.as_slice::<f32>().iter().zip(b.as_slice::<f32>()) {
            assert!((p - q).abs() <= tol * (1.0 + q.abs()), "{p} vs {q}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Output and the gradients for x, w and b against plain ops, for widths that do
        /// and do not fill the vector lanes (half the cases multiples of 16, which the
        /// AVX-512 kernels take), any number of rows, with and without bias, and a
        /// strided x.
        #[test]
        fn forward_and_gradients_match_plain_ops(
            rows in 1i32..9, c in prop_oneof![1i32..70, (1i32..9).prop_map(|k| 16 * k)], bias in any::<bool>(),
            transposed in any::<bool>(), seed in 0u64..1000,
        ) {
            let key = |i: u64| random::key(seed * 8 + i).unwrap();
            let x = if transposed {
                random::normal::<f32>(&[c, rows], None, Some(2.0), &key(0)).unwrap().t()
            } else {
                random::normal::<f32>(&[rows, c], None, Some(2.0), &key(0)).unwrap()
            };
            let w = random::normal::<f32>(&[c], None, None, &key(1)).unwrap();
            let b = bias.then(|| random::normal::<f32>(&[c], None, None, &key(2)).unwrap());
            let eps = 1e-5;
            let got = layer_norm(&x, &w, b.as_ref(), eps).unwrap().expect("float32 on the CPU");
            close(&got, &crate::layer_norm::layer_norm_mlx(&x, &w, b.as_ref(), eps).unwrap(), 2e-5);

            // Gradients of Σ g·LN(x) for a non-trivial cotangent g.
            let g = random::normal::<f32>(&[rows, c], None, None, &key(3)).unwrap();
            let grads = |custom: bool| -> Vec<Array> {
                let g = g.clone();
                let f = move |args: &[Array]| -> Result<Vec<Array>, Exception> {
                    let y = if custom {
                        layer_norm(&args[0], &args[1], args.get(2), eps)?.expect("float32 on the CPU")
                    } else {
                        crate::layer_norm::layer_norm_mlx(&args[0], &args[1], args.get(2), eps)?
                    };
                    Ok(vec![y.multiply(&g)?.sum(None)?])
                };
                let mut args = vec![x.clone(), w.clone()];
                args.extend(b.clone());
                let argnums: Vec<i32> = (0..args.len() as i32).collect();
                let mut vg = transforms::value_and_grad_with_argnums(f, &argnums[..]);
                let (_, grads) = vg(&args).unwrap();
                grads
            };
            for (c, p) in grads(true).iter().zip(grads(false).iter()) {
                close(c, p, 1e-4);
            }
        }
    }

    #[test]
    fn declines_other_dtypes() {
        let x = Array::from_slice(&[1.0f32, 2.0, 4.0], &[1, 3]);
        let w = Array::from_slice(&[1.0f32, 1.0, 1.0], &[3]);
        assert!(layer_norm(&x.as_dtype(Dtype::Float16).unwrap(), &w, None, 1e-5).unwrap().is_none());
        assert!(layer_norm(&x, &w, None, 1e-5).unwrap().is_some());
    }
}
