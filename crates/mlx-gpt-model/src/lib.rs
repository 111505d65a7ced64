//! nanoGPT's GPT on MLX, with weights interchangeable with Hugging Face GPT-2.
//!
//! Crate map (start here):
//! - [`config`]: [`GptConfig`], presets, Hugging Face `config.json`;
//! - the layers, one file each: [`linear`], [`layer_norm`], [`attention`], [`mlp`], [`block`],
//!   and [`dropout`];
//! - [`gpt`]: [`Gpt`] — embeddings, blocks, tied head, loss, parameter and FLOP counts; with
//!   `arch = "modern"` ([`config::Arch`]) rotary positions, RMSNorm, QK-norm, ReLU² and an
//!   untied soft-capped head;
//! - [`loss`]: cross-entropy with an ignore index;
//! - [`kv_cache`] and [`generate`]: sampling (temperature, top-k, top-p) with a per-layer
//!   KV cache;
//! - [`hf`]: safetensors in Hugging Face GPT-2 layout — every checkpoint quirk lives there;
//!   [`mlx_lm`]: a modern GPT exported as mlx-lm's `nanochat` model.
//!
//! Each operation is one call into `mlx-gpt-ops` with the model's [`Kernels`] (plain MLX
//! ops by default; `Kernels::resolve` picks mlx-gpt's CPU kernels where they are built).
//! docs/model.md explains the architecture with the shapes at each step, and
//! docs/architecture.md how the crates fit together.
//!
//! ```
//! use mlx_gpt_model::{generate::{generate, SamplingParams}, Gpt, GptConfig, KernelChoice, Kernels};
//! use mlx_gpt_runtime::DeviceKind;
//! use mlx_rs::Array;
//!
//! let config = GptConfig { block_size: 16, vocab_size: 50, n_layer: 2, n_head: 2, n_embd: 32,
//!                          ..GptConfig::baby(50) };
//! let mut model = Gpt::new(config, 1337)?;                  // nanoGPT's initialisation
//! model.kernels = Kernels::resolve(KernelChoice::Auto, DeviceKind::Cpu)?;
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
pub mod block;
pub mod config;
pub mod dropout;
pub mod generate;
pub mod gpt;
pub mod hf;
pub mod kv_cache;
pub mod layer_norm;
pub mod linear;
pub mod loss;
pub mod mlp;
pub mod mlx_lm;

pub use config::{Activation, ConfigError, GptConfig};
pub use gpt::Gpt;
pub use hf::LoadError;
pub use mlx_gpt_ops::layout::huge_pages_available;
pub use mlx_gpt_ops::{
    decode_product_calls, decode_weights_non_temporal, KernelChoice, KernelSet, Kernels, KernelsError,
};
pub use mlx_gpt_runtime::fs::{temp_path, write_atomic, write_atomic_with};

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
