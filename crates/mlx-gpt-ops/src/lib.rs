//! The operations a GPT is made of, each with one entry point that takes a [`Kernels`]
//! value: the plain-MLX formulation beside it (the reference, and what runs on a GPU or
//! without the CPU kernels), and mlx-gpt's CPU kernel where one exists.
//!
//! | operation | entry point | plain-MLX formulation | CPU kernel (csrc/) |
//! |---|---|---|---|
//! | dense layer | [`linear()`] | [`linear::linear_mlx`] | `linear.cpp` on `gemm.cpp`; `decode_product.cpp` when decoding |
//! | LayerNorm | [`layer_norm()`] | [`layer_norm::layer_norm_mlx`] | `layer_norm.cpp` |
//! | GELU | [`gelu()`] | [`gelu::gelu_mlx`] | `gelu.cpp` |
//! | RMSNorm, no parameters (modern GPT) | [`rms_norm()`] | [`rms_norm::rms_norm_mlx`] | `rms_norm.cpp` (MLX's `fast::rms_norm` with `mlx-fast`) |
//! | ReLU² (modern GPT) | [`relu_squared()`] | [`relu_squared::relu_squared_mlx`] | `gelu.cpp` |
//! | rotary position embedding (modern GPT) | [`rotary()`] | the same | — |
//! | QK-norm + rotary + key/value repeat (modern GPT) | [`rotary_qkv()`] | [`rotary::rotary_qkv_mlx`] | `rotary_qkv.cpp` |
//! | causal self-attention | [`causal_attention()`] | [`attention::attention_mlx`] | `causal_attention.cpp` |
//! | attention over a KV cache | [`cached_attention()`] | [`attention::attention_mlx`] | `decode_attention.cpp` (one new position) |
//! | a whole block, one new position | [`decode_block()`] | the operations above, one by one | `decode_block.cpp` (decoding) |
//! | a whole GPT-2 step, one new position | [`decode_step()`] | the model's graph | `decode_step.cpp` (decoding, no graph) |
//! | clipped AdamW step | [`adamw_step()`] | [`adamw::adamw_step_arrays`] | `adamw.cpp` |
//! | softmax, logsumexp | [`softmax_last`], [`logsumexp_last`] | the same | — |
//!
//! The kernels are compiled with the `cpu-kernels` feature (default) on x86-64 Linux; see
//! [`Kernels::cpu_built`]. Adding one: docs/architecture.md, "How to add a kernel".

#![warn(missing_docs)]

pub mod adamw;
pub mod attention;
#[cfg(cpu_kernels)]
pub mod cpu;
pub mod decode_block;
pub mod decode_step;
pub mod gelu;
pub mod kernels;
pub mod layer_norm;
pub mod layout;
pub mod linear;
pub mod relu_squared;
pub mod rms_norm;
pub mod rotary;
pub mod scheduler;
pub mod softmax;

pub use adamw::{adamw_step, AdamWHyper, AdamWStep, AdamWUpdate};
pub use attention::{cached_attention, causal_attention, causal_mask};
pub use decode_block::{decode_block, BlockParams, Decoded};
pub use decode_step::{decode_step, decode_step_count, StepParams};
pub use gelu::gelu;
pub use kernels::{KernelChoice, KernelSet, Kernels, KernelsError};
pub use layer_norm::layer_norm;
pub use layout::{
    huge_page_mappings, is_on_huge_pages, is_stored_transposed, onto_huge_pages, row_major, store_transposed,
};
pub use linear::{linear, linear_transposed};
pub use relu_squared::relu_squared;
pub use rms_norm::rms_norm;
pub use rotary::{rotary, rotary_qkv, rotary_tables};
pub use softmax::{logsumexp_last, softmax_last};

/// How many blocks this thread has run through the decoding block (0 without the CPU
/// kernels): for tests and diagnostics.
pub fn decode_block_calls() -> usize {
    #[cfg(cpu_kernels)]
    {
        cpu::decode_block::calls()
    }
    #[cfg(not(cpu_kernels))]
    {
        0
    }
}

/// How many KV-cache buffers the decoding block has copied (rather than written in place
/// because something else held them), process-wide; 0 without the CPU kernels.
pub fn decode_block_copies() -> usize {
    #[cfg(cpu_kernels)]
    {
        cpu::decode_block::buffer_copies()
    }
    #[cfg(not(cpu_kernels))]
    {
        0
    }
}

/// Whether the decoding product asks for the weights it streams as non-temporal
/// (`prefetchnta`, chosen for AMD CPUs; false without the CPU kernels): for `info`.
pub fn decode_weights_non_temporal() -> bool {
    #[cfg(cpu_kernels)]
    {
        cpu::matvec::weights_non_temporal()
    }
    #[cfg(not(cpu_kernels))]
    {
        false
    }
}

/// How many products this thread has run through the decoding product (0 without
/// the CPU kernels): for tests and diagnostics.
pub fn decode_product_calls() -> usize {
    #[cfg(cpu_kernels)]
    {
        cpu::matvec::calls()
    }
    #[cfg(not(cpu_kernels))]
    {
        0
    }
}
