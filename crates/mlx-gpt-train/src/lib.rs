//! Training GPTs with MLX the way nanoGPT's `train.py` does, and more dependably.
//!
//! Crate map (start here), in the order one iteration uses it:
//! - [`config`]: [`TrainConfig`] — nanoGPT's knobs and defaults, TOML presets, overrides;
//! - [`schedule`]: warmup + cosine learning rate;
//! - [`step`]: micro-batches with gradient accumulation, clipping, AdamW;
//! - [`optimizer`]: AdamW as PyTorch's (bias correction, decay on ≥ 2-D weights only);
//! - [`eval`]: `estimate_loss` over both splits;
//! - [`checkpoint`]: atomic checkpoints with a DONE marker, strict loading, pruning;
//! - [`lock`]: one training run per run directory;
//! - [`metrics`]: `metrics.jsonl` and the `loss.svg` plot;
//! - [`peak`]: the CPU's FMA ceiling that MFU divides by;
//! - [`distributed`]: MLX's process groups and collectives, for data-parallel training;
//! - [`train`]: the loop itself, [`train::run`].
//!
//! docs/training.md walks through a run.
#![warn(missing_docs)]

pub mod checkpoint;
pub mod config;
pub mod distributed;
pub mod eval;
pub mod hellaswag;
pub mod lock;
pub mod memory;
pub mod metrics;
pub mod muon;
pub mod optimizer;
pub mod peak;
pub mod schedule;
mod state_file;
pub mod step;
pub mod tasks;
pub mod train;

pub use config::TrainConfig;

use std::path::PathBuf;

/// Why training could not start or continue.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The dataset is not prepared.
    #[error("dataset '{name}' is not prepared in {dir} ({why}); run `cargo xtask fetch-data {name}`")]
    MissingDataset {
        /// Dataset name.
        name: String,
        /// Where it was looked for.
        dir: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// A GPT-2 checkpoint is not downloaded.
    #[error("{name} is not in {dir}; run `cargo xtask fetch-gpt2 {name}`")]
    MissingModel {
        /// Model name.
        name: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// `init_from = resume` without a checkpoint.
    #[error("nothing to resume: no complete checkpoint in {}/checkpoints", .out_dir.display())]
    NoCheckpoint {
        /// The run directory.
        out_dir: PathBuf,
    },
    /// The checkpoint and the configuration disagree on the model.
    #[error("cannot resume from {}: the configuration differs from the checkpoint: {}", .checkpoint.display(), .differences.join("; "))]
    Incompatible {
        /// The checkpoint.
        checkpoint: PathBuf,
        /// What differs.
        differences: Vec<String>,
    },
    /// A damaged or inconsistent checkpoint.
    #[error("checkpoint {}: {what}", .path.display())]
    Checkpoint {
        /// The checkpoint (folder or file).
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Data problems (token files, batches).
    #[error(transparent)]
    Data(#[from] mlx_gpt_data::DataError),
    /// Weights could not be loaded or saved.
    #[error(transparent)]
    Weights(#[from] mlx_gpt_model::LoadError),
    /// Model errors.
    #[error(transparent)]
    Model(#[from] mlx_gpt_model::ModelError),
    /// Device selection failed.
    #[error(transparent)]
    Device(#[from] mlx_gpt_runtime::DeviceError),
    /// The `kernels` asked for cannot run here.
    #[error(transparent)]
    Kernels(#[from] mlx_gpt_ops::KernelsError),
    /// The process group could not be formed.
    #[error(transparent)]
    Distributed(#[from] distributed::DistError),
    /// MLX failed.
    #[error("MLX: {}", .0.what())]
    Mlx(#[from] mlx_rs::error::Exception),
    /// The run diverged: a loss, gradient norm or weight became NaN or infinite. Nothing
    /// was saved from that point on, so the checkpoints on disk are all finite.
    #[error(
        "training diverged at iter {iter}: {what} is not finite; stopped without saving it{}. \
         Lower learning_rate, set grad_clip, or use float32",
        .last_checkpoint.as_ref().map(|p| format!(" (the last checkpoint, {}, is intact: resume from it with --init_from resume)", p.display())).unwrap_or_default()
    )]
    NonFinite {
        /// The iteration.
        iter: usize,
        /// What was not finite, with its value (`train loss NaN`, `gradient norm inf`, ...).
        what: String,
        /// The newest complete checkpoint of the run, if any.
        last_checkpoint: Option<PathBuf>,
    },
    /// The run would need more memory than the machine has available.
    #[error(
        "this run needs about {need_mib:.0} MiB (parameters, AdamW moments, gradients and activations of \
         batch_size × block_size), and {available_mib:.0} MiB are available: lower batch_size or \
         block_size (gradient_accumulation_steps keeps the tokens per step), or set \
         --memory_check false to start anyway"
    )]
    OutOfMemory {
        /// The estimate.
        need_mib: f64,
        /// `MemAvailable` now.
        available_mib: f64,
    },
    /// Another process trains into the same run directory.
    #[error(transparent)]
    Locked(#[from] crate::lock::LockError),
}
