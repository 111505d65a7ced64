//! One GPT-2 block for one new position per sequence as a single custom MLX primitive
//! (`csrc/decode_block.cpp`), for decoding with the KV cache.
//!
//! Decoding runs each block on one row per sequence. Built from the separate kernels, a
//! block is a dozen primitives (LayerNorm, c_attn, two cache appends, attention, c_proj,
//! the residual add, LayerNorm, c_fc, GELU, c_proj, add), each a task the stream's thread
//! is handed, allocates for and runs: for GPT-2 124M about 150 tasks a token, several
//! milliseconds beyond reading the weights. The primitive runs the same kernels in one task
//! (the four products split over the pool's threads as [`super::matvec`] splits them, the
//! attention's positions split over them too, which changes no bit), so its results are
//! the separate kernels' to the bit (tested below), and writes the new
//! position's keys and values into the cache buffers in place when nothing else holds them
//! (as MLX's slice update does).

use super::matvec::MAX_ROWS;
use crate::decode_block::{BlockParams, Decoded};
use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype};
use std::cell::Cell;

thread_local! {
    static CALLS: Cell<usize> = const { Cell::new(0) };
}

/// How many blocks this thread has built through the primitive (tests, diagnostics).
pub fn calls() -> usize {
    CALLS.with(Cell::get)
}

/// How many cache buffers the primitive has copied because something else held them,
/// process-wide (written in place otherwise).
pub fn buffer_copies() -> usize {
    // SAFETY: reads an atomic counter.
    unsafe { super::ffi::mlx_gpt_decode_block_copies() }
}

/// The block for x (B, 1, C), B at most [`MAX_ROWS`], with the cache buffers `kb`, `vb`
/// (B, capacity, C) holding `past` positions (`past` < capacity). `gelu_tanh`: GPT-2's
/// tanh approximation, else the erf form. The buffers are taken, so that the primitive
/// can write them in place; they come back in [`Decoded`].
#[allow(clippy::too_many_arguments)]
pub fn decode(
    x: &Array,
    kb: Array,
    vb: Array,
    past: usize,
    n_head: usize,
    eps: f32,
    gelu_tanh: bool,
    params: &BlockParams,
    threads: usize,
) -> Result<Decoded, Exception> {
    let f32 = |a: &Array| a.dtype() == Dtype::Float32;
    let matrices = [params[1].0, params[2].0, params[4].0, params[5].0];
    let has_bias = params[0].1.is_some();
    let applicable = f32(x)
        && x.ndim() == 3
        && x.shape()[1] == 1
        && (x.shape()[0] as usize) <= MAX_ROWS
        && f32(&kb)
        && f32(&vb)
        && kb.ndim() == 3
        && (past as i32) < kb.shape()[1]
        && f32(params[0].0)
        && f32(params[3].0)
        && matches!(matrices[0].dtype(), Dtype::Float32 | Dtype::Bfloat16)
        && matrices.iter().all(|m| m.dtype() == matrices[0].dtype())
        && params.iter().all(|(_, b)| b.is_some() == has_bias && b.is_none_or(f32));
    if !applicable {
        return Ok(Decoded::Declined(kb, vb));
    }
    super::ffi::debug_check_cpu();
    // SAFETY: mlx_gpt_decode_block reads the 15 handles (arrays that outlive the call, and
    // fresh empty handles for absent biases, freed below) and fills the 3 fresh handles
    // in `outs`, owned by `Array`s right after, whether or not the call succeeded.
    let (status, outs) = unsafe {
        let empty = mlx_sys::mlx_array_new();
        let mut handles = vec![x.as_ptr(), kb.as_ptr(), vb.as_ptr()];
        handles.extend(params.iter().map(|(w, _)| w.as_ptr()));
        handles.extend(params.iter().map(|(_, b)| b.map_or(empty, |b| b.as_ptr())));
        let mut outs: Vec<mlx_sys::mlx_array> = (0..3).map(|_| mlx_sys::mlx_array_new()).collect();
        let status = super::ffi::mlx_gpt_decode_block(
            outs.as_mut_ptr(),
            handles.as_ptr(),
            n_head as libc::c_int,
            past as libc::c_int,
            eps,
            gelu_tanh,
            threads as libc::c_int,
        );
        mlx_sys::mlx_array_free(empty);
        (status, outs.into_iter().map(|h| Array::from_ptr(h)).collect::<Vec<_>>())
    };
    match status {
        0 => {
            CALLS.with(|c| c.set(c.get() + 1));
            let mut outs = outs.into_iter();
            let (x, k, v) = (outs.next(), outs.next(), outs.next());
            Ok(Decoded::Done { x: x.expect("3 outputs"), k: k.expect("3 outputs"), v: v.expect("3 outputs") })
        }
        2 => Ok(Decoded::Declined(kb, vb)),
        _ => Err(super::ffi::last_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Kernels;
    use mlx_rs::ops::indexing::{IndexOp, TryIndexMutOp};
    use mlx_rs::random;
    use proptest::prelude::*;

    /// The block from the separate entry points with the same kernels: what the fused
    /// kernel must reproduce to the bit.
    #[allow(clippy::too_many_arguments)]
    fn separate(
        k: &Kernels,
        x: &Array,
        kb: &Array,
        vb: &Array,
        past: i32,
        n_head: i32,
        eps: f32,
        tanh: bool,
        p: &BlockParams,
    ) -> (Array, Array, Array) {
        let c = x.shape()[2];
        let h = crate::layer_norm(k, x, p[0].0, p[0].1, eps).unwrap();
        let qkv = crate::linear(k, &h, p[1].0, p[1].1).unwrap();
        let parts = qkv.split_equal(3, -1).unwrap();
        let (mut kb, mut vb) = (kb.clone(), vb.clone());
        kb.try_index_mut((.., past..past + 1, ..), &parts[1]).unwrap();
        vb.try_index_mut((.., past..past + 1, ..), &parts[2]).unwrap();
        let scale = 1.0 / ((c / n_head) as f32).sqrt();
        let y = crate::cached_attention(k, &parts[0], &kb, &vb, past + 1, n_head, scale).unwrap();
        let x1 = x.add(crate::linear(k, &y, p[2].0, p[2].1).unwrap()).unwrap();
        let h = crate::layer_norm(k, &x1, p[3].0, p[3].1, eps).unwrap();
        let f = crate::gelu(k, &crate::linear(k, &h, p[4].0, p[4].1).unwrap(), tanh, false).unwrap();
        let out = x1.add(crate::linear(k, &f, p[5].0, p[5].1).unwrap()).unwrap();
        (out, kb, vb)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        /// The same numbers as the separate kernels, the new position written at `past`
        /// and nothing else in the buffers changed; a buffer still held elsewhere is left
        /// as it was (copied, not written in place).
        #[test]
        fn matches_the_separate_kernels_to_the_bit(
            batch in 1i32..4, n_head in 1i32..7, hs in prop::sample::select(vec![4, 16, 24]), past in 1i32..80,
            spare in 1i32..4, bias in any::<bool>(), tanh in any::<bool>(), bf16 in any::<bool>(),
            stored_transposed in any::<bool>(), held in any::<bool>(), seed in 0u64..1000,
        ) {
            let Ok(k) = Kernels::cpu() else { return Ok(()) };
            let k = k.for_decoding();
            let c = n_head * hs;
            let key = |i: u64| random::key(seed * 32 + i).unwrap();
            let normal = |shape: &[i32], i: u64| {
                random::normal::<f32>(shape, None, Some(0.5), &key(i)).unwrap()
            };
            // bfloat16 or float32, laid out (in, out) or (out, in) (decoding's layout).
            let matrix = |shape: &[i32], i: u64| {
                let m = normal(shape, i);
                let m = if bf16 { m.as_dtype(Dtype::Bfloat16).unwrap() } else { m };
                if stored_transposed { crate::store_transposed(&m).unwrap() } else { m }
            };
            let shapes = [vec![c], vec![c, 3 * c], vec![c, c], vec![c], vec![c, 4 * c], vec![4 * c, c]];
            let weights: Vec<Array> = shapes.iter().enumerate().map(|(i, s)| {
                if s.len() == 1 { normal(s, i as u64).add(Array::from_f32(1.0)).unwrap() } else { matrix(s, i as u64) }
            }).collect();
            let biases: Vec<Array> = shapes.iter().enumerate().map(|(i, s)| normal(&[*s.last().unwrap()], 10 + i as u64)).collect();
            let params: BlockParams = std::array::from_fn(|i| (&weights[i], bias.then(|| &biases[i])));
            mlx_rs::transforms::eval(weights.iter().chain(&biases)).unwrap();
            let cap = past + spare;
            let mut kb = normal(&[batch, cap, c], 20);
            let mut vb = normal(&[batch, cap, c], 21);
            // Positions from `past` on are unused: zero, as LayerKv leaves them.
            kb.try_index_mut((.., past.., ..), mlx_rs::ops::zeros::<f32>(&[batch, spare, c]).unwrap()).unwrap();
            vb.try_index_mut((.., past.., ..), mlx_rs::ops::zeros::<f32>(&[batch, spare, c]).unwrap()).unwrap();
            let x = normal(&[batch, 1, c], 22);
            mlx_rs::transforms::eval([&kb, &vb, &x]).unwrap();
            let (want, want_k, want_v) = separate(&k, &x, &kb, &vb, past, n_head, 1e-5, tanh, &params);
            mlx_rs::transforms::eval([&want, &want_k, &want_v]).unwrap();
            let before = kb.as_slice::<f32>().to_vec();
            let kept = held.then(|| kb.clone());
            let (before_calls, before_copies) = (calls(), buffer_copies());
            let Decoded::Done { x: got, k: got_k, v: got_v } =
                decode(&x, kb, vb, past as usize, n_head as usize, 1e-5, tanh, &params, 2).unwrap()
            else {
                panic!("declined");
            };
            prop_assert_eq!(before_calls + 1, calls());
            prop_assert_eq!(got.as_slice::<f32>(), want.as_slice::<f32>());
            prop_assert_eq!(got_k.as_slice::<f32>(), want_k.as_slice::<f32>());
            prop_assert_eq!(got_v.as_slice::<f32>(), want_v.as_slice::<f32>());
            // Written in place unless held elsewhere (no other test here builds the block).
            match kept {
                Some(kept) => {
                    prop_assert_eq!(kept.as_slice::<f32>(), &before[..]);
                    prop_assert_eq!(buffer_copies(), before_copies + 1);
                }
                None => prop_assert_eq!(buffer_copies(), before_copies),
            }
            prop_assert_eq!(got_k.index((.., past + 1.., ..)).abs().unwrap().sum(None).unwrap().item_exact::<f32>(), 0.0);
        }
    }

    #[test]
    fn declines_what_it_does_not_take_and_names_bad_shapes() {
        let Ok(k) = Kernels::cpu() else { return };
        let k = k.for_decoding();
        let c = 8;
        let w = |s: &[i32]| mlx_rs::ops::ones::<f32>(s).unwrap();
        let weights = [w(&[c]), w(&[c, 3 * c]), w(&[c, c]), w(&[c]), w(&[c, 4 * c]), w(&[4 * c, c])];
        let params: BlockParams = std::array::from_fn(|i| (&weights[i], None));
        let buffers = || (w(&[1, 4, c]), w(&[1, 4, c]));
        // A half-precision x: declined, the buffers handed back.
        let x16 = w(&[1, 1, c]).as_dtype(Dtype::Float16).unwrap();
        let (kb, vb) = buffers();
        assert!(matches!(decode(&x16, kb, vb, 1, 2, 1e-5, true, &params, 1).unwrap(), Decoded::Declined(..)));
        // No room for the new position: declined by the Rust side too.
        let x = w(&[1, 1, c]);
        let (kb, vb) = buffers();
        assert!(matches!(decode(&x, kb, vb, 4, 2, 1e-5, true, &params, 1).unwrap(), Decoded::Declined(..)));
        // A matrix of the wrong shape: an error naming it.
        let wrong = [w(&[c]), w(&[c, 2 * c]), w(&[c, c]), w(&[c]), w(&[c, 4 * c]), w(&[4 * c, c])];
        let bad: BlockParams = std::array::from_fn(|i| (&wrong[i], None));
        let (kb, vb) = buffers();
        let e = decode(&x, kb, vb, 1, 2, 1e-5, true, &bad, 1).unwrap_err().to_string();
        assert!(e.contains("DecodeBlock") && e.contains("weight 1"), "{e}");
        // Through the entry point, kernels not for decoding decline.
        let (kb, vb) = buffers();
        let d = crate::decode_block(&Kernels::cpu().unwrap(), &x, kb, vb, 1, 2, 1e-5, true, &params).unwrap();
        assert!(matches!(d, Decoded::Declined(..)));
        let _ = k;
    }
}
