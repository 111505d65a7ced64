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
    pub fn forward(&mut self, k: &Kernels, x: &Array, mut kv: Option<&mut LayerKv>) -> Result<Array, Exception> {
        if let Some(kv) = kv.as_deref_mut() {
            if let Some(y) = self.decode_one(k, x, kv)? {
                return Ok(y);
            }
        }
        let x = x.add(self.attn.forward(k, &self.ln_1.forward(k, x)?, kv)?)?;
        x.add(self.mlp.forward(k, &self.ln_2.forward(k, &x)?)?)
    }

    /// One new position per sequence after the prompt, generating: the whole block as one
    /// kernel where the kernels have one (`mlx_gpt_ops::decode_block`), the same
    /// arithmetic as the operations below. `None` where it declines.
    fn decode_one(&self, k: &Kernels, x: &Array, kv: &mut LayerKv) -> Result<Option<Array>, Exception> {
        if x.shape()[1] != 1 || kv.is_empty() || self.mlp.dropout.training {
            return Ok(None);
        }
        let params: mlx_gpt_ops::BlockParams = [
            (&self.ln_1.weight, self.ln_1.bias.value.as_ref()),
            (&self.attn.c_attn.weight, self.attn.c_attn.bias.value.as_ref()),
            (&self.attn.c_proj.weight, self.attn.c_proj.bias.value.as_ref()),
            (&self.ln_2.weight, self.ln_2.bias.value.as_ref()),
            (&self.mlp.c_fc.weight, self.mlp.c_fc.bias.value.as_ref()),
            (&self.mlp.c_proj.weight, self.mlp.c_proj.bias.value.as_ref()),
        ];
        kv.reserve(x, 1)?;
        let (kb, vb) = kv.take();
        let tanh = self.mlp.activation == crate::config::Activation::GeluNew;
        let (n_head, eps) = (self.attn.n_head, self.ln_1.eps);
        match mlx_gpt_ops::decode_block(k, x, kb, vb, kv.len(), n_head, eps, tanh, &params)? {
            mlx_gpt_ops::Decoded::Done { x, k, v } => {
                kv.restore(k, v, 1);
                Ok(Some(x))
            }
            mlx_gpt_ops::Decoded::Declined(kb, vb) => {
                kv.restore(kb, vb, 0);
                Ok(None)
            }
        }
    }

    /// Dropout on or off.
    pub fn set_training(&mut self, training: bool) {
        self.attn.set_training(training);
        self.mlp.dropout.training = training;
    }
}
