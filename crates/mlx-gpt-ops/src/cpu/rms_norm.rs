//! RMSNorm without parameters as a custom MLX primitive (`csrc/rms_norm.cpp`), with its
//! gradient as another: one pass each, the forward pass keeping each row's 1/rms for the
//! gradient. float32 only; [`crate::rms_norm()`] uses it with the CPU kernels, and its
//! results agree with [`crate::rms_norm::rms_norm_mlx`] to float rounding (tested there).

use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype};

/// `x / √(mean(x²) + eps)` over the last axis through the primitive, or `Ok(None)` where it
/// does not apply (not float32).
pub fn rms_norm(x: &Array, eps: f32) -> Result<Option<Array>, Exception> {
    if x.dtype() != Dtype::Float32 {
        return Ok(None);
    }
    // SAFETY: mlx_gpt_rms_norm with the given handle; `x` outlives the call.
    unsafe { super::ffi::call(|res| super::ffi::mlx_gpt_rms_norm(res, x.as_ptr(), eps)) }
}
