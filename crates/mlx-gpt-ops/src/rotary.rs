//! Rotary position embedding (Su et al., "RoFormer", 2021): each head's feature pairs are
//! turned by an angle proportional to the position, so a query–key product depends only
//! on how far apart the two positions are. Pairs are the two halves of the head (feature
//! i with feature i + hs/2, the "non-interleaved" layout of GPT-NeoX, nanochat and
//! mlx-lm's `traditional = false`), and the turn goes the way nanochat's does:
//! `(x₁, x₂) → (x₁·cos + x₂·sin, −x₁·sin + x₂·cos)`.

use crate::kernels::Kernels;
use mlx_rs::error::Exception;
use mlx_rs::{ops, Array};

/// The angles' cosines and sines for positions `start..start + t`, heads of size `hs`,
/// base θ: (t, 1, hs/2) each, ready to broadcast over (B, T, heads, hs/2). Computed in
/// float64 on the host so they do not depend on the device's `cos`.
pub fn rotary_tables(start: usize, t: usize, hs: usize, base: f32) -> (Array, Array) {
    let half = hs / 2;
    let (mut cos, mut sin) = (Vec::with_capacity(t * half), Vec::with_capacity(t * half));
    for pos in start..start + t {
        for i in 0..half {
            // θ^(−2i/hs), as nanochat's `1 / base ** (arange(0, hs, 2) / hs)`.
            let inv_freq = 1.0 / (base as f64).powf((2 * i) as f64 / hs as f64);
            let angle = pos as f64 * inv_freq;
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    let shape = [t as i32, 1, half as i32];
    (Array::from_slice(&cos, &shape), Array::from_slice(&sin, &shape))
}

/// x (B, T, heads, hs) turned by the tables of [`rotary_tables`] (T, 1, hs/2).
pub fn rotary(k: &Kernels, x: &Array, cos: &Array, sin: &Array) -> Result<Array, Exception> {
    let _ = k; // one formulation for every kernel set so far
    let (cos, sin) = (cos.as_dtype(x.dtype())?, sin.as_dtype(x.dtype())?);
    let halves = x.split_equal(2, -1)?; // 2 × (B, T, heads, hs/2)
    let (x1, x2) = (&halves[0], &halves[1]);
    let y1 = x1.multiply(&cos)?.add(x2.multiply(&sin)?)?;
    let y2 = x2.multiply(&cos)?.subtract(x1.multiply(&sin)?)?;
    ops::concatenate(&[y1, y2], -1)
}

/// The modern GPT's attention inputs: c_attn's output `qkv` (B, T, (nh + 2·nkv)·hs) →
/// q, k, v side by side (B, T, 3C), with each head's queries and keys RMS-normalised
/// (QK-norm, ε `eps`) and turned by their positions (`cos`, `sin` of
/// [`rotary_tables`]), and each key/value head repeated for the `nh / nkv` query heads it
/// serves (grouped-query attention): what GPT-2's c_attn gives, for the same attention.
pub fn rotary_qkv(
    k: &Kernels,
    qkv: &Array,
    cos: &Array,
    sin: &Array,
    n_head: i32,
    n_kv_head: i32,
    eps: f32,
) -> Result<Array, Exception> {
    if k.set() == crate::kernels::KernelSet::Cpu {
        #[cfg(cpu_kernels)]
        {
            let (t, half) = (cos.shape()[0], *cos.shape().last().expect("tables have axes"));
            let (c2, s2) = (cos.reshape(&[t, half])?, sin.reshape(&[t, half])?);
            if let Some(y) = crate::cpu::rotary_qkv::rotary_qkv(qkv, &c2, &s2, n_head, n_kv_head, eps)? {
                return Ok(y);
            }
        }
    }
    rotary_qkv_mlx(k, qkv, cos, sin, n_head, n_kv_head, eps)
}

/// The plain-MLX formulation of [`rotary_qkv`]: the reference, and the fallback.
pub fn rotary_qkv_mlx(
    k: &Kernels,
    qkv: &Array,
    cos: &Array,
    sin: &Array,
    nh: i32,
    nkv: i32,
    eps: f32,
) -> Result<Array, Exception> {
    let (b, t, width) = (qkv.shape()[0], qkv.shape()[1], qkv.shape()[2]);
    let hs = width / (nh + 2 * nkv);
    let c = nh * hs;
    let parts = ops::split_at_indices(qkv, &[c, c + nkv * hs], -1)?;
    let heads = |a: &Array, n: i32| a.reshape(&[b, t, n, hs]);
    let turn = |a: &Array, n: i32| -> Result<Array, Exception> {
        let normed = crate::rms_norm(k, &heads(a, n)?, eps)?; // (B, T, n, hs)
        rotary(k, &normed, cos, sin)
    };
    let q = turn(&parts[0], nh)?;
    let (mut key, mut v) = (turn(&parts[1], nkv)?, heads(&parts[2], nkv)?);
    if nkv < nh {
        // Key/value head j serves query heads j·g .. (j+1)·g, g = nh / nkv.
        let repeat = |a: &Array| -> Result<Array, Exception> {
            let wide = ops::broadcast_to(a.expand_dims(3)?, &[b, t, nkv, nh / nkv, hs])?;
            wide.reshape(&[b, t, nh, hs])
        };
        (key, v) = (repeat(&key)?, repeat(&v)?);
    }
    let side_by_side = |a: &Array| a.reshape(&[b, t, c]);
    ops::concatenate(&[side_by_side(&q)?, side_by_side(&key)?, side_by_side(&v)?], -1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Turning keeps each pair's length, and a query–key product depends only on the
    /// distance between their positions.
    #[test]
    fn products_depend_on_distance_only() {
        let (hs, base) = (8, 10_000.0);
        let v = |seed| {
            mlx_rs::random::normal::<f32>(&[1, 1, 1, hs as i32], None, None, &mlx_rs::random::key(seed).unwrap())
                .unwrap()
        };
        let (q, key) = (v(1), v(2));
        let at = |a: &Array, pos: usize| {
            let (c, s) = rotary_tables(pos, 1, hs, base);
            rotary(&Kernels::mlx(), a, &c, &s).unwrap()
        };
        let dot = |a: &Array, b: &Array| a.multiply(b).unwrap().sum(None).unwrap().item_exact::<f32>();
        let norm = |a: &Array| dot(a, a);
        assert!((norm(&at(&q, 37)) - norm(&q)).abs() < 1e-4);
        let d1 = dot(&at(&q, 10), &at(&key, 3));
        let d2 = dot(&at(&q, 107), &at(&key, 100));
        assert!((d1 - d2).abs() < 1e-4, "{d1} vs {d2}");
        // Position 0 is the identity.
        assert_eq!(at(&q, 0).as_slice::<f32>(), q.as_slice::<f32>());
    }

    /// Every kernel set's value and gradient (with a non-trivial cotangent) equal the
    /// plain formulation's, with and without grouped-query attention, at an offset.
    #[test]
    fn every_kernel_set_matches_the_plain_formulation() {
        use mlx_rs::transforms;
        let (b, t, hs) = (2, 5, 8);
        for (nh, nkv) in [(4, 4), (4, 2), (4, 1)] {
            let width = (nh + 2 * nkv) * hs;
            let key = |seed| mlx_rs::random::key(seed).unwrap();
            let qkv = mlx_rs::random::normal::<f32>(&[b, t, width], None, Some(2.0), &key(1)).unwrap();
            let w = mlx_rs::random::normal::<f32>(&[b, t, 3 * nh * hs], None, None, &key(2)).unwrap();
            let (cos, sin) = rotary_tables(7, t as usize, hs as usize, 10_000.0);
            let run = |k: Kernels| {
                let value = rotary_qkv(&k, &qkv, &cos, &sin, nh, nkv, 1e-5).unwrap();
                let (cos, sin, w) = (cos.clone(), sin.clone(), w.clone());
                let f = move |x: &Array| -> Result<Array, Exception> {
                    rotary_qkv(&k, x, &cos, &sin, nh, nkv, 1e-5)?.multiply(&w)?.sum(None)
                };
                let grad = transforms::grad(f)(&qkv).unwrap();
                (value, grad)
            };
            let (want_v, want_g) = run(Kernels::mlx());
            let mut sets = vec![Kernels::mlx_fast()];
            sets.extend(Kernels::cpu());
            for k in sets {
                let (v, g) = run(k);
                for (what, a, b) in [("value", &v, &want_v), ("gradient", &g, &want_g)] {
                    assert_eq!(a.shape(), b.shape());
                    for (p, q) in a.as_slice::<f32>().iter().zip(b.as_slice::<f32>()) {
                        assert!(
                            (p - q).abs() <= 1e-5 * (1.0 + q.abs()),
                            "{} {what} ({nh}, {nkv}): {p} vs {q}",
                            k.name()
                        );
                    }
                }
            }
        }
    }
}
