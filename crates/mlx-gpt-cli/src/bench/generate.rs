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
    let before = mlx_gpt_model::sgemv_calls();
    let cached = rate(&mut model, args.new_tokens, true)?;
    let used_sgemv = mlx_gpt_model::sgemv_calls() > before;
    // The same with plain MLX ops (MLX's matmul for the one-row products), for comparison.
    let cached_mlx = if kernels != Kernels::mlx() {
        model.kernels = Kernels::mlx();
        let r = rate(&mut model, args.new_tokens, true)?;
        model.kernels = kernels;
        Some(r)
    } else {
        None
    };
    let uncached = if args.uncached_tokens > 0 { Some(rate(&mut model, args.uncached_tokens, false)?) } else { None };
    println!("{:>40} {:>10}", "", "tokens/s");
    let label = if used_sgemv {
        format!("KV cache ({} kernels, sgemv products)", kernels.name())
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
    transformers_reference(&mut model, &prompt, args.new_tokens)
}

/// Greedy cached generation against Hugging Face transformers' `generate` (use_cache) on
/// the same weights, saved for it as safetensors: tokens/s of both, and whether they chose
/// the same tokens (float32 sums in another order can flip a near tie between logits).
fn transformers_reference(model: &mut mlx_gpt_model::Gpt, prompt: &[u32], n: usize) -> anyhow::Result<()> {
    use mlx_gpt_model::generate::{generate, SamplingParams};
    let greedy = SamplingParams { temperature: 0.0, ..Default::default() };
    generate(model, prompt, 2, &greedy, |_| true)?; // warm-up
    let t = Instant::now();
    let ours = generate(model, prompt, n, &greedy, |_| true)?;
    let rate = ours.len() as f64 / t.elapsed().as_secs_f64();
    println!("greedy, KV cache ({} kernels), {n} tokens: {rate:.2} tokens/s", model.kernels.name());
    let dir = std::env::temp_dir().join(format!("mlx-gpt-bench-generate-{}", std::process::id()));
    mlx_gpt_model::hf::save_pretrained(model, &dir)?;
    let prompt_arg = prompt.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let args: Vec<String> =
        ["--model-dir", &dir.to_string_lossy(), "--prompt", &prompt_arg, "--new-tokens", &n.to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let result = run_python_script("bench_hf_generate.py", &args);
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(v) => {
            let theirs: Vec<u32> = v["tokens"]
                .as_array()
                .map(|t| t.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect())
                .unwrap_or_default();
            let same = ours.iter().zip(&theirs).take_while(|(a, b)| a == b).count();
            let hf = v["tokens_per_s"].as_f64().unwrap_or(f64::NAN);
            println!(
                "transformers {} (torch {}, {} threads), generate(use_cache=True), greedy, {n} tokens: {hf:.2} tokens/s; \
                 mlx-gpt is {:.2}x that; the same tokens for the first {same} of {}",
                v["transformers"].as_str().unwrap_or("?"),
                v["torch"].as_str().unwrap_or("?"),
                v["threads"],
                rate / hf,
                theirs.len()
            );
        }
        Err(why) => println!("transformers reference: not run ({why})"),
    }
    Ok(())
}
