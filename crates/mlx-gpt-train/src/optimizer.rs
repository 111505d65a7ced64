//! AdamW as PyTorch's `torch.optim.AdamW` (the optimizer behind nanoGPT's numbers):
//! bias-corrected moments, and decoupled weight decay applied only to parameters with two
//! or more dimensions (matmul weights and embeddings; no biases, no LayerNorm gains),
//! exactly as nanoGPT's `configure_optimizers` groups them; with the gradients clipped to
//! a global norm as `clip_grad_norm_` first. Its state (moments and step count) is saved
//! and loaded here; checkpoints call [`AdamW::save`] and [`AdamW::load`].
//!
//! The arithmetic is one operation of mlx-gpt-ops ([`mlx_gpt_ops::adamw_step`]): one CPU
//! kernel for the whole step, or its plain-MLX formulation, as the [`Kernels`] say.
//! mlx-rs's `AdamW` has no bias correction and one decay for every parameter; this is
//! checked against `torch.optim.AdamW` by `tests/fixtures/adamw.json`
//! (scripts/make_adamw_fixture.py).

use mlx_gpt_ops::{AdamWHyper, AdamWStep, Kernels};
use mlx_rs::error::Exception;
use mlx_rs::Array;
use std::collections::BTreeMap;
use std::path::Path;

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

/// The gradients' global norm and the new parameters, by name.
pub type NormAndParams = (Array, BTreeMap<String, Array>);

/// Optimizer state: first and second moments per parameter (float32), and the step count.
pub struct AdamW {
    config: AdamWConfig,
    m: BTreeMap<String, Array>,
    v: BTreeMap<String, Array>,
    step: u64,
    /// The step function, made (and its plain formulation compiled) on first use.
    kernel: Option<AdamWStep>,
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

/// Why optimizer state could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file could not be read.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// It is not the state of this model.
    #[error("{0}")]
    Invalid(String),
}

impl AdamW {
    /// A fresh optimizer.
    pub fn new(config: AdamWConfig) -> Self {
        AdamW { config, m: BTreeMap::new(), v: BTreeMap::new(), step: 0, kernel: None }
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Whether `param` is decayed: nanoGPT decays every tensor with `dim() >= 2`.
    pub fn decays(param: &Array) -> bool {
        param.ndim() >= 2
    }

    /// One step from gradient `parts` (each a full set in the order of `params`, whose sum
    /// times `scale` is the gradient), clipped to global norm `grad_clip` (≤ 0: no
    /// clipping) as PyTorch's `clip_grad_norm_`, at learning rate `lr`. Returns the
    /// gradients' norm (before clipping) and the new parameters, lazy: evaluate them with
    /// [`AdamW::arrays`].
    pub fn step(
        &mut self,
        k: &Kernels,
        params: &BTreeMap<String, Array>,
        parts: &[Vec<Array>],
        scale: f32,
        grad_clip: f32,
        lr: f32,
    ) -> Result<NormAndParams, Exception> {
        let c = self.config;
        let t = (self.step + 1) as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        let h = AdamWHyper {
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
            params
                .iter()
                .map(|(k, p)| moments.get(k).cloned().map_or_else(|| mlx_rs::ops::zeros::<f32>(p.shape()), Ok))
                .collect()
        };
        let (m, v) = (state(&self.m)?, state(&self.v)?);
        let decays: Vec<bool> = p.iter().map(Self::decays).collect();
        let kernel = match self.kernel.take() {
            Some(kernel) if kernel.decays() == decays.as_slice() => kernel,
            _ => AdamWStep::new(decays),
        };
        let kernel = self.kernel.insert(kernel);
        let (norm, new_p, new_m, new_v) = kernel.step(k, &h, &p, &m, &v, parts)?;
        self.step += 1;
        let mut out = BTreeMap::new();
        for (((name, p), m), v) in params.keys().zip(new_p).zip(new_m).zip(new_v) {
            out.insert(name.clone(), p);
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
        }
        Ok((norm, out))
    }

    /// All state arrays, for evaluation.
    pub fn arrays(&self) -> impl Iterator<Item = &Array> {
        self.m.values().chain(self.v.values())
    }

    /// Write the state to `path` (safetensors: `m.<param>` and `v.<param>` in float32, the
    /// step count in the metadata).
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let arrays: Vec<(String, &Array)> = self
            .m
            .iter()
            .map(|(k, a)| (format!("m.{k}"), a))
            .chain(self.v.iter().map(|(k, a)| (format!("v.{k}"), a)))
            .collect();
        crate::state_file::save(path, &arrays, self.step)
    }

    /// Read the state [`AdamW::save`] wrote, for a model whose parameters have `shapes`;
    /// anything else in the file (a tensor of another shape or name, no step count, state
    /// for only some parameters) is an error saying what.
    pub fn load(path: &Path, config: AdamWConfig, shapes: &BTreeMap<String, Vec<i32>>) -> Result<AdamW, StateError> {
        let (step, tensors) = crate::state_file::load(path)?;
        let mut opt = AdamW { step, ..AdamW::new(config) };
        for (name, a) in tensors {
            let (kind, param) =
                name.split_once('.').ok_or_else(|| StateError::Invalid(format!("unexpected tensor {name}")))?;
            if shapes.get(param).map(Vec::as_slice) != Some(a.shape()) {
                return Err(StateError::Invalid(format!("tensor {name} does not match the model")));
            }
            match kind {
                "m" => opt.m.insert(param.to_string(), a),
                "v" => opt.v.insert(param.to_string(), a),
                _ => return Err(StateError::Invalid(format!("unexpected tensor {name}"))),
            };
        }
        if step > 0 && (opt.m.len() != shapes.len() || opt.v.len() != shapes.len()) {
            return Err(StateError::Invalid(format!("state covers {} of {} parameters", opt.m.len(), shapes.len())));
        }
        Ok(opt)
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
        // Every kernel set must match PyTorch, with the gradient given whole and as two
        // parts that sum to it (clipping off).
        let mut sets = vec![Kernels::mlx()];
        sets.extend(Kernels::cpu());
        for (k, split) in sets.iter().flat_map(|k| [(k, false), (k, true)]) {
            let mut params: BTreeMap<String, Array> =
                names.iter().map(|k| (k.clone(), Array::from_slice(&vec(&f["initial"][k]), &shape(k)))).collect();
            let mut opt = AdamW::new(AdamWConfig {
                beta1: f["betas"][0].as_f64().unwrap() as f32,
                beta2: f["betas"][1].as_f64().unwrap() as f32,
                eps: f["eps"].as_f64().unwrap() as f32,
                weight_decay: f["weight_decay"].as_f64().unwrap() as f32,
            });
            for (i, step) in f["steps"].as_array().unwrap().iter().enumerate() {
                let grads: BTreeMap<String, Array> =
                    names.iter().map(|k| (k.clone(), Array::from_slice(&vec(&step["grads"][k]), &shape(k)))).collect();
                let lr = step["lr"].as_f64().unwrap() as f32;
                let whole: Vec<Array> = grads.values().cloned().collect();
                let half: Vec<Array> = grads.values().map(|g| g.multiply(Array::from_f32(0.5)).unwrap()).collect();
                let parts = if split { vec![half.clone(), half] } else { vec![whole] };
                let (norm, new) = opt.step(k, &params, &parts, 1.0, 0.0, lr).unwrap();
                let want: f32 =
                    grads.values().map(|g| g.square().unwrap().sum(None).unwrap().item_exact::<f32>()).sum();
                assert!((norm.item_exact::<f32>() - want.sqrt()).abs() < 1e-5 * want.sqrt(), "norm");
                params = new;
                for name in &names {
                    let want = vec(&step["params"][name]);
                    let got = params[name].as_slice::<f32>();
                    for (j, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (a - b).abs() < 1e-6,
                            "{} split={split} step {i} {name}[{j}]: {a} vs torch {b}",
                            k.name()
                        );
                    }
                }
            }
            assert_eq!(opt.steps(), 4);
        }
    }
}
