//! The modern GPT's QK-norm, rotary turn and key/value repeat as one custom MLX primitive
//! (`csrc/rotary_qkv.cpp`), with its gradient as another: one pass over c_attn's output
//! each way, where the MLX ops make some thirty nodes per layer. float32 only;
//! [`crate::rotary_qkv()`] uses it with the CPU kernels, and its results agree with the
//! plain formulation to float rounding (tested there).

use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype};

/// q, k, v (B, T, 3C) through the primitive, or `Ok(None)` where it does not apply (not
/// float32). `cos`, `sin`: (T, hs/2).
pub fn rotary_qkv(
    qkv: &Array,
    cos: &Array,
    sin: &Array,
    n_head: i32,
    n_kv_head: i32,
    eps: f32,
) -> Result<Option<Array>, Exception> {
    if qkv.dtype() != Dtype::Float32 {
        return Ok(None);
    }
    // SAFETY: mlx_gpt_rotary_qkv with the given handles; the arrays outlive the call.
    unsafe {
        super::ffi::call(|res| {
            super::ffi::mlx_gpt_rotary_qkv(res, qkv.as_ptr(), cos.as_ptr(), sin.as_ptr(), n_head, n_kv_head, eps)
        })
    }
}
