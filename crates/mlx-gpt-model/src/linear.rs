//! `Linear`: `y = x·W + b` with `W` stored as (in, out), the orientation of GPT-2's Conv1D
//! checkpoints, so Hugging Face weights load without a transpose.

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
    pub fn forward(&self, x: &Array) -> Result<Array, Exception> {
        // One-token decoding on the CPU: a host matrix-vector product (see `matvec`).
        if let Some(y) = crate::matvec::matmul(x, &self.weight, false, self.bias.value.as_ref())? {
            return Ok(y);
        }
        // Training on the CPU: one primitive per layer and direction (see `linear_primitive`).
        if crate::linear_primitive::model_uses_it() {
            if let Some(y) = crate::linear_primitive::linear(x, &self.weight, self.bias.value.as_ref(), false)? {
                return Ok(y);
            }
        }
        match self.bias.as_ref() {
            Some(b) => ops::addmm(b, x, &*self.weight, None, None),
            None => ops::matmul(x, &*self.weight),
        }
    }
}
