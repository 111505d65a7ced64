//! `mlx-gpt bench`: programs that print figures. Nothing here passes or fails on speed;
//! docs/performance.md records what they printed, with the machine and the command.

use crate::DeviceArgs;
use anyhow::{bail, Context};
use mlx_gpt_model::runtime;
use mlx_rs::Array;
use std::ffi::CString;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// f32 matmul GFLOP/s through MLX, next to a direct OpenBLAS `cblas_sgemm` in the same run.
    Matmul(MatmulArgs),
    /// Training-step time of a preset (nanoGPT's bench.py): warm-up, then timed steps.
    Train(TrainBenchArgs),
    /// Generation tokens/s with and without the KV cache (GPT-2 124M shape, random weights).
    Generate(GenerateArgs),
    /// Tokenisation MB/s on one core and on all cores.
    Tokenize(TokenizeArgs),
    /// Microseconds to draw a training batch from a prepared dataset.
    Batches(BatchesArgs),
}

#[derive(clap::Args)]
#[command(after_help = "ARGS: [CONFIG] [--key value]... as for `mlx-gpt train`, plus the benchmark's own \
--iters N (timed steps, default 30), --warmup N (untimed steps first, default 5: MLX compiles kernels on \
first use), --real-data (batches from the prepared dataset instead of random tokens) and --vocab-size N \
(vocabulary of the synthetic data, default 65). Example: `mlx-gpt bench train baby_shakespeare_char --iters 50`.")]
struct TrainBenchArgs {
    /// [CONFIG] [--key value]...
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "ARGS")]
    args: Vec<String>,
}

/// The benchmark's own options, taken out of the train-style arguments.
struct TrainBenchOptions {
    iters: usize,
    warmup: usize,
    /// Rounds of (mlx-gpt steps, PyTorch steps), alternating.
    rounds: usize,
    real_data: bool,
    vocab_size: usize,
}

fn split_bench_options(args: &[String]) -> anyhow::Result<(TrainBenchOptions, Vec<String>)> {
    let mut o = TrainBenchOptions { iters: 30, warmup: 5, rounds: 1, real_data: false, vocab_size: 65 };
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> anyhow::Result<usize> {
            let v = it.next().with_context(|| format!("{name} needs a number"))?;
            v.parse().with_context(|| format!("{name} {v}: not a number"))
        };
        match a.as_str() {
            "--iters" => o.iters = num("--iters")?.max(1),
            "--warmup" => o.warmup = num("--warmup")?,
            "--rounds" => o.rounds = num("--rounds")?.max(1),
            "--vocab-size" | "--vocab_size" => o.vocab_size = num("--vocab-size")?,
            "--real-data" | "--real_data" => o.real_data = true,
            _ => rest.push(a.clone()),
        }
    }
    Ok((o, rest))
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// Model shape: gpt2, gpt2-medium, gpt2-large or gpt2-xl (random weights).
    #[arg(long, default_value = "gpt2")]
    model: String,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 16)]
    prompt_len: usize,
    /// Tokens generated with the cache.
    #[arg(long, default_value_t = 256)]
    new_tokens: usize,
    /// Tokens generated without the cache (each a full forward; slow; 0 skips this run).
    #[arg(long, default_value_t = 32)]
    uncached_tokens: usize,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(clap::Args)]
struct TokenizeArgs {
    /// Text to encode.
    #[arg(long, default_value = "datasets/shakespeare/input.txt")]
    input: PathBuf,
    /// GPT-2 BPE files (tokenizer.json or a folder); without it, a character vocabulary.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Timed repetitions.
    #[arg(long, default_value_t = 3)]
    reps: usize,
}

#[derive(clap::Args)]
struct BatchesArgs {
    /// A prepared dataset folder (with train.bin and meta.json).
    #[arg(long, default_value = "datasets/shakespeare_char")]
    dataset: PathBuf,
    #[arg(long, default_value_t = 12)]
    batch_size: usize,
    #[arg(long, default_value_t = 1024)]
    block_size: usize,
    /// Batches to time.
    #[arg(long, default_value_t = 2000)]
    count: usize,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(clap::Args)]
struct MatmulArgs {
    /// Square sizes n (an n×n by n×n product is 2n³ FLOPs).
    #[arg(long, value_delimiter = ',', default_values_t = [1024, 2048])]
    sizes: Vec<i32>,
    /// Products MxNxK ((M×K)·(K×N), 2·M·N·K FLOPs) timed after the squares. The default
    /// is the largest products of a training step: the baby GPT's half-batch (384 rows:
    /// c_attn, c_fc and its gradient's shape, the head) and the shakespeare_char preset's
    /// half-batch (8192 rows); `--shapes none` skips them.
    #[arg(long, value_delimiter = ',', default_values_t = [
        "384x384x128".to_string(), "384x512x128".to_string(), "384x128x512".to_string(), "384x65x128".to_string(),
        "8192x1152x384".to_string(), "8192x1536x384".to_string(), "8192x384x1536".to_string(),
    ])]
    shapes: Vec<String>,
    /// Timed repetitions per size and implementation (after 2 warm-up runs).
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Shared library to call `cblas_sgemm` from directly, as the reference.
    #[arg(long, default_value = "libopenblas.so.0")]
    reference_lib: String,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(args: Args, jit: Option<mlx_gpt_model::jit::JitSetup>) -> anyhow::Result<()> {
    match args.what {
        What::Matmul(a) => matmul(a),
        What::Train(a) => train_step(a, jit),
        What::Generate(a) => generate_bench(a),
        What::Tokenize(a) => tokenize(a),
        What::Batches(a) => batches(a),
    }
}

/// `cblas_sgemm(order, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`.
type Sgemm =
    unsafe extern "C" fn(i32, i32, i32, i32, i32, i32, f32, *const f32, i32, *const f32, i32, f32, *mut f32, i32);
const CBLAS_ROW_MAJOR: i32 = 101;
const CBLAS_NO_TRANS: i32 = 111;

fn load_sgemm(lib: &str) -> anyhow::Result<Sgemm> {
    let name = CString::new(lib)?;
    // SAFETY: dlopen/dlsym with valid C strings; the handle is kept for the process's life.
    unsafe {
        let handle = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if handle.is_null() {
            bail!("--reference-lib {lib}: cannot load it (install OpenBLAS or name another BLAS)");
        }
        let sym = libc::dlsym(handle, c"cblas_sgemm".as_ptr());
        if sym.is_null() {
            bail!("--reference-lib {lib}: has no cblas_sgemm");
        }
        Ok(std::mem::transmute::<*mut libc::c_void, Sgemm>(sym))
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn matmul(args: MatmulArgs) -> anyhow::Result<()> {
    let device = args.device.select()?;
    if args.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let blas = runtime::blas();
    let sgemm = load_sgemm(&args.reference_lib)?;
    let ceiling = mlx_gpt_train::peak::peak_for(device, 0.0, mlx_gpt_train::peak::default_threads())?;
    println!(
        "f32 matmul, {} timed runs each, MLX on {device} with {} vs direct cblas_sgemm from {}",
        args.reps,
        blas.name(),
        args.reference_lib
    );
    println!("BLAS kernel: {}", mlx_gpt_model::blas_kernel::status().describe());
    println!("ceiling: {}", ceiling.describe());
    let mut shapes = Vec::new();
    for &n in &args.sizes {
        if n <= 0 {
            bail!("--sizes: {n} is not a positive size");
        }
        shapes.push((n, n, n));
    }
    for s in args.shapes.iter().filter(|s| s.as_str() != "none") {
        shapes.push(parse_shape(s)?);
    }
    println!(
        "{:>16} {:>12} {:>10} {:>12} {:>8} {:>10}",
        "M x N x K", "MLX GFLOP/s", "MLX best", "sgemm GFLOP/s", "ratio", "% ceiling"
    );
    let key = mlx_rs::random::key(0)?;
    for (m, n, k) in shapes {
        let a = mlx_rs::random::normal::<f32>(&[m, k][..], None, None, &key)?;
        let b = mlx_rs::random::normal::<f32>(&[k, n][..], None, None, &key)?;
        mlx_rs::transforms::eval([&a, &b])?;
        let (ha, hb) = (a.as_slice::<f32>().to_vec(), b.as_slice::<f32>().to_vec());
        let mut hc = vec![0f32; (m * n) as usize];
        let flops = 2.0 * m as f64 * n as f64 * k as f64;
        let run_mlx = || -> anyhow::Result<f64> {
            let t = Instant::now();
            let c: Array = a.matmul(&b)?;
            c.eval().context("MLX matmul")?;
            Ok(t.elapsed().as_secs_f64())
        };
        let mut run_sgemm = || {
            let t = Instant::now();
            // SAFETY: the buffers hold m×k, k×n and m×n floats, row-major.
            unsafe {
                sgemm(
                    CBLAS_ROW_MAJOR,
                    CBLAS_NO_TRANS,
                    CBLAS_NO_TRANS,
                    m,
                    n,
                    k,
                    1.0,
                    ha.as_ptr(),
                    k,
                    hb.as_ptr(),
                    n,
                    0.0,
                    hc.as_mut_ptr(),
                    n,
                )
            };
            t.elapsed().as_secs_f64()
        };
        for _ in 0..2 {
            run_mlx()?;
            run_sgemm();
        }
        // Interleaved, so a disturbance of the machine hits both sides alike.
        let (mut tm, mut ts) = (Vec::new(), Vec::new());
        for _ in 0..args.reps {
            tm.push(run_mlx()?);
            ts.push(run_sgemm());
        }
        let best = tm.iter().cloned().fold(f64::INFINITY, f64::min);
        let (gm, gs) = (flops / median(&mut tm) / 1e9, flops / median(&mut ts) / 1e9);
        println!(
            "{:>16} {gm:>12.1} {:>10.1} {gs:>12.1} {:>8.2} {:>9.1}%",
            format!("{m}x{n}x{k}"),
            flops / best / 1e9,
            gm / gs,
            gm * 1e9 / ceiling.flops * 100.0
        );
    }
    Ok(())
}

/// `MxNxK` as three positive sizes.
fn parse_shape(s: &str) -> anyhow::Result<(i32, i32, i32)> {
    let dims: Vec<i32> = s
        .split('x')
        .map(|d| d.trim().parse::<i32>())
        .collect::<Result<_, _>>()
        .ok()
        .filter(|d: &Vec<i32>| d.len() == 3 && d.iter().all(|&x| x > 0))
        .with_context(|| format!("--shapes: '{s}' is not MxNxK with three positive sizes (e.g. 384x512x128)"))?;
    Ok((dims[0], dims[1], dims[2]))
}

fn tokenize(args: TokenizeArgs) -> anyhow::Result<()> {
    use mlx_gpt_data::tokenizer::{CharTokenizer, Tokenizer};
    let text = std::fs::read_to_string(&args.input).with_context(|| format!("--input {}", args.input.display()))?;
    let tok = match &args.tokenizer {
        Some(p) => Tokenizer::gpt2_from(p)?,
        None => Tokenizer::Char(CharTokenizer::from_corpus(&text)),
    };
    let mb = text.len() as f64 / 1e6;
    let cores = rayon::current_num_threads();
    println!(
        "{:.2} MB of text, {} tokenizer, {} reps (best)",
        mb,
        if args.tokenizer.is_some() { "GPT-2 BPE" } else { "char" },
        args.reps
    );
    let time = |f: &dyn Fn() -> anyhow::Result<usize>| -> anyhow::Result<(f64, usize)> {
        let mut best = f64::INFINITY;
        let mut n = 0;
        for _ in 0..args.reps.max(1) {
            let t = Instant::now();
            n = f()?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok((best, n))
    };
    // One core: the same piecewise encoding, run on the calling thread.
    let (one, n1) = time(&|| {
        Ok(mlx_gpt_data::tokenizer::split_for_parallel(&text, 1 << 16)
            .iter()
            .map(|p| tok.encode(p).map(|v| v.len()))
            .sum::<Result<usize, _>>()?)
    })?;
    let (all, n2) = time(&|| Ok(tok.encode_parallel(&text)?.len()))?;
    anyhow::ensure!(n1 == n2, "serial and parallel encodings differ in length");
    println!("{:>10} {:>12} {:>12}", "cores", "MB/s", "Mtokens/s");
    println!("{:>10} {:>12.2} {:>12.2}", 1, mb / one, n1 as f64 / one / 1e6);
    println!("{:>10} {:>12.2} {:>12.2}", cores, mb / all, n2 as f64 / all / 1e6);
    Ok(())
}

fn batches(args: BatchesArgs) -> anyhow::Result<()> {
    use mlx_gpt_data::batches::{BatchSampler, Order};
    use mlx_gpt_data::token_file::TokenFile;
    args.device.select()?;
    let (file, _) = TokenFile::open(&args.dataset, "train")
        .with_context(|| format!("--dataset {} (prepare it with cargo xtask fetch-data)", args.dataset.display()))?;
    let mut s = BatchSampler::new(file, args.batch_size, args.block_size, Order::Random, 1337)?;
    let mut times = Vec::with_capacity(args.count);
    for _ in 0..args.count.max(1) {
        let t = Instant::now();
        let (x, y) = s.next_batch()?;
        mlx_rs::transforms::eval([&x, &y])?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let med = median(&mut times);
    println!(
        "batch B={} T={}: median {med:.1} µs, min {:.1} µs over {} batches (x and y as MLX int32 arrays)",
        args.batch_size, args.block_size, times[0], args.count
    );
    Ok(())
}

fn train_step(args: TrainBenchArgs, jit: Option<mlx_gpt_model::jit::JitSetup>) -> anyhow::Result<()> {
    use mlx_gpt_data::batches::{BatchSampler, Order};
    use mlx_gpt_data::token_file::TokenFile;
    use mlx_gpt_model::{Gpt, GptConfig};
    use mlx_gpt_train::optimizer::{AdamW, AdamWConfig};
    use mlx_gpt_train::train::{dataset_dir, dtype_of, select_device};
    let (args, rest) = split_bench_options(&args.args)?;
    let c = crate::train::config(&rest)?;
    let device = select_device(&c.device)?;
    let vocab = if args.real_data { dataset_dir(&c)?.1.vocab_size } else { args.vocab_size };
    let gc = GptConfig {
        block_size: c.block_size,
        vocab_size: vocab,
        n_layer: c.n_layer,
        n_head: c.n_head,
        n_embd: c.n_embd,
        dropout: c.dropout,
        bias: c.bias,
        ..GptConfig::baby(vocab)
    };
    let mut model = Gpt::new(gc, c.seed)?;
    model.set_dtype(dtype_of(&c.dtype))?;
    model.set_training(true);
    let mut opt = AdamW::new(AdamWConfig::from(&c));
    let shape = [c.batch_size as i32, c.block_size as i32];
    let mut sampler = if args.real_data {
        let (f, _) = TokenFile::open(&dataset_dir(&c)?.0, "train")?;
        Some(BatchSampler::new(f, c.batch_size, c.block_size, Order::Random, c.seed)?)
    } else {
        None
    };
    let mut draw = 0u64;
    let mut next = || -> Result<(Array, Array), mlx_rs::error::Exception> {
        if let Some(s) = sampler.as_mut() {
            return s.next_batch().map_err(|e| mlx_rs::error::Exception::custom(e.to_string()));
        }
        draw += 1;
        let key = mlx_rs::random::key(draw).expect("key");
        let t = mlx_rs::random::randint::<_, i32>(0, vocab as i32, &shape[..], &key).expect("randint");
        let x = t.clone();
        Ok((x, t))
    };
    let ceiling = mlx_gpt_train::peak::peak_for(device, 0.0, mlx_gpt_train::peak::default_threads())?;
    let peak = ceiling.flops;
    let tokens = c.tokens_per_iter() as f64;
    let flops = model.flops_per_token(c.block_size) * tokens;
    println!("bench train: {} layers, {} heads, {} wide, block {}, batch {} x {} accum, {} on {device}; {:.2}M parameters, {:.2} GFLOP/iter",
        c.n_layer, c.n_head, c.n_embd, c.block_size, c.batch_size, c.gradient_accumulation_steps, c.dtype, model.num_params(true) as f64 / 1e6, flops / 1e9);
    let mut engine = mlx_gpt_train::train::GradEngine::new(&c, &model, 1);
    println!(
        "step: {}, MLX JIT: {}",
        engine.describe(),
        match &jit {
            Some(j) => format!("native ({})", j.flags),
            None => "MLX's default flags".into(),
        }
    );
    // Each round times `iters` mlx-gpt steps, then (where PyTorch is found) as many
    // PyTorch steps: this machine's speed drifts over minutes, and alternating puts both
    // under the same conditions. The first round warms mlx-gpt up (its kernels are built
    // once), later rounds with one untimed step after the PyTorch process; each PyTorch
    // run is a fresh process and warms up itself.
    let torch = TorchReference::new(&c, vocab, args.iters, args.warmup);
    let (mut times, mut torch_times) = (Vec::new(), Vec::new());
    let mut rounds = Vec::new();
    let mut step = 0usize;
    for round in 0..args.rounds {
        let mut round_times = Vec::new();
        let warmup = if round == 0 { args.warmup } else { args.warmup.min(1) };
        for i in 0..warmup + args.iters {
            let t = Instant::now();
            mlx_gpt_train::step::train_step(
                &mut model,
                &mut opt,
                &mut next,
                c.gradient_accumulation_steps,
                1e-4,
                1.0,
                c.seed,
                step,
                engine.path(),
                None,
            )?;
            step += 1;
            if i >= warmup {
                round_times.push(t.elapsed().as_secs_f64());
            }
        }
        let torch_round = torch.as_ref().ok().map(TorchReference::run);
        let mlx_med = median(&mut round_times.clone());
        if let Some(Ok(r)) = &torch_round {
            torch_times.extend(r.times_ms.iter().copied());
        }
        rounds.push((mlx_med, torch_round));
        times.extend(round_times);
    }
    let med = median(&mut times);
    let (min, max) = (times[0], times[times.len() - 1]);
    println!("{:>10} {:>10} {:>10} {:>12} {:>8}", "median ms", "min ms", "max ms", "tokens/s", "MFU");
    println!(
        "{:>10.2} {:>10.2} {:>10.2} {:>12.0} {:>7.2}%",
        med * 1e3,
        min * 1e3,
        max * 1e3,
        tokens / med,
        flops / med / peak * 100.0
    );
    println!("(MFU against the ceiling: {})", ceiling.describe());
    match &torch {
        Err(why) => println!("PyTorch reference: not run ({why})"),
        Ok(_) => {
            if args.rounds > 1 {
                for (i, (m, t)) in rounds.iter().enumerate() {
                    match t {
                        Some(Ok(r)) => println!(
                            "round {}: mlx-gpt {:.2} ms, PyTorch {:.2} ms, speed-up {:.2}x",
                            i + 1,
                            m * 1e3,
                            r.median_ms,
                            r.median_ms / (m * 1e3)
                        ),
                        Some(Err(why)) => {
                            println!("round {}: mlx-gpt {:.2} ms, PyTorch failed ({why})", i + 1, m * 1e3)
                        }
                        None => {}
                    }
                }
            }
            let first_ok = rounds.iter().find_map(|r| r.1.as_ref().and_then(|t| t.as_ref().ok()));
            match first_ok {
                Some(first) => {
                    let t = median(&mut torch_times);
                    let (tmin, tmax) = (torch_times[0], torch_times[torch_times.len() - 1]);
                    println!(
                        "PyTorch {} ({} threads), same model and step: median {t:.2} ms, min {tmin:.2}, max {tmax:.2}",
                        first.version, first.threads
                    );
                    println!("speed-up over PyTorch: {:.2}x", t / (med * 1e3));
                }
                None => {
                    let why = rounds
                        .iter()
                        .find_map(|r| r.1.as_ref().and_then(|t| t.as_ref().err()))
                        .map_or("no run", String::as_str);
                    println!("PyTorch reference: failed ({why})");
                }
            }
        }
    }
    Ok(())
}

/// One run of the PyTorch reference: its version, threads and step times (sorted, ms).
struct TorchRun {
    version: String,
    threads: serde_json::Value,
    median_ms: f64,
    times_ms: Vec<f64>,
}

/// The PyTorch reference (scripts/bench_torch.py) for one configuration: the same model
/// and step, timed in a Python with torch (`MLX_GPT_TORCH_PYTHON`, else `python3`).
struct TorchReference {
    args: Vec<String>,
}

impl TorchReference {
    /// `Err` says why there is no reference (accumulation, or no Python with torch).
    fn new(c: &mlx_gpt_train::TrainConfig, vocab: usize, iters: usize, warmup: usize) -> Result<Self, String> {
        if c.gradient_accumulation_steps != 1 {
            return Err("skipped: it needs gradient_accumulation_steps = 1".into());
        }
        let mut args: Vec<String> = [
            ("--n-layer", c.n_layer.to_string()),
            ("--n-head", c.n_head.to_string()),
            ("--n-embd", c.n_embd.to_string()),
            ("--block-size", c.block_size.to_string()),
            ("--batch-size", c.batch_size.to_string()),
            ("--vocab-size", vocab.to_string()),
            ("--iters", iters.to_string()),
            ("--warmup", warmup.to_string()),
            ("--dropout", c.dropout.to_string()),
        ]
        .into_iter()
        .flat_map(|(k, v)| [k.to_string(), v])
        .collect();
        if c.bias {
            args.push("--bias".into());
        }
        torch_python().map(|_| TorchReference { args })
    }

    fn run(&self) -> Result<TorchRun, String> {
        let v = run_torch_script(&self.args)?;
        let mut times_ms: Vec<f64> =
            v["times_ms"].as_array().map(|a| a.iter().filter_map(|x| x.as_f64()).collect()).unwrap_or_default();
        if times_ms.is_empty() {
            return Err("scripts/bench_torch.py printed no step times".into());
        }
        times_ms.sort_by(f64::total_cmp);
        Ok(TorchRun {
            version: v["torch"].as_str().unwrap_or("?").to_string(),
            threads: v["threads"].clone(),
            median_ms: v["median_ms"].as_f64().unwrap_or(f64::NAN),
            times_ms,
        })
    }
}

/// The Python that runs the PyTorch reference: `MLX_GPT_TORCH_PYTHON`, else `python3`.
fn torch_python_name() -> String {
    std::env::var("MLX_GPT_TORCH_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn torch_missing(python: &str) -> String {
    format!("{python} with torch not found; set MLX_GPT_TORCH_PYTHON")
}

/// The Python that runs the PyTorch reference, if it can import torch.
fn torch_python() -> Result<String, String> {
    let python = torch_python_name();
    let ok = std::process::Command::new(&python)
        .args(["-c", "import torch"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(python)
    } else {
        Err(torch_missing(&python))
    }
}

/// Run `scripts/bench_torch.py` with `args` under the reference's Python and parse the
/// JSON line it prints last. The error says why no figure came back.
fn run_torch_script(args: &[String]) -> Result<serde_json::Value, String> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/bench_torch.py");
    if !script.is_file() {
        return Err(format!("{} is not here", script.display()));
    }
    let python = torch_python_name();
    let out =
        std::process::Command::new(&python).arg(&script).args(args).output().map_err(|_| torch_missing(&python))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No module named 'torch'") {
            return Err(torch_missing(&python));
        }
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message");
        return Err(format!("{} failed under {python}: {last}", script.display()));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| format!("{} printed no result line under {python}", script.display()))
}

fn generate_bench(args: GenerateArgs) -> anyhow::Result<()> {
    use mlx_gpt_model::generate::{generate, SamplingParams};
    use mlx_gpt_model::{Gpt, GptConfig};
    let device = args.device.select()?;
    let config = GptConfig::gpt2_preset(&args.model)?;
    let mut model = Gpt::new(config.clone(), 0)?;
    let prompt: Vec<u32> = (0..args.prompt_len as u32).map(|i| (i * 7919) % config.vocab_size as u32).collect();
    println!(
        "generate: {} shape ({:.0}M parameters, random weights) on {device}, prompt {} tokens",
        args.model,
        model.num_params(false) as f64 / 1e6,
        prompt.len()
    );
    let mut rate = |n: usize, cache: bool| -> anyhow::Result<f64> {
        let params = SamplingParams { temperature: 1.0, top_k: Some(200), use_kv_cache: cache, ..Default::default() };
        generate(&mut model, &prompt, 2, &params, |_| true)?; // warm-up
        let t = Instant::now();
        let out = generate(&mut model, &prompt, n, &params, |_| true)?;
        Ok(out.len() as f64 / t.elapsed().as_secs_f64())
    };
    let host = mlx_gpt_model::matvec::enabled();
    let before = mlx_gpt_model::matvec::calls();
    let cached = rate(args.new_tokens, true)?;
    let used_sgemv = mlx_gpt_model::matvec::calls() > before;
    // The same with MLX's matmul for the one-row products, for comparison.
    mlx_gpt_model::matvec::set_enabled(false);
    let cached_mlx = if used_sgemv { Some(rate(args.new_tokens, true)) } else { None };
    mlx_gpt_model::matvec::set_enabled(host);
    let cached_mlx = cached_mlx.transpose()?;
    let uncached = if args.uncached_tokens > 0 { Some(rate(args.uncached_tokens, false)?) } else { None };
    println!("{:>40} {:>10}", "", "tokens/s");
    let label = match (host, used_sgemv) {
        (true, true) => "KV cache (sgemv products)",
        (true, false) => "KV cache (MLX matmul: no sgemv here)",
        _ => "KV cache (MLX_GPT_HOST_MATVEC=0)",
    };
    println!("{:>40} {:>10.2}", format!("{label}, {} tokens", args.new_tokens), cached);
    if let Some(r) = cached_mlx {
        println!("{:>40} {:>10.2}", format!("KV cache (MLX matmul), {} tokens", args.new_tokens), r);
    }
    if let Some(uncached) = uncached {
        println!("{:>40} {:>10.2}", format!("no cache, {} tokens", args.uncached_tokens), uncached);
        println!("cache speed-up: {:.1}x", cached / uncached);
    }
    let script_args: Vec<String> = [
        ("--n-layer", config.n_layer),
        ("--n-head", config.n_head),
        ("--n-embd", config.n_embd),
        ("--block-size", config.block_size),
        ("--vocab-size", config.vocab_size),
        ("--prompt-len", args.prompt_len),
        ("--new-tokens", args.new_tokens),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_string(), v.to_string()])
    .chain(["--generate".to_string()])
    .collect();
    let parsed = run_torch_script(&script_args)
        .and_then(|v| v["tokens_per_s"].as_f64().ok_or_else(|| "the script printed no tokens_per_s".to_string()));
    match parsed {
        Ok(t) => println!("PyTorch, nanoGPT-style generate (full forward per token), {} tokens: {t:.2} tokens/s; KV cache is {:.1}x that",
            args.new_tokens, cached / t),
        Err(why) => println!("PyTorch reference: not run ({why})"),
    }
    Ok(())
}
