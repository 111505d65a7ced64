//! AdamW as PyTorch's `torch.optim.AdamW` (the optimizer behind nanoGPT's numbers):
//! bias-corrected moments, and decoupled weight decay applied only to parameters with two
//! or more dimensions (matmul weights and embeddings; no biases, no LayerNorm gains),
//! exactly as nanoGPT's `configure_optimizers` groups them.
//!
//! mlx-rs's `AdamW` has no bias correction and one decay for every parameter; checked
//! against `torch.optim.AdamW` by `tests/fixtures/adamw.json` (scripts/make_adamw_fixture.py).

use mlx_rs::error::Exception;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{Array, Dtype};
use std::collections::BTreeMap;

/// Hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// β1
    pub beta1: f32,
    /// β2
    pub beta2: f32,
    /// ε (PyTorch's default 1e-8)
    pub eps: f32,
    /// Decoupled weight decay for ≥ 2-D parameters.
    pub weight_decay: f32,
}

impl From<&crate::config::TrainConfig> for AdamWConfig {
    /// A run's betas and weight decay, with PyTorch's ε (nanoGPT does not set one).
    fn from(c: &crate::config::TrainConfig) -> Self {
        AdamWConfig { beta1: c.beta1 as f32, beta2: c.beta2 as f32, eps: 1e-8, weight_decay: c.weight_decay as f32 }
    }
}

type Kernel = Box<dyn FnMut(&[Array]) -> Result<Vec<Array>, Exception>>;

/// The gradients' global norm and the new parameters, by name.
pub type NormAndParams = (Array, BTreeMap<String, Array>);

/// One parameter's update as an MLX-compiled function, so its dozen element-wise ops run
/// as one fused kernel: `[p, g, m, v, hp] → [p', m', v']`, with the hyper-parameters
/// `hp = [β1, 1−β1, β2, 1−β2, decay factor, step size, √bc2, ε]` an input (constants
/// would be baked into the trace).
fn compiled_kernel() -> Kernel {
    let f = |xs: &[Array]| -> Result<Vec<Array>, Exception> {
        let (p, g, m, v, hp) = (&xs[0], &xs[1], &xs[2], &xs[3], &xs[4]);
        let k = |i: i32| hp.index(i);
        let m = m.multiply(k(0))?.add(g.multiply(k(1))?)?;
        let v = v.multiply(k(2))?.add(g.square()?.multiply(k(3))?)?;
        let denom = v.sqrt()?.divide(k(6))?.add(k(7))?;
        let new = p.multiply(k(4))?.subtract(m.divide(&denom)?.multiply(k(5))?)?;
        Ok(vec![new, m, v])
    };
    Box::new(mlx_rs::transforms::compile::compile(f, false))
}

/// Optimizer state: first and second moments per parameter, and the step count.
#[derive(Default)]
pub struct AdamW {
    /// Hyper-parameters.
    pub config: Option<AdamWConfig>,
    /// Exponential average of gradients, by parameter name.
    pub m: BTreeMap<String, Array>,
    /// Exponential average of squared gradients, by parameter name.
    pub v: BTreeMap<String, Array>,
    /// Steps taken.
    pub step: u64,
    /// The fused update (used when `compiled`; see [`AdamW::set_compiled`]).
    kernel: Option<Kernel>,
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW")
            .field("config", &self.config)
            .field("step", &self.step)
            .field("params", &self.m.len())
            .finish()
    }
}

impl AdamW {
    /// A fresh optimizer (the fused update on).
    pub fn new(config: AdamWConfig) -> Self {
        AdamW { config: Some(config), kernel: Some(compiled_kernel()), ..Default::default() }
    }

    /// Fuse each parameter's update with MLX compile (`true`, the default) or run it op by
    /// op. Results agree to float rounding.
    pub fn set_compiled(&mut self, compiled: bool) {
        self.kernel = compiled.then(compiled_kernel);
    }

    /// Whether `param` is decayed: nanoGPT decays every tensor with `dim() >= 2`.
    pub fn decays(param: &Array) -> bool {
        param.ndim() >= 2
    }

    /// One update of every parameter in `params` with its gradient in `grads`, at learning
    /// rate `lr`. Returns the new parameters (lazy; evaluate them with the state).
    pub fn update(
        &mut self,
        params: &BTreeMap<String, Array>,
        grads: &BTreeMap<String, Array>,
        lr: f32,
    ) -> Result<BTreeMap<String, Array>, Exception> {
        let c = self.config.expect("AdamW::new sets the config");
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2 = 1.0 - c.beta2.powi(t);
        let step_size = lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        let s = |v: f32| Array::from_f32(v);
        let mut out = BTreeMap::new();
        let hp = |decay: f32| {
            Array::from_slice(
                &[c.beta1, 1.0 - c.beta1, c.beta2, 1.0 - c.beta2, decay, step_size, bc2_sqrt, c.eps],
                &[8],
            )
        };
        let (hp_decay, hp_plain) = (hp(1.0 - lr * c.weight_decay), hp(1.0));
        for (name, p) in params {
            let g = grads.get(name).ok_or_else(|| Exception::custom(format!("no gradient for parameter {name}")))?;
            let g = g.as_dtype(Dtype::Float32)?;
            if let Some(kernel) = self.kernel.as_mut() {
                let zeros = || mlx_rs::ops::zeros_like(&g);
                let m = self.m.get(name).cloned().map_or_else(zeros, Ok)?;
                let v = self.v.get(name).cloned().map_or_else(zeros, Ok)?;
                let hp = if Self::decays(p) { &hp_decay } else { &hp_plain };
                let mut r = kernel(&[p.as_dtype(Dtype::Float32)?, g, m, v, hp.clone()])?;
                let (v, m, new) = (r.pop().expect("v"), r.pop().expect("m"), r.pop().expect("p"));
                out.insert(name.clone(), new.as_dtype(p.dtype())?);
                self.m.insert(name.clone(), m);
                self.v.insert(name.clone(), v);
                continue;
            }
            let m = match self.m.get(name) {
                Some(m) => m.multiply(s(c.beta1))?.add(g.multiply(s(1.0 - c.beta1))?)?,
                None => g.multiply(s(1.0 - c.beta1))?,
            };
            let v = match self.v.get(name) {
                Some(v) => v.multiply(s(c.beta2))?.add(g.square()?.multiply(s(1.0 - c.beta2))?)?,
                None => g.square()?.multiply(s(1.0 - c.beta2))?,
            };
            // p ← p·(1 − lr·λ) − (lr / bc1) · m / (√v / √bc2 + ε)
            let mut p32 = p.as_dtype(Dtype::Float32)?;
            if Self::decays(p) && c.weight_decay != 0.0 {
                p32 = p32.multiply(s(1.0 - lr * c.weight_decay))?;
            }
            let denom = v.sqrt()?.divide(s(bc2_sqrt))?.add(s(c.eps))?;
            let new = p32.subtract(m.divide(&denom)?.multiply(s(step_size))?)?;
            out.insert(name.clone(), new.as_dtype(p.dtype())?);
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
        }
        Ok(out)
    }

    /// One step from gradient parts (each a full set in the order of `params`, whose
    /// sum times `scale` is the gradient), clipped to global norm `grad_clip` (≤ 0: no
    /// clipping) as PyTorch's `clip_grad_norm_`, all in one kernel
    /// (`mlx_gpt_model::fused_adamw`). Returns the gradients' norm (before clipping) and
    /// the new parameters (lazy), or `Ok(None)`, with nothing changed, when the fused
    /// kernel does not apply (switched off, the per-parameter kernels switched off with
    /// [`AdamW::set_compiled`], not float32, not on the CPU).
    pub fn update_fused(
        &mut self,
        params: &BTreeMap<String, Array>,
        parts: &[Vec<Array>],
        scale: f32,
        grad_clip: f32,
        lr: f32,
    ) -> Result<Option<NormAndParams>, Exception> {
        if self.kernel.is_none() || !mlx_gpt_model::fused_adamw::enabled() {
            return Ok(None);
        }
        let c = self.config.expect("AdamW::new sets the config");
        let t = (self.step + 1) as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        let h = mlx_gpt_model::fused_adamw::Hyper {
            scale,
            clip: grad_clip,
            clipping: grad_clip > 0.0,
            beta1: c.beta1,
            beta2: c.beta2,
            decay: 1.0 - lr * c.weight_decay,
            step_size: lr / bc1,
            bc2_sqrt: bc2.sqrt(),
            eps: c.eps,
        };
        let p: Vec<Array> = params.values().cloned().collect();
        let state = |moments: &BTreeMap<String, Array>| -> Result<Vec<Array>, Exception> {
            params.iter().map(|(k, p)| moments.get(k).cloned().map_or_else(|| mlx_rs::ops::zeros_like(p), Ok)).collect()
        };
        let (m, v) = (state(&self.m)?, state(&self.v)?);
        let decays: Vec<bool> = p.iter().map(Self::decays).collect();
        let Some((norm, new_p, new_m, new_v)) = mlx_gpt_model::fused_adamw::step(&h, &p, &m, &v, &decays, parts)?
        else {
            return Ok(None);
        };
        self.step += 1;
        let mut out = BTreeMap::new();
        for (((name, p), m), v) in params.keys().zip(new_p).zip(new_m).zip(new_v) {
            out.insert(name.clone(), p);
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
        }
        Ok(Some((norm, out)))
    }

    /// All state arrays, for evaluation and saving.
    pub fn arrays(&self) -> impl Iterator<Item = &Array> {
        self.m.values().chain(self.v.values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn matches_torch_adamw_with_nanogpt_grouping() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/adamw.json");
        let f: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let vec = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect::<Vec<_>>();
        let shape =
            |k: &str| f["shapes"][k].as_array().unwrap().iter().map(|d| d.as_i64().unwrap() as i32).collect::<Vec<_>>();
        let names: Vec<String> = f["shapes"].as_object().unwrap().keys().cloned().collect();
        // The op-by-op, the compiled per-parameter and the one-kernel update (its gradient
        // given as two parts that sum to it, clipping off) must all match PyTorch.
        for (compiled, one_kernel) in [(false, false), (true, false), (true, true)] {
            let mut params: BTreeMap<String, Array> =
                names.iter().map(|k| (k.clone(), Array::from_slice(&vec(&f["initial"][k]), &shape(k)))).collect();
            let mut opt = AdamW::new(AdamWConfig {
                beta1: f["betas"][0].as_f64().unwrap() as f32,
                beta2: f["betas"][1].as_f64().unwrap() as f32,
                eps: f["eps"].as_f64().unwrap() as f32,
                weight_decay: f["weight_decay"].as_f64().unwrap() as f32,
            });
            opt.set_compiled(compiled);
            for (i, step) in f["steps"].as_array().unwrap().iter().enumerate() {
                let grads: BTreeMap<String, Array> =
                    names.iter().map(|k| (k.clone(), Array::from_slice(&vec(&step["grads"][k]), &shape(k)))).collect();
                let lr = step["lr"].as_f64().unwrap() as f32;
                params = if one_kernel {
                    let half: Vec<Array> = grads.values().map(|g| g.multiply(Array::from_f32(0.5)).unwrap()).collect();
                    let parts = [half.clone(), half];
                    let (norm, new) =
                        opt.update_fused(&params, &parts, 1.0, 0.0, lr).unwrap().expect("float32 on the CPU");
                    let want: f32 =
                        grads.values().map(|g| g.square().unwrap().sum(None).unwrap().item_exact::<f32>()).sum();
                    assert!((norm.item_exact::<f32>() - want.sqrt()).abs() < 1e-5 * want.sqrt(), "norm");
                    new
                } else {
                    opt.update(&params, &grads, lr).unwrap()
                };
                for k in &names {
                    let want = vec(&step["params"][k]);
                    let got = params[k].as_slice::<f32>();
                    for (j, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (a - b).abs() < 1e-6,
                            "compiled={compiled} one_kernel={one_kernel} step {i} {k}[{j}]: {a} vs torch {b}"
                        );
                    }
                }
            }
            assert_eq!(opt.step, 4);
        }
    }
}
