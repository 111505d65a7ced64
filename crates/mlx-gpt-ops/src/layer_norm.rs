//! LayerNorm over the last axis, with a gain and an optional bias.

use crate::kernels::{KernelSet, Kernels};
use mlx_rs::error::Exception;
use mlx_rs::Array;

/// `(x − mean) / √(var + eps) · w (+ b)` over the last axis.
pub fn layer_norm(k: &Kernels, x: &Array, w: &Array, b: Option<&Array>, eps: f32) -> Result<Array, Exception> {
    match k.set() {
        KernelSet::Cpu => {
            #[cfg(cpu_kernels)]
            if let Some(y) = crate::cpu::layer_norm::layer_norm(x, w, b, eps)? {
                return Ok(y);
            }
            layer_norm_mlx(x, w, b, eps)
        }
        KernelSet::Mlx => layer_norm_mlx(x, w, b, eps),
        KernelSet::MlxFast => mlx_rs::fast::layer_norm(x, Some(w), b, eps),
    }
}

/// The plain-MLX formulation: the reference, and the fallback.
pub fn layer_norm_mlx(x: &Array, w: &Array, b: Option<&Array>, eps: f32) -> Result<Array, Exception> {
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

    #[test]
    fn plain_ops_match_mlx_fast_layer_norm() {
        let key = mlx_rs::random::key(3).unwrap();
        let x = mlx_rs::random::normal::<f32>(&[4, 7, 33][..], None, 3.0, &key).unwrap();
        let w = mlx_rs::random::normal::<f32>(&[33][..], None, None, &key).unwrap();
        let b = mlx_rs::random::normal::<f32>(&[33][..], None, None, &key).unwrap();
        for bias in [Some(&b), None] {
            let p = layer_norm(&Kernels::mlx(), &x, &w, bias, 1e-5).unwrap();
            let q = layer_norm(&Kernels::mlx_fast(), &x, &w, bias, 1e-5).unwrap();
            for (a, b) in p.as_slice::<f32>().iter().zip(q.as_slice::<f32>()) {
                assert!((a - b).abs() <= 2e-5 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }
}
