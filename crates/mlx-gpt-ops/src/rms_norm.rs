//! RMSNorm without learned parameters over the last axis: the modern GPT's only
//! normalisation (after the embedding, before attention and the MLP, on each head's
//! queries and keys, before the head).

use crate::kernels::{KernelSet, Kernels};
use mlx_rs::error::Exception;
use mlx_rs::Array;

/// `x / √(mean(x²) + eps)` over the last axis.
pub fn rms_norm(k: &Kernels, x: &Array, eps: f32) -> Result<Array, Exception> {
    match k.set() {
        KernelSet::MlxFast => mlx_rs::fast::rms_norm(x, None, eps),
        KernelSet::Cpu => {
            #[cfg(cpu_kernels)]
            if let Some(y) = crate::cpu::rms_norm::rms_norm(x, eps)? {
                return Ok(y);
            }
            rms_norm_mlx(x, eps)
        }
        KernelSet::Mlx => rms_norm_mlx(x, eps),
    }
}

/// The plain-MLX formulation: the reference, and the fallback.
pub fn rms_norm_mlx(x: &Array, eps: f32) -> Result<Array, Exception> {
    let ms = x.square()?.mean_axis(-1, true)?;
    x.multiply(ms.add(Array::from_f32(eps).as_dtype(x.dtype())?)?.rsqrt()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel set's gradient (with a non-trivial cotangent, and through a strided
    /// input) equals the plain formulation's.
    #[test]
    fn every_kernel_set_has_the_plain_gradient() {
        let key = |s| mlx_rs::random::key(s).unwrap();
        let x = mlx_rs::random::normal::<f32>(&[4, 6, 16], None, Some(2.0), &key(3)).unwrap();
        let w = mlx_rs::random::normal::<f32>(&[4, 16, 6], None, None, &key(4)).unwrap();
        let mut sets = vec![Kernels::mlx_fast()];
        sets.extend(Kernels::cpu());
        let grad = |k: Kernels, x: &Array| {
            let w = w.clone();
            let f = move |x: &Array| -> Result<Array, Exception> {
                rms_norm(&k, &x.swap_axes(1, 2)?, 1e-5)?.multiply(&w)?.sum(None)
            };
            // Flattened: a strided result is copied into row order.
            mlx_rs::transforms::grad(f)(x).unwrap().reshape(&[-1]).unwrap()
        };
        let want = grad(Kernels::mlx(), &x);
        for k in sets {
            let g = grad(k, &x);
            for (p, q) in g.as_slice::<f32>().iter().zip(want.as_slice::<f32>()) {
                assert!((p - q).abs() <= 1e-5 * (1.0 + q.abs()), "{}: {p} vs {q}", k.name());
            }
        }
    }

    #[test]
    fn every_kernel_set_gives_unit_root_mean_square() {
        let x = mlx_rs::random::normal::<f32>(&[3, 5, 16], None, Some(3.0), &mlx_rs::random::key(1).unwrap()).unwrap();
        let mut sets = vec![Kernels::mlx(), Kernels::mlx_fast()];
        sets.extend(Kernels::cpu());
        let want = rms_norm_mlx(&x, 1e-5).unwrap();
        for k in &sets {
            let y = rms_norm(k, &x, 1e-5).unwrap();
            for (p, q) in y.as_slice::<f32>().iter().zip(want.as_slice::<f32>()) {
                assert!((p - q).abs() < 1e-5, "{}: {p} vs {q}", k.name());
            }
        }
        // Each row's mean square is 1 (up to ε).
        let ms = want.square().unwrap().mean_axis(-1, false).unwrap();
        assert!(ms.as_slice::<f32>().iter().all(|m| (m - 1.0).abs() < 1e-4), "{ms:?}");
    }
}
