//! GELU, exact (`x·Φ(x)`, GPT-2's `gelu` as nanoGPT uses it) or its tanh approximation
//! (Hugging Face's `gelu_new`).

use crate::kernels::{KernelSet, Kernels};
use mlx_rs::error::Exception;
use mlx_rs::{ops, Array};

/// GELU in the input's dtype (mlx-rs's own promotes bfloat16/float16 inputs to float32).
/// Exact: `x·½(1 + erf(x/√2))`; `tanh`: `x·½(1 + tanh(√(2/π)(x + 0.044715x³)))`.
/// `keep_slope` (training) lets the CPU kernel store GELU's slope in the forward pass, so
/// the gradient is one product instead of a second evaluation; the values are the same.
pub fn gelu(k: &Kernels, x: &Array, tanh: bool, keep_slope: bool) -> Result<Array, Exception> {
    if k.set() == KernelSet::Cpu {
        #[cfg(cpu_kernels)]
        if let Some(y) = crate::cpu::gelu::gelu(x, tanh, keep_slope)? {
            return Ok(y);
        }
    }
    let _ = keep_slope;
    gelu_mlx(x, tanh)
}

/// The plain-MLX formulation: the reference, and the fallback.
pub fn gelu_mlx(x: &Array, tanh: bool) -> Result<Array, Exception> {
    let k = |v: f32| Array::from_f32(v).as_dtype(x.dtype());
    let inner = if tanh {
        let cube = x.multiply(x)?.multiply(x)?;
        let arg = x.add(cube.multiply(k(0.044715)?)?)?.multiply(k((2.0 / std::f32::consts::PI).sqrt())?)?;
        ops::tanh(&arg)?
    } else {
        ops::erf(x.multiply(k(std::f32::consts::FRAC_1_SQRT_2)?)?)?
    };
    x.multiply(k(0.5)?)?.multiply(inner.add(k(1.0)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_matches_its_formulas_and_keeps_dtype() {
        let xs = [-3.0f32, -1.0, -0.1, 0.0, 0.5, 2.0];
        let x = Array::from_slice(&xs, &[6]);
        // erf by its series, in f64.
        let erf = |z: f64| {
            let (mut sum, mut term) = (0.0, z);
            for n in 0..60 {
                sum += term / (2 * n + 1) as f64;
                term *= -z * z / (n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        };
        let mut sets = vec![Kernels::mlx()];
        sets.extend(Kernels::cpu());
        for k in sets {
            let exact = gelu(&k, &x, false, false).unwrap();
            let tanh = gelu(&k, &x, true, false).unwrap();
            for (i, &v) in xs.iter().enumerate() {
                let v = v as f64;
                let want_exact = 0.5 * v * (1.0 + erf(v / 2f64.sqrt()));
                let want_tanh =
                    0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh());
                assert!((exact.as_slice::<f32>()[i] as f64 - want_exact).abs() < 1e-6, "{k:?} gelu({v})");
                assert!((tanh.as_slice::<f32>()[i] as f64 - want_tanh).abs() < 1e-6, "{k:?} gelu_new({v})");
            }
            let half = x.as_dtype(mlx_rs::Dtype::Bfloat16).unwrap();
            assert_eq!(gelu(&k, &half, false, false).unwrap().dtype(), mlx_rs::Dtype::Bfloat16);
        }
    }
}
