//! A whole GPT-2 decoding step, one new position per sequence, as one call over the
//! arrays' memory on the CPU kernels for decoding (`cpu::decode_step`,
//! csrc/decode_step.cpp): the embedding, every block as [`crate::decode_block`] runs it,
//! `ln_f` and the tied head, with no MLX graph built, handed to the stream's thread and
//! waited for. The same kernels in the same order as the graph, so the same logits and
//! caches to the bit. Elsewhere, or where an array is not ready for it, it declines and
//! the model builds the graph.

use crate::decode_block::BlockParams;
use crate::kernels::{KernelSet, Kernels};
use mlx_rs::error::Exception;
use mlx_rs::Array;

/// A GPT-2 model's parameters for [`decode_step`].
pub struct StepParams<'a> {
    /// The token embedding (V, C), also the tied head.
    pub wte: &'a Array,
    /// The position embedding (block_size, C).
    pub wpe: &'a Array,
    /// The final LayerNorm's weight and bias.
    pub ln_f: (&'a Array, Option<&'a Array>),
    /// Each block's parameters.
    pub blocks: Vec<BlockParams<'a>>,
    /// Attention heads per block.
    pub n_head: usize,
    /// Every LayerNorm's epsilon.
    pub eps: f32,
    /// GPT-2's tanh form of GELU (else the erf form).
    pub gelu_tanh: bool,
}

/// Logits (B·V, row after row) for the tokens `ids` (one per sequence) at position
/// `past`, each layer's cache buffers `caches[l]` (B, capacity, C) holding `past`
/// positions, `past` below the capacity; the new position's keys and values are written
/// into them in place. `None` where it declines (no CPU kernels for decoding here, an
/// array not evaluated and laid out as the kernels read it, a cache buffer held elsewhere),
/// with nothing written.
pub fn decode_step(
    k: &Kernels,
    ids: &[u32],
    past: usize,
    caches: &mut [(Array, Array)],
    params: &StepParams,
) -> Result<Option<Vec<f32>>, Exception> {
    if ids.is_empty() || caches.len() != params.blocks.len() {
        return Err(Exception::custom(format!(
            "decode_step: {} tokens, {} caches for {} blocks",
            ids.len(),
            caches.len(),
            params.blocks.len()
        )));
    }
    #[cfg(cpu_kernels)]
    if k.set() == KernelSet::Cpu && k.decoding() {
        return crate::cpu::decode_step::step(ids, past, caches, params, k.threads());
    }
    let _ = (k, past, KernelSet::Cpu);
    Ok(None)
}

/// How many steps [`decode_step`] has run on this thread (0 without the CPU kernels): for
/// tests and diagnostics.
pub fn decode_step_count() -> usize {
    #[cfg(cpu_kernels)]
    {
        crate::cpu::decode_step::count()
    }
    #[cfg(not(cpu_kernels))]
    {
        0
    }
}
