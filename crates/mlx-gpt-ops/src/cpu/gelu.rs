//! GELU as a custom MLX primitive (`csrc/gelu.cpp`), exact or with GPT-2's tanh
//! approximation: forward and gradient are one pass over memory each, where MLX ops make
//! several fused kernels of the formula under compile, and about nine kernels eagerly (as
//! in generation). float32 only; [`crate::gelu()`] uses it with the CPU kernels. Results agree with
//! [`crate::gelu::gelu_mlx`] to float rounding (tested here).

use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype};

/// GELU through the primitive, `x·Φ(x)` or (`tanh`) `x·½(1 + tanh(√(2/π)(x + 0.044715x³)))`,
/// or `Ok(None)` when it does not apply (not float32).
/// `with_slope` (for training) has the forward pass also store GELU's slope, so that the
/// gradient is a product instead of a second evaluation of erf (or tanh) and exp; the
/// results are bitwise the same either way.
pub fn gelu(x: &Array, tanh: bool, with_slope: bool) -> Result<Option<Array>, Exception> {
    if x.dtype() != Dtype::Float32 {
        return Ok(None);
    }
    // SAFETY: mlx_gpt_gelu with the given handle; `x` outlives the call.
    unsafe { super::ffi::call(|res| super::ffi::mlx_gpt_gelu(res, x.as_ptr(), tanh, with_slope)) }
}

/// `max(x, 0)²` through the same primitive, or `Ok(None)` for another dtype than float32;
/// `with_slope` as for [`gelu`].
pub fn relu_squared(x: &Array, with_slope: bool) -> Result<Option<Array>, Exception> {
    if x.dtype() != Dtype::Float32 {
        return Ok(None);
    }
    // SAFETY: mlx_gpt_relu_squared with the given handle; `x` outlives the call.
    unsafe { super::ffi::call(|res| super::ffi::mlx_gpt_relu_squared(res, x.as_ptr(), with_slope)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::{random, transforms};

    /// Forward and gradient of both forms, with and without the stored slope, against
    /// their formulas written as MLX ops (`gelu_mlx`), on values that cover the
    /// tails, plus a strided input; with the slope, value and gradient are bitwise those
    /// without.
    #[test]
    fn forward_and_gradient_match_the_formulas() {
        let x = random::normal::<f32>(&[7, 33], None, Some(3.0), &random::key(5).unwrap()).unwrap();
        let close = |a: &Array, b: &Array| {
            assert_eq!(a.shape(), b.shape());
            // Flattened: a strided result is copied into row order.
            let (a, b) = (a.reshape(&[-1]).unwrap(), b.reshape(&[-1]).unwrap());
            for (p, q) in a.as_slice::<f32>().iter().zip(b.as_slice::<f32>()) {
                assert!((p - q).abs() <= 1e-5 * (1.0 + q.abs()), "{p} vs {q}");
            }
        };
        let w = random::normal::<f32>(&[7, 33], None, None, &random::key(6).unwrap()).unwrap();
        // Gradient of sum(w · f(x)) with a non-trivial cotangent w (transposed with x).
        let grad_of = |f: &dyn Fn(&Array) -> Result<Array, Exception>, x: &Array| {
            let w = if x.shape() == w.shape() { w.clone() } else { w.t() };
            let mut g =
                transforms::grad(move |x: &Array| -> Result<Array, Exception> { f(x)?.multiply(&w)?.sum(None) });
            g(x).unwrap()
        };
        let bits =
            |a: &Array| a.reshape(&[-1]).unwrap().as_slice::<f32>().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for tanh in [false, true] {
            let reference = move |x: &Array| crate::gelu::gelu_mlx(x, tanh);
            let plain =
                move |x: &Array| -> Result<Array, Exception> { Ok(gelu(x, tanh, false)?.expect("float32 on the CPU")) };
            let sloped =
                move |x: &Array| -> Result<Array, Exception> { Ok(gelu(x, tanh, true)?.expect("float32 on the CPU")) };
            for input in [x.clone(), x.t()] {
                close(&plain(&input).unwrap(), &reference(&input).unwrap());
                close(&grad_of(&plain, &input), &grad_of(&reference, &input));
                assert_eq!(bits(&sloped(&input).unwrap()), bits(&plain(&input).unwrap()), "tanh {tanh}: value");
                assert_eq!(bits(&grad_of(&sloped, &input)), bits(&grad_of(&plain, &input)), "tanh {tanh}: gradient");
            }
            // Not for other dtypes.
            assert!(gelu(&x.as_dtype(Dtype::Float16).unwrap(), tanh, false).unwrap().is_none());
        }
    }
}
