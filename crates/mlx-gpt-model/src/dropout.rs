//! `Dropout` with keys that can be passed in.
//!
//! mlx-rs's `nn::Dropout` draws from MLX's global random state. Inside an MLX-compiled
//! function that state is read once, at trace time, so every call would replay the same
//! masks. Here a dropout layer takes its key from [`with_key`] when one is set: the key
//! (an array, so it can be an input of a compiled function) is split once per dropout
//! call. The same key gives the same masks compiled or not, so a resumed run that
//! re-derives the key from (seed, iteration) draws the masks an uninterrupted run drew.

use mlx_rs::error::Exception;
use mlx_rs::{random, Array};
use std::cell::RefCell;

thread_local! {
    static KEY: RefCell<Option<Array>> = const { RefCell::new(None) };
}

/// Run `f` with `key` as the source of every dropout mask drawn on this thread.
pub fn with_key<T>(key: &Array, f: impl FnOnce() -> T) -> T {
    let previous = KEY.with(|k| k.replace(Some(key.clone())));
    let out = f();
    KEY.with(|k| *k.borrow_mut() = previous);
    out
}

fn next_key() -> Result<Option<Array>, Exception> {
    KEY.with(|k| {
        let mut k = k.borrow_mut();
        match k.take() {
            None => Ok(None),
            Some(key) => {
                let (next, sub) = random::split(&key, 2)?;
                *k = Some(next);
                Ok(Some(sub))
            }
        }
    })
}

/// Zeroes each element with probability `p` and scales the rest by 1/(1−p), in training
/// mode; the identity otherwise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    /// Drop probability.
    pub p: f32,
    /// Training mode (off by default: the training loop switches it on).
    pub training: bool,
}

impl Dropout {
    /// A layer in evaluation mode.
    pub fn new(p: f32) -> Self {
        Dropout { p, training: false }
    }

    /// Whether this layer changes its input.
    pub fn active(&self) -> bool {
        self.training && self.p > 0.0
    }

    /// x → x·mask/(1−p).
    pub fn forward(&self, x: &Array) -> Result<Array, Exception> {
        match self.multiplier(x.shape(), x.dtype())? {
            Some(m) => x.multiply(&m),
            None => Ok(x.clone()),
        }
    }

    /// The next mask as the factor `forward` multiplies by (0 or 1/(1−p) per element), for
    /// kernels that apply it themselves (`mlx_gpt_ops::causal_attention`); `None` when inactive.
    /// Draws from the same key sequence as `forward`.
    pub fn multiplier(&self, shape: &[i32], dtype: mlx_rs::Dtype) -> Result<Option<Array>, Exception> {
        if !self.active() {
            return Ok(None);
        }
        let keep = Array::from_f32(1.0 - self.p);
        let key = next_key()?;
        let mask = random::bernoulli(&keep, shape, key.as_ref())?;
        let scale = Array::from_f32(1.0 / (1.0 - self.p)).as_dtype(dtype)?;
        Ok(Some(mask.as_dtype(dtype)?.multiply(&scale)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_key_same_masks_and_expected_scale() {
        let x = mlx_rs::ops::ones::<f32>(&[1000]).unwrap();
        let d = Dropout { p: 0.25, training: true };
        let key = random::key(9).unwrap();
        let a = with_key(&key, || d.forward(&x).unwrap());
        let b = with_key(&key, || d.forward(&x).unwrap());
        assert_eq!(a.as_slice::<f32>(), b.as_slice::<f32>());
        let kept = a.as_slice::<f32>().iter().filter(|&&v| v != 0.0).count();
        assert!((650..850).contains(&kept), "{kept}");
        assert!(a.as_slice::<f32>().iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        // Two calls under one key draw different masks.
        let (c, e) = with_key(&key, || (d.forward(&x).unwrap(), d.forward(&x).unwrap()));
        assert_eq!(c.as_slice::<f32>(), a.as_slice::<f32>());
        assert_ne!(c.as_slice::<f32>(), e.as_slice::<f32>());
        assert_eq!(Dropout::new(0.5).forward(&x).unwrap().as_slice::<f32>(), x.as_slice::<f32>());
    }
}
