//! `Mlp`: the position-wise feed-forward network, C → 4C → GELU (or ReLU²) → C.

use crate::config::{Activation, GptConfig};
use crate::dropout::Dropout;
use crate::linear::Linear;
use mlx_gpt_ops::Kernels;
use mlx_rs::error::Exception;
use mlx_rs::macros::ModuleParameters;
use mlx_rs::Array;

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
    /// Exact or tanh GELU, or ReLU².
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
    pub fn forward(&mut self, k: &Kernels, x: &Array) -> Result<Array, Exception> {
        let h = self.c_fc.forward(k, x)?; // (B, T, 4C)
        let h = match self.activation {
            Activation::ReluSquared => mlx_gpt_ops::relu_squared(k, &h, self.dropout.training)?,
            // Training: the CPU kernel also keeps GELU's slope for the backward pass.
            gelu => mlx_gpt_ops::gelu(k, &h, gelu == Activation::GeluNew, self.dropout.training)?,
        };
        self.dropout.forward(&self.c_proj.forward(k, &h)?) // (B, T, C)
    }
}
