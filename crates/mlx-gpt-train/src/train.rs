//! The training loop, in nanoGPT's order: learning rate → evaluation and checkpoint →
//! micro-steps → clip → AdamW → log → stop.

use crate::checkpoint::{self, TrainState, STATE_VERSION};
use crate::config::{Backend, Device, InitFrom, TrainConfig};
use crate::distributed::{check_hostfile, DistError, Group};
use crate::eval::{estimate_loss, Losses};
use crate::metrics::{self, Record};
use crate::optimizer::{AdamW, AdamWConfig};
use crate::schedule::get_lr;
use crate::step::{train_step, CompiledGrad, GradPath, StreamSplit};
use crate::TrainError;
use mlx_gpt_data::batches::{BatchSampler, Order, SamplerState};
use mlx_gpt_data::token_file::{Meta, TokenFile, META_FILE};
use mlx_gpt_model::{hf, Gpt, GptConfig, Kernels};
use mlx_gpt_runtime::{device, DeviceKind};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// How a run is driven from outside.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Set (e.g. by Ctrl-C) to finish the current step, checkpoint, and return.
    pub stop: Arc<AtomicBool>,
    /// Draw a progress bar when stderr is a terminal.
    pub progress: bool,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Iterations completed.
    pub iter: usize,
    /// The last evaluation.
    pub last_eval: Option<Losses>,
    /// Best validation loss.
    pub best_val_loss: f64,
    /// Wall-clock seconds.
    pub wall_s: f64,
    /// Whether it stopped early because `stop` was set.
    pub interrupted: bool,
    /// Where the last checkpoint went, if one was written.
    pub checkpoint: Option<PathBuf>,
    /// The exact val loss at the end (`eval_full`; rank 0 only).
    pub exact_val: Option<crate::eval::SplitScore>,
    /// The `eval_tasks` scores at the end (rank 0 only).
    pub tasks: Vec<crate::tasks::TaskScore>,
}

/// Select the configured device (MLX's default device from now on).
pub fn select_device(d: Device) -> Result<DeviceKind, TrainError> {
    Ok(device::select(d.requested())?)
}

/// The kernels the configuration asks for on `device`, for a step split across `streams`
/// CPU streams: the dense layers go through mlx-gpt's GEMM (where it runs: AVX-512), on
/// one thread per product when each core runs a part of the batch (the BLAS then on one
/// thread too), on every core otherwise.
pub fn kernels_for(c: &TrainConfig, device: DeviceKind, streams: usize) -> Result<Kernels, TrainError> {
    let k = Kernels::resolve(c.kernels, device)?.with_gemm_layers(true);
    Ok(if streams > 1 { k.with_layer_threads(1) } else { k })
}

/// The dataset folder, checked.
pub fn dataset_dir(c: &TrainConfig) -> Result<(PathBuf, Meta), TrainError> {
    let dir = c.data_dir.join(&c.dataset);
    let meta = Meta::read(&dir.join(META_FILE)).map_err(|e| TrainError::MissingDataset {
        name: c.dataset.clone(),
        dir: dir.clone(),
        why: e.to_string(),
    })?;
    Ok((dir, meta))
}

/// Load OpenAI's GPT-2 `name` from `models/<name>`.
pub fn load_gpt2(name: &str) -> Result<Gpt, TrainError> {
    let dir = Path::new("models").join(name);
    if !dir.join(hf::CONFIG_FILE).is_file() {
        return Err(TrainError::MissingModel { name: name.into(), dir });
    }
    Ok(hf::load_pretrained(&dir)?)
}

fn model_differences(a: &GptConfig, b: &GptConfig) -> Vec<String> {
    let mut d = Vec::new();
    macro_rules! cmp {
        ($($f:ident),*) => { $( if a.$f != b.$f { d.push(format!("{}: checkpoint {:?}, config {:?}", stringify!($f), a.$f, b.$f)); } )* };
    }
    if a.arch != b.arch {
        d.push(format!("arch: checkpoint {}, config {}", a.arch.name(), b.arch.name()));
    }
    if a.kv_heads() != b.kv_heads() {
        d.push(format!("n_kv_head: checkpoint {}, config {}", a.kv_heads(), b.kv_heads()));
    }
    cmp!(n_layer, n_head, n_embd, block_size, bias, vocab_size, rope_base, logit_softcap);
    d
}

/// Build the model and optimizer the configuration asks for (and the state to resume).
pub fn init(c: &TrainConfig, meta: &Meta, adamw: AdamWConfig) -> Result<(Gpt, AdamW, Option<TrainState>), TrainError> {
    let wanted = c.model_config(meta.vocab_size);
    let (mut model, opt, state) = match c.init_from.clone() {
        InitFrom::Scratch => (Gpt::new(wanted, c.seed)?, AdamW::new(adamw), None),
        InitFrom::Resume => {
            // Evaluating needs the weights only: a checkpoint without its optimizer file
            // (copied for evaluation, say) evaluates.
            let (dir, loaded, skipped) = checkpoint::load_latest_valid(&c.out_dir, adamw, !c.eval_only)?;
            for (bad, why) in &skipped {
                tracing::warn!(checkpoint = %bad.display(), "skipped a damaged checkpoint: {why}");
                if !c.eval_only {
                    // Out of `prune`'s sight: counted among the newest, it would have the
                    // run's next checkpoints pruned in its place. Kept for inspection.
                    let name = bad.file_name().expect("iter-N").to_string_lossy().into_owned();
                    let aside = bad.with_file_name(format!("damaged-{name}"));
                    if std::fs::rename(bad, &aside).is_ok() {
                        tracing::warn!(moved_to = %aside.display(), "moved the damaged checkpoint aside");
                    }
                }
            }
            let diff = model_differences(&loaded.state.model, &wanted);
            if !diff.is_empty() {
                return Err(TrainError::Incompatible { checkpoint: dir, differences: diff });
            }
            tracing::info!(checkpoint = %dir.display(), iter = loaded.state.iter, "resuming");
            (loaded.model, loaded.optimizer, Some(loaded.state))
        }
        InitFrom::Gpt2(name) => (load_gpt2(&name)?, AdamW::new(adamw), None),
        InitFrom::Dir(d) => (hf::load_pretrained(&d)?, AdamW::new(adamw), None),
    };
    if state.is_none() && c.init_from != InitFrom::Scratch {
        // Pretrained: the architecture comes from the checkpoint; block_size may shrink.
        if c.block_size < model.config.block_size {
            model.crop_block_size(c.block_size)?;
        } else if c.block_size > model.config.block_size {
            return Err(TrainError::Config(crate::config::ConfigError::Inconsistent(format!(
                "block_size {} is larger than the pretrained model's {}",
                c.block_size, model.config.block_size
            ))));
        }
        if meta.vocab_size > model.config.vocab_size {
            return Err(TrainError::Config(crate::config::ConfigError::Inconsistent(format!(
                "the dataset's vocabulary ({}) is larger than the model's ({})",
                meta.vocab_size, model.config.vocab_size
            ))));
        }
    }
    // Dropout is a training choice, not part of the weights: the config decides.
    model.config.dropout = c.dropout;
    for b in &mut model.h {
        b.attn.attn_dropout.p = c.dropout;
        b.attn.resid_dropout.p = c.dropout;
        b.mlp.dropout.p = c.dropout;
    }
    model.drop.p = c.dropout;
    Ok((model, opt, state))
}

/// The CPU streams each batch is split across: `streams`, or with `streams = 0` (the
/// default) two on a CPU with two to four cores when the batch is even and this is the
/// only process (several processes on one machine already share its cores), else one.
/// Streams run the BLAS on one thread each, so on a machine with more cores one stream
/// whose matmuls use them all is the safer choice; two streams were measured on two cores
/// only (docs/performance-history.md). One when not compiling, not on the CPU, or when the batch
/// does not split evenly (logged).
pub fn stream_count(c: &TrainConfig, device: DeviceKind, world_size: usize) -> usize {
    let on_cpu = device == DeviceKind::Cpu;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let streams = match c.streams {
        0 if on_cpu && world_size == 1 && (2..=4).contains(&cores) && c.batch_size.is_multiple_of(2) => 2,
        0 => 1,
        n => n,
    };
    if !c.compile || streams <= 1 {
        return 1;
    }
    if !on_cpu || !c.batch_size.is_multiple_of(streams) {
        tracing::info!(
            streams,
            batch_size = c.batch_size,
            "one stream: the batch does not split evenly (or not on the CPU)"
        );
        return 1;
    }
    streams
}

/// The loss-and-gradient machinery a configuration asks for: MLX compile when asked, on
/// several CPU streams when [`stream_count`] says so.
pub enum GradEngine {
    /// Op by op.
    Eager,
    /// One compiled function.
    Compiled(CompiledGrad),
    /// Several streams.
    Streams(StreamSplit),
}

impl GradEngine {
    /// The engine for `c` and `model` (its kernels from [`kernels_for`] with the same
    /// `streams`) in a run of `world_size` processes.
    pub fn new(c: &TrainConfig, model: &Gpt, streams: usize, world_size: usize) -> GradEngine {
        if !c.compile {
            return GradEngine::Eager;
        }
        if streams > 1 {
            // Each stream's matmuls run on its own core: BLAS must not also fan out.
            mlx_gpt_runtime::blas::set_blas_threads(1);
            // Pinned only as the one process on this machine: the processes of a
            // distributed run would all choose the same cores.
            let pin = c.pin_streams && world_size == 1;
            let cpus = if pin { mlx_gpt_runtime::affinity::worker_cpus(streams) } else { None };
            return GradEngine::Streams(StreamSplit::new(model, streams, cpus));
        }
        GradEngine::Compiled(CompiledGrad::new(model))
    }

    /// The path for `train_step`.
    pub fn path(&mut self) -> GradPath<'_> {
        match self {
            GradEngine::Eager => GradPath::Eager,
            GradEngine::Compiled(c) => GradPath::Compiled(c),
            GradEngine::Streams(s) => GradPath::Streams(s),
        }
    }

    /// A short description for logs.
    pub fn describe(&self) -> String {
        match self {
            GradEngine::Eager => "eager".into(),
            GradEngine::Compiled(_) => "compiled".into(),
            GradEngine::Streams(s) => match s.cpus() {
                Some(cpus) => format!(
                    "compiled on {} CPU streams pinned to CPUs {}, BLAS on 1 thread each",
                    s.len(),
                    cpus.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
                ),
                None => format!("compiled on {} CPU streams, BLAS on 1 thread each", s.len()),
            },
        }
    }
}

/// Join the process group the configuration and environment describe, if any.
pub fn init_world(c: &TrainConfig) -> Result<Option<Group>, TrainError> {
    let hostfile = std::env::var("MLX_HOSTFILE").ok();
    let under_mpi = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"].iter().any(|v| std::env::var_os(v).is_some());
    let backend = match c.backend {
        Backend::None => return Ok(None),
        Backend::Auto if hostfile.is_some() => Backend::Ring,
        Backend::Auto if under_mpi => Backend::Mpi,
        Backend::Auto => return Ok(None),
        other => other,
    };
    if backend == Backend::Ring {
        let path = hostfile.ok_or_else(|| {
            TrainError::Config(crate::config::ConfigError::Inconsistent(
                "backend ring needs MLX_HOSTFILE and MLX_RANK (see docs/distributed.md)".into(),
            ))
        })?;
        let ranks = check_hostfile(&path)?;
        let inconsistent = |m: String| TrainError::Config(crate::config::ConfigError::Inconsistent(m));
        let rank: usize = match std::env::var("MLX_RANK") {
            Err(_) => return Err(inconsistent("MLX_RANK must be set to this process's rank".into())),
            Ok(r) => r.trim().parse().map_err(|_| {
                inconsistent(format!("MLX_RANK '{r}' is not a rank (a whole number from 0 to {})", ranks - 1))
            })?,
        };
        if rank >= ranks {
            return Err(DistError::Hostfile {
                path,
                what: format!("MLX_RANK {rank} but only {ranks} ranks are listed"),
            }
            .into());
        }
        // What can be checked without the peers is checked before waiting for them.
        if !c.gradient_accumulation_steps.is_multiple_of(ranks) {
            return Err(inconsistent(format!(
                "gradient_accumulation_steps ({}) must be divisible by the number of processes ({ranks})",
                c.gradient_accumulation_steps
            )));
        }
        crate::distributed::check_own_address(&path, rank)?;
    }
    // Connecting has the same bound as a step: a peer that never starts, or an address
    // nobody answers on, stops this rank after dist_timeout seconds instead of never.
    let connected = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (connected, timeout) = (connected.clone(), c.dist_timeout);
        let rank = std::env::var("MLX_RANK").unwrap_or_else(|_| "?".into());
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while !connected.load(Ordering::SeqCst) {
                if t0.elapsed().as_secs_f64() > timeout {
                    eprintln!(
                        "error: rank {rank}: could not connect to the other ranks within dist_timeout \
                         ({timeout} s): is every rank started, with the same hostfile, and can each reach \
                         the others' addresses?"
                    );
                    std::process::exit(3);
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        });
    }
    let group = Group::init(&backend.to_string(), true);
    connected.store(true, Ordering::SeqCst);
    let group = group?;
    Ok((group.size() > 1).then_some(group))
}

/// Stops this process if no step finishes within a timeout: in a distributed run a dead
/// or unreachable peer would otherwise leave the survivors waiting forever.
/// Dropped, it stops watching (the end-of-run evaluations, on rank 0 alone, are not steps).
struct Heartbeat {
    t0: Instant,
    last_ms: Arc<std::sync::atomic::AtomicU64>,
    stopped: Arc<AtomicBool>,
}

impl Heartbeat {
    fn start(rank: usize, timeout: f64) -> Heartbeat {
        let t0 = Instant::now();
        let last_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let seen = last_ms.clone();
        let stopped = Arc::new(AtomicBool::new(false));
        let done = stopped.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_millis(250));
            if done.load(Ordering::Relaxed) {
                return;
            }
            let idle = t0.elapsed().as_secs_f64() - seen.load(Ordering::Relaxed) as f64 / 1e3;
            if idle > timeout {
                eprintln!(
                    "error: rank {rank}: no training step finished for {idle:.0} s (dist_timeout {timeout} s): \
                     a peer rank has probably died or cannot connect; stopping. The last checkpoint is intact."
                );
                std::process::exit(3);
            }
        });
        Heartbeat { t0, last_ms, stopped }
    }

    fn beat(&self) {
        self.last_ms.store(self.t0.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stopped.store(true, Ordering::Relaxed);
    }
}

/// All ranks' sampler states, in rank order (every rank must call it).
fn gather_samplers(world: Option<&Group>, mine: &SamplerState) -> Result<Vec<SamplerState>, TrainError> {
    let Some(g) = world else { return Ok(vec![mine.clone()]) };
    let words = |x: u64| [(x & 0xffff_ffff) as u32, (x >> 32) as u32];
    let order = match mine.order {
        Order::Random => 0u64,
        Order::Epoch => 1,
    };
    let fields = [mine.seed, mine.rng, mine.epoch, mine.cursor, order];
    let flat: Vec<u32> = fields.iter().flat_map(|&x| words(x)).collect();
    let all = g.all_gather(&mlx_rs::Array::from_slice(&flat, &[1, flat.len() as i32]))?;
    let v = all.as_slice::<u32>();
    Ok(v.chunks(flat.len())
        .map(|c| {
            let w = |i: usize| c[2 * i] as u64 | ((c[2 * i + 1] as u64) << 32);
            SamplerState {
                seed: w(0),
                rng: w(1),
                epoch: w(2),
                cursor: w(3),
                order: if w(4) == 1 { Order::Epoch } else { Order::Random },
            }
        })
        .collect())
}

/// Train (or evaluate, with `eval_only`) as configured: nanoGPT's `train.py`.
pub fn run(c: &TrainConfig, opts: &RunOptions) -> Result<Summary, TrainError> {
    let started = Instant::now();
    let device = select_device(c.device)?;
    let world = init_world(c)?;
    let (rank, world_size) = world.as_ref().map_or((0, 1), |g| (g.rank(), g.size()));
    let master = rank == 0;
    // Rank 0 writes the run directory; the others only compute.
    let writes = master && !c.eval_only;
    // The dataset first: a run that cannot start leaves no run directory behind.
    let (data, meta) = dataset_dir(c)?;
    // And the tasks scored at the end, so a missing file stops the run now, not after it.
    let task_tokenizer = if master && !c.eval_tasks.is_empty() { Some(check_tasks(c, &meta, &data)?) } else { None };
    let _lock = lock_run_dir(c, world.as_ref(), master, writes)?;
    if !c.gradient_accumulation_steps.is_multiple_of(world_size) {
        return Err(inconsistent(format!(
            "gradient_accumulation_steps ({}) must be divisible by the number of processes ({world_size})",
            c.gradient_accumulation_steps
        )));
    }
    let accum = c.gradient_accumulation_steps / world_size;
    let heartbeat = (world_size > 1).then(|| Heartbeat::start(rank, c.dist_timeout));
    if c.memory_check && !c.eval_only {
        check_memory_fits(c, &meta)?;
    }
    // And while it runs: stopped with a message when this process is about to exhaust the
    // machine's memory, before the kernel's out-of-memory killer ends it without one.
    let _memory_guard = if c.memory_check { crate::memory::MemoryGuard::for_training() } else { None };

    let (mut model, mut opt, state) = init(c, &meta, AdamWConfig::from(c))?;
    let resumed_from = state.as_ref().map(|s| checkpoint::dir_of(&c.out_dir, s.iter));
    model.set_dtype(c.dtype.to_mlx())?;
    let streams = stream_count(c, device, world_size);
    model.kernels = kernels_for(c, device, streams)?;
    let block = model.config.block_size.min(c.block_size);
    let mut sampler = batch_sampler(c, &data, state.as_ref(), rank, world_size, block)?;
    let mut iter = state.as_ref().map_or(0, |s| s.iter);
    // The checkpoint a resumed run loaded is on disk already: not saved again.
    let resumed_at = state.as_ref().map(|s| s.iter);
    let mut best_val_loss = state.as_ref().map_or(f64::INFINITY, |s| s.best_val_loss);
    let cost = StepCost::of(c, &model, device, block, world_size)?;
    if master {
        cost.log(c, &model, device, world_size);
    }
    if writes {
        let resolved = c.out_dir.join("config.toml");
        mlx_gpt_model::write_atomic(&resolved, c.to_toml().as_bytes())
            .map_err(|source| TrainError::Io { path: resolved, source })?;
    }
    // An evaluation-only run reports; it leaves the run's records as they are.
    let mut recorder = metrics::Recorder::open(&c.out_dir, writes, resumed_at)?;
    let bar = if opts.progress && std::io::stderr().is_terminal() && writes {
        let b = indicatif::ProgressBar::new(c.max_iters as u64).with_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} iters, {per_sec}, ETA {eta} {msg}")
                .expect("template"),
        );
        b.set_position(iter as u64);
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let say = |f: &dyn Fn()| {
        if master {
            bar.suspend(f)
        }
    };

    // Checkpoints carry a trained tokenizer itself: `sample` reads them without the dataset.
    let state_tokenizer = match &meta.tokenizer {
        spec @ mlx_gpt_data::tokenizer::TokenizerSpec::Trained { .. } => {
            mlx_gpt_data::tokenizer::Tokenizer::from_spec(spec, Some(&data))?.standalone_spec()
        }
        other => other.clone(),
    };
    let mut saver =
        Saver { c, world: world.as_ref(), world_size, tokenizer: &state_tokenizer, last_good: resumed_from };
    let mut engine = GradEngine::new(c, &model, streams, world_size);
    let mut last_eval = None;
    let mut checkpoint_path = None;
    let mut interrupted = false;
    loop {
        let lr = get_lr(iter, c);
        if iter % c.eval_interval == 0 || c.eval_only || iter == c.max_iters {
            let losses = evaluate(c, &mut model, &data, block, world.as_ref(), rank, iter)?;
            say(&|| {
                tracing::info!(
                    iter,
                    train_loss = losses.train,
                    val_loss = losses.val,
                    "step {iter}: train loss {:.4}, val loss {:.4}",
                    losses.train,
                    losses.val
                )
            });
            for (what, v) in [("train loss", losses.train), ("val loss", losses.val)] {
                if !v.is_finite() && !c.eval_only {
                    return Err(TrainError::NonFinite {
                        iter,
                        what: format!("the evaluation's {what} ({v})"),
                        last_checkpoint: saver.last_good.clone(),
                    });
                }
            }
            recorder.record(Record::Eval { iter, train_loss: losses.train, val_loss: losses.val })?;
            last_eval = Some(losses);
            if losses.val < best_val_loss || c.always_save_checkpoint {
                best_val_loss = best_val_loss.min(losses.val);
                if iter > 0 && !c.eval_only && Some(iter) != resumed_at {
                    if let Some(p) = saver.save(&model, &opt, &sampler, iter, best_val_loss)? {
                        say(&|| tracing::info!(checkpoint = %p.display(), "saving checkpoint to {}", p.display()));
                        checkpoint_path = Some(p);
                    }
                }
            }
        }
        if c.eval_only || iter >= c.max_iters {
            break;
        }
        let t0 = Instant::now();
        let step = StepInputs { accum, lr: lr as f32, seed: c.seed + rank as u64, iter };
        let stats = one_step(c, &mut model, &mut opt, &mut sampler, step, &mut engine, world.as_ref())?;
        if let Some(h) = &heartbeat {
            h.beat();
        }
        let secs = t0.elapsed().as_secs_f64();
        // A diverged step stops the run before anything of it is saved (the weights it
        // updated are NaN too). Every rank sees the same averaged values.
        for (what, v) in [("train loss", stats.loss), ("gradient norm", stats.grad_norm)] {
            if !v.is_finite() {
                return Err(TrainError::NonFinite {
                    iter,
                    what: format!("the {what} ({v})"),
                    last_checkpoint: saver.last_good.clone(),
                });
            }
        }
        if iter % c.log_interval == 0 {
            let r = cost.record(iter, &stats, lr, secs);
            say(&|| log_step(&r));
            recorder.record(r)?;
        }
        iter += 1;
        bar.set_position(iter as u64);
        bar.set_message(format!("loss {:.4}", stats.loss));
        let mut stop = opts.stop.load(Ordering::SeqCst);
        if let Some(g) = &world {
            // Stop together: any rank's Ctrl-C stops every rank after the same step.
            let any = g.all_sum(&mlx_rs::Array::from_f32(stop as u8 as f32))?;
            stop = any.item_exact::<f32>() > 0.0;
        }
        if stop {
            if let Some(p) = saver.save(&model, &opt, &sampler, iter, best_val_loss)? {
                say(
                    &|| tracing::info!(checkpoint = %p.display(), iter, "interrupted: saved a checkpoint; continue with --init_from resume"),
                );
                checkpoint_path = Some(p);
            }
            interrupted = true;
            break;
        }
    }
    bar.finish_and_clear();
    // Training is over: what follows runs on rank 0 alone and may take longer than
    // dist_timeout (the exact loss of a large split), which is no peer's failure.
    drop(heartbeat);
    let (exact_val, tasks) = if master && !interrupted {
        let end = EndOfRun { iter, block, progress: opts.progress };
        final_evaluations(c, &mut model, &data, &meta, task_tokenizer.as_ref(), end, &mut recorder)?
    } else {
        (None, vec![])
    };
    Ok(Summary {
        iter,
        last_eval,
        best_val_loss,
        wall_s: started.elapsed().as_secs_f64(),
        interrupted,
        checkpoint: checkpoint_path,
        exact_val,
        tasks,
    })
}

/// Writes checkpoints, and remembers the newest one known whole (the one resumed from,
/// then each one saved): a diverged run names it, not merely the newest folder, which may
/// be damaged.
struct Saver<'a> {
    c: &'a TrainConfig,
    world: Option<&'a Group>,
    world_size: usize,
    tokenizer: &'a mlx_gpt_data::tokenizer::TokenizerSpec,
    last_good: Option<PathBuf>,
}

impl Saver<'_> {
    /// Every rank calls it (the sampler states are gathered); rank 0 writes and returns
    /// the checkpoint's folder.
    fn save(
        &mut self,
        model: &Gpt,
        opt: &AdamW,
        sampler: &BatchSampler,
        iter: usize,
        best: f64,
    ) -> Result<Option<PathBuf>, TrainError> {
        // Never a checkpoint of weights that are no longer numbers (one that replaced or
        // pruned a finite one would lose the run). Every rank holds the same weights, so
        // every rank decides alike, before the collective below.
        if let Some(name) = model.first_non_finite_parameter()? {
            return Err(TrainError::NonFinite {
                iter,
                what: format!("parameter {name}"),
                last_checkpoint: self.last_good.clone(),
            });
        }
        let samplers = gather_samplers(self.world, sampler.state())?;
        if self.world.is_some_and(|g| g.rank() != 0) {
            return Ok(None);
        }
        let c = self.c;
        let st = TrainState {
            version: STATE_VERSION,
            iter,
            best_val_loss: best,
            model: model.config.clone(),
            train: c.clone(),
            world_size: self.world_size,
            samplers,
            tokenizer: self.tokenizer.clone(),
        };
        let p = checkpoint::save(&c.out_dir, model, opt, &st)?;
        checkpoint::prune(&c.out_dir, c.keep_last)?;
        self.last_good = Some(p.clone());
        Ok(Some(p))
    }
}

/// The numbers of one step that change from step to step.
#[derive(Clone, Copy)]
struct StepInputs {
    accum: usize,
    lr: f32,
    seed: u64,
    iter: usize,
}

/// One optimizer step in training mode. A batch that cannot be read (the token file
/// changed underneath) ends the step; its error is returned as itself, naming the file.
fn one_step(
    c: &TrainConfig,
    model: &mut Gpt,
    opt: &mut AdamW,
    sampler: &mut BatchSampler,
    s: StepInputs,
    engine: &mut GradEngine,
    world: Option<&Group>,
) -> Result<crate::step::StepStats, TrainError> {
    model.set_training(true);
    let mut batch_error = None;
    let mut next = || {
        sampler.next_batch().map_err(|e| {
            let message = e.to_string();
            batch_error = Some(e);
            mlx_rs::error::Exception::custom(message)
        })
    };
    let grad_clip = c.grad_clip as f32;
    let stats = train_step(model, opt, &mut next, s.accum, s.lr, grad_clip, s.seed, s.iter, engine.path(), world);
    match (stats, batch_error) {
        (Err(_), Some(e)) => Err(e.into()),
        (stats, _) => Ok(stats?),
    }
}

/// Where the end-of-run evaluations stand.
#[derive(Clone, Copy)]
struct EndOfRun {
    iter: usize,
    block: usize,
    progress: bool,
}

/// Rank 0's evaluations at the end of a run that was not interrupted: the exact val loss
/// (`eval_full`) and the `eval_tasks`, each recorded unless this is `eval`.
fn final_evaluations(
    c: &TrainConfig,
    model: &mut Gpt,
    data: &Path,
    meta: &Meta,
    task_tokenizer: Option<&mlx_gpt_data::tokenizer::Tokenizer>,
    end: EndOfRun,
    recorder: &mut metrics::Recorder,
) -> Result<(Option<crate::eval::SplitScore>, Vec<crate::tasks::TaskScore>), TrainError> {
    let iter = end.iter;
    let exact_val = if c.eval_full {
        let score = exact_val_loss(c, model, data, meta, end.block, end.progress)?;
        if !c.eval_only {
            let (loss, bits_per_byte) = (score.loss, score.bits_per_byte);
            recorder.record(Record::Exact { iter, split: "val".into(), loss, bits_per_byte })?;
        }
        Some(score)
    } else {
        None
    };
    let Some(tok) = task_tokenizer else { return Ok((exact_val, vec![])) };
    let scores = crate::tasks::run(c, model, tok, end.progress)?;
    for t in scores.iter().filter(|_| !c.eval_only) {
        let (n, acc, acc_norm) = (t.score.n, t.score.acc, t.score.acc_norm);
        recorder.record(Record::Task { iter, task: t.task.clone(), n, acc, acc_norm })?;
    }
    Ok((exact_val, scores))
}

/// `message` as a configuration error.
fn inconsistent(message: String) -> TrainError {
    TrainError::Config(crate::config::ConfigError::Inconsistent(message))
}

/// The task files and the tokenizer that spells them (GPT-2's, or the one trained for the
/// dataset in `data`), checked before training.
fn check_tasks(c: &TrainConfig, meta: &Meta, data: &Path) -> Result<mlx_gpt_data::tokenizer::Tokenizer, TrainError> {
    crate::tasks::check(c)?;
    let trained = matches!(meta.tokenizer, mlx_gpt_data::tokenizer::TokenizerSpec::Trained { .. });
    let tok = crate::tasks::tokenizer_for(c, &meta.tokenizer, trained.then_some(data))?;
    crate::tasks::check_tokenizer(c, &tok)?;
    Ok(tok)
}

/// Create the run directory and lock it for rank 0 when it writes (crate::lock), before
/// anything in it is read (a checkpoint to resume) or written; held until the run ends.
/// Every rank learns whether rank 0 got the lock, and stops with it if not. A save killed
/// between its renames left its folders aside: they are put back.
fn lock_run_dir(
    c: &TrainConfig,
    world: Option<&Group>,
    master: bool,
    writes: bool,
) -> Result<Option<crate::lock::RunLock>, TrainError> {
    std::fs::create_dir_all(&c.out_dir).map_err(|source| TrainError::Io { path: c.out_dir.clone(), source })?;
    let lock = writes.then(|| crate::lock::acquire(&c.out_dir));
    if let Some(g) = world {
        let refused = matches!(lock, Some(Err(_))) as u8 as f32;
        if g.all_sum(&mlx_rs::Array::from_f32(refused))?.item_exact::<f32>() > 0.0 && !master {
            return Err(inconsistent(format!(
                "rank 0 could not lock {}: another training run writes there",
                c.out_dir.display()
            )));
        }
    }
    let lock = lock.transpose()?;
    if writes {
        for note in checkpoint::recover(&c.out_dir)? {
            tracing::warn!("{note}");
        }
    }
    Ok(lock)
}

/// A run that cannot fit stops here with the numbers, before the model is built, not
/// later in the kernel's out-of-memory killer with none. (A pretrained or resumed model's
/// shape comes from its files; the configuration's is what this can check.)
fn check_memory_fits(c: &TrainConfig, meta: &Meta) -> Result<(), TrainError> {
    let (l, ch, v, t) = (c.n_layer, c.n_embd, meta.vocab_size, c.block_size);
    let approx_params = 12 * l * ch * ch + 13 * l * ch + v * ch + t * ch;
    let need = crate::memory::estimate_bytes(c, approx_params);
    match crate::memory::available_bytes() {
        Some(available) if need > available as f64 => Err(TrainError::OutOfMemory {
            need_mib: need / (1u64 << 20) as f64,
            available_mib: available as f64 / (1u64 << 20) as f64,
        }),
        _ => Ok(()),
    }
}

/// This rank's batches: where a resumed run's sampler stopped, or a new sequence (nanoGPT's
/// seed offset per rank).
fn batch_sampler(
    c: &TrainConfig,
    data: &Path,
    state: Option<&TrainState>,
    rank: usize,
    world_size: usize,
    block: usize,
) -> Result<BatchSampler, TrainError> {
    let (train_file, _) = TokenFile::open(data, "train")?;
    Ok(match state {
        Some(s) if s.world_size != world_size => {
            return Err(inconsistent(format!(
            "the checkpoint was written by {} process(es) and this run has {world_size}: resume with the same number",
            s.world_size
        )))
        }
        Some(s) => BatchSampler::with_state(train_file, c.batch_size, block, s.samplers[rank].clone())?,
        None => BatchSampler::new(train_file, c.batch_size, block, Order::Random, c.seed + rank as u64)?,
    })
}

/// Train and val loss estimated on `eval_iters` batches each; in a distributed run every
/// rank evaluates its own batches and the losses are averaged, so all ranks decide alike.
fn evaluate(
    c: &TrainConfig,
    model: &mut Gpt,
    data: &Path,
    block: usize,
    world: Option<&Group>,
    rank: usize,
    iter: usize,
) -> Result<Losses, TrainError> {
    let eval_seed = (c.seed + rank as u64) ^ (iter as u64).wrapping_mul(0x2545_F491_4F6C_DD1D);
    let losses = estimate_loss(model, data, c.eval_iters, c.batch_size, block, eval_seed)?;
    let Some(g) = world else { return Ok(losses) };
    let both = g.all_sum(&mlx_rs::Array::from_slice(&[losses.train as f32, losses.val as f32], &[2]))?;
    let v = both.as_slice::<f32>();
    let n = g.size() as f64;
    Ok(Losses { train: v[0] as f64 / n, val: v[1] as f64 / n })
}

/// One step's log line (a `Record::Train`).
fn log_step(r: &Record) {
    if let Record::Train { iter, loss, lr, ms, tok_per_s, mfu, grad_norm } = *r {
        tracing::info!(
            iter,
            loss,
            lr,
            ms,
            tok_per_s,
            mfu,
            grad_norm,
            "iter {iter}: loss {loss:.4}, time {ms:.2}ms, mfu {:.2}%",
            mfu * 100.0
        );
    }
}

/// What one optimizer step costs, for the log's throughput and MFU.
struct StepCost {
    /// Tokens per step, all ranks together.
    tokens: usize,
    /// Training FLOPs per step (PaLM's estimate, nanoGPT's formula).
    flops: f64,
    /// The FLOP/s MFU divides by.
    peak: f64,
    /// How the peak was found, and the machines it spans.
    peak_text: String,
    machines: usize,
}

impl StepCost {
    fn of(
        c: &TrainConfig,
        model: &Gpt,
        device: DeviceKind,
        block: usize,
        world_size: usize,
    ) -> Result<Self, TrainError> {
        let tokens = c.gradient_accumulation_steps * c.batch_size * block;
        // MFU's denominator: the ceiling of one machine, times the machines a distributed
        // run spans: those of its hostfile (ranks launched on one machine share its cores),
        // else (MPI) one per rank, which can only make MFU read low.
        let machine_peak = crate::peak::peak_for(device, c.peak_flops, crate::peak::default_threads())?;
        let machines = match std::env::var("MLX_HOSTFILE") {
            _ if world_size == 1 => 1,
            Ok(path) => crate::distributed::machines_in_hostfile(&path).unwrap_or(world_size),
            Err(_) => world_size,
        };
        Ok(StepCost {
            tokens,
            flops: model.flops_per_token(block) * tokens as f64,
            peak: machine_peak.flops * machines as f64,
            peak_text: machine_peak.describe(),
            machines,
        })
    }

    /// The training header: BLAS kernel, kernels, MFU ceiling, parameters, tokens per step.
    fn log(&self, c: &TrainConfig, model: &Gpt, device: DeviceKind, world_size: usize) {
        let kernel = mlx_gpt_runtime::blas_kernel::status();
        tracing::info!(blas_kernel = kernel.core.as_deref().unwrap_or("n/a"), "BLAS kernel: {}", kernel.describe());
        tracing::info!(kernels = model.kernels.name(), "kernels: {}", model.kernels.describe());
        tracing::info!(
            peak_gflops = self.peak / 1e9,
            machines = self.machines,
            "MFU ceiling: {}{}",
            self.peak_text,
            if self.machines > 1 { format!(" × {} machines", self.machines) } else { String::new() }
        );
        let n_params = model.num_params(true);
        let need = crate::memory::estimate_bytes(c, model.num_params(false));
        let tokens_per_iter = self.tokens;
        tracing::info!(
            world_size,
            device = %device,
            params = n_params,
            tokens_per_iter,
            gflop_per_iter = self.flops / 1e9,
            est_memory_mib = need / (1u64 << 20) as f64,
            peak_gflops = self.peak / 1e9,
            "number of parameters: {:.2}M; tokens per iteration will be: {tokens_per_iter}",
            n_params as f64 / 1e6
        );
    }

    /// The record of step `iter`, which took `secs`.
    fn record(&self, iter: usize, stats: &crate::step::StepStats, lr: f64, secs: f64) -> Record {
        Record::Train {
            iter,
            loss: stats.loss as f64,
            lr,
            ms: secs * 1e3,
            tok_per_s: self.tokens as f64 / secs,
            mfu: self.flops / secs / self.peak,
            grad_norm: stats.grad_norm as f64,
        }
    }
}

/// The exact loss of the val split (every window), with bits per byte where the
/// tokenizer is at hand: a character table always is, a trained BPE is in the dataset's
/// folder; GPT-2's BPE needs its files (`tokenizer`, default `models/gpt2`), and without
/// them the loss comes alone.
fn exact_val_loss(
    c: &TrainConfig,
    model: &mut Gpt,
    data: &Path,
    meta: &Meta,
    block: usize,
    progress: bool,
) -> Result<crate::eval::SplitScore, TrainError> {
    // GPT-2's files, or the dataset's folder for its own trained tokenizer.
    let files = match meta.tokenizer {
        mlx_gpt_data::tokenizer::TokenizerSpec::Trained { .. } => data.to_path_buf(),
        _ => c.tokenizer.clone().unwrap_or_else(|| PathBuf::from("models/gpt2")),
    };
    let token_bytes = match mlx_gpt_data::tokenizer::Tokenizer::from_spec(&meta.tokenizer, Some(&files)) {
        Ok(t) => Some(t.token_bytes()),
        Err(e) => {
            tracing::info!("bits per byte left out: {e}");
            None
        }
    };
    let (file, _) = TokenFile::open(data, "val")?;
    let bar = mlx_gpt_data::progress::counter(0, "exact val loss {bar:40} {pos}/{len} batches, ETA {eta}", progress);
    let score =
        crate::eval::exact_split_loss(model, &file, block, c.batch_size, token_bytes.as_deref(), &mut |d, n| {
            bar.set_length(n as u64);
            bar.set_position(d as u64);
        })?;
    bar.finish_and_clear();
    let bpb = score.bits_per_byte.map(|b| format!(", {b:.4} bits per byte")).unwrap_or_default();
    tracing::info!(
        loss = score.loss,
        bits_per_byte = score.bits_per_byte,
        tokens = score.tokens,
        "exact val loss {:.4}{bpb} (all {} tokens, {} windows of {block})",
        score.loss,
        score.tokens,
        score.windows
    );
    Ok(score)
}
