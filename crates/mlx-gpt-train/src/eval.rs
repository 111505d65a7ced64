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

/// The exact loss of a split: every token but the first predicted once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitScore {
    /// Windows evaluated (the last one may be shorter than `block`).
    pub windows: usize,
    /// Tokens predicted: the split's length minus one.
    pub tokens: usize,
    /// Mean cross-entropy over them, in nats.
    pub loss: f64,
    /// Summed nats of the tokens that stand for text ÷ the bytes of that text ÷ ln 2
    /// (nanochat's `val_bpb`), when the tokens' byte counts were given. Special tokens
    /// (no text) are left out of both sums, as nanochat does.
    pub bits_per_byte: Option<f64>,
}

/// The mean cross-entropy over every non-overlapping `block`-token window of `file` —
/// windows `[k·block, (k+1)·block)` predicting the tokens one further on, the last window
/// as long as the tokens left (so every token after the first is predicted exactly once)
/// — `batch` windows at a time, dropout off. `token_bytes` (by id, from
/// `Tokenizer::token_bytes`) adds bits per byte. `progress(done, total)` after each batch.
pub fn exact_split_loss(
    model: &mut Gpt,
    file: &TokenFile,
    block: usize,
    batch: usize,
    token_bytes: Option<&[u32]>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SplitScore, crate::TrainError> {
    let n = file.len();
    if n < 2 {
        return Err(crate::TrainError::Data(mlx_gpt_data::DataError::Size {
            path: file.path().into(),
            what: format!("{n} token(s): a loss needs at least 2 (an input and its next token); prepare more text"),
        }));
    }
    let block = block.max(1);
    let predicted = n - 1;
    let full = predicted / block;
    let rest = predicted % block;
    // (first token, length) of each window; the short last one is a batch of its own.
    let mut batches: Vec<(Vec<usize>, usize)> = (0..full)
        .collect::<Vec<_>>()
        .chunks(batch.max(1))
        .map(|w| (w.iter().map(|k| k * block).collect(), block))
        .collect();
    if rest > 0 {
        batches.push((vec![full * block], rest));
    }
    model.set_training(false);
    let (mut nats, mut text_nats, mut bytes) = (0.0f64, 0.0f64, 0u64);
    for (done, (starts, len)) in batches.iter().enumerate() {
        let (b, t) = (starts.len(), *len);
        let (mut x, mut y) = (vec![0i32; b * t], vec![0i32; b * t]);
        for (row, &s) in starts.iter().enumerate() {
            file.copy_i32(s, &mut x[row * t..(row + 1) * t])?;
            file.copy_i32(s + 1, &mut y[row * t..(row + 1) * t])?;
        }
        let shape = [b as i32, t as i32];
        let hidden = model.hidden(&mlx_rs::Array::from_slice(&x, &shape), None)?;
        let logits = model.lm_head(&hidden)?;
        let nll = mlx_gpt_model::loss::token_nll(&model.kernels, &logits, &mlx_rs::Array::from_slice(&y, &shape))?;
        nll.eval()?;
        for (&l, &target) in nll.as_slice::<f32>().iter().zip(&y) {
            nats += l as f64;
            if let Some(tb) = token_bytes {
                let tb = tb.get(target as usize).copied().unwrap_or(0);
                if tb > 0 {
                    text_nats += l as f64;
                    bytes += tb as u64;
                }
            }
        }
        progress(done + 1, batches.len());
    }
    Ok(SplitScore {
        windows: full + usize::from(rest > 0),
        tokens: predicted,
        loss: nats / predicted as f64,
        bits_per_byte: token_bytes.filter(|_| bytes > 0).map(|_| text_nats / bytes as f64 / std::f64::consts::LN_2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_gpt_data::token_file::TokenDtype;
    use mlx_gpt_model::GptConfig;

    /// Against the plain computation: each window's mean loss from `Gpt::loss`, weighted
    /// by its length.
    #[test]
    fn exact_loss_covers_every_token_once() {
        let p = std::env::temp_dir().join(format!("mlx-gpt-exact-{}.bin", std::process::id()));
        let tokens: Vec<u32> = (0..50u32).map(|i| (i * 7 + i / 3) % 11).collect();
        mlx_gpt_data::token_file::write_tokens(&p, &tokens, TokenDtype::U16).unwrap();
        let file = TokenFile::open_unchecked(&p, TokenDtype::U16).unwrap();
        let mut model =
            Gpt::new(GptConfig { block_size: 8, n_layer: 1, n_head: 2, n_embd: 16, ..GptConfig::baby(11) }, 3).unwrap();
        model.set_training(false);
        let (mut sum, mut count) = (0.0f64, 0usize);
        for start in (0..49).step_by(8) {
            let t = 8.min(49 - start);
            let x: Vec<i32> = tokens[start..start + t].iter().map(|&v| v as i32).collect();
            let y: Vec<i32> = tokens[start + 1..start + 1 + t].iter().map(|&v| v as i32).collect();
            let shape = [1, t as i32];
            let l = model.loss(&mlx_rs::Array::from_slice(&x, &shape), &mlx_rs::Array::from_slice(&y, &shape)).unwrap();
            sum += l.item_exact::<f32>() as f64 * t as f64;
            count += t;
        }
        let mut calls = vec![];
        let score = exact_split_loss(&mut model, &file, 8, 4, None, &mut |d, n| calls.push((d, n))).unwrap();
        assert_eq!((score.windows, score.tokens, count), (7, 49, 49));
        assert!((score.loss - sum / 49.0).abs() < 1e-5, "{} vs {}", score.loss, sum / 49.0);
        // 6 full windows in batches of 4, then the short one alone.
        assert_eq!(calls, vec![(1, 3), (2, 3), (3, 3)]);
        assert_eq!(score.bits_per_byte, None);
        // Two bytes a token: bits per byte is the loss over 2 ln 2.
        let two = vec![2u32; 11];
        let s2 = exact_split_loss(&mut model, &file, 8, 4, Some(&two), &mut |_, _| {}).unwrap();
        assert!((s2.bits_per_byte.unwrap() - s2.loss / 2.0 / std::f64::consts::LN_2).abs() < 1e-9);
        // A token without text (a special one) counts in neither sum.
        let mut special = vec![1u32; 11];
        special[tokens[1] as usize] = 0;
        let s3 = exact_split_loss(&mut model, &file, 8, 4, Some(&special), &mut |_, _| {}).unwrap();
        assert_ne!(s3.bits_per_byte, Some(s3.loss / std::f64::consts::LN_2));
        // Too short to predict anything: named.
        mlx_gpt_data::token_file::write_tokens(&p, &tokens[..1], TokenDtype::U16).unwrap();
        let one = TokenFile::open_unchecked(&p, TokenDtype::U16).unwrap();
        let e = exact_split_loss(&mut model, &one, 8, 4, None, &mut |_, _| {}).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()) && e.contains("at least 2"), "{e}");
        std::fs::remove_file(&p).unwrap();
    }
}
