//! ReLU², the modern GPT's MLP nonlinearity: `max(x, 0)²` (So et al., "Primer", 2021).
//! Cheaper than GELU and, with the same width, as good or better at these scales
//! (modded-nanogpt, nanochat). With the CPU kernels it runs through GELU's primitive
//! (`csrc/gelu.cpp`): one pass forwards, the slope kept for a one-product gradient.

use crate::kernels::Kernels;
use mlx_rs::error::Exception;
use mlx_rs::{ops, Array};

/// `max(x, 0)²`. `keep_slope` (training) has the CPU kernel store the slope in the forward
/// pass, so the gradient is one product; the values are the same.
pub fn relu_squared(k: &Kernels, x: &Array, keep_slope: bool) -> Result<Array, Exception> {
    if k.set() == crate::kernels::KernelSet::Cpu {
        #[cfg(cpu_kernels)]
        if let Some(y) = crate::cpu::gelu::relu_squared(x, keep_slope)? {
            return Ok(y);
        }
    }
    let _ = keep_slope;
    relu_squared_mlx(x)
}

/// The plain-MLX formulation: the reference, and the fallback.
pub fn relu_squared_mlx(x: &Array) -> Result<Array, Exception> {
    ops::maximum(x, Array::from_f32(0.0).as_dtype(x.dtype())?)?.square()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel set, with and without the stored slope: the squares of the positive
    /// part, and the gradient 2·max(x, 0) times the cotangent.
    #[test]
    fn every_kernel_set_squares_the_positive_part() {
        let x = Array::from_slice(&[-2.0f32, -0.0, 0.5, 3.0], &[4]);
        let w = Array::from_slice(&[1.0f32, 2.0, 3.0, -1.0], &[4]);
        let mut sets = vec![Kernels::mlx(), Kernels::mlx_fast()];
        sets.extend(Kernels::cpu());
        for k in sets {
            for slope in [false, true] {
                let y = relu_squared(&k, &x, slope).unwrap();
                assert_eq!(y.as_slice::<f32>(), &[0.0, 0.0, 0.25, 9.0], "{}", k.name());
                let w = w.clone();
                let f = move |x: &Array| -> Result<Array, Exception> {
                    relu_squared(&k, x, slope)?.multiply(&w)?.sum(None)
                };
                let g = mlx_rs::transforms::grad(f)(&x).unwrap();
                assert_eq!(g.as_slice::<f32>(), &[0.0, 0.0, 3.0, -6.0], "{} slope {slope}", k.name());
            }
        }
    }
}
