//! `estimate_loss`: mean loss over `eval_iters` batches of each split, dropout off.

use mlx_gpt_data::batches::{BatchSampler, Order};
use mlx_gpt_data::token_file::TokenFile;
use mlx_gpt_model::Gpt;
use std::path::Path;

/// Mean train and val loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Losses {
    /// Over `eval_iters` train batches.
    pub train: f64,
    /// Over `eval_iters` val batches.
    pub val: f64,
}

/// Mean loss of `model` over `iters` batches of `split`, drawn with their own seed so
/// evaluation never moves the training sampler.
pub fn split_loss(
    model: &mut Gpt,
    dataset: &Path,
    split: &str,
    iters: usize,
    batch: usize,
    block: usize,
    seed: u64,
) -> Result<f64, crate::TrainError> {
    let (file, _) = TokenFile::open(dataset, split)?;
    let mut sampler = BatchSampler::new(file, batch, block, Order::Random, seed)?;
    let mut total = 0.0;
    for _ in 0..iters.max(1) {
        let (x, y) = sampler.next_batch()?;
        let loss = model.loss(&x, &y)?;
        total += loss.item_exact::<f32>() as f64;
    }
    Ok(total / iters.max(1) as f64)
}

/// nanoGPT's `estimate_loss`, for both splits.
pub fn estimate_loss(
    model: &mut Gpt,
    dataset: &Path,
    iters: usize,
    batch: usize,
    block: usize,
    seed: u64,
) -> Result<Losses, crate::TrainError> {
    model.set_training(false);
    let train = split_loss(model, dataset, "train", iters, batch, block, seed)?;
    let val = split_loss(model, dataset, "val", iters, batch, block, seed ^ 1)?;
    Ok(Losses { train, val })
}
