//! `CausalSelfAttention`: multi-head attention where position t only sees positions ≤ t.
//!
//! Shapes: B batch, T new positions, C = n_embd, nh heads, hs = C / nh head size, nkv
//! key/value heads (the modern GPT's grouped-query attention; nh otherwise).
//!
//! The modern GPT changes only what enters the attention: its queries and keys are
//! normalised per head (QK-norm) and turned by their positions (rotary), and with
//! grouped-query attention each key/value head is repeated for the query heads it serves.
//! After that, q, k and v lie side by side (B, T, 3C) as GPT-2's c_attn produces them, and
//! the same attention runs — whole sequences, the KV cache, and their kernels.

use crate::config::{Arch, GptConfig};
use crate::dropout::Dropout;
use crate::kv_cache::LayerKv;
use crate::linear::Linear;
use mlx_gpt_ops::Kernels;
use mlx_rs::error::Exception;
use mlx_rs::macros::ModuleParameters;
use mlx_rs::Array;

/// nanoGPT's `CausalSelfAttention`, with GPT-2's parameter names.
#[derive(Debug, Clone, ModuleParameters)]
pub struct CausalSelfAttention {
    /// Fused projection to q, k, v: (C, 3C); with grouped-query attention
    /// (C, (nh + 2·nkv)·hs).
    #[param]
    pub c_attn: Linear,
    /// Output projection: (C, C)
    #[param]
    pub c_proj: Linear,
    /// Dropout on the attention weights.
    pub attn_dropout: Dropout,
    /// Dropout on the output (the residual branch).
    pub resid_dropout: Dropout,
    /// Number of heads.
    pub n_head: usize,
    /// Number of key/value heads (a divisor of `n_head`).
    pub n_kv_head: usize,
    /// The modern GPT's QK-norm: RMSNorm's ε for each head's queries and keys; none in
    /// GPT-2.
    pub qk_norm: Option<f32>,
}

impl CausalSelfAttention {
    /// Zero-initialised layer (see `Gpt::new` for the initialisation).
    pub fn new(c: &GptConfig) -> Result<Self, Exception> {
        let kv_width = c.kv_heads() * c.head_size();
        Ok(CausalSelfAttention {
            c_attn: Linear::new(c.n_embd, c.n_embd + 2 * kv_width, c.bias)?,
            c_proj: Linear::new(c.n_embd, c.n_embd, c.bias)?,
            attn_dropout: Dropout::new(c.dropout),
            resid_dropout: Dropout::new(c.dropout),
            n_head: c.n_head,
            n_kv_head: c.kv_heads(),
            qk_norm: (c.arch == Arch::Modern).then_some(c.layer_norm_epsilon),
        })
    }

    /// Switch dropout on (training) or off (evaluation, generation).
    pub fn set_training(&mut self, training: bool) {
        self.attn_dropout.training = training;
        self.resid_dropout.training = training;
    }

    /// x (B, T, C) → (B, T, C). With `kv`, the new keys and values are appended to it and
    /// the queries attend to every position it then holds. `rope`: the rotary tables of
    /// the T positions (the modern GPT; see [`mlx_gpt_ops::rotary_tables`]).
    pub fn forward(
        &mut self,
        k: &Kernels,
        x: &Array,
        kv: Option<&mut LayerKv>,
        rope: Option<&(Array, Array)>,
    ) -> Result<Array, Exception> {
        let (b, t, c) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let nh = self.n_head as i32;
        let scale = 1.0 / ((c / nh) as f32).sqrt();
        // (B, T, 3C): q, k, v side by side. The modern GPT's is (B, T, (nh + 2·nkv)·hs):
        // QK-norm, the turn and the repeat of key/value heads bring it to GPT-2's layout.
        let qkv = self.c_attn.forward(k, x)?;
        let qkv = match (self.qk_norm, rope) {
            (Some(eps), Some((cos, sin))) => {
                mlx_gpt_ops::rotary_qkv(k, &qkv, cos, sin, nh, self.n_kv_head as i32, eps)?
            }
            (None, None) => qkv,
            _ => return Err(Exception::custom("rotary tables are for the modern GPT's attention alone")),
        };
        let y = match kv {
            // New positions after cached ones (generation).
            Some(kv) if !kv.is_empty() => {
                let parts = qkv.split_equal(3, -1)?; // 3 × (B, T, C)
                kv.append(&parts[1], &parts[2])?;
                let (kb, vb) = kv.buffers(); // (B, capacity, C)
                mlx_gpt_ops::cached_attention(k, &parts[0], kb, vb, kv.len() as i32, nh, scale)?
            }
            // Whole sequences: training, evaluation, a prompt's first pass.
            kv => {
                let dropout = self.attn_dropout.multiplier(&[b, nh, t, t], qkv.dtype())?; // (B, nh, T, T)
                if let Some(kv) = kv {
                    let parts = qkv.split_equal(3, -1)?;
                    kv.append(&parts[1], &parts[2])?;
                }
                mlx_gpt_ops::causal_attention(k, &qkv, nh, scale, dropout.as_ref())?
            }
        }; // (B, T, C)
        self.resid_dropout.forward(&self.c_proj.forward(k, &y)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GptConfig;
    use mlx_rs::random;

    /// With attention dropout active, every kernel set applies the same masks from the
    /// same key, so training does not depend on which one runs.
    #[test]
    fn dropout_draws_the_same_masks_with_every_kernel_set() {
        let c = GptConfig { n_embd: 16, n_head: 2, dropout: 0.25, ..GptConfig::baby(11) };
        let mut attn = CausalSelfAttention::new(&c).unwrap();
        let w = |shape: &[i32], seed: u64| {
            random::normal::<f32>(shape, None, Some(0.3), &random::key(seed).unwrap()).unwrap()
        };
        *attn.c_attn.weight = w(&[16, 48], 1);
        *attn.c_proj.weight = w(&[16, 16], 2);
        attn.set_training(true);
        let x = w(&[2, 9, 16], 3);
        let key = random::key(4).unwrap();
        let run = |attn: &mut CausalSelfAttention, k: Kernels| {
            crate::dropout::with_key(&key, || attn.forward(&k, &x, None, None)).unwrap()
        };
        let with = run(&mut attn, Kernels::cpu().unwrap_or_default());
        let without = run(&mut attn, Kernels::mlx());
        let nothing_dropped = {
            attn.set_training(false);
            attn.forward(&Kernels::mlx(), &x, None, None).unwrap()
        };
        let (a, b, c) = (with.as_slice::<f32>(), without.as_slice::<f32>(), nothing_dropped.as_slice::<f32>());
        for (p, q) in a.iter().zip(b) {
            assert!((p - q).abs() <= 1e-5 * (1.0 + q.abs()), "{p} vs {q}");
        }
        assert!(a.iter().zip(c).any(|(p, q)| (p - q).abs() > 1e-3), "dropout changed nothing");
    }
}
