//! The training loop, in nanoGPT's order: learning rate → evaluation and checkpoint →
//! micro-steps → clip → AdamW → log → stop.

use crate::checkpoint::{self, TrainState, STATE_VERSION};
use crate::config::{InitFrom, TrainConfig};
use crate::distributed::{check_hostfile, DistError, Group};
use crate::eval::{estimate_loss, Losses};
use crate::metrics::{self, Record};
use crate::optimizer::{AdamW, AdamWConfig};
use crate::schedule::get_lr;
use crate::step::{train_step, CompiledGrad, GradPath, StreamSplit};
use crate::TrainError;
use mlx_gpt_data::batches::{BatchSampler, Order, SamplerState};
use mlx_gpt_data::token_file::{Meta, TokenFile, META_FILE};
use mlx_gpt_model::{device, hf, DeviceKind, Gpt, GptConfig};
use mlx_rs::Dtype;
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

/// Parse `dtype`.
pub fn dtype_of(name: &str) -> Dtype {
    match name {
        "bfloat16" => Dtype::Bfloat16,
        "float16" => Dtype::Float16,
        _ => Dtype::Float32,
    }
}

/// Select the configured device.
pub fn select_device(name: &str) -> Result<DeviceKind, TrainError> {
    let requested = match name {
        "auto" => None,
        other => Some(other.parse::<DeviceKind>()?),
    };
    Ok(device::select(requested)?)
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
    cmp!(n_layer, n_head, n_embd, block_size, bias, vocab_size);
    d
}

/// Build the model and optimizer the configuration asks for (and the state to resume).
pub fn init(c: &TrainConfig, meta: &Meta, adamw: AdamWConfig) -> Result<(Gpt, AdamW, Option<TrainState>), TrainError> {
    let wanted = GptConfig {
        block_size: c.block_size,
        vocab_size: meta.vocab_size,
        n_layer: c.n_layer,
        n_head: c.n_head,
        n_embd: c.n_embd,
        dropout: c.dropout,
        bias: c.bias,
        ..GptConfig::baby(meta.vocab_size)
    };
    let (mut model, opt, state) = match c.init_from() {
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
    if state.is_none() && c.init_from() != InitFrom::Scratch {
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

/// `streams = 0` (the default): two streams on a CPU with two to four cores when the batch
/// is even and this is the only process (several processes on one machine already share
/// its cores), else one. Streams run BLAS on one thread each, so on a machine with more
/// cores one stream whose matmuls use them all is the safer choice; two streams were
/// measured on two cores only (docs/performance.md).
fn auto_streams(batch_size: usize, on_cpu: bool, world_size: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if on_cpu && world_size == 1 && (2..=4).contains(&cores) && batch_size.is_multiple_of(2) {
        2
    } else {
        1
    }
}

/// The loss-and-gradient machinery a configuration asks for: MLX compile when asked, on
/// `streams` CPU streams when the batch divides evenly.
pub enum GradEngine {
    /// Op by op.
    Eager,
    /// One compiled function.
    Compiled(CompiledGrad),
    /// Several streams.
    Streams(StreamSplit),
}

impl GradEngine {
    /// Choose for `c` and `model` in a run of `world_size` processes, logging why a faster
    /// path is not taken.
    pub fn new(c: &TrainConfig, model: &Gpt, world_size: usize) -> GradEngine {
        if !c.compile {
            return GradEngine::Eager;
        }
        let on_cpu = device::default_device() == Some(DeviceKind::Cpu);
        let streams = match c.streams {
            0 => auto_streams(c.batch_size, on_cpu, world_size),
            n => n,
        };
        if streams > 1 && c.batch_size.is_multiple_of(streams) && on_cpu {
            // Each stream's matmuls run on its own core: BLAS must not also fan out.
            mlx_gpt_model::runtime::set_blas_threads(1);
            // Pinned only as the one process on this machine: the processes of a
            // distributed run would all choose the same cores.
            let cpus = if world_size == 1 { crate::affinity::worker_cpus(streams) } else { None };
            return GradEngine::Streams(StreamSplit::with_cpus(model, streams, cpus));
        }
        if streams > 1 {
            tracing::info!(
                streams,
                batch_size = c.batch_size,
                "one stream: the batch does not split evenly (or not on the CPU)"
            );
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
    let backend = match c.backend.as_str() {
        "none" => return Ok(None),
        "auto" if hostfile.is_some() => "ring",
        "auto" if under_mpi => "mpi",
        "auto" => return Ok(None),
        other => other,
    };
    if backend == "ring" {
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
    let group = Group::init(backend, true);
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

/// Train (or evaluate, with `eval_only`) as configured.
pub fn run(c: &TrainConfig, opts: &RunOptions) -> Result<Summary, TrainError> {
    let started = Instant::now();
    let device = select_device(&c.device)?;
    let world = init_world(c)?;
    let (rank, world_size) = world.as_ref().map_or((0, 1), |g| (g.rank(), g.size()));
    let master = rank == 0;
    // Rank 0 writes the run directory; the others only compute. It is locked before
    // anything in it is read (a checkpoint to resume) or written (crate::lock), and held
    // until this function returns.
    let writes = master && !c.eval_only;
    // The dataset first: a run that cannot start leaves no run directory behind.
    let (data, meta) = dataset_dir(c)?;
    // And the tasks scored at the end, so a missing file stops the run now, not after it.
    let task_tokenizer = if master && !c.eval_tasks.is_empty() {
        crate::tasks::check(c)?;
        let tok = crate::tasks::tokenizer_for(c, &meta.tokenizer, None)?;
        crate::tasks::check_tokenizer(c, &tok)?;
        Some(tok)
    } else {
        None
    };
    std::fs::create_dir_all(&c.out_dir).map_err(|source| TrainError::Io { path: c.out_dir.clone(), source })?;
    let lock = writes.then(|| crate::lock::acquire(&c.out_dir));
    if let Some(g) = &world {
        // Every rank learns whether rank 0 got the lock, and stops with it if not.
        let refused = matches!(lock, Some(Err(_))) as u8 as f32;
        if g.all_sum(&mlx_rs::Array::from_f32(refused))?.item_exact::<f32>() > 0.0 && !master {
            return Err(TrainError::Config(crate::config::ConfigError::Inconsistent(format!(
                "rank 0 could not lock {}: another training run writes there",
                c.out_dir.display()
            ))));
        }
    }
    let _lock = lock.transpose()?;
    if writes {
        // A save killed between its renames left its folders aside: put them back.
        for note in checkpoint::recover(&c.out_dir)? {
            tracing::warn!("{note}");
        }
    }
    if !c.gradient_accumulation_steps.is_multiple_of(world_size) {
        return Err(TrainError::Config(crate::config::ConfigError::Inconsistent(format!(
            "gradient_accumulation_steps ({}) must be divisible by the number of processes ({world_size})",
            c.gradient_accumulation_steps
        ))));
    }
    let accum = c.gradient_accumulation_steps / world_size;
    let heartbeat = (world_size > 1).then(|| Heartbeat::start(rank, c.dist_timeout));
    let adamw = AdamWConfig::from(c);
    // A run that cannot fit stops here with the numbers, before the model is built, not
    // later in the kernel's out-of-memory killer with none. (A pretrained or resumed
    // model's shape comes from its files; the configuration's is what this can check.)
    if c.memory_check && !c.eval_only {
        let (l, ch, v, t) = (c.n_layer, c.n_embd, meta.vocab_size, c.block_size);
        let approx_params = 12 * l * ch * ch + 13 * l * ch + v * ch + t * ch;
        let need = crate::memory::estimate_bytes(c, approx_params);
        if let Some(available) = crate::memory::available_bytes() {
            if need > available as f64 {
                return Err(TrainError::OutOfMemory {
                    need_mib: need / (1u64 << 20) as f64,
                    available_mib: available as f64 / (1u64 << 20) as f64,
                });
            }
        }
    }
    // And while it runs: stopped with a message when this process is about to exhaust the
    // machine's memory, before the kernel's out-of-memory killer ends it without one.
    let _memory_guard = if c.memory_check { crate::memory::MemoryGuard::for_training() } else { None };
    let (mut model, mut opt, state) = init(c, &meta, adamw)?;
    let resumed_from = state.as_ref().map(|s| checkpoint::dir_of(&c.out_dir, s.iter));
    model.set_dtype(dtype_of(&c.dtype))?;
    let block = model.config.block_size.min(c.block_size);

    let (train_file, _) = TokenFile::open(&data, "train")?;
    // Each rank draws its own batches (nanoGPT's seed offset per rank).
    let mut sampler = match &state {
        Some(s) if s.world_size != world_size => {
            return Err(TrainError::Config(crate::config::ConfigError::Inconsistent(format!(
                "the checkpoint was written by {} process(es) and this run has {world_size}: resume with the same number",
                s.world_size
            ))))
        }
        Some(s) => BatchSampler::with_state(train_file, c.batch_size, block, s.samplers[rank].clone())?,
        None => BatchSampler::new(train_file, c.batch_size, block, Order::Random, c.seed + rank as u64)?,
    };
    let mut iter = state.as_ref().map_or(0, |s| s.iter);
    // The checkpoint a resumed run loaded is on disk already: not saved again.
    let resumed_at = state.as_ref().map(|s| s.iter);
    let mut best_val_loss = state.as_ref().map_or(f64::INFINITY, |s| s.best_val_loss);

    let n_params = model.num_params(true);
    let need = crate::memory::estimate_bytes(c, model.num_params(false));
    let tokens_per_iter = c.gradient_accumulation_steps * c.batch_size * block; // all ranks together
    let flops_per_iter = model.flops_per_token(block) * tokens_per_iter as f64;
    // MFU's denominator: the ceiling of one machine, times the machines a distributed run
    // spans: those of its hostfile (ranks launched on one machine share its cores), else
    // (MPI) one per rank, which can only make MFU read low.
    let machine_peak = crate::peak::peak_for(device, c.peak_flops, crate::peak::default_threads())?;
    let machines = match std::env::var("MLX_HOSTFILE") {
        _ if world_size == 1 => 1,
        Ok(path) => crate::distributed::machines_in_hostfile(&path).unwrap_or(world_size),
        Err(_) => world_size,
    };
    let peak = machine_peak.flops * machines as f64;
    if master {
        let kernel = mlx_gpt_model::blas_kernel::status();
        tracing::info!(blas_kernel = kernel.core.as_deref().unwrap_or("n/a"), "BLAS kernel: {}", kernel.describe());
        tracing::info!(
            peak_gflops = peak / 1e9,
            machines,
            "MFU ceiling: {}{}",
            machine_peak.describe(),
            if machines > 1 { format!(" × {machines} machines") } else { String::new() }
        );
        tracing::info!(
            world_size,
            device = %device,
            params = n_params,
            tokens_per_iter,
            gflop_per_iter = flops_per_iter / 1e9,
            est_memory_mib = need / (1u64 << 20) as f64,
            peak_gflops = peak / 1e9,
            "number of parameters: {:.2}M; tokens per iteration will be: {tokens_per_iter}",
            n_params as f64 / 1e6
        );
    }
    if writes {
        let resolved = c.out_dir.join("config.toml");
        mlx_gpt_model::write_atomic(&resolved, c.to_toml().as_bytes())
            .map_err(|source| TrainError::Io { path: resolved, source })?;
    }
    let metrics_path = c.out_dir.join("metrics.jsonl");
    // An evaluation-only run reports; it leaves the run's records as they are.
    if writes {
        if state.is_some() {
            metrics::truncate_after(&metrics_path, iter)
                .map_err(|source| TrainError::Io { path: metrics_path.clone(), source })?;
        } else {
            let _ = std::fs::remove_file(&metrics_path);
        }
    }
    // The plot's data, bounded, kept in memory: read from the file once (a resume), not at
    // every evaluation.
    let summary = std::cell::RefCell::new(if writes && state.is_some() {
        metrics::LossSummary::from_records(&metrics::read(&metrics_path))
    } else {
        metrics::LossSummary::default()
    });
    let record = |r: Record| -> Result<(), TrainError> {
        if !writes {
            return Ok(());
        }
        metrics::append(&metrics_path, &r).map_err(|source| TrainError::Io { path: metrics_path.clone(), source })?;
        let mut summary = summary.borrow_mut();
        summary.push(&r);
        if matches!(r, Record::Eval { .. } | Record::Exact { .. }) {
            let svg = c.out_dir.join("loss.svg");
            mlx_gpt_model::write_atomic(&svg, summary.svg().as_bytes())
                .map_err(|source| TrainError::Io { path: svg, source })?;
        }
        Ok(())
    };

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

    // The newest checkpoint known whole: the one resumed from, then each one saved. A
    // diverged run names it (not merely the newest folder, which may be damaged).
    let last_good = std::cell::RefCell::new(resumed_from.clone());
    let mut engine = GradEngine::new(c, &model, world_size);
    let mut last_eval = None;
    let mut checkpoint_path = None;
    let mut interrupted = false;
    // Every rank calls it (the sampler states are gathered); rank 0 writes.
    let save = |model: &Gpt,
                opt: &AdamW,
                sampler: &BatchSampler,
                iter: usize,
                best: f64|
     -> Result<Option<PathBuf>, TrainError> {
        // Never a checkpoint of weights that are no longer numbers (one that replaced or
        // pruned a finite one would lose the run). Every rank holds the same weights, so
        // every rank decides alike, before the collective below.
        if let Some(name) = model.first_non_finite_parameter()? {
            return Err(TrainError::NonFinite {
                iter,
                what: format!("parameter {name}"),
                last_checkpoint: last_good.borrow().clone(),
            });
        }
        let samplers = gather_samplers(world.as_ref(), sampler.state())?;
        if !master {
            return Ok(None);
        }
        let st = TrainState {
            version: STATE_VERSION,
            iter,
            best_val_loss: best,
            model: model.config.clone(),
            train: c.clone(),
            world_size,
            samplers,
            tokenizer: meta.tokenizer.clone(),
        };
        let p = checkpoint::save(&c.out_dir, model, opt, &st)?;
        checkpoint::prune(&c.out_dir, c.keep_last)?;
        *last_good.borrow_mut() = Some(p.clone());
        Ok(Some(p))
    };
    loop {
        let lr = get_lr(iter, c);
        if iter % c.eval_interval == 0 || c.eval_only || iter == c.max_iters {
            let eval_seed = (c.seed + rank as u64) ^ (iter as u64).wrapping_mul(0x2545_F491_4F6C_DD1D);
            let mut losses = estimate_loss(&mut model, &data, c.eval_iters, c.batch_size, block, eval_seed)?;
            if let Some(g) = &world {
                // Every rank evaluated its own batches: average, so all ranks decide alike.
                let both = g.all_sum(&mlx_rs::Array::from_slice(&[losses.train as f32, losses.val as f32], &[2]))?;
                let v = both.as_slice::<f32>();
                losses = Losses { train: v[0] as f64 / world_size as f64, val: v[1] as f64 / world_size as f64 };
            }
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
                        last_checkpoint: last_good.borrow().clone(),
                    });
                }
            }
            record(Record::Eval { iter, train_loss: losses.train, val_loss: losses.val })?;
            last_eval = Some(losses);
            if losses.val < best_val_loss || c.always_save_checkpoint {
                best_val_loss = best_val_loss.min(losses.val);
                if iter > 0 && !c.eval_only && Some(iter) != resumed_at {
                    if let Some(p) = save(&model, &opt, &sampler, iter, best_val_loss)? {
                        say(&|| tracing::info!(checkpoint = %p.display(), "saving checkpoint to {}", p.display()));
                        checkpoint_path = Some(p);
                    }
                }
            }
        }
        if c.eval_only || iter >= c.max_iters {
            break;
        }
        model.set_training(true);
        let t0 = Instant::now();
        // A batch that cannot be read (the token file changed underneath) ends the step;
        // its error is kept to be returned as itself, naming the file.
        let mut batch_error = None;
        let stats = train_step(
            &mut model,
            &mut opt,
            &mut || {
                sampler.next_batch().map_err(|e| {
                    let message = e.to_string();
                    batch_error = Some(e);
                    mlx_rs::error::Exception::custom(message)
                })
            },
            accum,
            lr as f32,
            c.grad_clip as f32,
            c.seed + rank as u64,
            iter,
            engine.path(),
            world.as_ref(),
        );
        let stats = match (stats, batch_error) {
            (Err(_), Some(e)) => return Err(e.into()),
            (stats, _) => stats?,
        };
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
                    last_checkpoint: last_good.borrow().clone(),
                });
            }
        }
        if iter % c.log_interval == 0 {
            let tok_per_s = tokens_per_iter as f64 / secs;
            let mfu = flops_per_iter / secs / peak;
            say(&|| {
                tracing::info!(
                    iter,
                    loss = stats.loss,
                    lr,
                    ms = secs * 1e3,
                    tok_per_s,
                    mfu,
                    grad_norm = stats.grad_norm,
                    "iter {iter}: loss {:.4}, time {:.2}ms, mfu {:.2}%",
                    stats.loss,
                    secs * 1e3,
                    mfu * 100.0
                )
            });
            record(Record::Train {
                iter,
                loss: stats.loss as f64,
                lr,
                ms: secs * 1e3,
                tok_per_s,
                mfu,
                grad_norm: stats.grad_norm as f64,
            })?;
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
            if let Some(p) = save(&model, &opt, &sampler, iter, best_val_loss)? {
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
    let exact_val = if c.eval_full && master && !interrupted {
        let score = exact_val_loss(c, &mut model, &data, &meta, block, opts.progress)?;
        if !c.eval_only {
            record(Record::Exact { iter, split: "val".into(), loss: score.loss, bits_per_byte: score.bits_per_byte })?;
        }
        Some(score)
    } else {
        None
    };
    let tasks = match &task_tokenizer {
        Some(tok) if !interrupted => {
            let scores = crate::tasks::run(c, &mut model, tok, opts.progress)?;
            for t in scores.iter().filter(|_| !c.eval_only) {
                record(Record::Task {
                    iter,
                    task: t.task.clone(),
                    n: t.score.n,
                    acc: t.score.acc,
                    acc_norm: t.score.acc_norm,
                })?;
            }
            scores
        }
        _ => vec![],
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

/// The exact loss of the val split (every window), with bits per byte where the
/// tokenizer is at hand: a character table always is; GPT-2's BPE needs its files
/// (`tokenizer`, default `models/gpt2`), and without them the loss comes alone.
fn exact_val_loss(
    c: &TrainConfig,
    model: &mut Gpt,
    data: &Path,
    meta: &Meta,
    block: usize,
    progress: bool,
) -> Result<crate::eval::SplitScore, TrainError> {
    let bpe_dir = c.tokenizer.clone().unwrap_or_else(|| PathBuf::from("models/gpt2"));
    let token_bytes = match mlx_gpt_data::tokenizer::Tokenizer::from_spec(&meta.tokenizer, Some(&bpe_dir)) {
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
