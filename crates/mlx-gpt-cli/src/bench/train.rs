//! `mlx-gpt bench train`: a preset's training step, alternating with PyTorch's; for a modern
//! GPT, alternating with its GPT-2 twin (same shape, batch and optimizer) instead.

use super::torch::TorchReference;
use super::{median, quantile};
use anyhow::Context;
use mlx_rs::Array;
use std::time::Instant;

#[derive(clap::Args)]
#[command(after_help = "ARGS: [CONFIG] [--key value]... as for `mlx-gpt train`, plus the benchmark's own \
--iters N (timed steps, default 30), --warmup N (untimed steps first, default 5: MLX compiles kernels on \
first use), --real-data (batches from the prepared dataset instead of random tokens) and --vocab-size N \
(vocabulary of the synthetic data, default 65). Example: `mlx-gpt bench train baby_shakespeare_char --iters 50`.")]
pub struct TrainBenchArgs {
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

pub fn train_step(args: TrainBenchArgs, jit: Option<mlx_gpt_runtime::jit::JitSetup>) -> anyhow::Result<()> {
    use mlx_gpt_data::batches::{BatchSampler, Order};
    use mlx_gpt_data::token_file::TokenFile;
    use mlx_gpt_model::Gpt;
    use mlx_gpt_train::optimizer::{AdamW, AdamWConfig};
    use mlx_gpt_train::train::{dataset_dir, kernels_for, select_device, stream_count, GradEngine};
    let (args, rest) = split_bench_options(&args.args)?;
    let c = crate::train::config(&rest)?;
    let device = select_device(c.device)?;
    let vocab = if args.real_data { dataset_dir(&c)?.1.vocab_size } else { args.vocab_size };
    let gc = c.model_config(vocab);
    let mut model = Gpt::new(gc, c.seed)?;
    model.set_dtype(c.dtype.to_mlx())?;
    model.set_training(true);
    let streams = stream_count(&c, device, 1);
    model.kernels = kernels_for(&c, device, streams)?;
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
    let mut engine = GradEngine::new(&c, &model, streams, 1);
    println!(
        "step: {}; kernels: {}; MLX JIT: {}",
        engine.describe(),
        model.kernels.describe(),
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
    // A modern GPT's reference: the GPT-2 of the same shape, batch and optimizer, in this
    // process with the same kernels (issue: the modern step may cost at most 1.2× per token).
    let mut twin = if c.arch == mlx_gpt_model::config::Arch::Modern {
        let tc = mlx_gpt_train::TrainConfig { arch: mlx_gpt_model::config::Arch::Gpt2, ..c.clone() };
        let mut m = Gpt::new(tc.model_config(vocab), c.seed)?;
        m.set_dtype(c.dtype.to_mlx())?;
        m.set_training(true);
        m.kernels = model.kernels;
        let o = AdamW::new(AdamWConfig::from(&tc));
        let e = GradEngine::new(&tc, &m, streams, 1);
        Some((m, o, e))
    } else {
        None
    };
    let (mut times, mut torch_times, mut twin_times) = (Vec::new(), Vec::new(), Vec::new());
    let mut rounds = Vec::new();
    let mut step = 0usize;
    let mut time_steps = |model: &mut Gpt, opt: &mut AdamW, engine: &mut GradEngine, warmup: usize| {
        let mut round_times = Vec::new();
        for i in 0..warmup + args.iters {
            let t = Instant::now();
            mlx_gpt_train::step::train_step(
                model,
                opt,
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
        anyhow::Ok(round_times)
    };
    for round in 0..args.rounds {
        let warmup = if round == 0 { args.warmup } else { args.warmup.min(1) };
        let round_times = time_steps(&mut model, &mut opt, &mut engine, warmup)?;
        if let Some((m, o, e)) = twin.as_mut() {
            twin_times.extend(time_steps(m, o, e, warmup)?);
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
    let (min, max, p90) = (times[0], times[times.len() - 1], quantile(&times, 0.9));
    println!("{:>10} {:>10} {:>10} {:>10} {:>12} {:>8}", "median ms", "min ms", "p90 ms", "max ms", "tokens/s", "MFU");
    println!(
        "{:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>12.0} {:>7.2}%",
        med * 1e3,
        min * 1e3,
        p90 * 1e3,
        max * 1e3,
        tokens / med,
        flops / med / peak * 100.0
    );
    println!("spread of the {} timed steps: p90 / median {:.2}", times.len(), p90 / med);
    println!("(MFU against the ceiling: {})", ceiling.describe());
    if !twin_times.is_empty() {
        let t = median(&mut twin_times);
        println!(
            "its GPT-2 twin (arch gpt2, the same shape, batch, optimizer and kernels), alternating: median {:.2} ms",
            t * 1e3
        );
        println!("modern step / GPT-2 step, per token: {:.2}x", med / t);
    }
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
                    let t = median(&mut torch_times); // (sorts them)
                    let (tmin, tmax) = (torch_times[0], torch_times[torch_times.len() - 1]);
                    let tp90 = quantile(&torch_times, 0.9);
                    println!(
                        "PyTorch {} ({} threads), same model and step: median {t:.2} ms, min {tmin:.2}, max {tmax:.2}",
                        first.version, first.threads
                    );
                    // The reference's own spread, measured alongside: how quiet the
                    // machine was during the run.
                    println!("spread of PyTorch's {} timed steps: p90 / median {:.2}", torch_times.len(), tp90 / t);
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
