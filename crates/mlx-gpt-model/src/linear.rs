//! `Linear`: `y = x·W + b` with `W` stored as (in, out), the orientation of GPT-2's Conv1D
//! checkpoints, so Hugging Face weights load without a transpose.

use mlx_gpt_ops::Kernels;
use mlx_rs::error::Exception;
use mlx_rs::macros::ModuleParameters;
use mlx_rs::module::Param;
use mlx_rs::{ops, Array};

/// A dense layer. `weight` is (in, out); `bias` is (out,) or absent.
#[derive(Debug, Clone, ModuleParameters)]
pub struct Linear {
    /// (in, out)
    #[param]
    pub weight: Param<Array>,
    /// (out,)
    #[param]
    pub bias: Param<Option<Array>>,
}

impl Linear {
    /// Zero-initialised layer of the given shape (the GPT initialises every weight itself).
    pub fn new(n_in: usize, n_out: usize, bias: bool) -> Result<Self, Exception> {
        Ok(Linear {
            weight: Param::new(ops::zeros::<f32>(&[n_in as i32, n_out as i32])?),
            bias: Param::new(if bias { Some(ops::zeros::<f32>(&[n_out as i32])?) } else { None }),
        })
    }

    /// x (..., in) → (..., out)
    pub fn forward(&self, k: &Kernels, x: &Array) -> Result<Array, Exception> {
        mlx_gpt_ops::linear(k, x, &self.weight, self.bias.value.as_ref())
    }
}
