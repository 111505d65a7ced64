//! `Mlp`: the position-wise feed-forward network, C → 4C → GELU → C.

use crate::config::{Activation, GptConfig};
use crate::dropout::Dropout;
use crate::linear::Linear;
use mlx_rs::error::Exception;
use mlx_rs::macros::ModuleParameters;
use mlx_rs::{ops, Array};

/// nanoGPT's `MLP`, with GPT-2's parameter names.
#[derive(Debug, Clone, ModuleParameters)]
pub struct Mlp {
    /// (C, 4C)
    #[param]
    pub c_fc: Linear,
    /// (4C, C)
    #[param]
    pub c_proj: Linear,
    /// Dropout on the output (the residual branch).
    pub dropout: Dropout,
    /// Exact or tanh GELU.
    pub activation: Activation,
}

impl Mlp {
    /// Zero-initialised layer.
    pub fn new(c: &GptConfig) -> Result<Self, Exception> {
        Ok(Mlp {
            c_fc: Linear::new(c.n_embd, 4 * c.n_embd, c.bias)?,
            c_proj: Linear::new(4 * c.n_embd, c.n_embd, c.bias)?,
            dropout: Dropout::new(c.dropout),
            activation: c.activation,
        })
    }

    /// x (B, T, C) → (B, T, C)
    pub fn forward(&mut self, x: &Array) -> Result<Array, Exception> {
        let h = self.c_fc.forward(x)?; // (B, T, 4C)
                                       // Training: the primitive also keeps GELU's slope for the backward pass.
        let h = gelu_with(&h, self.activation, self.dropout.training)?;
        self.dropout.forward(&self.c_proj.forward(&h)?)
    }
}

/// GELU in the input's dtype (mlx-rs's own promotes bfloat16/float16 inputs to float32).
/// Exact: `x·½(1 + erf(x/√2))`; tanh: `x·½(1 + tanh(√(2/π)(x + 0.044715x³)))`.
pub fn gelu(x: &Array, activation: Activation) -> Result<Array, Exception> {
    gelu_with(x, activation, false)
}

/// [`gelu`]; `with_slope` (training) has the primitive keep GELU's slope for the gradient.
fn gelu_with(x: &Array, activation: Activation, with_slope: bool) -> Result<Array, Exception> {
    // float32 on the CPU: one-pass forward and gradient (crate::gelu_primitive).
    if let Some(y) = crate::gelu_primitive::gelu(x, activation == Activation::GeluNew, with_slope)? {
        return Ok(y);
    }
    gelu_ops(x, activation)
}

/// GELU as MLX ops (what [`gelu`] runs when the primitive does not apply, and the
/// reference the primitive is tested against).
pub(crate) fn gelu_ops(x: &Array, activation: Activation) -> Result<Array, Exception> {
    let k = |v: f32| Array::from_f32(v).as_dtype(x.dtype());
    let inner = match activation {
        Activation::Gelu => ops::erf(x.multiply(k(std::f32::consts::FRAC_1_SQRT_2)?)?)?,
        Activation::GeluNew => {
            let cube = x.multiply(x)?.multiply(x)?;
            let arg = x.add(cube.multiply(k(0.044715)?)?)?.multiply(k((2.0 / std::f32::consts::PI).sqrt())?)?;
            ops::tanh(&arg)?
        }
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
        let exact = gelu(&x, Activation::Gelu).unwrap();
        let tanh = gelu(&x, Activation::GeluNew).unwrap();
        for (i, &v) in xs.iter().enumerate() {
            let v = v as f64;
            // erf through its relation to the normal CDF, via a high-precision series.
            let erf = |z: f64| {
                let mut sum = 0.0;
                let mut term = z;
                for n in 0..60 {
                    sum += term / (2 * n + 1) as f64;
                    term *= -z * z / (n + 1) as f64;
                }
                sum * 2.0 / std::f64::consts::PI.sqrt()
            };
            let want_exact = 0.5 * v * (1.0 + erf(v / 2f64.sqrt()));
            let want_tanh = 0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v.powi(3))).tanh());
            assert!((exact.as_slice::<f32>()[i] as f64 - want_exact).abs() < 1e-6, "gelu({v})");
            assert!((tanh.as_slice::<f32>()[i] as f64 - want_tanh).abs() < 1e-6, "gelu_new({v})");
        }
        let half = x.as_dtype(mlx_rs::Dtype::Bfloat16).unwrap();
        assert_eq!(gelu(&half, Activation::Gelu).unwrap().dtype(), mlx_rs::Dtype::Bfloat16);
    }
}
