//! Batches `(x, y)` of shape (B, T) from a token file, with `y[.., t] == x[.., t+1]`.
//!
//! Two orders: nanoGPT's random offsets with replacement, or an epoch permutation of the
//! non-overlapping windows (each window once per epoch). Both are seeded, and the whole
//! position of a sampler is a small [`SamplerState`] that a checkpoint stores, so a
//! resumed run draws exactly the batches an uninterrupted one would.

use crate::error::{DataError, Result};
use crate::token_file::TokenFile;
use mlx_rs::Array;
use serde::{Deserialize, Serialize};

/// How offsets are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Uniform random offsets, with replacement (nanoGPT's `get_batch`).
    #[default]
    Random,
    /// A shuffled pass over the windows `[k·T, (k+1)·T]`, reshuffled every epoch.
    Epoch,
}

/// Everything needed to continue a sampler where it stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    /// Seed the sampler was created with.
    pub seed: u64,
    /// Offset order.
    pub order: Order,
    /// Random mode: the generator's state. Epoch mode: unused.
    pub rng: u64,
    /// Epoch mode: completed epochs.
    pub epoch: u64,
    /// Epoch mode: windows already used in this epoch.
    pub cursor: u64,
}

/// SplitMix64 step: advances `state` and returns 64 well-mixed bits.
pub(crate) fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform integer in `0..n` without modulo bias (Lemire's method).
fn below(state: &mut u64, n: u64) -> u64 {
    loop {
        let m = (splitmix(state) as u128) * (n as u128);
        if (m as u64) >= (n.wrapping_neg() % n) {
            return (m >> 64) as u64;
        }
    }
}

/// Draws batches from one token file.
#[derive(Debug)]
pub struct BatchSampler {
    file: TokenFile,
    batch_size: usize,
    block_size: usize,
    state: SamplerState,
    perm: Vec<u32>,
}

impl BatchSampler {
    /// A sampler over `file` for batches of `batch_size` sequences of `block_size` tokens.
    pub fn new(file: TokenFile, batch_size: usize, block_size: usize, order: Order, seed: u64) -> Result<Self> {
        let state = SamplerState { seed, order, rng: seed, epoch: 0, cursor: 0 };
        Self::with_state(file, batch_size, block_size, state)
    }

    /// A sampler continuing from a saved state.
    pub fn with_state(file: TokenFile, batch_size: usize, block_size: usize, state: SamplerState) -> Result<Self> {
        if batch_size == 0 || block_size == 0 {
            return Err(DataError::Invalid {
                path: file.path().into(),
                what: format!("batch_size ({batch_size}) and block_size ({block_size}) must be positive"),
            });
        }
        if file.len() < block_size + 1 {
            return Err(DataError::Size {
                path: file.path().into(),
                what: format!(
                    "{} tokens is too few for block_size {block_size} (need at least {})",
                    file.len(),
                    block_size + 1
                ),
            });
        }
        let mut s = BatchSampler { file, batch_size, block_size, state, perm: Vec::new() };
        if s.state.order == Order::Epoch {
            s.shuffle();
        }
        Ok(s)
    }

    /// The state to save with a checkpoint.
    pub fn state(&self) -> &SamplerState {
        &self.state
    }

    /// Number of distinct start offsets (random mode) or windows (epoch mode).
    fn positions(&self) -> usize {
        match self.state.order {
            Order::Random => self.file.len() - self.block_size,
            Order::Epoch => (self.file.len() - 1) / self.block_size,
        }
    }

    fn shuffle(&mut self) {
        // The permutation is a function of (seed, epoch), so it is rebuilt, not stored.
        let n = self.positions();
        self.perm = (0..n as u32).collect();
        let mut rng = self.state.seed ^ self.state.epoch.wrapping_mul(0xD1B5_4A32_D192_ED03);
        for i in (1..n).rev() {
            let j = below(&mut rng, i as u64 + 1) as usize;
            self.perm.swap(i, j);
        }
    }

    fn next_offset(&mut self) -> usize {
        match self.state.order {
            Order::Random => {
                let n = self.positions() as u64;
                below(&mut self.state.rng, n) as usize
            }
            Order::Epoch => {
                if self.state.cursor as usize == self.perm.len() {
                    self.state.epoch += 1;
                    self.state.cursor = 0;
                    self.shuffle();
                }
                let w = self.perm[self.state.cursor as usize] as usize;
                self.state.cursor += 1;
                w * self.block_size
            }
        }
    }

    /// The next batch as host vectors: x and y, each B·T tokens, row-major. An error
    /// only when the file changed underneath (`TokenFile::copy_i32`).
    pub fn next_host(&mut self) -> Result<(Vec<i32>, Vec<i32>)> {
        let (b, t) = (self.batch_size, self.block_size);
        let (mut x, mut y) = (vec![0i32; b * t], vec![0i32; b * t]);
        for row in 0..b {
            let off = self.next_offset();
            self.file.copy_i32(off, &mut x[row * t..(row + 1) * t])?;
            self.file.copy_i32(off + 1, &mut y[row * t..(row + 1) * t])?;
        }
        Ok((x, y))
    }

    /// The next batch as MLX int32 arrays, x and y both (B, T).
    pub fn next_batch(&mut self) -> Result<(Array, Array)> {
        let (x, y) = self.next_host()?;
        let shape = [self.batch_size as i32, self.block_size as i32];
        Ok((Array::from_slice(&x, &shape), Array::from_slice(&y, &shape)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token_file::{write_tokens, TokenDtype};
    use proptest::prelude::*;
    use std::path::PathBuf;

    fn file(tokens: &[u32], case: u64) -> (TokenFile, PathBuf) {
        let p = std::env::temp_dir().join(format!("mlx-gpt-batches-{}-{case}.bin", std::process::id()));
        write_tokens(&p, tokens, TokenDtype::U16).unwrap();
        (TokenFile::open_unchecked(&p, TokenDtype::U16).unwrap(), p)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn batches_shift_by_one_and_stay_in_bounds(n in 10usize..400, b in 1usize..5, t_frac in 0.0f64..1.0,
                                                   seed: u64, epoch: bool) {
            let t = 1 + ((n - 2) as f64 * t_frac) as usize;
            // Token i has value i % 1000, so a window's values give its offset back.
            let tokens: Vec<u32> = (0..n as u32).map(|i| i % 1000).collect();
            let (f, path) = file(&tokens, seed);
            let order = if epoch { Order::Epoch } else { Order::Random };
            let mut s = BatchSampler::new(f, b, t, order, seed).unwrap();
            for _ in 0..5 {
                let (x, y) = s.next_host().unwrap();
                for row in 0..b {
                    let xr = &x[row * t..(row + 1) * t];
                    let yr = &y[row * t..(row + 1) * t];
                    prop_assert_eq!(&xr[1..], &yr[..t - 1]);
                    let off = xr[0] as usize;
                    prop_assert!(off + t < n, "window {}..={} past {} tokens", off, off + t, n);
                    if epoch { prop_assert_eq!(off % t, 0); }
                    prop_assert_eq!(yr[t - 1] as usize, off + t);
                }
            }
            std::fs::remove_file(path).unwrap();
        }

        #[test]
        fn same_seed_same_batches_and_restore_continues_exactly(seed: u64, epoch: bool, split in 0usize..30) {
            let tokens: Vec<u32> = (0..500u32).collect();
            let order = if epoch { Order::Epoch } else { Order::Random };
            let (f1, p1) = file(&tokens, seed);
            let (f2, p2) = file(&tokens, seed.wrapping_add(1));
            let mut a = BatchSampler::new(f1, 3, 16, order, seed).unwrap();
            let straight: Vec<_> = (0..30).map(|_| a.next_host().unwrap()).collect();
            let mut b = BatchSampler::new(f2, 3, 16, order, seed).unwrap();
            let mut resumed: Vec<_> = (0..split).map(|_| b.next_host().unwrap()).collect();
            let saved = serde_json::to_string(b.state()).unwrap();
            drop(b);
            let (f3, p3) = file(&tokens, seed.wrapping_add(2));
            let mut c = BatchSampler::with_state(f3, 3, 16, serde_json::from_str(&saved).unwrap()).unwrap();
            resumed.extend((split..30).map(|_| c.next_host().unwrap()));
            prop_assert_eq!(straight, resumed);
            for p in [p1, p2, p3] { std::fs::remove_file(p).unwrap(); }
        }
    }

    #[test]
    fn an_epoch_visits_every_window_once() {
        let tokens: Vec<u32> = (0..101u32).collect();
        let (f, p) = file(&tokens, 999);
        let mut s = BatchSampler::new(f, 1, 10, Order::Epoch, 5).unwrap();
        let mut seen: Vec<i32> = (0..10).map(|_| s.next_host().unwrap().0[0]).collect();
        seen.sort();
        assert_eq!(seen, (0..10).map(|k| k * 10).collect::<Vec<_>>());
        assert_eq!(s.state().epoch, 0);
        s.next_host().unwrap();
        assert_eq!(s.state().epoch, 1);
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn too_short_files_are_named() {
        let (f, p) = file(&[1, 2, 3], 1000);
        let e = BatchSampler::new(f, 1, 3, Order::Random, 0).unwrap_err().to_string();
        assert!(e.contains("3 tokens is too few for block_size 3"), "{e}");
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn mlx_batches_have_shape_b_t() {
        let tokens: Vec<u32> = (0..100u32).collect();
        let (f, p) = file(&tokens, 1001);
        let mut s = BatchSampler::new(f, 4, 8, Order::Random, 0).unwrap();
        let (x, y) = s.next_batch().unwrap();
        assert_eq!((x.shape(), y.shape()), (&[4, 8][..], &[4, 8][..]));
        assert_eq!(x.dtype(), mlx_rs::Dtype::Int32);
        std::fs::remove_file(p).unwrap();
    }
}
