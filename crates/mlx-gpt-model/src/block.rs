//! `Block`: one pre-LayerNorm transformer block, `x + attn(ln_1(x))` then `x + mlp(ln_2(x))`.

use crate::attention::CausalSelfAttention;
use crate::config::GptConfig;
use crate::kv_cache::LayerKv;
use crate::layer_norm::LayerNorm;
use crate::mlp::Mlp;
use mlx_gpt_ops::Kernels;
use mlx_rs::error::Exception;
use mlx_rs::macros::ModuleParameters;
use mlx_rs::Array;

/// nanoGPT's `Block`, with GPT-2's parameter names.
#[derive(Debug, Clone, ModuleParameters)]
pub struct Block {
    /// LayerNorm before attention.
    #[param]
    pub ln_1: LayerNorm,
    /// Causal self-attention.
    #[param]
    pub attn: CausalSelfAttention,
    /// LayerNorm before the MLP.
    #[param]
    pub ln_2: LayerNorm,
    /// Feed-forward network.
    #[param]
    pub mlp: Mlp,
}

impl Block {
    /// Zero-initialised block.
    pub fn new(c: &GptConfig) -> Result<Self, Exception> {
        Ok(Block {
            ln_1: LayerNorm::new(c.n_embd, c.bias, c.layer_norm_epsilon)?,
            attn: CausalSelfAttention::new(c)?,
            ln_2: LayerNorm::new(c.n_embd, c.bias, c.layer_norm_epsilon)?,
            mlp: Mlp::new(c)?,
        })
    }

    /// x (B, T, C) → (B, T, C)
    pub fn forward(&mut self, k: &Kernels, x: &Array, kv: Option<&mut LayerKv>) -> Result<Array, Exception> {
        let x = x.add(self.attn.forward(k, &self.ln_1.forward(k, x)?, kv)?)?;
        x.add(self.mlp.forward(k, &self.ln_2.forward(k, &x)?)?)
    }

    /// Dropout on or off.
    pub fn set_training(&mut self, training: bool) {
        self.attn.set_training(training);
        self.mlp.dropout.training = training;
    }
}
