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
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{ops, Array};

/// Keys and values of the positions already processed by one layer, for generation.
///
/// They live in buffers with room to spare, written in place: appending a token writes
/// its own keys and values (MLX updates a buffer nothing else refers to without copying
/// it), where concatenating would copy the whole cache at every token. A full buffer is
/// reallocated at twice the size, so the copying is amortised. The heads stay side by
/// side, (B, capacity, C) as c_attn produces them: appending copies rows as they are, and
/// a new position's attention reads each head's columns in place
/// ([`crate::decode_attention`]).
#[derive(Debug, Clone, Default)]
pub struct LayerKv {
    /// (B, capacity, C); positions `len..` are unused.
    pub k: Option<Array>,
    /// (B, capacity, C)
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

    /// Append `k`, `v` (B, T, C): the new positions' keys and values.
    fn append(&mut self, k: &Array, v: &Array) -> Result<(), Exception> {
        use mlx_rs::ops::indexing::TryIndexMutOp;
        let (past, t) = (self.len as i32, k.shape()[1]);
        let needed = past + t;
        let capacity = self.k.as_ref().map_or(0, |k| k.shape()[1]);
        if needed > capacity {
            let new_capacity = needed.max(2 * capacity).max(64);
            let grow = |old: Option<Array>, like: &Array| -> Result<Array, Exception> {
                let sh = like.shape();
                let mut buffer = ops::zeros_dtype(&[sh[0], new_capacity, sh[2]], like.dtype())?;
                if let Some(old) = old {
                    buffer.try_index_mut((.., 0..past, ..), old.index((.., 0..past, ..)))?;
                }
                Ok(buffer)
            };
            self.k = Some(grow(self.k.take(), k)?);
            self.v = Some(grow(self.v.take(), v)?);
        }
        // Taken out of `self` while written, so the old buffer has no other owner.
        let mut kb = self.k.take().expect("allocated above");
        let mut vb = self.v.take().expect("allocated above");
        kb.try_index_mut((.., past..needed, ..), k)?;
        vb.try_index_mut((.., past..needed, ..), v)?;
        self.k = Some(kb);
        self.v = Some(vb);
        self.len = needed as usize;
        Ok(())
    }

    /// The buffers (B, capacity, C); positions `..len()` are held. Call after `append`.
    fn buffers(&self) -> (&Array, &Array) {
        (self.k.as_ref().expect("appended"), self.v.as_ref().expect("appended"))
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
        let past = kv.as_ref().map_or(0, |kv| kv.len()) as i32;
        let scale = 1.0 / (hs as f32).sqrt();
        let dropout = self.attn_dropout.active();
        if past == 0 && crate::causal_attention::applies(qkv.dtype()) {
            // Whole sequences (training, full forwards, a prompt's first pass): one kernel
            // from c_attn's output, and one for its gradient. The dropout mask is drawn
            // where MLX ops would draw it (same key, same shape), and applied inside.
            let mask = self.attn_dropout.multiplier(&[b, nh, t, t], qkv.dtype())?;
            if let Some(y) = crate::causal_attention::attend(&qkv, mask.as_ref(), nh, scale)? {
                if let Some(kv) = kv {
                    kv.append(&parts[1], &parts[2])?;
                }
                return self.resid_dropout.forward(&self.c_proj.forward(&y)?);
            }
        }
        let (k, v) = match kv {
            Some(kv) => {
                kv.append(&parts[1], &parts[2])?;
                let (kb, vb) = kv.buffers();
                if t == 1 && !dropout {
                    // One new position: one kernel over the buffers where they lie.
                    let len = past + 1;
                    if let Some(y) = crate::decode_attention::attend(&parts[0], kb, vb, nh, len, scale)? {
                        return self.resid_dropout.forward(&self.c_proj.forward(&y)?);
                    }
                }
                let s = past + t;
                (heads_of(&kb.index((.., 0..s, ..)), nh)?, heads_of(&vb.index((.., 0..s, ..)), nh)?)
                // (B, nh, S, hs)
            }
            None => (heads_of(&parts[1], nh)?, heads_of(&parts[2], nh)?), // (B, nh, T, hs)
        };
        let q = heads_of(&parts[0], nh)?;
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

/// (B, S, C) → (B, nh, S, hs): the heads apart.
fn heads_of(a: &Array, nh: i32) -> Result<Array, Exception> {
    let sh = a.shape();
    a.reshape(&[sh[0], sh[1], nh, sh[2] / nh])?.transpose_axes(&[0, 2, 1, 3])
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GptConfig;
    use mlx_rs::random;

    /// With attention dropout active, the custom attention kernel and MLX ops draw the
    /// same masks from the same key (the kernel's mask is drawn where MLX ops draw it), so
    /// training does not depend on which one runs.
    #[test]
    fn dropout_draws_the_same_masks_with_and_without_the_attention_kernel() {
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
        /// Switches the kernel back on when dropped, even after a panic.
        struct On;
        impl Drop for On {
            fn drop(&mut self) {
                crate::causal_attention::set_enabled(true);
            }
        }
        let _lock = crate::causal_attention::test_lock();
        let run = |attn: &mut CausalSelfAttention, kernel: bool| {
            let _on = On;
            crate::causal_attention::set_enabled(kernel);
            crate::dropout::with_key(&key, || attn.forward(&x, None)).unwrap()
        };
        let (with, without) = (run(&mut attn, true), run(&mut attn, false));
        let nothing_dropped = {
            attn.set_training(false);
            attn.forward(&x, None).unwrap()
        };
        let (a, b, c) = (with.as_slice::<f32>(), without.as_slice::<f32>(), nothing_dropped.as_slice::<f32>());
        for (p, q) in a.iter().zip(b) {
            assert!((p - q).abs() <= 1e-5 * (1.0 + q.abs()), "{p} vs {q}");
        }
        assert!(a.iter().zip(c).any(|(p, q)| (p - q).abs() > 1e-3), "dropout changed nothing");
    }
}
