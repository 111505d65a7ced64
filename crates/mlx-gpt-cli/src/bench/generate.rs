//! `mlx-gpt bench generate`: tokens/s with and without the KV cache.

use super::torch::{run_python_script, run_torch_script};
use crate::DeviceArgs;
use std::time::Instant;

#[derive(clap::Args)]
pub struct GenerateArgs {
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
    /// Prompts decoded at once in the batched run (0 or 1 skips it).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Rounds of the greedy comparison with transformers, alternating the two (the
    /// medians are reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Skip the bfloat16-weights run.
    #[arg(long)]
    no_bf16: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn generate_bench(args: GenerateArgs) -> anyhow::Result<()> {
    use mlx_gpt_model::generate::{generate, SamplingParams};
    use mlx_gpt_model::{Gpt, GptConfig, Kernels};
    let (device, kernels) = args.device.select()?;
    let config = GptConfig::gpt2_preset(&args.model)?;
    let mut model = Gpt::new(config.clone(), 0)?;
    model.kernels = kernels;
    let prompt: Vec<u32> = (0..args.prompt_len as u32).map(|i| (i * 7919) % config.vocab_size as u32).collect();
    println!(
        "generate: {} shape ({:.0}M parameters, random weights) on {device}, prompt {} tokens",
        args.model,
        model.num_params(false) as f64 / 1e6,
        prompt.len()
    );
    let rate = |model: &mut Gpt, n: usize, cache: bool| -> anyhow::Result<f64> {
        let params = SamplingParams { temperature: 1.0, top_k: Some(200), use_kv_cache: cache, ..Default::default() };
        generate(model, &prompt, 2, &params, |_| true)?; // warm-up
        let t = Instant::now();
        let out = generate(model, &prompt, n, &params, |_| true)?;
        Ok(out.len() as f64 / t.elapsed().as_secs_f64())
    };
    let before = mlx_gpt_model::decode_product_calls();
    let cached = rate(&mut model, args.new_tokens, true)?;
    let used_product = mlx_gpt_model::decode_product_calls() > before;
    // The same with plain MLX ops (MLX's matmul for the one-row products), for comparison.
    let cached_mlx = if kernels.set() != mlx_gpt_model::KernelSet::Mlx {
        model.kernels = Kernels::mlx();
        let r = rate(&mut model, args.new_tokens, true)?;
        model.kernels = kernels;
        Some(r)
    } else {
        None
    };
    let uncached = if args.uncached_tokens > 0 { Some(rate(&mut model, args.uncached_tokens, false)?) } else { None };
    println!("{:>40} {:>10}", "", "tokens/s");
    let label = if used_product {
        format!("KV cache ({} kernels, decoding products)", kernels.name())
    } else {
        format!("KV cache ({} kernels)", kernels.name())
    };
    println!("{:>40} {:>10.2}", format!("{label}, {} tokens", args.new_tokens), cached);
    if let Some(r) = cached_mlx {
        println!("{:>40} {:>10.2}", format!("KV cache (mlx kernels), {} tokens", args.new_tokens), r);
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
    greedy_against_transformers(&args, &mut model, &prompt)
}

/// Greedy cached generation (the same `new_tokens` for every row, as transformers is
/// asked for) of mlx-gpt and of Hugging Face transformers' `generate` (use_cache) on the
/// same weights, saved for it as safetensors, in alternating rounds: batch 1 in float32,
/// batch 1 with bfloat16 matrices (mlx-gpt only: the opt-in for decoding), and a batch of
/// `batch` prompts. Prints the medians, their ratios, the share of the bandwidth floor,
/// and how many leading tokens agree (float32 sums in another order can flip a near tie
/// between logits; bfloat16 weights move the logits by more).
fn greedy_against_transformers(
    args: &GenerateArgs,
    model: &mut mlx_gpt_model::Gpt,
    prompt: &[u32],
) -> anyhow::Result<()> {
    use mlx_rs::Dtype;
    let n = args.new_tokens;
    let vocab = model.config.vocab_size as u32;
    let one = vec![prompt.to_vec()];
    // Distinct prompts of the same length.
    let batch: Vec<Vec<u32>> =
        (0..args.batch.max(1) as u32).map(|r| prompt.iter().map(|&t| (t + 1009 * r) % vocab).collect()).collect();
    let dir = std::env::temp_dir().join(format!("mlx-gpt-bench-generate-{}", std::process::id()));
    mlx_gpt_model::hf::save_pretrained(model, &dir)?;
    let mut half = model.clone();
    half.set_matrices_dtype(Dtype::Bfloat16)?;

    // The floor: decoding a token reads every matrix once (the position table only a
    // row), so tokens/s cannot exceed the read bandwidth over those bytes.
    let weight_bytes = |m: &mlx_gpt_model::Gpt| -> usize {
        use mlx_rs::module::ModuleParameters;
        let all: usize = m.parameters().flatten().values().map(|a| a.nbytes()).sum();
        all - m.wpe.as_ref().map_or(0, |wpe| wpe.weight.nbytes())
    };
    // This machine's read bandwidth moves by 1.5x within seconds (other tenants of the
    // host), so each batch-1 round is measured against the bandwidth read while it runs:
    // between its segments of PROBE_EVERY tokens (the reads themselves are not timed).
    // The share of the floor is the median of the rounds' shares.
    let threads = mlx_gpt_train::peak::default_threads();
    let probe = ReadProbe::new(threads);
    let (bytes32, bytes16) = (weight_bytes(model) as f64, weight_bytes(&half) as f64);
    println!(
        "weights read per token {:.0} MB (float32), {:.0} MB (bfloat16 matrices); read bandwidth measured on \
         {threads} threads before each batch-1 round and after every {PROBE_EVERY} of its tokens",
        bytes32 / 1e6,
        bytes16 / 1e6
    );

    let mut runs: Vec<Run> = vec![Run::new("batch 1, float32", 1, true)];
    if !args.no_bf16 {
        runs.push(Run::new("batch 1, bfloat16 matrices", 1, false));
    }
    if args.batch > 1 {
        runs.push(Run::new(&format!("batch {}, float32", args.batch), args.batch, true));
    }
    let mut hf_missing = None;
    for _ in 0..args.rounds.max(1) {
        for run in runs.iter_mut() {
            let prompts = if run.batch == 1 { &one } else { &batch };
            let m = if run.label.contains("bfloat16") { &mut half } else { &mut *model };
            let ours = ours_greedy(m, prompts, n, (run.batch == 1).then_some(&probe))?;
            run.bandwidth.extend(ours.bandwidth);
            run.ours.push(ours.rate);
            run.our_tokens.get_or_insert(ours.tokens);
            if run.reference && hf_missing.is_none() {
                match transformers_greedy(&dir, prompts, n) {
                    Ok(hf) => {
                        run.theirs.push(hf.rate);
                        run.versions.get_or_insert(hf.versions);
                        run.their_tokens.get_or_insert(hf.tokens);
                    }
                    Err(why) => hf_missing = Some(why),
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let f32_tokens = runs[0].our_tokens.clone().unwrap_or_default();
    let hf1 = runs[0].theirs.clone();
    println!(
        "greedy, KV cache ({} kernels), {n} new tokens per prompt, {} rounds:",
        model.kernels.name(),
        args.rounds.max(1)
    );
    println!("{:>30} {:>12} {:>12} {:>9} {:>9}", "", "mlx-gpt tok/s", "transformers", "ratio", "of floor");
    // A round's floor: tokens/s at its read bandwidth, for the bytes its weights take.
    let floors = |run: &Run| -> Vec<f64> {
        let bytes = if run.reference { bytes32 } else { bytes16 };
        run.bandwidth.iter().map(|b| b / bytes).collect()
    };
    for run in &runs {
        let ours = super::median(&mut run.ours.clone());
        // bfloat16 decoding is compared with transformers' float32 batch 1, what a user
        // of transformers runs on a CPU.
        let theirs = if run.reference { run.theirs.clone() } else { hf1.clone() };
        let (hf, ratio) = if theirs.is_empty() {
            ("-".to_string(), "-".to_string())
        } else {
            let t = super::median(&mut theirs.clone());
            (format!("{t:.2}"), format!("{:.2}x", ours / t))
        };
        let floor = if run.bandwidth.is_empty() {
            "-".to_string()
        } else {
            let mut shares: Vec<f64> = run.ours.iter().zip(floors(run)).map(|(o, f)| o / f).collect();
            format!("{:.0}%", super::median(&mut shares) * 100.0)
        };
        println!("{:>30} {ours:>12.2} {hf:>12} {ratio:>9} {floor:>9}", run.label);
    }
    let list = |v: &[f64]| v.iter().map(|r| format!("{r:.1}")).collect::<Vec<_>>().join(", ");
    for run in &runs {
        let theirs =
            if run.theirs.is_empty() { String::new() } else { format!("; transformers {}", list(&run.theirs)) };
        println!("{}, tokens/s by round: mlx-gpt {}{theirs}", run.label, list(&run.ours));
        if !run.bandwidth.is_empty() {
            let gb: Vec<f64> = run.bandwidth.iter().map(|b| b / 1e9).collect();
            println!("  read bandwidth by round (GB/s) {}; floor (tokens/s) {}", list(&gb), list(&floors(run)));
        }
    }
    for run in &runs {
        let ours = run.our_tokens.as_deref().unwrap_or_default();
        let (other, what) = if run.reference {
            (run.their_tokens.as_deref().unwrap_or_default(), "transformers")
        } else {
            (&f32_tokens[..], "mlx-gpt in float32")
        };
        if other.is_empty() {
            continue;
        }
        let same: usize =
            ours.iter().zip(other).map(|(a, b)| a.iter().zip(b).take_while(|(x, y)| x == y).count()).sum();
        let total: usize = ours.iter().map(Vec::len).sum();
        println!("{}: the same leading tokens as {what}: {same} of {total}", run.label);
    }
    match (&hf_missing, runs[0].versions.as_ref()) {
        (Some(why), _) => println!("transformers reference: not run ({why})"),
        (None, Some(v)) => println!("reference: {v}"),
        _ => {}
    }
    Ok(())
}

/// One configuration of the comparison and what each round measured.
struct Run {
    label: String,
    batch: usize,
    /// Whether transformers runs the same configuration.
    reference: bool,
    ours: Vec<f64>,
    theirs: Vec<f64>,
    /// Batch 1: the read bandwidth during each round (bytes/s; `Ours::bandwidth`).
    bandwidth: Vec<f64>,
    our_tokens: Option<Vec<Vec<u32>>>,
    their_tokens: Option<Vec<Vec<u32>>>,
    versions: Option<String>,
}

impl Run {
    fn new(label: &str, batch: usize, reference: bool) -> Self {
        Run {
            label: label.to_string(),
            batch,
            reference,
            ours: Vec::new(),
            theirs: Vec::new(),
            bandwidth: Vec::new(),
            our_tokens: None,
            their_tokens: None,
            versions: None,
        }
    }
}

/// Tokens between two reads of the bandwidth in a batch-1 round: 256 tokens are 2-3 s
/// here, over which the bandwidth can move by a third; a read is ~25 ms.
const PROBE_EVERY: usize = 32;

/// What one round of mlx-gpt's generation measured.
struct Ours {
    /// New tokens per second over all rows.
    rate: f64,
    tokens: Vec<Vec<u32>>,
    /// With a probe: the read bandwidth the round had (bytes/s), each segment of tokens
    /// given the mean of the reads before and after it, weighted as the floor weighs it
    /// (the floor's time for the round is Σ tokens_i · bytes / bandwidth_i, so this is
    /// the tokens-weighted harmonic mean).
    bandwidth: Option<f64>,
}

/// mlx-gpt's greedy cached generation of `prompts` (one batch); with a probe (one prompt),
/// the bandwidth read before the first token and after every [`PROBE_EVERY`] tokens, the
/// clock stopped while it reads.
fn ours_greedy(
    model: &mut mlx_gpt_model::Gpt,
    prompts: &[Vec<u32>],
    n: usize,
    probe: Option<&ReadProbe>,
) -> anyhow::Result<Ours> {
    use mlx_gpt_model::generate::{generate, generate_batch, SamplingParams};
    let greedy = SamplingParams { temperature: 0.0, ..Default::default() };
    let rows: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    generate_batch(model, &rows, 2, &greedy)?; // warm-up
    let Some(probe) = probe.filter(|_| rows.len() == 1) else {
        let t = Instant::now();
        let out = generate_batch(model, &rows, n, &greedy)?;
        let rate = out.iter().map(Vec::len).sum::<usize>() as f64 / t.elapsed().as_secs_f64();
        return Ok(Ours { rate, tokens: out, bandwidth: None });
    };
    // (tokens, seconds) of each segment, and the reads around them.
    let mut segments: Vec<(usize, f64)> = Vec::new();
    let mut reads = vec![probe.measure()];
    let (mut since, mut t) = (0usize, Instant::now());
    let mut end_segment = |segments: &mut Vec<(usize, f64)>, since: &mut usize, t: &mut Instant| {
        segments.push((*since, t.elapsed().as_secs_f64()));
        reads.push(probe.measure());
        *since = 0;
        *t = Instant::now();
    };
    let out = generate(model, rows[0], n, &greedy, |_| {
        since += 1;
        if since == PROBE_EVERY {
            end_segment(&mut segments, &mut since, &mut t);
        }
        true
    })?;
    if since > 0 {
        end_segment(&mut segments, &mut since, &mut t);
    }
    let secs: f64 = segments.iter().map(|s| s.1).sum();
    // Σ tokens_i / bandwidth_i: the floor's seconds per byte read per token.
    let per_bandwidth: f64 = segments.iter().zip(reads.windows(2)).map(|(s, r)| s.0 as f64 * 2.0 / (r[0] + r[1])).sum();
    Ok(Ours { rate: out.len() as f64 / secs, bandwidth: Some(out.len() as f64 / per_bandwidth), tokens: vec![out] })
}

/// What one run of scripts/bench_hf_generate.py reported.
struct HfRun {
    rate: f64,
    tokens: Vec<Vec<u32>>,
    versions: String,
}

/// transformers' greedy `generate(use_cache=True)` of `prompts` (one batch) on the model
/// saved in `dir`, in a fresh Python process (scripts/bench_hf_generate.py).
fn transformers_greedy(dir: &std::path::Path, prompts: &[Vec<u32>], n: usize) -> Result<HfRun, String> {
    let prompt_arg = prompts
        .iter()
        .map(|p| p.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
        .collect::<Vec<_>>()
        .join(";");
    let args: Vec<String> =
        ["--model-dir", &dir.to_string_lossy(), "--prompts", &prompt_arg, "--new-tokens", &n.to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let v = run_python_script("bench_hf_generate.py", &args)?;
    let tokens: Vec<Vec<u32>> = v["tokens"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| r.as_array().map(|t| t.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect()))
                .map(Option::unwrap_or_default)
                .collect()
        })
        .unwrap_or_default();
    let rate = v["tokens_per_s"].as_f64().ok_or("scripts/bench_hf_generate.py printed no tokens_per_s")?;
    Ok(HfRun {
        rate,
        tokens,
        versions: format!(
            "transformers {} (torch {}, {} threads), generate(use_cache=True), greedy",
            v["transformers"].as_str().unwrap_or("?"),
            v["torch"].as_str().unwrap_or("?"),
            v["threads"]
        ),
    })
}

/// Memory read bandwidth on `threads` threads, measured over one buffer far larger than
/// the caches (512 MiB) kept for the whole benchmark, on the 2 MiB pages decoding's
/// weights lie on where the system has them (`Gpt::lay_out_matrices`): the bandwidth the
/// machine gives a streaming read at its best. (The same read, alternating, measured
/// 39.6–62.5 GB/s on 4 KiB pages against 50.1–71.4 on 2 MiB pages; AMD EPYC Zen 5.)
pub(super) struct ReadProbe {
    buffer: HugePageBuffer,
    threads: usize,
}

impl ReadProbe {
    pub(super) fn new(threads: usize) -> Self {
        const BYTES: usize = 512 << 20;
        let mut buffer = HugePageBuffer::new(BYTES / 8);
        buffer.iter_mut().enumerate().for_each(|(i, x)| *x = i as u64);
        ReadProbe { buffer, threads: threads.max(1) }
    }

    /// Bytes/s: the best of three passes, each thread summing its own part. Each pass asks
    /// for the lines 4 KiB ahead, as the decoding kernels do: the hardware prefetchers
    /// alone keep fewer reads in flight, and a floor measured without the prefetches was
    /// beaten by the decoding itself (122 % of it on an AMD EPYC family 26).
    pub(super) fn measure(&self) -> f64 {
        let part = self.buffer.len().div_ceil(self.threads);
        let mut best = 0.0f64;
        for _ in 0..3 {
            let t = Instant::now();
            let total = std::thread::scope(|s| {
                let handles: Vec<_> =
                    self.buffer.chunks(part).map(|chunk| s.spawn(move || sum_prefetched(chunk))).collect();
                handles.into_iter().fold(0u64, |a, h| a.wrapping_add(h.join().expect("bandwidth thread")))
            });
            std::hint::black_box(total);
            best = best.max((self.buffer.len() * 8) as f64 / t.elapsed().as_secs_f64());
        }
        best
    }
}

/// `len` zeroed u64 in an anonymous mapping that asks for 2 MiB pages (Linux's madvise)
/// before anything touches it; ordinary pages where it cannot.
struct HugePageBuffer {
    map: *mut libc::c_void,
    map_bytes: usize,
    start: *mut u64,
    len: usize,
}

// SAFETY: plain memory owned by this value; shared reads only through `Deref`.
unsafe impl Sync for HugePageBuffer {}
unsafe impl Send for HugePageBuffer {}

impl HugePageBuffer {
    fn new(len: usize) -> Self {
        const HUGE: usize = 2 << 20;
        let map_bytes = len * 8 + HUGE;
        // SAFETY: a fresh private anonymous mapping (zeroed by the kernel), used from its
        // first 2 MiB boundary on, for len * 8 bytes that lie inside it.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                map_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert!(map != libc::MAP_FAILED, "could not map {map_bytes} bytes for the bandwidth probe");
            let start = (map as usize).div_ceil(HUGE) * HUGE;
            // A hint: without it (or where it fails) the memory is on ordinary pages.
            #[cfg(target_os = "linux")]
            libc::madvise(start as *mut libc::c_void, len * 8, libc::MADV_HUGEPAGE);
            HugePageBuffer { map, map_bytes, start: start as *mut u64, len }
        }
    }
}

impl std::ops::Deref for HugePageBuffer {
    type Target = [u64];
    fn deref(&self) -> &[u64] {
        // SAFETY: `len` u64 inside the mapping, alive as long as `self`.
        unsafe { std::slice::from_raw_parts(self.start, self.len) }
    }
}

impl std::ops::DerefMut for HugePageBuffer {
    fn deref_mut(&mut self) -> &mut [u64] {
        // SAFETY: as for `deref`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.start, self.len) }
    }
}

impl Drop for HugePageBuffer {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer borrowed.
        unsafe { libc::munmap(self.map, self.map_bytes) };
    }
}

/// The wrapping sum of `v`, a 64-byte line at a time into eight independent sums (the
/// loop vectorises and keeps several loads in flight), asking for the line 4 KiB ahead.
fn sum_prefetched(v: &[u64]) -> u64 {
    const AHEAD: usize = 4096 / 8;
    let mut acc = [0u64; 8];
    for (i, line) in v.chunks_exact(8).enumerate() {
        #[cfg(target_arch = "x86_64")]
        if let Some(ahead) = v.get(i * 8 + AHEAD) {
            // SAFETY: a prefetch is a hint; the address is inside `v`.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>((ahead as *const u64).cast())
            };
        }
        for (a, &x) in acc.iter_mut().zip(line) {
            *a = a.wrapping_add(x);
        }
    }
    acc.iter().fold(0u64, |a, &b| a.wrapping_add(b))
}
