//! One optimizer step as one custom MLX primitive (`csrc/adamw.cpp`): the gradient parts
//! summed and scaled, clipped to a global norm as PyTorch's `clip_grad_norm_`, and AdamW
//! applied to every parameter, in one task. As MLX ops (even compiled per parameter) this
//! is a few hundred small kernels run after the gradients, while the other cores wait.
//!
//! The primitive lives in this crate because the C++ is built here; the optimizer that
//! uses it is `mlx_gpt_train::optimizer::AdamW` (`update_fused`), which holds the state
//! and works out the step's scalars. float32 on the CPU only. `MLX_GPT_FUSED_ADAMW=0` (or
//! [`set_enabled`]) switches it off for comparison; results agree with the per-parameter
//! update to float rounding (tested there).

use crate::switch::Switch;
use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype};

static ENABLED: Switch = Switch::new("MLX_GPT_FUSED_ADAMW");

/// Switch the primitive on or off for the whole process.
pub fn set_enabled(on: bool) {
    ENABLED.set(on);
}

/// Whether the primitive is switched on (by default yes, unless `MLX_GPT_FUSED_ADAMW=0`).
pub fn enabled() -> bool {
    ENABLED.get()
}

/// The scalars of one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hyper {
    /// Multiplies the summed gradient parts (e.g. 1 / number of parts).
    pub scale: f32,
    /// Clip the scaled gradients to this global norm (when `clipping`).
    pub clip: f32,
    /// Whether to clip.
    pub clipping: bool,
    /// β1
    pub beta1: f32,
    /// β2
    pub beta2: f32,
    /// Factor of decayed parameters, `1 − lr·λ`.
    pub decay: f32,
    /// `lr / (1 − β1ᵗ)`
    pub step_size: f32,
    /// `√(1 − β2ᵗ)`
    pub bc2_sqrt: f32,
    /// ε
    pub eps: f32,
}

/// The step's results: the gradients' global norm (scaled, before clipping), and the new
/// parameters, first and second moments, in the order given.
pub type Updated = (Array, Vec<Array>, Vec<Array>, Vec<Array>);

/// One step of the parameters `p` with moments `m`, `v` and gradient `parts` (each a full
/// set, in the order of `p`); `decays[j]` says whether parameter j is decayed. `Ok(None)`
/// when the primitive does not apply (switched off, not on the CPU, not float32).
pub fn step(
    h: &Hyper,
    p: &[Array],
    m: &[Array],
    v: &[Array],
    decays: &[bool],
    parts: &[Vec<Array>],
) -> Result<Option<Updated>, Exception> {
    let n = p.len();
    if m.len() != n || v.len() != n || decays.len() != n || parts.iter().any(|g| g.len() != n) {
        return Err(Exception::custom(format!(
            "AdamW step: {n} parameters, {} and {} moments, {} decay flags, gradient parts of {:?}",
            m.len(),
            v.len(),
            decays.len(),
            parts.iter().map(Vec::len).collect::<Vec<_>>()
        )));
    }
    let arrays: Vec<&Array> = p.iter().chain(m).chain(v).chain(parts.iter().flatten()).collect();
    if !enabled()
        || arrays.iter().any(|a| a.dtype() != Dtype::Float32)
        || crate::device::default_device() != Some(crate::device::DeviceKind::Cpu)
    {
        return Ok(None);
    }
    let hyper = [
        h.scale,
        h.clip,
        if h.clipping { 1.0 } else { 0.0 },
        h.beta1,
        1.0 - h.beta1,
        h.beta2,
        1.0 - h.beta2,
        h.decay,
        h.step_size,
        h.bc2_sqrt,
        h.eps,
    ];
    let handles: Vec<mlx_sys::mlx_array> = arrays.iter().map(|a| a.as_ptr()).collect();
    // SAFETY: mlx_gpt_adamw_step reads `handles` (arrays that outlive the call), `decays`
    // (n flags) and `hyper` (11 scalars), and fills the 1 + 3n fresh handles in `outs`,
    // which are owned by `Array`s right after, whether or not the call succeeded.
    let (status, outs) = unsafe {
        let mut outs: Vec<mlx_sys::mlx_array> = (0..1 + 3 * n).map(|_| mlx_sys::mlx_array_new()).collect();
        let status = crate::csrc::mlx_gpt_adamw_step(
            outs.as_mut_ptr(),
            handles.as_ptr(),
            n,
            parts.len(),
            decays.as_ptr(),
            hyper.as_ptr(),
        );
        (status, outs.into_iter().map(|h| Array::from_ptr(h)).collect::<Vec<_>>())
    };
    if status != 0 {
        return Err(crate::csrc::last_error());
    }
    let mut outs = outs.into_iter();
    let norm = outs.next().expect("1 + 3n outputs");
    let new_p: Vec<Array> = outs.by_ref().take(n).collect();
    let new_m: Vec<Array> = outs.by_ref().take(n).collect();
    let new_v: Vec<Array> = outs.collect();
    Ok(Some((norm, new_p, new_m, new_v)))
}
