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
//!
//! With `optimizer = "muon"` the blocks' weight matrices go to [`Muon`] instead (at their
//! own learning rate, on the same schedule), the rest stays here; both take the gradients
//! clipped by one global norm over all parameters, and share the state file.

use crate::muon::{Muon, MuonConfig};
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
    /// Muon for the blocks' matrices, and its learning rate as a multiple of the run's.
    pub muon: Option<(MuonConfig, f32)>,
    /// The token (and position) embedding's learning rate as a multiple of the run's.
    pub embedding_lr_ratio: f32,
    /// An untied head's (`lm_head`) learning rate as a multiple of the run's.
    pub head_lr_ratio: f32,
}

impl AdamWConfig {
    /// AdamW alone, for every parameter, at one learning rate.
    pub fn adamw(beta1: f32, beta2: f32, eps: f32, weight_decay: f32) -> Self {
        AdamWConfig { beta1, beta2, eps, weight_decay, muon: None, embedding_lr_ratio: 1.0, head_lr_ratio: 1.0 }
    }

    /// The learning rate of AdamW's parameter `name` as a multiple of the run's.
    pub fn lr_ratio(&self, name: &str) -> f32 {
        match name {
            "wte.weight" | "wpe.weight" => self.embedding_lr_ratio,
            "lm_head.weight" => self.head_lr_ratio,
            _ => 1.0,
        }
    }

    /// Whether every parameter steps at the run's learning rate with AdamW.
    fn single_group(&self) -> bool {
        self.muon.is_none() && self.embedding_lr_ratio == 1.0 && self.head_lr_ratio == 1.0
    }
}

impl From<&crate::config::TrainConfig> for AdamWConfig {
    /// A run's betas and weight decay, with PyTorch's ε (nanoGPT does not set one); and
    /// Muon's momentum and learning rate with `optimizer = "muon"`.
    fn from(c: &crate::config::TrainConfig) -> Self {
        let ratio = |lr: f64| (lr / c.learning_rate.max(f64::MIN_POSITIVE)) as f32;
        let muon = (c.optimizer == "muon").then(|| {
            let m = MuonConfig { momentum: c.muon_momentum as f32, ..MuonConfig::default() };
            (m, ratio(c.muon_lr))
        });
        let or_run = |lr: f64| if lr > 0.0 { ratio(lr) } else { 1.0 };
        AdamWConfig {
            muon,
            embedding_lr_ratio: or_run(c.embedding_lr),
            head_lr_ratio: or_run(c.head_lr),
            ..AdamWConfig::adamw(c.beta1 as f32, c.beta2 as f32, 1e-8, c.weight_decay as f32)
        }
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
    /// The blocks' matrices' optimizer, with `optimizer = "muon"`.
    muon: Option<Muon>,
    /// The step functions, one per pattern of decayed parameters, made (and their plain
    /// formulation compiled) on first use.
    kernels: Vec<AdamWStep>,
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
        let muon = config.muon.map(|(m, _)| Muon::new(m));
        AdamW { config, m: BTreeMap::new(), v: BTreeMap::new(), step: 0, muon, kernels: Vec::new() }
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
        let out = if self.config.single_group() {
            self.adamw_update(k, params, parts, scale, grad_clip, lr)?
        } else {
            self.step_grouped(k, params, parts, scale, grad_clip, lr)?
        };
        self.step += 1; // once per step, whatever the number of groups (bias correction)
        Ok(out)
    }

    /// The AdamW update of step `self.step + 1` for every parameter of `params` at `lr`:
    /// one kernel (or its plain formulation) for the clipping and the update.
    fn adamw_update(
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
        let at = match self.kernels.iter().position(|kernel| kernel.decays() == decays.as_slice()) {
            Some(at) => at,
            None => {
                self.kernels.push(AdamWStep::new(decays));
                self.kernels.len() - 1
            }
        };
        let (norm, new_p, new_m, new_v) = self.kernels[at].step(k, &h, &p, &m, &v, parts)?;
        let mut out = BTreeMap::new();
        for (((name, p), m), v) in params.keys().zip(new_p).zip(new_m).zip(new_v) {
            out.insert(name.clone(), p);
            self.m.insert(name.clone(), m);
            self.v.insert(name.clone(), v);
        }
        Ok((norm, out))
    }

    /// [`AdamW::step`] with several groups — Muon for the blocks' matrices, AdamW at each
    /// group's learning rate for the rest: the gradients summed, one global norm over all
    /// of them (clipping them all by the same factor, as `clip_grad_norm_` over the whole
    /// model does), then AdamW on each of its groups (unclipped inside: the factor is
    /// applied already) and Muon on the matrices.
    fn step_grouped(
        &mut self,
        k: &Kernels,
        params: &BTreeMap<String, Array>,
        parts: &[Vec<Array>],
        scale: f32,
        grad_clip: f32,
        lr: f32,
    ) -> Result<NormAndParams, Exception> {
        let grads: Vec<Array> = (0..params.len())
            .map(|j| {
                let mut g = parts[0][j].clone();
                for part in &parts[1..] {
                    g = g.add(&part[j])?;
                }
                g.multiply(Array::from_f32(scale))
            })
            .collect::<Result<_, _>>()?;
        let mut sum = Array::from_f32(0.0);
        for g in &grads {
            sum = sum.add(g.square()?.sum(None)?)?;
        }
        let norm = sum.sqrt()?;
        let factor = if grad_clip > 0.0 {
            mlx_rs::ops::minimum(
                Array::from_f32(1.0),
                Array::from_f32(grad_clip).divide(norm.add(Array::from_f32(1e-6))?)?,
            )?
        } else {
            Array::from_f32(1.0)
        };
        // AdamW's groups by learning-rate ratio (the bits of an f32, to be a map key).
        let mut adam: BTreeMap<u32, (BTreeMap<String, Array>, Vec<Array>)> = BTreeMap::new();
        let (mut muon_p, mut muon_g) = (BTreeMap::new(), BTreeMap::new());
        for ((name, p), g) in params.iter().zip(grads) {
            let g = g.multiply(&factor)?;
            if self.muon.is_some() && crate::muon::takes(name, p) {
                muon_p.insert(name.clone(), p.clone());
                muon_g.insert(name.clone(), g);
            } else {
                let group = adam.entry(self.config.lr_ratio(name).to_bits()).or_default();
                group.0.insert(name.clone(), p.clone());
                group.1.push(g);
            }
        }
        let mut out = BTreeMap::new();
        for (ratio, (p, g)) in adam {
            // From the clipped gradients whole: no clipping inside.
            let (_, updated) = self.adamw_update(k, &p, &[g], 1.0, 0.0, lr * f32::from_bits(ratio))?;
            out.extend(updated);
        }
        if let (Some(muon), Some((_, ratio))) = (self.muon.as_mut(), self.config.muon) {
            out.extend(muon.step(&muon_p, &muon_g, lr * ratio)?);
        }
        Ok((norm, out))
    }

    /// All state arrays, for evaluation.
    pub fn arrays(&self) -> Box<dyn Iterator<Item = &Array> + '_> {
        let adam = self.m.values().chain(self.v.values());
        match &self.muon {
            Some(m) => Box::new(adam.chain(m.arrays())),
            None => Box::new(adam),
        }
    }

    /// Write the state to `path` (safetensors: `m.<param>` and `v.<param>` in float32, the
    /// step count in the metadata).
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let mut arrays: Vec<(String, &Array)> = self
            .m
            .iter()
            .map(|(k, a)| (format!("m.{k}"), a))
            .chain(self.v.iter().map(|(k, a)| (format!("v.{k}"), a)))
            .collect();
        arrays.extend(self.muon.iter().flat_map(Muon::named_arrays));
        crate::state_file::save(path, &arrays, self.step)
    }

    /// Read the state [`AdamW::save`] wrote, for a model whose parameters have `shapes`;
    /// anything else in the file (a tensor of another shape or name, no step count, state
    /// for only some parameters) is an error saying what.
    pub fn load(path: &Path, config: AdamWConfig, shapes: &BTreeMap<String, Vec<i32>>) -> Result<AdamW, StateError> {
        let (step, tensors) = crate::state_file::load(path)?;
        let mut opt = AdamW { step, ..AdamW::new(config) };
        let (momentum, tensors): (Vec<_>, Vec<_>) = tensors.into_iter().partition(|(n, _)| n.starts_with("momentum."));
        // With Muon, the blocks' matrices have its state instead of AdamW's.
        let (muon_shapes, shapes): (BTreeMap<_, _>, BTreeMap<_, _>) = match config.muon {
            Some(_) => shapes.clone().into_iter().partition(|(n, s)| crate::muon::takes_shape(n, s)),
            None => (BTreeMap::new(), shapes.clone()),
        };
        let shapes = &shapes;
        match (config.muon, momentum.is_empty()) {
            (Some(_), true) if step > 0 => {
                return Err(StateError::Invalid(
                    "it holds AdamW's state only: resume with optimizer = \"adamw\" (Muon starts a new run)".into(),
                ))
            }
            (Some((m, _)), _) => opt.muon = Some(Muon::from_state(m, step, momentum, &muon_shapes)?),
            (None, false) => {
                return Err(StateError::Invalid(
                    "it holds Muon's state (momentum.* tensors): resume with optimizer = \"muon\"".into(),
                ))
            }
            (None, true) => {}
        }
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
            let mut opt = AdamW::new(AdamWConfig::adamw(
                f["betas"][0].as_f64().unwrap() as f32,
                f["betas"][1].as_f64().unwrap() as f32,
                f["eps"].as_f64().unwrap() as f32,
                f["weight_decay"].as_f64().unwrap() as f32,
            ));
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

#[cfg(test)]
mod muon_tests {
    use super::*;
    use mlx_rs::random;

    fn model_like() -> BTreeMap<String, Array> {
        let shapes: [(&str, &[i32]); 5] = [
            ("h.0.attn.c_attn.weight", &[8, 24]),
            ("h.0.attn.c_attn.bias", &[24]),
            ("h.0.mlp.c_proj.weight", &[16, 8]),
            ("wte.weight", &[11, 8]),
            ("ln_f.weight", &[8]),
        ];
        shapes
            .iter()
            .enumerate()
            .map(|(i, (n, s))| {
                (n.to_string(), random::normal::<f32>(*s, None, None, &random::key(i as u64).unwrap()).unwrap())
            })
            .collect()
    }

    fn grads(params: &BTreeMap<String, Array>, seed: u64) -> Vec<Array> {
        params
            .values()
            .enumerate()
            .map(|(i, p)| {
                random::normal::<f32>(p.shape(), None, None, &random::key(seed * 10 + i as u64).unwrap()).unwrap()
            })
            .collect()
    }

    fn with_muon() -> AdamWConfig {
        AdamWConfig { muon: Some((MuonConfig::default(), 20.0)), ..AdamWConfig::adamw(0.9, 0.95, 1e-8, 0.1) }
    }

    /// With `embedding_lr_ratio` and `head_lr_ratio`, AdamW's first step moves the token
    /// embedding, the head and the rest by their own learning rates: Adam's first update is
    /// ±lr (m̂/√v̂ = g/|g|), so each parameter moves by its group's rate exactly; and over two
    /// steps each group equals AdamW alone at that rate (one step count for all groups).
    #[test]
    fn each_group_steps_at_its_own_learning_rate() {
        let mut params = model_like();
        params.insert(
            "lm_head.weight".into(),
            random::normal::<f32>(&[11, 8], None, None, &random::key(9).unwrap()).unwrap(),
        );
        let config =
            AdamWConfig { embedding_lr_ratio: 10.0, head_lr_ratio: 0.1, ..AdamWConfig::adamw(0.9, 0.95, 1e-12, 0.0) };
        let mut opt = AdamW::new(config);
        let lr = 1e-3;
        let (g1, g2) = (grads(&params, 1), grads(&params, 2));
        let (_, new) = opt.step(&Kernels::mlx(), &params, std::slice::from_ref(&g1), 1.0, 0.0, lr).unwrap();
        for (name, want) in [("wte.weight", 10.0 * lr), ("lm_head.weight", 0.1 * lr), ("h.0.attn.c_attn.weight", lr)] {
            let moved = new[name].subtract(&params[name]).unwrap().abs().unwrap();
            for m in moved.as_slice::<f32>() {
                // Up to the rounding of p − p' (parameters of magnitude ~1 in float32).
                assert!((m - want).abs() < 1e-3 * want + 1e-6, "{name}: moved {m}, want {want}");
            }
        }
        let (_, new2) = opt.step(&Kernels::mlx(), &new, std::slice::from_ref(&g2), 1.0, 0.0, lr).unwrap();
        for (name, ratio) in [("wte.weight", 10.0f32), ("lm_head.weight", 0.1)] {
            let one = |p: &BTreeMap<String, Array>| -> BTreeMap<String, Array> {
                [(name.to_string(), p[name].clone())].into()
            };
            let at = params.keys().position(|k| k == name).unwrap();
            let mut alone = AdamW::new(AdamWConfig::adamw(0.9, 0.95, 1e-12, 0.0));
            let (_, a1) =
                alone.step(&Kernels::mlx(), &one(&params), &[vec![g1[at].clone()]], 1.0, 0.0, lr * ratio).unwrap();
            let (_, a2) = alone.step(&Kernels::mlx(), &a1, &[vec![g2[at].clone()]], 1.0, 0.0, lr * ratio).unwrap();
            for (a, b) in new2[name].as_slice::<f32>().iter().zip(a2[name].as_slice::<f32>()) {
                assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{name}: {a} vs {b}");
            }
        }
        assert_eq!(opt.steps(), 2);
    }

    /// The matrices get Muon's step at 20 × the learning rate, the rest AdamW's, all from
    /// gradients clipped by one norm over everything.
    #[test]
    fn muon_takes_the_matrices_and_adamw_the_rest_clipped_together() {
        let params = model_like();
        let g = grads(&params, 1);
        let norm: f32 =
            g.iter().map(|g| g.square().unwrap().sum(None).unwrap().item_exact::<f32>()).sum::<f32>().sqrt();
        let clip = norm / 2.0; // clipping halves every gradient
        let mut opt = AdamW::new(with_muon());
        let (got_norm, new) = opt.step(&Kernels::mlx(), &params, std::slice::from_ref(&g), 1.0, clip, 1e-3).unwrap();
        assert!((got_norm.item_exact::<f32>() - norm).abs() < 1e-4 * norm);
        let factor = clip / (norm + 1e-6);
        let clipped: BTreeMap<String, Array> =
            params.keys().cloned().zip(g.iter().map(|g| g.multiply(Array::from_f32(factor)).unwrap())).collect();
        let (matrices, rest): (Vec<_>, Vec<_>) = params.keys().partition(|n| crate::muon::takes(n, &params[*n]));
        let mut muon = Muon::new(MuonConfig::default());
        let pick = |names: &[&String], from: &BTreeMap<String, Array>| -> BTreeMap<String, Array> {
            names.iter().map(|n| ((*n).clone(), from[*n].clone())).collect()
        };
        let want_m = muon.step(&pick(&matrices, &params), &pick(&matrices, &clipped), 20.0 * 1e-3).unwrap();
        let mut adam = AdamW::new(AdamWConfig::adamw(0.9, 0.95, 1e-8, 0.1));
        let rest_g: Vec<Array> = rest.iter().map(|n| clipped[*n].clone()).collect();
        let (_, want_a) = adam.step(&Kernels::mlx(), &pick(&rest, &params), &[rest_g], 1.0, 0.0, 1e-3).unwrap();
        assert_eq!(matrices.len(), 2);
        for (name, want) in want_m.iter().chain(&want_a) {
            for (a, b) in new[name].as_slice::<f32>().iter().zip(want.as_slice::<f32>()) {
                assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{name}: {a} vs {b}");
            }
        }
    }

    /// Saved with both states, loaded, the next step is the same to the bit; the file
    /// loaded without Muon configured says what to do.
    #[test]
    fn both_states_save_and_resume_to_the_bit() {
        let mut params = model_like();
        let mut a = AdamW::new(with_muon());
        let run = |opt: &mut AdamW, params: &BTreeMap<String, Array>, seed: u64| {
            let (_, p) = opt.step(&Kernels::mlx(), params, &[grads(params, seed)], 1.0, 1.0, 1e-3).unwrap();
            mlx_rs::transforms::eval(p.values().chain(opt.arrays())).unwrap();
            p
        };
        for seed in 0..2 {
            params = run(&mut a, &params, seed);
        }
        let dir = std::env::temp_dir().join(format!("mlx-gpt-adamw-muon-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("optimizer.safetensors");
        a.save(&path).unwrap();
        let shapes: BTreeMap<String, Vec<i32>> = params.iter().map(|(k, p)| (k.clone(), p.shape().to_vec())).collect();
        let mut b = AdamW::load(&path, with_muon(), &shapes).unwrap();
        assert_eq!(b.steps(), 2);
        let (pa, pb) = (run(&mut a, &params, 5), run(&mut b, &params, 5));
        for name in shapes.keys() {
            assert_eq!(pa[name].as_slice::<f32>(), pb[name].as_slice::<f32>(), "{name}");
        }
        let e = AdamW::load(&path, AdamWConfig::adamw(0.9, 0.95, 1e-8, 0.1), &shapes).unwrap_err().to_string();
        assert!(e.contains("muon"), "{e}");
        // And the other way round: AdamW's state resumed with Muon.
        let mut plain = AdamW::new(AdamWConfig::adamw(0.9, 0.95, 1e-8, 0.1));
        run(&mut plain, &params, 1);
        plain.save(&path).unwrap();
        let e = AdamW::load(&path, with_muon(), &shapes).unwrap_err().to_string();
        assert!(e.contains("AdamW's state only"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
