//! One optimizer step: gradient accumulation over micro-batches, clipping by global norm,
//! AdamW, then a single `eval` of everything the step produced.

use crate::optimizer::AdamW;
use mlx_gpt_model::{dropout, Gpt};
use mlx_gpt_ops::scheduler::PendingCapLift;
use mlx_gpt_ops::KernelSet;
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

/// How far each part lifts MLX's cap on pending tasks while it evaluates: 256 tasks of ten
/// kernels each, more than a stream holds under the kernels' own bound (16 of mlx-gpt's
/// primitives and MLX's operations between them), for about 10 µs per evaluation.
const PENDING_TASKS_LIFTED: u16 = 256;

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

/// The model's parameter names, sorted: the order in which the compiled functions take
/// parameters and return gradients.
fn param_names(model: &Gpt) -> Vec<String> {
    let mut names: Vec<String> = model.parameters().flatten().keys().map(|k| k.to_string()).collect();
    names.sort();
    names
}

/// The model's parameters in the order of `names`.
fn params_in_order(model: &Gpt, names: &[String]) -> Vec<Array> {
    let params = model.parameters().flatten();
    names.iter().map(|k| (*params[k.as_str()]).clone()).collect()
}

type GradFn = Box<dyn FnMut(&[Array]) -> Result<Vec<Array>, Exception>>;

/// A mean loss over the parts of a micro-batch, and each part's gradients (in
/// parameter-name order) to be summed.
type LossAndParts = (Array, Vec<Vec<Array>>);

/// Loss and gradients of a model, as one MLX-compiled function of explicit arrays:
/// `[params (sorted by name)…, x, y, dropout key] → [loss, grads (same order)…]`. MLX
/// traces it once per input shape and fuses its element-wise chains into generated
/// kernels (see `mlx_gpt_runtime::jit`). The dropout key is an input, so each call draws
/// new masks (`mlx_gpt_model::dropout`).
pub struct CompiledGrad {
    names: Vec<String>,
    f: GradFn,
}

impl CompiledGrad {
    /// Compile for models shaped like `template` (its weights are not used).
    pub fn new(template: &Gpt) -> Self {
        let names = param_names(template);
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

    fn call(&mut self, model: &Gpt, x: &Array, y: &Array, key: &Array) -> Result<LossAndParts, Exception> {
        let params = params_in_order(model, &self.names);
        let (loss, grads) = self.call_arrays(params, x, y, key)?;
        Ok((loss, vec![grads]))
    }

    /// Loss and gradients (in sorted-name order) for parameters given in sorted-name order.
    fn call_arrays(
        &mut self,
        mut inputs: Vec<Array>,
        x: &Array,
        y: &Array,
        key: &Array,
    ) -> Result<(Array, Vec<Array>), Exception> {
        inputs.push(x.clone());
        inputs.push(y.clone());
        inputs.push(key.clone());
        let mut out = (self.f)(&inputs)?;
        let grads = out.split_off(1);
        Ok((out.pop().expect("loss"), grads))
    }
}

/// Data parallelism inside one process: the micro-batch is cut into `n` equal parts, and
/// each part's loss and gradients are computed by its own compiled function on its own
/// host thread, which builds the part's graph and evaluates it on that thread's MLX CPU
/// stream.
///
/// MLX runs each stream's kernels on one worker thread, so a second stream is the only way
/// to put a second core to work on the non-matmul part of the step. The parts must also be
/// *evaluated* from different host threads: one `eval` of both parts gained nothing
/// (measured: 125% CPU). It walks the graph part after part and, as we read MLX's
/// scheduler, waits whenever too many tasks are pending, so the second stream gets work
/// only near the end of the first (docs/performance-history.md). MLX 0.32 keeps streams per host
/// thread, which this design follows. BLAS should use one thread per part (see
/// `mlx_gpt_runtime::blas::set_blas_threads`), and the model's kernels put its dense
/// layers on mlx-gpt's GEMM, one thread per product (`Kernels::with_layer_threads`).
///
/// The two host threads evaluate at once, and MLX's cap on pending tasks is one count for
/// the whole process, whose wait is unfair between them: measured on train_shakespeare_char,
/// one part's worker stood idle for a fifth of the step while the other's host kept the
/// count at its mark (docs/performance-history.md). With mlx-gpt's CPU kernels each part
/// therefore evaluates with that cap lifted ([`PendingCapLift`]), and its memory in flight is
/// bounded per stream by the kernels themselves (`mlx_gpt_ops::scheduler`).
///
/// The parts' losses and gradients are averaged; each part's loss is a mean over an equal
/// share of the batch, so the average is the whole batch's mean.
pub struct StreamSplit {
    workers: Vec<Worker>,
    /// The CPU each worker is pinned to, if they are (mlx_gpt_runtime::affinity).
    cpus: Option<Vec<usize>>,
    names: Vec<String>,
    /// The (x, y) shapes every worker has already traced.
    warm: Option<(Vec<i32>, Vec<i32>)>,
    /// Whether the workers lift MLX's cap on pending tasks.
    lift: bool,
}

/// What a worker is given: parameters (sorted by name), the whole batch's inputs and
/// targets and the step's dropout key, all evaluated, and how many parts there are.
/// Worker `i` takes its part of the batch and derives its key itself (`part`), so that
/// the main thread has nothing to evaluate between steps: an evaluation there cost a
/// round trip through its stream's thread (0.2 ms a step on the baby GPT).
type Job = (Vec<Array>, Array, Array, Array, usize);

/// Worker `index`'s share of a job: its rows of the batch (part `index` of `n` equal
/// ones) and its dropout key, the second half of the `index + 1`-th split in the chain
/// key → (rest, key 0), rest → (rest, key 1), …
fn part(x: &Array, y: &Array, key: &Array, index: usize, n: usize) -> Result<(Array, Array, Array), Exception> {
    let rows = |a: &Array| -> Result<Array, Exception> {
        let mut parts = a.split_equal(n as i32, 0)?;
        Ok(parts.swap_remove(index))
    };
    let mut next = key.clone();
    let mut part_key = key.clone();
    for _ in 0..=index {
        let (rest, k) = random::split(&next, 2)?;
        next = rest;
        part_key = k;
    }
    Ok((rows(x)?, rows(y)?, part_key))
}

/// A worker's answer: loss and gradients (in parameter-name order), evaluated.
type Answer = Result<(Array, Vec<Array>), Exception>;

struct Worker {
    jobs: Option<std::sync::mpsc::Sender<Job>>,
    answers: std::sync::mpsc::Receiver<Answer>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    fn spawn(template: &Gpt, index: usize, cpu: Option<usize>, lift: bool) -> Worker {
        let (job_tx, job_rx) = std::sync::mpsc::channel::<Job>();
        let (answer_tx, answer_rx) = std::sync::mpsc::channel::<Answer>();
        let template = template.clone();
        let thread = std::thread::Builder::new()
            .name(format!("mlx-gpt-part-{index}"))
            // Tracing, autodiff and MLX's graph walks run here, not on the main thread:
            // give them a main thread's stack rather than the 2 MiB default.
            .stack_size(8 << 20)
            .spawn(move || {
                // Before the stream exists: its thread inherits this thread's CPU mask.
                if let Some(cpu) = cpu {
                    if !mlx_gpt_runtime::affinity::pin_current_thread(cpu) {
                        tracing::warn!(cpu, "could not pin training stream {index} to its CPU; it runs unpinned");
                    }
                }
                // Built here: the compiled function and this thread's default stream
                // belong to this thread.
                let mut grad = CompiledGrad::new(&template);
                drop(template);
                for (params, x, y, key, n) in job_rx {
                    let answer = part(&x, &y, &key, index, n)
                        .and_then(|(x, y, key)| grad.call_arrays(params, &x, &y, &key))
                        .and_then(|(loss, grads)| {
                            let _lifted = lift.then(|| PendingCapLift::new(PENDING_TASKS_LIFTED));
                            mlx_rs::transforms::eval(std::iter::once(&loss).chain(grads.iter()))?;
                            Ok((loss, grads))
                        });
                    if answer_tx.send(answer).is_err() {
                        break;
                    }
                }
            })
            .expect("spawning a training thread");
        Worker { jobs: Some(job_tx), answers: answer_rx, thread: Some(thread) }
    }

    fn send(&self, job: Job) -> Result<(), Exception> {
        self.jobs
            .as_ref()
            .and_then(|j| j.send(job).ok())
            .ok_or_else(|| Exception::custom("a training thread has stopped"))
    }

    fn receive(&self) -> Answer {
        self.answers.recv().map_err(|_| Exception::custom("a training thread has stopped"))?
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl StreamSplit {
    /// `n` parts, each with its own thread, stream and compiled function; worker `i`
    /// pinned to `cpus[i]` (see `mlx_gpt_runtime::affinity::worker_cpus`), or not pinned.
    pub fn new(template: &Gpt, n: usize, cpus: Option<Vec<usize>>) -> Self {
        let cpus = cpus.filter(|c| c.len() == n);
        let names = param_names(template);
        // Only graphs of mlx-gpt's primitives have a run-ahead bound of their own.
        let lift = template.kernels.set() == KernelSet::Cpu;
        let workers = (0..n).map(|i| Worker::spawn(template, i, cpus.as_ref().map(|c| c[i]), lift)).collect();
        StreamSplit { workers, cpus, names, warm: None, lift }
    }

    /// Whether each part evaluates with MLX's cap on pending tasks lifted (graphs of
    /// mlx-gpt's CPU kernels, which bound their run-ahead per stream).
    pub fn lifts_pending_cap(&self) -> bool {
        self.lift
    }

    /// The CPU each part's threads are pinned to, if they are.
    pub fn cpus(&self) -> Option<&[usize]> {
        self.cpus.as_deref()
    }

    /// Number of parts.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether there is no part.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    fn call(&mut self, model: &Gpt, x: &Array, y: &Array, key: &Array) -> Result<LossAndParts, Exception> {
        let n = self.workers.len();
        if n == 0 || x.shape().first().is_none_or(|&rows| !(rows as usize).is_multiple_of(n)) {
            return Err(Exception::custom(format!("a batch of shape {:?} does not split into {n} parts", x.shape())));
        }
        let params = params_in_order(model, &self.names);
        // Everything a worker reads is evaluated here, so no graph crosses threads. (As
        // a rule all of it is already: then this returns at once.)
        mlx_rs::transforms::eval([x, y, key].into_iter().chain(&params))?;
        let shapes = (x.shape().to_vec(), y.shape().to_vec());
        let warm = self.warm.as_ref() == Some(&shapes);
        let mut answers: Vec<Answer> = Vec::with_capacity(self.workers.len());
        if warm {
            // Every worker that took its job is also asked for the answer, even after an
            // error, so none is left holding a stale one.
            let sent: Vec<Result<(), Exception>> =
                self.workers.iter().map(|w| w.send((params.clone(), x.clone(), y.clone(), key.clone(), n))).collect();
            for (w, s) in self.workers.iter().zip(sent) {
                answers.push(s.and_then(|()| w.receive()));
            }
        } else {
            // A new input shape traces the function and builds its kernels: one worker at
            // a time, so MLX's process-wide caches are never filled from two threads at once.
            for w in &self.workers {
                answers.push(w.send((params.clone(), x.clone(), y.clone(), key.clone(), n)).and_then(|()| w.receive()));
            }
            self.warm = answers.iter().all(Result::is_ok).then_some(shapes);
        }
        let mut loss = Array::from_f32(0.0);
        let mut parts = Vec::with_capacity(answers.len());
        for answer in answers {
            let (l, g) = answer?;
            loss = loss.add(&l)?;
            parts.push(g);
        }
        Ok((loss.multiply(Array::from_f32(1.0 / n as f32))?, parts))
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

/// Run one optimizer step of `accum` micro-batches, each `(x, y)` from `next_batch` (an
/// error from it, say a token file that changed underneath, ends the step).
#[allow(clippy::too_many_arguments)]
pub fn train_step(
    model: &mut Gpt,
    opt: &mut AdamW,
    next_batch: &mut dyn FnMut() -> Result<(Array, Array), Exception>,
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
    let params: BTreeMap<String, Array> =
        model.parameters().flatten().into_iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let names: Vec<String> = params.keys().cloned().collect();
    // One micro-batch and no ranks to average with: hand the parts straight to the
    // optimizer step, which sums them inside its kernel. Otherwise sum as we go.
    let direct = accum == 1 && world.is_none_or(|g| g.size() <= 1);
    let mut acc: Vec<Array> = Vec::new();
    let mut direct_parts: Vec<Vec<Array>> = Vec::new();
    let mut loss_sum = Array::from_f32(0.0);
    let scale = Array::from_f32(1.0 / accum as f32);
    for micro in 0..accum {
        let key = random::key(dropout_seed(seed, iter, micro))?;
        let (x, y) = next_batch()?;
        let (loss, parts): LossAndParts = match &mut path {
            GradPath::Compiled(c) => c.call(model, &x, &y, &key)?,
            GradPath::Streams(s) => s.call(model, &x, &y, &key)?,
            GradPath::Eager => {
                let (loss, mut grads) = dropout::with_key(&key, || value_and_grad(model, (&x, &y)))?;
                let grads = names
                    .iter()
                    .map(|k| grads.remove(k.as_str()).ok_or_else(|| Exception::custom(format!("no gradient for {k}"))))
                    .collect::<Result<Vec<_>, _>>()?;
                (loss, vec![grads])
            }
        };
        loss_sum = loss_sum.add(&loss)?;
        if direct {
            direct_parts = parts;
            continue;
        }
        let part_scale = Array::from_f32(1.0 / (accum * parts.len()) as f32);
        for (i, part) in parts.into_iter().enumerate() {
            for (j, g) in part.into_iter().enumerate() {
                let g = g.multiply(&part_scale)?;
                if micro == 0 && i == 0 {
                    acc.push(g);
                } else {
                    acc[j] = acc[j].add(&g)?;
                }
            }
        }
        if accum > 1 {
            // Bound the graph: materialise the running sums before the next micro-batch.
            mlx_rs::transforms::eval(acc.iter().chain([&loss_sum]))?;
        }
    }
    let mut mean_loss = loss_sum.multiply(&scale)?;
    let (parts, part_scale) = if direct {
        let n = direct_parts.len();
        (direct_parts, 1.0 / n as f32)
    } else {
        if let Some(g) = world.filter(|g| g.size() > 1) {
            let mut by_name: BTreeMap<String, Array> = names.iter().cloned().zip(acc).collect();
            average_across(g, &mut by_name)?;
            acc = by_name.into_values().collect();
            mean_loss = g.all_sum(&mean_loss)?.multiply(Array::from_f32(1.0 / g.size() as f32))?;
        }
        (vec![acc], 1.0)
    };
    // Clipping and AdamW: one CPU kernel, or its plain-MLX formulation (mlx_gpt_ops).
    let (norm, new) = opt.step(&model.kernels, &params, &parts, part_scale, grad_clip, lr)?;
    model.update_flattened(new.into_iter().map(|(k, v)| (k.as_str().into(), v)).collect());
    // The old parameters are now held by the update's graph alone, so the CPU kernel can
    // write the new ones over them (mlx-gpt-ops, csrc/adamw.cpp).
    drop(params);
    let mut outputs: Vec<&Array> = vec![&mean_loss, &norm];
    let model_params = model.parameters().flatten();
    outputs.extend(model_params.values().copied());
    outputs.extend(opt.arrays());
    mlx_rs::transforms::eval(outputs)?;
    Ok(StepStats { loss: mean_loss.item_exact::<f32>(), grad_norm: norm.item_exact::<f32>() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optimizer::AdamWConfig;
    use mlx_gpt_model::GptConfig;

    fn model() -> Gpt {
        let c = GptConfig { block_size: 16, vocab_size: 23, n_layer: 2, n_head: 2, n_embd: 32, ..GptConfig::baby(23) };
        let mut m = Gpt::new(c, 7).unwrap();
        m.set_training(true);
        m
    }

    fn batch(seed: u64) -> (Array, Array) {
        let mut s = seed;
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) % 23) as i32
        };
        let x: Vec<i32> = (0..8 * 16).map(|_| next()).collect();
        let y: Vec<i32> = (0..8 * 16).map(|_| next()).collect();
        (Array::from_slice(&x, &[8, 16]), Array::from_slice(&y, &[8, 16]))
    }

    /// Two steps on each path, `accum` micro-batches each: (losses, grad norms, parameters).
    /// The eager path runs plain MLX ops (the reference); the compiled ones mlx-gpt's CPU
    /// kernels where built, as training does.
    fn run(path: &str, accum: usize) -> (Vec<f32>, Vec<f32>, BTreeMap<String, Vec<f32>>) {
        let mut m = model();
        let cpu = mlx_gpt_model::Kernels::cpu().unwrap_or_default();
        m.kernels = match path {
            "eager" => mlx_gpt_model::Kernels::mlx(),
            "compiled" => cpu,
            _ => cpu.with_gemm_layers(true).with_layer_threads(1),
        };
        let mut opt = AdamW::new(AdamWConfig::adamw(0.9, 0.99, 1e-8, 0.1));
        let mut compiled = CompiledGrad::new(&m);
        let mut split = StreamSplit::new(&m, 2, None);
        // Only graphs of mlx-gpt's kernels bound their own run-ahead.
        let cpu_kernels = path != "eager" && mlx_gpt_model::Kernels::cpu().is_ok();
        assert_eq!(split.lifts_pending_cap(), cpu_kernels, "{path}");
        let (mut losses, mut norms) = (vec![], vec![]);
        let mut n = 0;
        for iter in 0..2 {
            let mut next = || {
                n += 1;
                Ok(batch(n))
            };
            let p = match path {
                "eager" => GradPath::Eager,
                "compiled" => GradPath::Compiled(&mut compiled),
                _ => GradPath::Streams(&mut split),
            };
            // A small clip so that clipping is active.
            let s = train_step(&mut m, &mut opt, &mut next, accum, 1e-2, 0.5, 1, iter, p, None).unwrap();
            losses.push(s.loss);
            norms.push(s.grad_norm);
        }
        let params =
            m.parameters().flatten().iter().map(|(k, v)| (k.to_string(), v.as_slice::<f32>().to_vec())).collect();
        (losses, norms, params)
    }

    fn close(a: f32, b: f32, what: &str) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + a.abs()), "{what}: {a} vs {b}");
    }

    #[test]
    fn compiled_and_two_stream_steps_match_the_eager_step() {
        for accum in [1, 2] {
            let (l0, n0, p0) = run("eager", accum);
            assert!(n0[0] > 0.5, "clipping should be active: norm {}", n0[0]);
            for path in ["compiled", "streams"] {
                let (l, n, p) = run(path, accum);
                for i in 0..2 {
                    close(l0[i], l[i], &format!("{path} accum {accum} loss {i}"));
                    close(n0[i], n[i], &format!("{path} accum {accum} grad norm {i}"));
                }
                for (k, want) in &p0 {
                    for (a, b) in want.iter().zip(&p[k]) {
                        close(*a, *b, &format!("{path} accum {accum} {k}"));
                    }
                }
            }
        }
    }

    #[test]
    fn each_part_takes_its_rows_and_its_key_of_the_chain() {
        let x = Array::from_slice(&(0..12).collect::<Vec<i32>>(), &[6, 2]);
        let y = x.add(Array::from_int(100)).unwrap();
        let key = random::key(42).unwrap();
        let mut next = key.clone();
        for i in 0..3 {
            let (rest, want) = random::split(&next, 2).unwrap();
            next = rest;
            let (xi, yi, ki) = part(&x, &y, &key, i, 3).unwrap();
            let rows: Vec<i32> = (4 * i as i32..4 * i as i32 + 4).collect();
            assert_eq!(xi.as_slice::<i32>(), &rows[..]);
            assert_eq!(yi.as_slice::<i32>(), &rows.iter().map(|r| r + 100).collect::<Vec<_>>()[..]);
            assert_eq!(ki.as_slice::<u32>(), want.as_slice::<u32>(), "part {i}'s key");
        }
        assert!(part(&x, &y, &key, 0, 4).is_err(), "6 rows do not split into 4 parts");
    }
}
