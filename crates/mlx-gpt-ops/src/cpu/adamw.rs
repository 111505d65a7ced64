//! One optimizer step as one custom MLX primitive (`csrc/adamw.cpp`): the gradient parts
//! summed and scaled, clipped to a global norm as PyTorch's `clip_grad_norm_`, and AdamW
//! applied to every parameter, in one task. As MLX ops (even compiled per parameter) this
//! is a few hundred small kernels run after the gradients, while the other cores wait.
//!
//! [`crate::adamw_step()`] uses it with the CPU kernels; float32 only. Results agree with
//! [`crate::adamw::adamw_step_arrays`] to float rounding (tested here, and against PyTorch
//! by `mlx_gpt_train::optimizer`).

use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype};

use crate::adamw::{AdamWHyper as Hyper, AdamWUpdate as Updated};

/// The most gradient parts one step sums (csrc/adamw.cpp keeps a pointer per part on
/// its stack).
pub const MAX_PARTS: usize = 16;

/// One step of the parameters `p` with moments `m`, `v` and gradient `parts` (each a full
/// set, in the order of `p`); `decays[j]` says whether parameter j is decayed. `Ok(None)`
/// when the primitive does not apply (not float32, more than
/// [`MAX_PARTS`] parts).
pub fn step(
    h: &Hyper,
    p: &[Array],
    m: &[Array],
    v: &[Array],
    decays: &[bool],
    parts: &[Vec<Array>],
) -> Result<Option<Updated>, Exception> {
    let n = p.len();
    // The C++ side reads n entries of every list: checked here, not trusted.
    crate::adamw::check_counts(p, m, v, decays, parts)?;
    let arrays: Vec<&Array> = p.iter().chain(m).chain(v).chain(parts.iter().flatten()).collect();
    if parts.is_empty() || parts.len() > MAX_PARTS || arrays.iter().any(|a| a.dtype() != Dtype::Float32) {
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
    super::ffi::debug_check_cpu();
    let handles: Vec<mlx_sys::mlx_array> = arrays.iter().map(|a| a.as_ptr()).collect();
    // SAFETY: mlx_gpt_adamw_step reads `handles` (arrays that outlive the call), `decays`
    // (n flags) and `hyper` (11 scalars), and fills the 1 + 3n fresh handles in `outs`,
    // which are owned by `Array`s right after, whether or not the call succeeded.
    let (status, outs) = unsafe {
        let mut outs: Vec<mlx_sys::mlx_array> = (0..1 + 3 * n).map(|_| mlx_sys::mlx_array_new()).collect();
        let status = super::ffi::mlx_gpt_adamw_step(
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
        return Err(super::ffi::last_error());
    }
    let mut outs = outs.into_iter();
    let norm = outs.next().expect("1 + 3n outputs");
    let new_p: Vec<Array> = outs.by_ref().take(n).collect();
    let new_m: Vec<Array> = outs.by_ref().take(n).collect();
    let new_v: Vec<Array> = outs.collect();
    Ok(Some((norm, new_p, new_m, new_v)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::random;

    /// More parts than the kernel takes: declined, not failed (the entry point then runs
    /// the plain formulation).
    #[test]
    fn declines_more_parts_than_it_takes() {
        let p = vec![Array::from_slice(&[1.0f32, 2.0], &[2])];
        let h = Hyper {
            scale: 1.0,
            clip: 1.0,
            clipping: true,
            beta1: 0.9,
            beta2: 0.99,
            decay: 1.0,
            step_size: 1e-3,
            bc2_sqrt: 0.1,
            eps: 1e-8,
        };
        let many: Vec<Vec<Array>> = (0..MAX_PARTS + 1).map(|_| p.clone()).collect();
        assert!(step(&h, &p, &p, &p, &[false], &many).unwrap().is_none());
        assert!(step(&h, &p, &p, &p, &[false], &many[..2]).unwrap().is_some());
    }

    /// With no other handle on p, m and v, the step writes p', m' and v' over their
    /// buffers (csrc/adamw.cpp), and the results are bitwise those of a step whose inputs
    /// are still held (which gets new buffers).
    #[test]
    fn writes_over_its_inputs_when_nothing_else_holds_them() {
        let sizes = [7, 3000];
        let make = || {
            let normal = |n: usize, k: u64| {
                random::normal::<f32>(&[n as i32], None, Some(0.1), &random::key(k).unwrap()).unwrap()
            };
            let p: Vec<Array> = sizes.iter().enumerate().map(|(j, &n)| normal(n, j as u64)).collect();
            let m: Vec<Array> = sizes.iter().enumerate().map(|(j, &n)| normal(n, 10 + j as u64)).collect();
            let v: Vec<Array> =
                sizes.iter().enumerate().map(|(j, &n)| normal(n, 20 + j as u64).square().unwrap()).collect();
            let parts: Vec<Vec<Array>> = (0..2)
                .map(|q| sizes.iter().enumerate().map(|(j, &n)| normal(n, 30 + 2 * q + j as u64)).collect())
                .collect();
            mlx_rs::transforms::eval(p.iter().chain(&m).chain(&v).chain(parts.iter().flatten())).unwrap();
            (p, m, v, parts)
        };
        let h = Hyper {
            scale: 0.5,
            clip: 1.0,
            clipping: true,
            beta1: 0.9,
            beta2: 0.99,
            decay: 0.999,
            step_size: 1e-2,
            bc2_sqrt: 0.1,
            eps: 1e-8,
        };
        let decays = [false, true];
        let ptrs = |a: &[Array]| a.iter().map(|x| x.as_slice::<f32>().as_ptr() as usize).collect::<Vec<_>>();
        let host = |a: &[Array]| a.iter().map(|x| x.as_slice::<f32>().to_vec()).collect::<Vec<_>>();

        let (p, m, v, parts) = make();
        let (_, held_p, held_m, held_v) = step(&h, &p, &m, &v, &decays, &parts).unwrap().unwrap();
        mlx_rs::transforms::eval(held_p.iter().chain(&held_m).chain(&held_v)).unwrap();
        let old: Vec<usize> = [ptrs(&p), ptrs(&m), ptrs(&v)].concat();
        let new: Vec<usize> = [ptrs(&held_p), ptrs(&held_m), ptrs(&held_v)].concat();
        assert!(old.iter().all(|a| !new.contains(a)), "held inputs must not be written over");

        let (p, m, v, parts) = make();
        let old: Vec<usize> = [ptrs(&p), ptrs(&m), ptrs(&v)].concat();
        let (_, new_p, new_m, new_v) = step(&h, &p, &m, &v, &decays, &parts).unwrap().unwrap();
        drop((p, m, v));
        mlx_rs::transforms::eval(new_p.iter().chain(&new_m).chain(&new_v)).unwrap();
        assert_eq!([ptrs(&new_p), ptrs(&new_m), ptrs(&new_v)].concat(), old, "written over p, m and v");
        for (got, want) in [(&new_p, &held_p), (&new_m, &held_m), (&new_v, &held_v)] {
            assert_eq!(host(got), host(want));
        }

        // With m still held, nothing of p, m or v is written over (all three or none),
        // and m keeps its values.
        let (p, m, v, parts) = make();
        let old: Vec<usize> = [ptrs(&p), ptrs(&m), ptrs(&v)].concat();
        let m_before = host(&m);
        let (_, new_p, new_m, new_v) = step(&h, &p, &m, &v, &decays, &parts).unwrap().unwrap();
        drop((p, v));
        mlx_rs::transforms::eval(new_p.iter().chain(&new_m).chain(&new_v)).unwrap();
        let new: Vec<usize> = [ptrs(&new_p), ptrs(&new_m), ptrs(&new_v)].concat();
        assert!(old.iter().all(|a| !new.contains(a)), "a held moment blocks the whole parameter's donation");
        assert_eq!(host(&m), m_before);
        for (got, want) in [(&new_p, &held_p), (&new_m, &held_m), (&new_v, &held_v)] {
            assert_eq!(host(got), host(want));
        }
    }
}
