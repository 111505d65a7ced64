//! A whole GPT-2 block for one new position per sequence, for decoding with the KV cache:
//! one kernel with the CPU kernels for decoding ([`Kernels::for_decoding`],
//! `cpu::decode_block`), where the separate operations make a dozen tasks per block.
//! Elsewhere it declines and the model runs the block's operations one by one.

use crate::kernels::{KernelSet, Kernels};
use mlx_rs::error::Exception;
use mlx_rs::Array;

/// A block's parameters by GPT-2's names: `(weight, bias)` of `ln_1`, `attn.c_attn`,
/// `attn.c_proj`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`; the biases all present or all absent.
pub type BlockParams<'a> = [(&'a Array, Option<&'a Array>); 6];

/// What [`decode_block`] gives back.
#[derive(Debug)]
pub enum Decoded {
    /// The block's output (B, 1, C) and the cache buffers with the new position written.
    Done {
        /// x + attn(ln_1(x)), then + mlp(ln_2(·)).
        x: Array,
        /// The keys buffer (B, capacity, C).
        k: Array,
        /// The values buffer (B, capacity, C).
        v: Array,
    },
    /// Not applicable here: the buffers handed back untouched.
    Declined(Array, Array),
}

/// The block for x (B, 1, C) with the cache buffers `kb`, `vb` (B, capacity, C) holding
/// `past` positions, `past` below the capacity; `gelu_tanh` for GPT-2's tanh form of GELU.
/// The buffers are taken so that the kernel can write the new position into them in
/// place (nothing else may hold them for that); they come back in [`Decoded`]. No dropout:
/// generation only.
#[allow(clippy::too_many_arguments)]
pub fn decode_block(
    k: &Kernels,
    x: &Array,
    kb: Array,
    vb: Array,
    past: usize,
    n_head: usize,
    eps: f32,
    gelu_tanh: bool,
    params: &BlockParams,
) -> Result<Decoded, Exception> {
    #[cfg(cpu_kernels)]
    if k.set() == KernelSet::Cpu && k.decoding() {
        return crate::cpu::decode_block::decode(x, kb, vb, past, n_head, eps, gelu_tanh, params, k.threads());
    }
    let _ = (k, x, past, n_head, eps, gelu_tanh, params, KernelSet::Cpu);
    Ok(Decoded::Declined(kb, vb))
}
