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

/// The most gradient parts one step sums (csrc/adamw.cpp keeps a pointer per part on
/// its stack).
pub const MAX_PARTS: usize = 16;

/// One step of the parameters `p` with moments `m`, `v` and gradient `parts` (each a full
/// set, in the order of `p`); `decays[j]` says whether parameter j is decayed. `Ok(None)`
/// when the primitive does not apply (switched off, not on the CPU, not float32, more than
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
        || parts.is_empty()
        || parts.len() > MAX_PARTS
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

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::random;

    /// PyTorch's formulas, element by element in f64: Σ parts · scale, clip_grad_norm_'s
    /// factor, then AdamW with decoupled decay.
    fn reference(
        h: &Hyper,
        p: &[Vec<f32>],
        m: &[Vec<f32>],
        v: &[Vec<f32>],
        decays: &[bool],
        parts: &[Vec<Vec<f32>>],
    ) -> (f64, [Vec<Vec<f64>>; 3]) {
        let grads: Vec<Vec<f64>> = (0..p.len())
            .map(|j| {
                (0..p[j].len()).map(|i| parts.iter().map(|g| g[j][i] as f64).sum::<f64>() * h.scale as f64).collect()
            })
            .collect();
        let norm = grads.iter().flatten().map(|g| g * g).sum::<f64>().sqrt();
        let coef = if h.clipping { (h.clip as f64 / (norm + 1e-6)).min(1.0) } else { 1.0 };
        let (mut new_p, mut new_m, mut new_v) = (Vec::new(), Vec::new(), Vec::new());
        for j in 0..p.len() {
            let decay = if decays[j] { h.decay as f64 } else { 1.0 };
            let (mut pj, mut mj, mut vj) = (Vec::new(), Vec::new(), Vec::new());
            for i in 0..p[j].len() {
                let g = grads[j][i] * coef;
                let m2 = m[j][i] as f64 * h.beta1 as f64 + g * (1.0 - h.beta1 as f64);
                let v2 = v[j][i] as f64 * h.beta2 as f64 + g * g * (1.0 - h.beta2 as f64);
                pj.push(
                    p[j][i] as f64 * decay - m2 / (v2.sqrt() / h.bc2_sqrt as f64 + h.eps as f64) * h.step_size as f64,
                );
                mj.push(m2);
                vj.push(v2);
            }
            new_p.push(pj);
            new_m.push(mj);
            new_v.push(vj);
        }
        (norm, [new_p, new_m, new_v])
    }

    /// Parameters shorter than a vector, longer than one of the kernel's 2048-element chunks
    /// and not a whole number of vectors, three gradient parts, a clip that binds: the
    /// norm, the new parameters and both new moments match the formulas.
    #[test]
    fn sums_parts_clips_and_updates_like_the_formulas() {
        let sizes = [5, 2053, 4096 + 17];
        let normal = |n: usize, k: u64, s: f32| {
            random::normal::<f32>(&[n as i32], None, Some(s), &random::key(k).unwrap()).unwrap()
        };
        let p: Vec<Array> = sizes.iter().enumerate().map(|(j, &n)| normal(n, j as u64, 1.0)).collect();
        let m: Vec<Array> = sizes.iter().enumerate().map(|(j, &n)| normal(n, 10 + j as u64, 0.01)).collect();
        let v: Vec<Array> =
            sizes.iter().enumerate().map(|(j, &n)| normal(n, 20 + j as u64, 0.01).square().unwrap()).collect();
        let parts: Vec<Vec<Array>> = (0..3)
            .map(|q| sizes.iter().enumerate().map(|(j, &n)| normal(n, 30 + 3 * q + j as u64, 0.1)).collect())
            .collect();
        let decays = [true, false, true];
        let h = Hyper {
            scale: 1.0 / 3.0,
            clip: 0.5,
            clipping: true,
            beta1: 0.9,
            beta2: 0.99,
            decay: 1.0 - 1e-3 * 0.1,
            step_size: 1e-3 / (1.0 - 0.9f32.powi(3)),
            bc2_sqrt: (1.0 - 0.99f32.powi(3)).sqrt(),
            eps: 1e-8,
        };
        let (norm, new_p, new_m, new_v) = step(&h, &p, &m, &v, &decays, &parts).unwrap().expect("float32 on the CPU");
        assert_eq!((new_p.len(), new_m.len(), new_v.len()), (3, 3, 3));
        let host = |a: &[Array]| a.iter().map(|x| x.as_slice::<f32>().to_vec()).collect::<Vec<_>>();
        let host_parts: Vec<Vec<Vec<f32>>> = parts.iter().map(|g| host(g)).collect();
        let (want_norm, want) = reference(&h, &host(&p), &host(&m), &host(&v), &decays, &host_parts);
        assert!(want_norm > 0.5 * 1.5, "the clip must bind: norm {want_norm}");
        let got_norm = norm.item_exact::<f32>() as f64;
        assert!((got_norm - want_norm).abs() <= 1e-5 * want_norm, "norm {got_norm} vs {want_norm}");
        for (what, got, want) in [("p'", &new_p, &want[0]), ("m'", &new_m, &want[1]), ("v'", &new_v, &want[2])] {
            for (j, (got, want)) in host(got).iter().zip(want).enumerate() {
                assert_eq!(got.len(), sizes[j]);
                for (i, (g, w)) in got.iter().zip(want).enumerate() {
                    assert!((*g as f64 - w).abs() <= 1e-6 * (1.0 + w.abs()), "{what} {j}[{i}]: {g} vs {w}");
                }
            }
        }
        // More parts than the kernel takes: declined, not failed.
        let many: Vec<Vec<Array>> = (0..MAX_PARTS + 1).map(|_| parts[0].clone()).collect();
        assert!(step(&h, &p, &m, &v, &decays, &many).unwrap().is_none());
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
