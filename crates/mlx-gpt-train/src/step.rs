//! One optimizer step: gradient accumulation over micro-batches, clipping by global norm,
//! AdamW, then a single `eval` of everything the step produced.

use crate::optimizer::AdamW;
use mlx_gpt_model::{dropout, Gpt};
use mlx_rs::error::Exception;
use mlx_rs::module::ModuleParameters;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{nn, random, Array};
use std::collections::BTreeMap;

/// What a step reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Mean loss over the micro-batches.
    pub loss: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
}

/// The dropout key of micro-batch `micro` of iteration `iter`: a function of the seed and
/// the position in training, so a resumed run draws the same dropout masks.
pub fn dropout_seed(seed: u64, iter: usize, micro: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((iter as u64) << 16) ^ micro as u64
}

/// Largest number of elements reduced in one collective call.
const BUCKET: usize = 1 << 24;

/// Replace every gradient by its mean over the ranks of `g`: gradients are flattened
/// into a few large buffers (up to 16M elements each), each reduced with one `all_sum`,
/// then cut back into the parameters' shapes.
pub fn average_across(g: &crate::distributed::Group, grads: &mut BTreeMap<String, Array>) -> Result<(), Exception> {
    let inv = Array::from_f32(1.0 / g.size() as f32);
    let names: Vec<String> = grads.keys().cloned().collect();
    let mut start = 0;
    while start < names.len() {
        let mut end = start;
        let mut total = 0;
        while end < names.len() && (end == start || total + grads[&names[end]].size() <= BUCKET) {
            total += grads[&names[end]].size();
            end += 1;
        }
        let flat: Vec<Array> = names[start..end].iter().map(|n| grads[n].reshape(&[-1])).collect::<Result<_, _>>()?;
        let summed = g.all_sum(&mlx_rs::ops::concatenate(&flat, 0)?)?.multiply(&inv)?;
        let mut offset = 0i32;
        for n in &names[start..end] {
            let shape = grads[n].shape().to_vec();
            let len = grads[n].size() as i32;
            let part = summed.index(offset..offset + len).reshape(&shape)?;
            grads.insert(n.clone(), part);
            offset += len;
        }
        start = end;
    }
    Ok(())
}

/// Global L2 norm of all gradients.
pub fn global_norm(grads: &BTreeMap<String, Array>) -> Result<Array, Exception> {
    let mut total = Array::from_f32(0.0);
    for g in grads.values() {
        total = total.add(g.square()?.sum(None)?)?;
    }
    total.sqrt()
}

type GradFn = Box<dyn FnMut(&[Array]) -> Result<Vec<Array>, Exception>>;

/// A mean loss and the gradients, by parameter name.
type LossAndGrads = (Array, Vec<(String, Array)>);

/// Loss and gradients of a model, as one MLX-compiled function of explicit arrays:
/// `[params (sorted by name)…, x, y, dropout key] → [loss, grads (same order)…]`. MLX
/// traces it once per input shape and fuses its element-wise chains into generated
/// kernels (see `mlx_gpt_model::jit`). The dropout key is an input, so each call draws
/// new masks (`mlx_gpt_model::dropout`).
pub struct CompiledGrad {
    names: Vec<String>,
    f: GradFn,
}

impl CompiledGrad {
    /// Compile for models shaped like `template` (its weights are not used).
    pub fn new(template: &Gpt) -> Self {
        let mut names: Vec<String> = template.parameters().flatten().keys().map(|k| k.to_string()).collect();
        names.sort();
        let mut model = template.clone();
        let keys = names.clone();
        let f = move |inputs: &[Array]| -> Result<Vec<Array>, Exception> {
            let n = keys.len();
            model
                .update_flattened(keys.iter().zip(&inputs[..n]).map(|(k, a)| (k.as_str().into(), a.clone())).collect());
            let loss_fn = |m: &mut Gpt, (x, y): (&Array, &Array)| -> Result<Array, Exception> { m.loss(x, y) };
            let (loss, grads) = dropout::with_key(&inputs[n + 2], || {
                nn::value_and_grad(loss_fn)(&mut model, (&inputs[n], &inputs[n + 1]))
            })?;
            let mut out = Vec::with_capacity(n + 1);
            out.push(loss);
            for k in &keys {
                out.push(
                    grads.get(k.as_str()).cloned().ok_or_else(|| Exception::custom(format!("no gradient for {k}")))?,
                );
            }
            Ok(out)
        };
        CompiledGrad { names, f: Box::new(mlx_rs::transforms::compile::compile(f, false)) }
    }

    fn call(&mut self, model: &Gpt, x: &Array, y: &Array, key: &Array) -> Result<LossAndGrads, Exception> {
        let params = model.parameters().flatten();
        let mut inputs: Vec<Array> = self.names.iter().map(|k| (*params[k.as_str()]).clone()).collect();
        inputs.push(x.clone());
        inputs.push(y.clone());
        inputs.push(key.clone());
        let mut out = (self.f)(&inputs)?;
        let grads = self.names.iter().cloned().zip(out.drain(1..)).collect();
        Ok((out.pop().expect("loss"), grads))
    }
}

/// Data parallelism inside one process: the micro-batch is cut into `n` equal parts, each
/// part's loss and gradients computed by its own compiled function on its own MLX CPU
/// stream. MLX runs each stream's kernels on one worker thread, so this is the only way
/// to put a second core to work on the non-matmul part of the step; BLAS should then use
/// one thread per stream (see `mlx_gpt_model::runtime::set_blas_threads`). The parts'
/// losses and gradients are averaged (each part's loss is a mean over equal halves, so
/// the average is the whole batch's mean).
pub struct StreamSplit {
    parts: Vec<(mlx_rs::Stream, CompiledGrad)>,
}

impl StreamSplit {
    /// `n` streams with one compiled function each.
    pub fn new(template: &Gpt, n: usize) -> Self {
        let parts = (0..n)
            .map(|_| (mlx_rs::Stream::new_with_device(&mlx_rs::Device::cpu()), CompiledGrad::new(template)))
            .collect();
        StreamSplit { parts }
    }

    /// Number of parts.
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    /// Whether there is no part.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    fn call(&mut self, model: &Gpt, x: &Array, y: &Array, key: &Array) -> Result<LossAndGrads, Exception> {
        let n = self.parts.len() as i32;
        let mut next_key = key.clone();
        let (xs, ys) = (x.split_equal(n, 0)?, y.split_equal(n, 0)?);
        let mut loss = Array::from_f32(0.0);
        let mut sum: Vec<(String, Array)> = Vec::new();
        for (i, (stream, grad)) in self.parts.iter_mut().enumerate() {
            let (rest, part_key) = random::split(&next_key, 2)?;
            next_key = rest;
            let (l, g) = mlx_rs::with_stream(stream, || grad.call(model, &xs[i], &ys[i], &part_key))?;
            loss = loss.add(&l)?;
            if sum.is_empty() {
                sum = g;
            } else {
                for ((_, acc), (_, gi)) in sum.iter_mut().zip(g) {
                    *acc = acc.add(&gi)?;
                }
            }
        }
        let inv = Array::from_f32(1.0 / n as f32);
        let grads = sum.into_iter().map(|(k, g)| Ok((k, g.multiply(&inv)?))).collect::<Result<_, Exception>>()?;
        Ok((loss.multiply(&inv)?, grads))
    }
}

/// How a step computes loss and gradients.
pub enum GradPath<'a> {
    /// `nn::value_and_grad`, op by op.
    Eager,
    /// One compiled function.
    Compiled(&'a mut CompiledGrad),
    /// Compiled functions on several streams (the batch must divide evenly).
    Streams(&'a mut StreamSplit),
}

/// Run one optimizer step of `accum` micro-batches, each `(x, y)` from `next_batch`.
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    model: &mut Gpt,
    opt: &mut AdamW,
    next_batch: &mut dyn FnMut() -> (Array, Array),
    accum: usize,
    lr: f32,
    grad_clip: f32,
    seed: u64,
    iter: usize,
    mut path: GradPath<'_>,
    world: Option<&crate::distributed::Group>,
) -> Result<StepStats, Exception> {
    let loss_fn = |m: &mut Gpt, (x, y): (&Array, &Array)| -> Result<Array, Exception> { m.loss(x, y) };
    let mut value_and_grad = nn::value_and_grad(loss_fn);
    let mut acc: BTreeMap<String, Array> = BTreeMap::new();
    let mut loss_sum = Array::from_f32(0.0);
    let scale = Array::from_f32(1.0 / accum as f32);
    for micro in 0..accum {
        let key = random::key(dropout_seed(seed, iter, micro))?;
        let (x, y) = next_batch();
        let (loss, grads): LossAndGrads = match &mut path {
            GradPath::Compiled(c) => c.call(model, &x, &y, &key)?,
            GradPath::Streams(s) => s.call(model, &x, &y, &key)?,
            GradPath::Eager => {
                let (loss, grads) = dropout::with_key(&key, || value_and_grad(model, (&x, &y)))?;
                (loss, grads.into_iter().map(|(k, g)| (k.to_string(), g)).collect())
            }
        };
        for (k, g) in grads {
            let g = g.multiply(&scale)?;
            let entry = match acc.remove(&k) {
                Some(prev) => prev.add(&g)?,
                None => g,
            };
            acc.insert(k, entry);
        }
        loss_sum = loss_sum.add(&loss)?;
        if accum > 1 {
            // Bound the graph: materialise the running sums before the next micro-batch.
            mlx_rs::transforms::eval(acc.values().chain([&loss_sum]))?;
        }
    }
    let mut mean_loss = loss_sum.multiply(&scale)?;
    if let Some(g) = world.filter(|g| g.size() > 1) {
        average_across(g, &mut acc)?;
        mean_loss = g.all_sum(&mean_loss)?.multiply(Array::from_f32(1.0 / g.size() as f32))?;
    }
    let norm = global_norm(&acc)?;
    if grad_clip > 0.0 {
        // PyTorch's clip_grad_norm_: scale by clip / (norm + 1e-6), never up.
        let coef = Array::from_f32(grad_clip).divide(norm.add(Array::from_f32(1e-6))?)?;
        let coef = mlx_rs::ops::minimum(&coef, Array::from_f32(1.0))?;
        for g in acc.values_mut() {
            *g = g.multiply(&coef)?;
        }
    }
    let params: BTreeMap<String, Array> =
        model.parameters().flatten().into_iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let new = opt.update(&params, &acc, lr)?;
    model.update_flattened(new.into_iter().map(|(k, v)| (k.as_str().into(), v)).collect());
    let mut outputs: Vec<&Array> = vec![&mean_loss, &norm];
    let model_params = model.parameters().flatten();
    outputs.extend(model_params.values().copied());
    outputs.extend(opt.arrays());
    mlx_rs::transforms::eval(outputs)?;
    Ok(StepStats { loss: mean_loss.item_exact::<f32>(), grad_norm: norm.item_exact::<f32>() })
}
