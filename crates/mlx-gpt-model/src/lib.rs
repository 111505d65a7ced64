//! nanoGPT's GPT on MLX, with weights interchangeable with Hugging Face GPT-2.
//!
//! Crate map (start here):
//! - [`config`]: [`GptConfig`], presets, Hugging Face `config.json`;
//! - the layers, one file each: [`linear`], [`layer_norm`], [`attention`], [`mlp`], [`block`];
//! - [`gpt`]: [`Gpt`] — embeddings, blocks, tied head, loss, parameter and FLOP counts;
//! - [`loss`]: cross-entropy with an ignore index;
//! - [`generate`]: sampling (temperature, top-k, top-p) with a per-layer KV cache;
//! - [`hf`]: safetensors in Hugging Face GPT-2 layout — every checkpoint quirk lives there;
//! - [`device`], [`runtime`], [`jit`]: choosing `cpu`/`gpu`, the BLAS MLX is bound to, and
//!   native code for MLX's CPU compile;
//! - [`blas_kernel`]: OpenBLAS's kernel checked against the CPU before `main`, and
//!   corrected when OpenBLAS fell back to a generic one (automatic in every program that
//!   links this crate; [`blas_kernel::status`] says what happened).
//!
//! docs/model.md explains the architecture with the shapes at each step.
//!
//! ```
//! use mlx_gpt_model::{generate::{generate, SamplingParams}, Gpt, GptConfig};
//! use mlx_rs::Array;
//!
//! let config = GptConfig { block_size: 16, vocab_size: 50, n_layer: 2, n_head: 2, n_embd: 32,
//!                          ..GptConfig::baby(50) };
//! let mut model = Gpt::new(config, 1337)?;                  // nanoGPT's initialisation
//! let idx = Array::from_slice(&[1i32, 2, 3, 4], &[1, 4]);      // (B, T)
//! let targets = Array::from_slice(&[2i32, 3, 4, 5], &[1, 4]);
//! let (logits, loss) = model.forward(&idx, Some(&targets))?;
//! assert_eq!(logits.shape(), &[1, 4, 50]);                     // (B, T, V)
//! assert!(loss.unwrap().item::<f32>() > 0.0);
//!
//! let params = SamplingParams { temperature: 0.8, top_k: Some(10), seed: 7, ..Default::default() };
//! let mut out = Vec::new();
//! generate(&mut model, &[1, 2, 3], 5, &params, |token| { out.push(token); true })?;
//! assert_eq!(out.len(), 5);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod attention;
pub mod blas_kernel;
pub mod block;
pub mod causal_attention;
pub mod config;
mod csrc;
pub mod decode_attention;
pub mod device;
pub mod dropout;
mod fs_util;
pub mod fused_adamw;
pub mod gelu_primitive;
pub mod generate;
pub mod gpt;
pub mod hf;
pub mod jit;
pub mod kernels;
pub mod layer_norm;
pub mod layer_norm_primitive;
pub mod linear;
pub mod linear_primitive;
pub mod loss;
pub mod matvec;
pub mod mlp;
pub mod runtime;
pub mod switch;

pub use config::{Activation, ConfigError, GptConfig};
pub use device::{DeviceError, DeviceKind};
pub use fs_util::{temp_path, write_atomic, write_atomic_with};
pub use gpt::Gpt;
pub use hf::LoadError;

/// Errors of building or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `crop_block_size` was asked to grow the context.
    #[error("cannot crop block_size to {requested}: it must be between 1 and the model's {block_size}")]
    CropBlockSize {
        /// Asked for.
        requested: usize,
        /// The model's.
        block_size: usize,
    },
    /// A generation argument is out of range.
    #[error("{0}")]
    Sampling(String),
    /// MLX reported an error (shapes, memory, a sequence longer than block_size, ...).
    #[error("{}", .0.what())]
    Mlx(#[from] mlx_rs::error::Exception),
}
