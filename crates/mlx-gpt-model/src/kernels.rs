//! How a few operations are expressed: as MLX's dedicated primitives (`softmax`,
//! `logsumexp`, `fast::layer_norm`, `fast::scaled_dot_product_attention`), or as plain
//! element-wise and reduction ops.
//!
//! Under `compile`, MLX fuses chains of plain ops into generated kernels (vectorised with
//! the native JIT, see [`crate::jit`]), while a dedicated primitive stays a separate,
//! unfused call — on the CPU these primitives are scalar loops or fall back to the same
//! ops anyway. Plain ops are therefore the default; `MLX_GPT_PLAIN_OPS=0` (or
//! [`set_plain_ops`]) switches back for comparison. Results agree to float rounding
//! (tested in this module). Where mlx-gpt has its own primitive for one of them (LayerNorm,
//! attention: docs/model.md, "Custom primitives"), that comes first.

use crate::switch::Switch;
use mlx_rs::error::Exception;
use mlx_rs::{ops, Array};

static PLAIN_OPS: Switch = Switch::new("MLX_GPT_PLAIN_OPS");

/// Use plain ops (`true`, the default) or MLX's dedicated primitives.
pub fn set_plain_ops(plain: bool) {
    PLAIN_OPS.set(plain);
}

/// Whether plain ops are in use.
pub fn plain_ops() -> bool {
    PLAIN_OPS.get()
}

/// Softmax over the last axis: `exp(x − max) / Σ exp(x − max)`.
///
/// The max only keeps exp in range; the result does not depend on it, so no gradient is
/// taken through it (which would add the max's gradient kernels, an equality mask and
/// its use, to the backward pass for a contribution that is exactly zero in exact
/// arithmetic). The same holds for [`logsumexp_last`].
pub fn softmax_last(x: &Array) -> Result<Array, Exception> {
    if !plain_ops() {
        return ops::softmax_axis(x, -1, true);
    }
    let m = mlx_rs::stop_gradient(x.max_axis(-1, true)?)?;
    let e = x.subtract(&m)?.exp()?;
    e.divide(e.sum_axis(-1, true)?)
}

/// log Σ exp over the last axis, without keeping the axis.
pub fn logsumexp_last(x: &Array) -> Result<Array, Exception> {
    if !plain_ops() {
        return x.logsumexp_axis(-1, None);
    }
    let m = mlx_rs::stop_gradient(x.max_axis(-1, true)?)?;
    let s = x.subtract(&m)?.exp()?.sum_axis(-1, true)?;
    s.log()?.add(&m)?.squeeze_axes(&[-1])
}

/// LayerNorm over the last axis with gain `w` and optional bias `b`: mlx-gpt's own
/// primitive where it applies (float32 on the CPU, [`crate::layer_norm_primitive`]),
/// otherwise as chosen by [`plain_ops`].
pub fn layer_norm(x: &Array, w: &Array, b: Option<&Array>, eps: f32) -> Result<Array, Exception> {
    if let Some(y) = crate::layer_norm_primitive::layer_norm(x, w, b, eps)? {
        return Ok(y);
    }
    if !plain_ops() {
        return mlx_rs::fast::layer_norm(x, Some(w), b, eps);
    }
    layer_norm_ops(x, w, b, eps)
}

/// LayerNorm as plain ops (the formulation [`layer_norm`] uses when the primitive does not
/// apply, and the reference the primitive is tested against).
pub(crate) fn layer_norm_ops(x: &Array, w: &Array, b: Option<&Array>, eps: f32) -> Result<Array, Exception> {
    let mean = x.mean_axis(-1, true)?;
    let xc = x.subtract(&mean)?;
    let var = xc.square()?.mean_axis(-1, true)?;
    let y = xc.multiply(var.add(Array::from_f32(eps).as_dtype(x.dtype())?)?.rsqrt()?)?.multiply(w)?;
    match b {
        Some(b) => y.add(b),
        None => Ok(y),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(f: impl Fn() -> Array) -> (Vec<f32>, Vec<f32>) {
        set_plain_ops(true);
        let plain = f().as_slice::<f32>().to_vec();
        set_plain_ops(false);
        let prim = f().as_slice::<f32>().to_vec();
        set_plain_ops(true);
        (plain, prim)
    }

    fn fast_and_ops(x: &Array, w: &Array, b: Option<&Array>) -> (Vec<f32>, Vec<f32>) {
        let ops = layer_norm_ops(x, w, b, 1e-5).unwrap().as_slice::<f32>().to_vec();
        let fast = mlx_rs::fast::layer_norm(x, Some(w), b, 1e-5).unwrap().as_slice::<f32>().to_vec();
        (ops, fast)
    }

    #[test]
    fn plain_ops_match_the_primitives() {
        let key = mlx_rs::random::key(3).unwrap();
        let x = mlx_rs::random::normal::<f32>(&[4, 7, 33][..], None, 3.0, &key).unwrap();
        let w = mlx_rs::random::normal::<f32>(&[33][..], None, None, &key).unwrap();
        let b = mlx_rs::random::normal::<f32>(&[33][..], None, None, &key).unwrap();
        for (name, (p, q)) in [
            ("softmax", both(|| softmax_last(&x).unwrap())),
            ("logsumexp", both(|| logsumexp_last(&x).unwrap())),
            // `layer_norm` itself runs mlx-gpt's primitive here either way: compare the two
            // formulations it chooses between when the primitive does not apply.
            ("layer_norm", fast_and_ops(&x, &w, Some(&b))),
            ("layer_norm without bias", fast_and_ops(&x, &w, None)),
        ] {
            assert_eq!(p.len(), q.len(), "{name}");
            for (a, b) in p.iter().zip(&q) {
                assert!((a - b).abs() <= 2e-5 * (1.0 + b.abs()), "{name}: {a} vs {b}");
            }
        }
    }
}
