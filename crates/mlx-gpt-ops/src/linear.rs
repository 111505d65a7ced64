//! Dense layers: `y = x·W + b`, with `W` stored (in, out) as GPT-2's Conv1D checkpoints
//! store it, and the tied head's `x·Wᵀ` reading the token embedding (V, C) as it lies.

use crate::kernels::Kernels;
use mlx_rs::error::Exception;
use mlx_rs::{ops, Array};

/// `x·W + bias` for x (..., in) and W (in, out) → (..., out).
pub fn linear(k: &Kernels, x: &Array, w: &Array, bias: Option<&Array>) -> Result<Array, Exception> {
    #[cfg(cpu_kernels)]
    if let Some(y) = crate::cpu::linear::for_kernels(k, x, w, bias, false)? {
        return Ok(y);
    }
    let _ = k;
    linear_mlx(x, w, bias, false)
}

/// `x·Wᵀ` for x (..., in) and W (out, in) → (..., out): the tied output head.
pub fn linear_transposed(k: &Kernels, x: &Array, w: &Array) -> Result<Array, Exception> {
    #[cfg(cpu_kernels)]
    if let Some(y) = crate::cpu::linear::for_kernels(k, x, w, None, true)? {
        return Ok(y);
    }
    let _ = k;
    linear_mlx(x, w, None, true)
}

/// The plain-MLX formulation (one `addmm` or `matmul` on the BLAS): the reference, and
/// the fallback wherever a kernel does not apply.
pub fn linear_mlx(x: &Array, w: &Array, bias: Option<&Array>, w_transposed: bool) -> Result<Array, Exception> {
    let w = if w_transposed { w.t() } else { w.clone() };
    match bias {
        Some(b) => ops::addmm(b, x, &w, None, None),
        None => ops::matmul(x, &w),
    }
}
