//! `CausalSelfAttention`: multi-head attention where position t only sees positions ≤ t.
//!
//! Shapes: B batch, T new positions, S = past + T key positions, C = n_embd, nh heads,
//! hs = C / nh head size.

use crate::config::GptConfig;
use crate::dropout::Dropout;
use crate::linear::Linear;
use mlx_rs::error::Exception;
use mlx_rs::fast::{scaled_dot_product_attention, ScaledDotProductAttentionMask};
use mlx_rs::macros::ModuleParameters;
use mlx_rs::{ops, Array};

/// Keys and values of the positions already processed by one layer, for generation.
///
/// They live in buffers with room to spare, written in place: appending a token writes
/// its own keys and values (MLX updates a buffer nothing else refers to without copying
/// it), where concatenating would copy the whole cache at every token. A full buffer is
/// reallocated at twice the size, so the copying is amortised.
#[derive(Debug, Clone, Default)]
pub struct LayerKv {
    /// (B, nh, capacity, hs); positions `len..` are unused.
    pub k: Option<Array>,
    /// (B, nh, capacity, hs)
    pub v: Option<Array>,
    len: usize,
}

impl LayerKv {
    /// Number of positions held.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether nothing is held yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append `k`, `v` (B, nh, T, hs) and return the keys and values of every position
    /// held, (B, nh, len, hs).
    fn append(&mut self, k: &Array, v: &Array) -> Result<(Array, Array), Exception> {
        use mlx_rs::ops::indexing::{IndexOp, TryIndexMutOp};
        let (past, t) = (self.len as i32, k.shape()[2]);
        let needed = past + t;
        let capacity = self.k.as_ref().map_or(0, |k| k.shape()[2]);
        if needed > capacity {
            let new_capacity = needed.max(2 * capacity).max(64);
            let grow = |old: Option<Array>, like: &Array| -> Result<Array, Exception> {
                let sh = like.shape();
                let mut buffer = ops::zeros_dtype(&[sh[0], sh[1], new_capacity, sh[3]], like.dtype())?;
                if let Some(old) = old {
                    buffer.try_index_mut((.., .., 0..past, ..), old.index((.., .., 0..past, ..)))?;
                }
                Ok(buffer)
            };
            self.k = Some(grow(self.k.take(), k)?);
            self.v = Some(grow(self.v.take(), v)?);
        }
        // Taken out of `self` while written, so the old buffer has no other owner.
        let mut kb = self.k.take().expect("allocated above");
        let mut vb = self.v.take().expect("allocated above");
        kb.try_index_mut((.., .., past..needed, ..), k)?;
        vb.try_index_mut((.., .., past..needed, ..), v)?;
        let held = (kb.index((.., .., 0..needed, ..)), vb.index((.., .., 0..needed, ..)));
        self.k = Some(kb);
        self.v = Some(vb);
        self.len = needed as usize;
        Ok(held)
    }
}

/// nanoGPT's `CausalSelfAttention`, with GPT-2's parameter names.
#[derive(Debug, Clone, ModuleParameters)]
pub struct CausalSelfAttention {
    /// Fused projection to q, k, v: (C, 3C)
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
}

impl CausalSelfAttention {
    /// Zero-initialised layer (see `Gpt::new` for the initialisation).
    pub fn new(c: &GptConfig) -> Result<Self, Exception> {
        Ok(CausalSelfAttention {
            c_attn: Linear::new(c.n_embd, 3 * c.n_embd, c.bias)?,
            c_proj: Linear::new(c.n_embd, c.n_embd, c.bias)?,
            attn_dropout: Dropout::new(c.dropout),
            resid_dropout: Dropout::new(c.dropout),
            n_head: c.n_head,
        })
    }

    /// Switch dropout on (training) or off (evaluation, generation).
    pub fn set_training(&mut self, training: bool) {
        self.attn_dropout.training = training;
        self.resid_dropout.training = training;
    }

    /// x (B, T, C) → (B, T, C). With `kv`, the new keys and values are appended to it and
    /// the queries attend to all S = past + T positions it then holds.
    pub fn forward(&mut self, x: &Array, kv: Option<&mut LayerKv>) -> Result<Array, Exception> {
        let (b, t, c) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let nh = self.n_head as i32;
        let hs = c / nh;
        let qkv = self.c_attn.forward(x)?; // (B, T, 3C)
        let parts = qkv.split_equal(3, -1)?; // 3 × (B, T, C)
        let heads = |a: &Array| a.reshape(&[b, t, nh, hs])?.transpose_axes(&[0, 2, 1, 3]); // (B, nh, T, hs)
        let (q, mut k, mut v) = (heads(&parts[0])?, heads(&parts[1])?, heads(&parts[2])?);
        let past = kv.as_ref().map_or(0, |kv| kv.len()) as i32;
        if let Some(kv) = kv {
            (k, v) = kv.append(&k, &v)?; // (B, nh, S, hs)
        }
        let scale = 1.0 / (hs as f32).sqrt();
        let dropout = self.attn_dropout.active();
        let y = if dropout || crate::kernels::plain_ops() {
            // Explicit attention: dropout acts on the weights, which the fused kernel never
            // exposes; and under compile these ops fuse (see kernels.rs).
            let scale = Array::from_f32(scale).as_dtype(q.dtype())?;
            let att = q.multiply(&scale)?.matmul(k.swap_axes(-2, -1)?)?; // (B, nh, T, S)
            let att = if t > 1 { att.add(causal_mask(t, past, att.dtype())?)? } else { att };
            let att = crate::kernels::softmax_last(&att)?;
            let att = if dropout { self.attn_dropout.forward(&att)? } else { att };
            att.matmul(&v)? // (B, nh, T, hs)
        } else if t == 1 {
            // One new query sees every held position: no mask needed.
            scaled_dot_product_attention(&q, &k, &v, scale, None, None)?
        } else if past == 0 {
            scaled_dot_product_attention(&q, &k, &v, scale, ScaledDotProductAttentionMask::Causal, None)?
        } else {
            let mask = causal_mask(t, past, q.dtype())?;
            scaled_dot_product_attention(&q, &k, &v, scale, ScaledDotProductAttentionMask::Array(&mask), None)?
        };
        let y = y.transpose_axes(&[0, 2, 1, 3])?.reshape(&[b, t, c])?; // re-assemble heads: (B, T, C)
        self.resid_dropout.forward(&self.c_proj.forward(&y)?)
    }
}

/// Additive mask (T, past + T): 0 where query i may see key j (j ≤ past + i), −∞ elsewhere.
/// −∞ before the softmax gives those keys exactly zero weight.
pub fn causal_mask(t: i32, past: i32, dtype: mlx_rs::Dtype) -> Result<Array, Exception> {
    let rows = ops::arange::<_, i32>(past, past + t, None)?.reshape(&[t, 1])?;
    let cols = ops::arange::<_, i32>(0, past + t, None)?.reshape(&[1, past + t])?;
    let allowed = cols.le(&rows)?;
    let neg_inf = Array::from_f32(f32::NEG_INFINITY).as_dtype(dtype)?;
    ops::select(&allowed, Array::from_f32(0.0).as_dtype(dtype)?, neg_inf)
}
