//! Causal self-attention: `softmax(scale · q kᵀ + causal mask) · v` per head.
//!
//! Shapes: B batch, T new positions, S = past + T key positions, C = n_embd, nh heads,
//! hs = C / nh. Queries, keys and values arrive with their heads side by side (C
//! columns), as c_attn produces them, and the result leaves the same way.

use crate::kernels::{KernelSet, Kernels};
use mlx_rs::error::Exception;
use mlx_rs::fast::{scaled_dot_product_attention, ScaledDotProductAttentionMask};
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{ops, Array};

/// Attention over whole sequences (training, full forwards, a prompt's first pass):
/// `qkv` (B, T, 3C), c_attn's output with q, k and v side by side → (B, T, C).
/// `dropout`: the attention weights' dropout multiplier (B, nh, T, T), applied after the
/// softmax (`Dropout::multiplier` draws it).
pub fn causal_attention(
    k: &Kernels,
    qkv: &Array,
    n_head: i32,
    scale: f32,
    dropout: Option<&Array>,
) -> Result<Array, Exception> {
    if k.set() == KernelSet::Cpu {
        // One kernel from c_attn's output, and one for its gradient.
        #[cfg(cpu_kernels)]
        if let Some(y) = crate::cpu::causal_attention::attend(qkv, dropout, n_head, scale, k.layer_threads())? {
            return Ok(y);
        }
    }
    let parts = qkv.split_equal(3, -1)?; // 3 × (B, T, C)
    attend(k, &parts[0], &parts[1], &parts[2], 0, n_head, scale, dropout)
}

/// Attention of T new positions over a KV cache: `q` (B, T, C) their queries; `kb`, `vb`
/// (B, capacity, C) the cache buffers, whose first `len` positions are held, the new
/// positions' own keys and values last → (B, T, C).
pub fn cached_attention(
    k: &Kernels,
    q: &Array,
    kb: &Array,
    vb: &Array,
    len: i32,
    n_head: i32,
    scale: f32,
) -> Result<Array, Exception> {
    let t = q.shape()[1];
    if t == 1 && k.set() == KernelSet::Cpu {
        // One new position: one kernel over the buffers where they lie.
        #[cfg(cpu_kernels)]
        if let Some(y) = crate::cpu::decode_attention::attend(q, kb, vb, n_head, len, scale)? {
            return Ok(y);
        }
    }
    let (keys, values) = (kb.index((.., 0..len, ..)), vb.index((.., 0..len, ..))); // (B, S, C)
    attend(k, q, &keys, &values, len - t, n_head, scale, None)
}

/// q (B, T, C), keys and values (B, S, C) → (B, T, C), heads apart in between.
#[allow(clippy::too_many_arguments)]
fn attend(
    k: &Kernels,
    q: &Array,
    keys: &Array,
    values: &Array,
    past: i32,
    n_head: i32,
    scale: f32,
    dropout: Option<&Array>,
) -> Result<Array, Exception> {
    let (b, t, c) = (q.shape()[0], q.shape()[1], q.shape()[2]);
    let (q, keys, values) = (heads_of(q, n_head)?, heads_of(keys, n_head)?, heads_of(values, n_head)?);
    // MLX's fused kernel never exposes the weights, so dropout takes the plain ops.
    let y = if k.set() == KernelSet::MlxFast && dropout.is_none() {
        let mask = (t > 1 && past > 0).then(|| causal_mask(t, past, q.dtype())).transpose()?;
        let mask = match (&mask, t) {
            (_, 1) => None, // one new query sees every held position
            (None, _) => Some(ScaledDotProductAttentionMask::Causal),
            (Some(m), _) => Some(ScaledDotProductAttentionMask::Array(m)),
        };
        scaled_dot_product_attention(&q, &keys, &values, scale, mask, None)?
    } else {
        attention_mlx(&q, &keys, &values, past, scale, dropout)?
    };
    y.transpose_axes(&[0, 2, 1, 3])?.reshape(&[b, t, c]) // heads side by side again
}

/// The plain-MLX formulation, heads apart: q (B, nh, T, hs), k and v (B, nh, S, hs) with
/// S = past + T → (B, nh, T, hs). The reference of the kernels, and their fallback.
pub fn attention_mlx(
    q: &Array,
    k: &Array,
    v: &Array,
    past: i32,
    scale: f32,
    dropout: Option<&Array>,
) -> Result<Array, Exception> {
    let t = q.shape()[2];
    let scale = Array::from_f32(scale).as_dtype(q.dtype())?;
    let att = q.multiply(&scale)?.matmul(k.swap_axes(-2, -1)?)?; // (B, nh, T, S)
    let att = if t > 1 { att.add(causal_mask(t, past, att.dtype())?)? } else { att };
    let att = crate::softmax::softmax_last(&Kernels::mlx(), &att)?;
    let att = match dropout {
        Some(m) => att.multiply(m)?,
        None => att,
    };
    att.matmul(v) // (B, nh, T, hs)
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
    use mlx_rs::random;

    fn close(a: &Array, b: &Array, what: &str) {
        assert_eq!(a.shape(), b.shape(), "{what}");
        // Flattened: a strided result is copied into row order.
        let (a, b) = (a.reshape(&[-1]).unwrap(), b.reshape(&[-1]).unwrap());
        for (p, q) in a.as_slice::<f32>().iter().zip(b.as_slice::<f32>()) {
            assert!((p - q).abs() <= 2e-5 * (1.0 + q.abs()), "{what}: {p} vs {q}");
        }
    }

    /// Every kernel set gives the plain formulation's result, over whole sequences (with
    /// and without a dropout multiplier) and over a cache with one and several new
    /// positions.
    #[test]
    fn every_kernel_set_matches_the_plain_formulation() {
        let (b, t, nh, hs) = (2, 7, 3, 8);
        let c = nh * hs;
        let normal =
            |shape: &[i32], seed| random::normal::<f32>(shape, None, None, &random::key(seed).unwrap()).unwrap();
        let qkv = normal(&[b, t, 3 * c], 1);
        let mask = random::bernoulli(&Array::from_f32(0.8), &[b, nh, t, t], &random::key(2).unwrap())
            .unwrap()
            .as_dtype(mlx_rs::Dtype::Float32)
            .unwrap();
        let scale = 1.0 / (hs as f32).sqrt();
        let mut sets = vec![Kernels::mlx(), Kernels::mlx_fast()];
        sets.extend(Kernels::cpu());
        let reference = |dropout: Option<&Array>| causal_attention(&Kernels::mlx(), &qkv, nh, scale, dropout).unwrap();
        let (cap, len) = (12, 9);
        let kb = normal(&[b, cap, c], 3);
        let vb = normal(&[b, cap, c], 4);
        for k in &sets {
            close(&causal_attention(k, &qkv, nh, scale, None).unwrap(), &reference(None), k.name());
            close(&causal_attention(k, &qkv, nh, scale, Some(&mask)).unwrap(), &reference(Some(&mask)), k.name());
            for new in [1, 3] {
                let q = normal(&[b, new, c], 5);
                let want = cached_attention(&Kernels::mlx(), &q, &kb, &vb, len, nh, scale).unwrap();
                close(&cached_attention(k, &q, &kb, &vb, len, nh, scale).unwrap(), &want, k.name());
            }
        }
        // The plain cached path equals whole-sequence attention over the same positions.
        let parts = qkv.split_equal(3, -1).unwrap();
        let last = parts[0].index((.., (t - 1)..t, ..));
        let cached = cached_attention(&Kernels::mlx(), &last, &parts[1], &parts[2], t, nh, scale).unwrap();
        close(&cached, &reference(None).index((.., (t - 1)..t, ..)), "cache vs whole");
    }
}
