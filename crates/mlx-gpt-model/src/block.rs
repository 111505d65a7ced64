//! `Block`: one pre-LayerNorm transformer block, `x + attn(ln_1(x))` then `x + mlp(ln_2(x))`
//! (the modern GPT: RMSNorm in place of both LayerNorms).

use crate::attention::CausalSelfAttention;
use crate::config::{Activation, Arch, GptConfig};
use crate::kv_cache::LayerKv;
use crate::layer_norm::{pre_norm, LayerNorm};
use crate::mlp::Mlp;
use mlx_gpt_ops::Kernels;
use mlx_rs::error::Exception;
use mlx_rs::macros::ModuleParameters;
use mlx_rs::Array;

/// nanoGPT's `Block`, with GPT-2's parameter names. The modern GPT's has no LayerNorms:
/// it normalises with RMSNorm, which has no parameters.
#[derive(Debug, Clone, ModuleParameters)]
pub struct Block {
    /// LayerNorm before attention (none in the modern GPT).
    #[param]
    pub ln_1: Option<LayerNorm>,
    /// Causal self-attention.
    #[param]
    pub attn: CausalSelfAttention,
    /// LayerNorm before the MLP (none in the modern GPT).
    #[param]
    pub ln_2: Option<LayerNorm>,
    /// Feed-forward network.
    #[param]
    pub mlp: Mlp,
    /// RMSNorm's ε where there are no LayerNorms.
    pub eps: f32,
}

impl Block {
    /// Zero-initialised block.
    pub fn new(c: &GptConfig) -> Result<Self, Exception> {
        let layer_norm = || -> Result<_, Exception> {
            match c.arch {
                Arch::Gpt2 => Ok(Some(LayerNorm::new(c.n_embd, c.bias, c.layer_norm_epsilon)?)),
                Arch::Modern => Ok(None),
            }
        };
        Ok(Block {
            ln_1: layer_norm()?,
            attn: CausalSelfAttention::new(c)?,
            ln_2: layer_norm()?,
            mlp: Mlp::new(c)?,
            eps: c.layer_norm_epsilon,
        })
    }

    /// x (B, T, C) → (B, T, C). `rope`: the rotary tables of the T positions (modern GPT).
    pub fn forward(
        &mut self,
        k: &Kernels,
        x: &Array,
        mut kv: Option<&mut LayerKv>,
        rope: Option<&(Array, Array)>,
    ) -> Result<Array, Exception> {
        if let Some(kv) = kv.as_deref_mut() {
            if let Some(y) = self.decode_one(k, x, kv)? {
                return Ok(y);
            }
        }
        let h = pre_norm(k, self.ln_1.as_ref(), x, self.eps)?;
        let x = x.add(self.attn.forward(k, &h, kv, rope)?)?;
        let h = pre_norm(k, self.ln_2.as_ref(), &x, self.eps)?;
        x.add(self.mlp.forward(k, &h)?)
    }

    /// One new position per sequence after the prompt, generating: the whole block as one
    /// kernel where the kernels have one (`mlx_gpt_ops::decode_block`), the same
    /// arithmetic as the operations below. `None` where it declines.
    fn decode_one(&self, k: &Kernels, x: &Array, kv: &mut LayerKv) -> Result<Option<Array>, Exception> {
        // The decoding block is GPT-2's (LayerNorms, GELU); the modern GPT's runs as
        // separate operations.
        let Some((params, tanh, eps)) = self.decoding_params() else { return Ok(None) };
        if x.shape()[1] != 1 || kv.is_empty() {
            return Ok(None);
        }
        kv.reserve(x, 1)?;
        let (kb, vb) = kv.take();
        let n_head = self.attn.n_head;
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

    /// The block's parameters as the decoding kernels take them, GELU's tanh form and the
    /// LayerNorms' epsilon: GPT-2's block (LayerNorms, GELU) out of training; `None` for
    /// the modern GPT's (RMSNorm, ReLU²), which runs as separate operations.
    pub(crate) fn decoding_params(&self) -> Option<(mlx_gpt_ops::BlockParams<'_>, bool, f32)> {
        let (Some(ln_1), Some(ln_2)) = (&self.ln_1, &self.ln_2) else { return None };
        if self.mlp.dropout.training || self.mlp.activation == Activation::ReluSquared || ln_1.eps != ln_2.eps {
            return None;
        }
        let params: mlx_gpt_ops::BlockParams = [
            (&ln_1.weight, ln_1.bias.value.as_ref()),
            (&self.attn.c_attn.weight, self.attn.c_attn.bias.value.as_ref()),
            (&self.attn.c_proj.weight, self.attn.c_proj.bias.value.as_ref()),
            (&ln_2.weight, ln_2.bias.value.as_ref()),
            (&self.mlp.c_fc.weight, self.mlp.c_fc.bias.value.as_ref()),
            (&self.mlp.c_proj.weight, self.mlp.c_proj.bias.value.as_ref()),
        ];
        Some((params, self.mlp.activation == Activation::GeluNew, ln_1.eps))
    }

    /// Dropout on or off.
    pub fn set_training(&mut self, training: bool) {
        self.attn.set_training(training);
        self.mlp.dropout.training = training;
    }
}
