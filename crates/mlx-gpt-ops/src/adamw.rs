//! One optimizer step: the gradient parts summed and scaled, clipped to a global norm as
//! PyTorch's `clip_grad_norm_`, and AdamW (`torch.optim.AdamW`: bias-corrected moments,
//! decoupled weight decay on the parameters marked decayed) applied to every parameter.
//!
//! As MLX ops this is a few hundred small kernels after the gradients; the CPU kernel
//! (csrc/adamw.cpp) does it in one task. The optimizer that holds the state and works out
//! the scalars is `mlx_gpt_train::optimizer::AdamW`.

use crate::kernels::{KernelSet, Kernels};
use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype};

/// The scalars of one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWHyper {
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

impl AdamWHyper {
    /// The scalars as one array, the order [`adamw_step_arrays`] reads them in.
    pub fn to_array(&self) -> Array {
        let clipping = if self.clipping { 1.0 } else { 0.0 };
        Array::from_slice(
            &[
                self.scale,
                self.clip,
                clipping,
                self.beta1,
                self.beta2,
                self.decay,
                self.step_size,
                self.bc2_sqrt,
                self.eps,
            ],
            &[9],
        )
    }
}

/// The step's results: the gradients' global norm (scaled, before clipping), and the new
/// parameters, first and second moments, in the order given.
pub type AdamWUpdate = (Array, Vec<Array>, Vec<Array>, Vec<Array>);

/// One step of the parameters `p` with moments `m`, `v` (float32) and gradient `parts`
/// (each a full set in the order of `p`, summing to the unscaled gradient); `decays[j]`
/// says whether parameter j is decayed. The results are lazy. For a step taken again and
/// again, [`AdamWStep`] compiles the plain formulation once.
pub fn adamw_step(
    k: &Kernels,
    h: &AdamWHyper,
    p: &[Array],
    m: &[Array],
    v: &[Array],
    decays: &[bool],
    parts: &[Vec<Array>],
) -> Result<AdamWUpdate, Exception> {
    AdamWStep::run(k, h, p, m, v, decays, parts, &mut |inputs| adamw_step_arrays(inputs, decays))
}

/// The plain formulation on its inputs (compiled or not).
type PlainStep<'a> = dyn FnMut(&[Array]) -> Result<Vec<Array>, Exception> + 'a;
type StepFn = Box<PlainStep<'static>>;

/// [`adamw_step`] for one set of parameters, step after step: where the CPU kernel does
/// not run (another set of kernels, another dtype), the plain formulation runs as one
/// MLX-compiled function, traced once, instead of a few hundred separate small kernels.
pub struct AdamWStep {
    decays: Vec<bool>,
    plain: StepFn,
}

impl AdamWStep {
    /// For parameters whose decay flags are `decays`.
    pub fn new(decays: Vec<bool>) -> Self {
        let flags = decays.clone();
        let f = move |inputs: &[Array]| adamw_step_arrays(inputs, &flags);
        AdamWStep { decays, plain: Box::new(mlx_rs::transforms::compile::compile(f, false)) }
    }

    /// The decay flags it was made for.
    pub fn decays(&self) -> &[bool] {
        &self.decays
    }

    /// One step, as [`adamw_step`] with this step's decay flags.
    pub fn step(
        &mut self,
        k: &Kernels,
        h: &AdamWHyper,
        p: &[Array],
        m: &[Array],
        v: &[Array],
        parts: &[Vec<Array>],
    ) -> Result<AdamWUpdate, Exception> {
        Self::run(k, h, p, m, v, &self.decays, parts, &mut self.plain)
    }

    /// The CPU kernel where the kernels and the arrays allow it, else `plain` (the plain
    /// formulation, compiled or not) on the inputs [`adamw_step_arrays`] takes.
    #[allow(clippy::too_many_arguments)]
    fn run(
        k: &Kernels,
        h: &AdamWHyper,
        p: &[Array],
        m: &[Array],
        v: &[Array],
        decays: &[bool],
        parts: &[Vec<Array>],
        plain: &mut PlainStep<'_>,
    ) -> Result<AdamWUpdate, Exception> {
        check_counts(p, m, v, decays, parts)?;
        if parts.is_empty() {
            return Err(Exception::custom("AdamW step: no gradient parts"));
        }
        if k.set() == KernelSet::Cpu {
            #[cfg(cpu_kernels)]
            if let Some(out) = crate::cpu::adamw::step(h, p, m, v, decays, parts)? {
                return Ok(out);
            }
        }
        let mut inputs = vec![h.to_array()];
        inputs.extend(p.iter().chain(m).chain(v).chain(parts.iter().flatten()).cloned());
        Ok(split_update(plain(&inputs)?, p.len()))
    }
}

/// Every list holds one entry per parameter (the moments, the decay flags, each gradient
/// part), or an error that gives the counts.
pub(crate) fn check_counts(
    p: &[Array],
    m: &[Array],
    v: &[Array],
    decays: &[bool],
    parts: &[Vec<Array>],
) -> Result<(), Exception> {
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
    Ok(())
}

/// `[norm, p'…, m'…, v'…]` → [`AdamWUpdate`].
pub fn split_update(out: Vec<Array>, n: usize) -> AdamWUpdate {
    let mut out = out.into_iter();
    let norm = out.next().expect("1 + 3n outputs");
    let new_p: Vec<Array> = out.by_ref().take(n).collect();
    let new_m: Vec<Array> = out.by_ref().take(n).collect();
    (norm, new_p, new_m, out.collect())
}

/// The plain-MLX formulation on arrays only, so that it can be traced by MLX's `compile`:
/// `[hyper (AdamWHyper::to_array), p…, m…, v…, part 0…, part 1…, …] → [norm, p'…, m'…,
/// v'…]`, with n = `decays.len()` parameters. The reference of the CPU kernel, and the
/// step everywhere it does not run.
pub fn adamw_step_arrays(inputs: &[Array], decays: &[bool]) -> Result<Vec<Array>, Exception> {
    let n = decays.len();
    let hyper = &inputs[0];
    let h = |i: i32| -> Result<Array, Exception> { hyper.take(Array::from_int(i)) };
    let (p, m, v, parts) =
        (&inputs[1..1 + n], &inputs[1 + n..1 + 2 * n], &inputs[1 + 2 * n..1 + 3 * n], &inputs[1 + 3 * n..]);
    let n_parts = parts.len() / n.max(1);
    // Σ parts · scale, in float32.
    let mut grads = Vec::with_capacity(n);
    for j in 0..n {
        let mut g = parts[j].as_dtype(Dtype::Float32)?;
        for i in 1..n_parts {
            g = g.add(parts[i * n + j].as_dtype(Dtype::Float32)?)?;
        }
        grads.push(g.multiply(h(0)?)?);
    }
    // clip_grad_norm_: scaled by clip / (norm + 1e-6), never up; not at all without clipping.
    let mut total = Array::from_f32(0.0);
    for g in &grads {
        total = total.add(g.square()?.sum(None)?)?;
    }
    let norm = total.sqrt()?;
    let coef = mlx_rs::ops::minimum(h(1)?.divide(norm.add(Array::from_f32(1e-6))?)?, Array::from_f32(1.0))?;
    let coef = mlx_rs::ops::select(h(2)?.gt(Array::from_f32(0.5))?, &coef, Array::from_f32(1.0))?;
    let (beta1, beta2, decay, step_size, bc2_sqrt, eps) = (h(3)?, h(4)?, h(5)?, h(6)?, h(7)?, h(8)?);
    let one = Array::from_f32(1.0);
    let (mut new_p, mut new_m, mut new_v) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for j in 0..n {
        let g = grads[j].multiply(&coef)?;
        let m = m[j].multiply(&beta1)?.add(g.multiply(one.subtract(&beta1)?)?)?;
        let v = v[j].multiply(&beta2)?.add(g.square()?.multiply(one.subtract(&beta2)?)?)?;
        // p ← p·(1 − lr·λ) − (lr / bc1) · m / (√v / √bc2 + ε)
        let mut p32 = p[j].as_dtype(Dtype::Float32)?;
        if decays[j] {
            p32 = p32.multiply(&decay)?;
        }
        let denom = v.sqrt()?.divide(&bc2_sqrt)?.add(&eps)?;
        new_p.push(p32.subtract(m.divide(&denom)?.multiply(&step_size)?)?.as_dtype(p[j].dtype())?);
        new_m.push(m);
        new_v.push(v);
    }
    let mut out = vec![norm];
    out.extend(new_p);
    out.extend(new_m);
    out.extend(new_v);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::random;

    /// PyTorch's formulas, element by element in f64: Σ parts · scale, clip_grad_norm_'s
    /// factor, then AdamW with decoupled decay.
    fn reference(
        h: &AdamWHyper,
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

    /// Parameters shorter than a vector, longer than one of the CPU kernel's 2048-element
    /// chunks and not a whole number of vectors, three gradient parts, a clip that binds:
    /// with every kernel set, the norm, the new parameters and both new moments match the
    /// formulas.
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
        let h = AdamWHyper {
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
        let mut sets = vec![Kernels::mlx()];
        sets.extend(Kernels::cpu());
        for k in &sets {
            let (norm, new_p, new_m, new_v) = adamw_step(k, &h, &p, &m, &v, &decays, &parts).unwrap();
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
                        assert!(
                            (*g as f64 - w).abs() <= 1e-6 * (1.0 + w.abs()),
                            "{}: {what} {j}[{i}]: {g} vs {w}",
                            k.name()
                        );
                    }
                }
            }
        }
    }

    /// The plain formulation compiled ([`AdamWStep`], twice: traced, then replayed) gives
    /// what it gives op by op.
    #[test]
    fn the_compiled_step_equals_the_plain_one() {
        let normal = |n: i32, k: u64| random::normal::<f32>(&[n], None, Some(0.1), &random::key(k).unwrap()).unwrap();
        let p = vec![normal(7, 1), normal(300, 2)];
        let m = vec![normal(7, 3), normal(300, 4)];
        let v = vec![normal(7, 5).square().unwrap(), normal(300, 6).square().unwrap()];
        let parts = vec![vec![normal(7, 7), normal(300, 8)], vec![normal(7, 9), normal(300, 10)]];
        let decays = [true, false];
        let h = AdamWHyper {
            scale: 0.5,
            clip: 0.05,
            clipping: true,
            beta1: 0.9,
            beta2: 0.95,
            decay: 0.999,
            step_size: 1e-2,
            bc2_sqrt: 0.3,
            eps: 1e-8,
        };
        let plain = adamw_step(&Kernels::mlx(), &h, &p, &m, &v, &decays, &parts).unwrap();
        let mut compiled = AdamWStep::new(decays.to_vec());
        for _ in 0..2 {
            let got = compiled.step(&Kernels::mlx(), &h, &p, &m, &v, &parts).unwrap();
            let pairs = [(&got.0, &plain.0)]
                .into_iter()
                .chain(got.1.iter().zip(&plain.1))
                .chain(got.2.iter().zip(&plain.2))
                .chain(got.3.iter().zip(&plain.3));
            for (a, b) in pairs {
                for (x, y) in a.as_slice::<f32>().iter().zip(b.as_slice::<f32>()) {
                    assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{x} vs {y}");
                }
            }
        }
    }

    /// clip_grad_norm_'s corner cases in the plain formulation: never scaled up, no
    /// clipping leaves a non-finite norm's gradients as they are.
    #[test]
    fn clipping_scales_down_only_and_can_be_off() {
        let h = |clip: f32| AdamWHyper {
            scale: 0.5,
            clip,
            clipping: clip > 0.0,
            beta1: 0.0,
            beta2: 0.0,
            decay: 1.0,
            step_size: 1.0,
            bc2_sqrt: 1.0,
            eps: 0.0,
        };
        // With β1 = β2 = 0 and ε = 0 the step is p − g/|g|: it shows the gradient's sign
        // only, so the moments carry the clipped gradient: m' = g, v' = g².
        let p = vec![Array::from_slice(&[0.0f32, 0.0], &[2]), Array::from_slice(&[0.0f32], &[1])];
        let zeros = p.clone();
        let parts = vec![
            vec![Array::from_slice(&[3.0f32, 0.0], &[2]), Array::from_slice(&[0.0f32], &[1])],
            vec![Array::from_slice(&[3.0f32, 0.0], &[2]), Array::from_slice(&[8.0f32], &[1])],
        ];
        // Sum (6, 0), (8); scaled by 1/2: (3, 0), (4); norm 5; clipped to 1: ×1/(5+1e-6).
        let (norm, _, m, _) =
            adamw_step(&Kernels::mlx(), &h(1.0), &p, &zeros, &zeros, &[false, false], &parts).unwrap();
        assert!((norm.item_exact::<f32>() - 5.0).abs() < 1e-6);
        assert!((m[0].as_slice::<f32>()[0] - 0.6).abs() < 1e-6 && (m[1].as_slice::<f32>()[0] - 0.8).abs() < 1e-6);
        for clip in [0.0, 10.0] {
            let (_, _, m, _) =
                adamw_step(&Kernels::mlx(), &h(clip), &p, &zeros, &zeros, &[false, false], &parts).unwrap();
            assert_eq!(m[1].as_slice::<f32>(), &[4.0]);
        }
        let inf = vec![vec![Array::from_slice(&[f32::INFINITY, 1.0], &[2]), Array::from_slice(&[2.0f32], &[1])]];
        let (norm, _, m, _) = adamw_step(&Kernels::mlx(), &h(0.0), &p, &zeros, &zeros, &[false, false], &inf).unwrap();
        assert_eq!(norm.item_exact::<f32>(), f32::INFINITY);
        assert_eq!(m[1].as_slice::<f32>(), &[1.0]);
        assert!(adamw_step(&Kernels::mlx(), &h(1.0), &p, &zeros, &zeros, &[false], &parts).is_err());
    }
}
