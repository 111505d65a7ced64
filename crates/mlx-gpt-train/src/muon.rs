//! Muon: momentum, then the update's orthogonal part, for the blocks' weight matrices (the
//! optimizer of modded-nanogpt's speedruns and of nanochat; Keller Jordan et al., 2024).
//!
//! For a matrix W with gradient G (all float32):
//!
//! ```text
//! buf ← μ·buf + (1 − μ)·G                      momentum (buf starts at 0)
//! U   ← (1 − μ)·G + μ·buf                      Nesterov (without: U = buf)
//! O   ← NewtonSchulz(U)                        ≈ U's orthogonal polar factor
//! W   ← W·(1 − lr·wd) − lr·√max(1, fan_out/fan_in)·O
//! ```
//!
//! Why: a matrix's gradient is dominated by a few directions; orthogonalising it (every
//! singular value brought near 1) gives the rare directions as large a step as the common
//! ones, which is what makes small GPTs train in fewer steps. The quintic Newton–Schulz
//! iteration gets there with five pairs of matrix products and no SVD: X = U/‖U‖_F (made
//! wide), then five times A = XXᵀ, X = aX + (bA + cA²)X with (a, b, c) = (3.4445, −4.7750,
//! 2.0315), coefficients chosen so small singular values grow fast; the result's singular
//! values land roughly in 0.7–1.2, not exactly 1, which works as well in practice. The
//! √max(1, fan_out/fan_in) factor keeps the update's size per output comparable across
//! shapes. mlx-gpt keeps a dense layer's weight as (fan_in, fan_out), so fan_out/fan_in
//! is `shape[1] / shape[0]`.
//!
//! Muon is for the hidden matrices only ([`takes`]); embeddings, the head, biases and
//! gains stay with AdamW, each group with its own learning rate. Checked against a PyTorch
//! implementation in the repository by `tests/fixtures/muon.json`
//! (scripts/make_muon_fixture.py); its state is saved and loaded as AdamW's is.

use crate::optimizer::StateError;
use mlx_rs::error::Exception;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::Array;
use std::collections::BTreeMap;
use std::path::Path;

/// The quintic Newton–Schulz iteration's coefficients (a, b, c).
pub const NEWTON_SCHULZ: (f32, f32, f32) = (3.4445, -4.7750, 2.0315);

/// Hyper-parameters (the learning rate is the step's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MuonConfig {
    /// μ, the momentum.
    pub momentum: f32,
    /// Nesterov momentum (the update looks ahead along the momentum).
    pub nesterov: bool,
    /// Newton–Schulz iterations.
    pub ns_steps: usize,
    /// Decoupled weight decay, as AdamW's.
    pub weight_decay: f32,
}

impl Default for MuonConfig {
    /// modded-nanogpt's and nanochat's: μ 0.95 with Nesterov, 5 iterations, no decay.
    fn default() -> Self {
        MuonConfig { momentum: 0.95, nesterov: true, ns_steps: 5, weight_decay: 0.0 }
    }
}

/// Whether Muon updates parameter `name`: the blocks' 2-D weight matrices
/// (`h.N.attn.c_attn.weight`, ...), not the embeddings or the head.
pub fn takes(name: &str, param: &Array) -> bool {
    takes_shape(name, param.shape())
}

/// [`takes`] by the parameter's shape.
pub fn takes_shape(name: &str, shape: &[i32]) -> bool {
    shape.len() == 2 && name.starts_with("h.")
}

/// About the orthogonal polar factor of `u` by `steps` quintic Newton–Schulz iterations,
/// in float32: of each matrix of `u` (..., rows, cols), so that matrices of one shape go
/// through the iterations together, a few batched products instead of many small ones.
pub fn orthogonalize(u: &Array, steps: usize) -> Result<Array, Exception> {
    let (a, b, c) = NEWTON_SCHULZ;
    let n = u.ndim();
    let wide = u.shape()[n - 2] <= u.shape()[n - 1];
    // Wide, so that X·Xᵀ is the smaller of the two Gram matrices.
    let x = if wide { u.clone() } else { u.swap_axes(-2, -1)? };
    let norm = x.square()?.sum_axes(&[-2, -1], true)?.sqrt()?;
    let mut x = x.divide(norm.add(Array::from_f32(1e-7))?)?;
    for _ in 0..steps {
        let m = x.matmul(x.swap_axes(-2, -1)?)?;
        let poly = m.multiply(Array::from_f32(b))?.add(m.matmul(&m)?.multiply(Array::from_f32(c))?)?;
        x = x.multiply(Array::from_f32(a))?.add(poly.matmul(&x)?)?;
    }
    if wide {
        Ok(x)
    } else {
        x.swap_axes(-2, -1)
    }
}

/// Muon's state: a momentum buffer per matrix, and the step count.
#[derive(Debug)]
pub struct Muon {
    config: MuonConfig,
    buf: BTreeMap<String, Array>,
    step: u64,
}

impl Muon {
    /// A fresh optimizer.
    pub fn new(config: MuonConfig) -> Self {
        Muon { config, buf: BTreeMap::new(), step: 0 }
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// One step for the matrices `params` with their gradients `grads` (the same names) at
    /// learning rate `lr`. Returns the new matrices, lazy: evaluate them with
    /// [`Muon::arrays`].
    pub fn step(
        &mut self,
        params: &BTreeMap<String, Array>,
        grads: &BTreeMap<String, Array>,
        lr: f32,
    ) -> Result<BTreeMap<String, Array>, Exception> {
        let c = self.config;
        let mu = Array::from_f32(c.momentum);
        let one_minus_mu = Array::from_f32(1.0 - c.momentum);
        let mut out = BTreeMap::new();
        let mut by_shape: BTreeMap<Vec<i32>, Vec<(String, Array)>> = BTreeMap::new();
        for (name, p) in params {
            let g = grads.get(name).ok_or_else(|| Exception::custom(format!("Muon: no gradient for {name}")))?;
            if p.ndim() != 2 || g.shape() != p.shape() {
                return Err(Exception::custom(format!(
                    "Muon: {name} must be a matrix with a gradient of its shape (got {:?} and {:?})",
                    p.shape(),
                    g.shape()
                )));
            }
            let buf = match self.buf.get(name) {
                Some(b) => b.multiply(&mu)?.add(g.multiply(&one_minus_mu)?)?,
                None => g.multiply(&one_minus_mu)?,
            };
            let u = if c.nesterov { g.multiply(&one_minus_mu)?.add(buf.multiply(&mu)?)? } else { buf.clone() };
            by_shape.entry(p.shape().to_vec()).or_default().push((name.clone(), u));
            self.buf.insert(name.clone(), buf);
        }
        // The matrices of each shape (one per layer) orthogonalised together.
        for (shape, group) in by_shape {
            let stacked = mlx_rs::ops::stack(&group.iter().map(|(_, u)| u.clone()).collect::<Vec<_>>(), 0)?;
            let o = orthogonalize(&stacked, c.ns_steps)?;
            let scale = (shape[1] as f32 / shape[0] as f32).max(1.0).sqrt();
            for (i, (name, _)) in group.iter().enumerate() {
                let p = &params[name];
                let decayed = p.multiply(Array::from_f32(1.0 - lr * c.weight_decay))?;
                let step = o.index(i as i32).multiply(Array::from_f32(lr * scale))?;
                out.insert(name.clone(), decayed.subtract(step)?);
            }
        }
        self.step += 1;
        Ok(out)
    }

    /// All state arrays, for evaluation.
    pub fn arrays(&self) -> impl Iterator<Item = &Array> {
        self.buf.values()
    }

    /// Write the state to `path` (safetensors: `momentum.<param>` in float32, the step
    /// count in the metadata).
    pub fn save(&self, path: &Path) -> Result<(), String> {
        crate::state_file::save(path, &self.named_arrays(), self.step)
    }

    /// The state as the file names it: `momentum.<param>`.
    pub(crate) fn named_arrays(&self) -> Vec<(String, &Array)> {
        self.buf.iter().map(|(k, a)| (format!("momentum.{k}"), a)).collect()
    }

    /// Read the state [`Muon::save`] wrote, for matrices of `shapes`; a tensor of another
    /// name or shape, or state for only some of them, is an error saying what.
    pub fn load(path: &Path, config: MuonConfig, shapes: &BTreeMap<String, Vec<i32>>) -> Result<Muon, StateError> {
        let (step, tensors) = crate::state_file::load(path)?;
        Self::from_state(config, step, tensors, shapes)
    }

    /// The state in `tensors` (`momentum.<param>`), after `step` steps, for matrices of
    /// `shapes`; checked as [`Muon::load`] says.
    pub(crate) fn from_state(
        config: MuonConfig,
        step: u64,
        tensors: Vec<(String, Array)>,
        shapes: &BTreeMap<String, Vec<i32>>,
    ) -> Result<Muon, StateError> {
        let mut opt = Muon { step, ..Muon::new(config) };
        for (name, a) in tensors {
            let param = name.strip_prefix("momentum.").filter(|p| shapes.get(*p).map(Vec::as_slice) == Some(a.shape()));
            let Some(param) = param else {
                return Err(StateError::Invalid(format!("tensor {name} does not match the model's matrices")));
            };
            opt.buf.insert(param.to_string(), a);
        }
        if step > 0 && opt.buf.len() != shapes.len() {
            return Err(StateError::Invalid(format!("state covers {} of {} matrices", opt.buf.len(), shapes.len())));
        }
        Ok(opt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn fixture() -> Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/muon.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    fn floats(v: &Value) -> Vec<f32> {
        v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
    }

    fn close(got: &[f32], want: &[f32], tol: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (j, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{what}[{j}]: {a} vs torch {b}");
        }
    }

    fn config(f: &Value) -> MuonConfig {
        MuonConfig {
            momentum: f["momentum"].as_f64().unwrap() as f32,
            nesterov: f["nesterov"].as_bool().unwrap(),
            ns_steps: f["ns_steps"].as_u64().unwrap() as usize,
            weight_decay: f["weight_decay"].as_f64().unwrap() as f32,
        }
    }

    /// The fixture's matrices and each step's gradients, by name.
    fn tensors(f: &Value, key: &Value) -> BTreeMap<String, Array> {
        f["shapes"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, s)| {
                let shape: Vec<i32> = s.as_array().unwrap().iter().map(|d| d.as_i64().unwrap() as i32).collect();
                (k.clone(), Array::from_slice(&floats(&key[k]), &shape))
            })
            .collect()
    }

    #[test]
    fn matches_a_pytorch_muon_within_1e_5() {
        let f = fixture();
        let probe = Array::from_slice(&floats(&f["probe"]), &[8, 24]);
        let o = orthogonalize(&probe, 5).unwrap();
        close(o.as_slice::<f32>(), &floats(&f["probe_orthogonalized"]), 1e-5, "Newton-Schulz");
        let mut params = tensors(&f, &f["initial"]);
        let mut opt = Muon::new(config(&f));
        for (i, step) in f["steps"].as_array().unwrap().iter().enumerate() {
            let grads = tensors(&f, &step["grads"]);
            params = opt.step(&params, &grads, step["lr"].as_f64().unwrap() as f32).unwrap();
            let want = tensors(&f, &step["params"]);
            for (name, p) in &params {
                close(p.as_slice::<f32>(), want[name].as_slice::<f32>(), 1e-5, &format!("step {i} {name}"));
            }
        }
        assert_eq!(opt.steps(), 3);
    }

    #[test]
    fn saved_and_loaded_it_continues_to_the_bit() {
        let f = fixture();
        let steps = f["steps"].as_array().unwrap();
        let run = |opt: &mut Muon, params: BTreeMap<String, Array>, i: usize| {
            let p = opt.step(&params, &tensors(&f, &steps[i]["grads"]), 0.02).unwrap();
            mlx_rs::transforms::eval(p.values().chain(opt.arrays())).unwrap();
            p
        };
        let mut a = Muon::new(config(&f));
        let mut params = tensors(&f, &f["initial"]);
        for i in 0..2 {
            params = run(&mut a, params, i);
        }
        let dir = std::env::temp_dir().join(format!("mlx-gpt-muon-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("muon.safetensors");
        a.save(&path).unwrap();
        let shapes: BTreeMap<String, Vec<i32>> = params.iter().map(|(k, p)| (k.clone(), p.shape().to_vec())).collect();
        let mut b = Muon::load(&path, config(&f), &shapes).unwrap();
        assert_eq!(b.steps(), 2);
        let (pa, pb) = (run(&mut a, params.clone(), 2), run(&mut b, params.clone(), 2));
        for name in shapes.keys() {
            assert_eq!(pa[name].as_slice::<f32>(), pb[name].as_slice::<f32>(), "{name}");
        }
        // State of another model is refused, naming the tensor.
        let mut other = shapes.clone();
        other.insert("h.0.attn.c_attn.weight".into(), vec![8, 8]);
        let e = Muon::load(&path, config(&f), &other).unwrap_err().to_string();
        assert!(e.contains("momentum.h.0.attn.c_attn.weight"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Matrices orthogonalised together give what each gives alone.
    #[test]
    fn batched_newton_schulz_equals_one_at_a_time() {
        for shape in [[3, 8, 24], [2, 16, 4]] {
            let u = mlx_rs::random::normal::<f32>(&shape, None, None, &mlx_rs::random::key(7).unwrap()).unwrap();
            let together = orthogonalize(&u, 5).unwrap();
            for i in 0..shape[0] {
                let alone = orthogonalize(&u.index(i), 5).unwrap();
                let flat = |a: &Array| a.reshape(&[-1]).unwrap();
                close(flat(&together.index(i)).as_slice::<f32>(), flat(&alone).as_slice::<f32>(), 1e-6, "batched");
            }
        }
    }

    #[test]
    fn takes_the_blocks_matrices_only() {
        let m = Array::from_slice(&[0.0f32; 4], &[2, 2]);
        let v = Array::from_slice(&[0.0f32; 2], &[2]);
        assert!(takes("h.3.mlp.c_fc.weight", &m));
        assert!(!takes("h.3.mlp.c_fc.bias", &v));
        assert!(!takes("wte.weight", &m) && !takes("wpe.weight", &m) && !takes("lm_head.weight", &m));
    }
}
