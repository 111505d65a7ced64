//! Softmax and logsumexp over the last axis.
//!
//! Under `compile`, MLX fuses chains of plain ops into generated kernels, while its
//! dedicated `softmax` and `logsumexp` stay separate, unfused calls — on the CPU scalar
//! loops. So the plain formulation runs everywhere but with [`KernelSet::MlxFast`] (a
//! GPU's choice). Results agree to float rounding (tested here).

use crate::kernels::{KernelSet, Kernels};
use mlx_rs::error::Exception;
use mlx_rs::{ops, Array};

/// Softmax over the last axis: `exp(x − max) / Σ exp(x − max)`.
///
/// The max only keeps exp in range; the result does not depend on it, so no gradient is
/// taken through it (which would add the max's gradient kernels, an equality mask and
/// its use, to the backward pass for a contribution that is exactly zero in exact
/// arithmetic). The same holds for [`logsumexp_last`].
pub fn softmax_last(k: &Kernels, x: &Array) -> Result<Array, Exception> {
    if k.set() == KernelSet::MlxFast {
        return ops::softmax_axis(x, -1, true);
    }
    let m = mlx_rs::stop_gradient(x.max_axis(-1, true)?)?;
    let e = x.subtract(&m)?.exp()?;
    e.divide(e.sum_axis(-1, true)?)
}

/// log Σ exp over the last axis, without keeping the axis.
pub fn logsumexp_last(k: &Kernels, x: &Array) -> Result<Array, Exception> {
    if k.set() == KernelSet::MlxFast {
        return x.logsumexp_axis(-1, None);
    }
    let m = mlx_rs::stop_gradient(x.max_axis(-1, true)?)?;
    let s = x.subtract(&m)?.exp()?.sum_axis(-1, true)?;
    s.log()?.add(&m)?.squeeze_axes(&[-1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ops_match_mlx_primitives() {
        let key = mlx_rs::random::key(3).unwrap();
        let x = mlx_rs::random::normal::<f32>(&[4, 7, 33][..], None, 3.0, &key).unwrap();
        let (plain, fast) = (Kernels::mlx(), Kernels::mlx_fast());
        for (name, p, q) in [
            ("softmax", softmax_last(&plain, &x).unwrap(), softmax_last(&fast, &x).unwrap()),
            ("logsumexp", logsumexp_last(&plain, &x).unwrap(), logsumexp_last(&fast, &x).unwrap()),
        ] {
            assert_eq!(p.shape(), q.shape(), "{name}");
            for (a, b) in p.as_slice::<f32>().iter().zip(q.as_slice::<f32>()) {
                assert!((a - b).abs() <= 2e-5 * (1.0 + b.abs()), "{name}: {a} vs {b}");
            }
        }
    }
}
