//! ReLU², the modern GPT's MLP nonlinearity: `max(x, 0)²` (So et al., "Primer", 2021).
//! Cheaper than GELU and, with the same width, as good or better at these scales
//! (modded-nanogpt, nanochat).

use crate::kernels::Kernels;
use mlx_rs::error::Exception;
use mlx_rs::{ops, Array};

/// `max(x, 0)²`.
pub fn relu_squared(k: &Kernels, x: &Array) -> Result<Array, Exception> {
    let _ = k; // one formulation for every kernel set so far
    ops::maximum(x, Array::from_f32(0.0).as_dtype(x.dtype())?)?.square()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squares_the_positive_part() {
        let x = Array::from_slice(&[-2.0f32, -0.0, 0.5, 3.0], &[4]);
        let y = relu_squared(&Kernels::mlx(), &x).unwrap();
        assert_eq!(y.as_slice::<f32>(), &[0.0, 0.0, 0.25, 9.0]);
    }
}
