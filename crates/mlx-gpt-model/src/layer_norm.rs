//! `LayerNorm` with an optional bias (PyTorch's has none-or-both; nanoGPT needs bias-free),
//! and [`pre_norm`]: LayerNorm, or the modern GPT's parameter-free RMSNorm.

use mlx_gpt_ops::Kernels;
use mlx_rs::error::Exception;
use mlx_rs::macros::ModuleParameters;
use mlx_rs::module::Param;
use mlx_rs::{ops, Array};

/// Normalises each position's C features to zero mean and unit variance, then scales by
/// `weight` (gain) and shifts by `bias`.
#[derive(Debug, Clone, ModuleParameters)]
pub struct LayerNorm {
    /// (C,), initialised to 1
    #[param]
    pub weight: Param<Array>,
    /// (C,), initialised to 0, absent when the model has no biases
    #[param]
    pub bias: Param<Option<Array>>,
    /// ε added to the variance
    pub eps: f32,
}

impl LayerNorm {
    /// Gain 1, bias 0.
    pub fn new(n_embd: usize, bias: bool, eps: f32) -> Result<Self, Exception> {
        Ok(LayerNorm {
            weight: Param::new(ops::ones::<f32>(&[n_embd as i32])?),
            bias: Param::new(if bias { Some(ops::zeros::<f32>(&[n_embd as i32])?) } else { None }),
            eps,
        })
    }

    /// x (..., C) → (..., C)
    pub fn forward(&self, k: &Kernels, x: &Array) -> Result<Array, Exception> {
        mlx_gpt_ops::layer_norm(k, x, &self.weight, self.bias.value.as_ref(), self.eps)
    }
}

/// The normalisation before a block's attention and MLP and before the head: `ln` where
/// the model has one (GPT-2), else RMSNorm without parameters (the modern GPT).
pub fn pre_norm(k: &Kernels, ln: Option<&LayerNorm>, x: &Array, eps: f32) -> Result<Array, Exception> {
    match ln {
        Some(ln) => ln.forward(k, x),
        None => mlx_gpt_ops::rms_norm(k, x, eps),
    }
}
