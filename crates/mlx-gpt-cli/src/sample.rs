//! `mlx-gpt sample`: nanoGPT's `sample.py`, streaming tokens as they are generated.

use crate::DeviceArgs;
use anyhow::{bail, Context};
use mlx_gpt_data::tokenizer::{Tokenizer, TokenizerSpec};
use mlx_gpt_model::generate::{generate, SamplingParams};
use mlx_gpt_model::{hf, Gpt};
use mlx_gpt_train::checkpoint;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// A run directory: its latest checkpoint is sampled.
    #[arg(long, conflicts_with = "init_from")]
    out_dir: Option<PathBuf>,
    /// gpt2, gpt2-medium, gpt2-large, gpt2-xl (from models/NAME), or a Hugging Face GPT-2 directory.
    #[arg(long)]
    init_from: Option<String>,
    /// Prompt text, or FILE:path to read it from a file.
    #[arg(long, default_value = "\n")]
    start: String,
    #[arg(long, default_value_t = 10)]
    num_samples: usize,
    #[arg(long, default_value_t = 500)]
    max_new_tokens: usize,
    /// 0 = greedy; < 1 less random, > 1 more random.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Keep only the k most likely tokens.
    #[arg(long, default_value_t = 200)]
    top_k: usize,
    /// Nucleus sampling: keep the most likely tokens up to this total probability.
    #[arg(long)]
    top_p: Option<f32>,
    #[arg(long, default_value_t = 1337)]
    seed: u64,
    /// GPT-2 BPE files (tokenizer.json or a folder) [default: models/gpt2, or the model folder].
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Recompute the whole context for every token instead of using the KV cache.
    #[arg(long)]
    no_kv_cache: bool,
    /// The weight matrices' dtype while decoding: float32, or bfloat16 (half the bytes to
    /// read per token, so up to twice the tokens/s on a CPU; the sums stay float32, the
    /// weights are rounded to 8 bits of mantissa, so tokens can differ from float32's).
    #[arg(long, default_value = "float32", value_parser = ["float32", "bfloat16"])]
    decode_dtype: String,
    #[command(flatten)]
    device: DeviceArgs,
}

fn bpe(explicit: Option<&Path>, model_dir: Option<&Path>) -> anyhow::Result<Tokenizer> {
    let candidates: Vec<PathBuf> = explicit
        .map(Path::to_path_buf)
        .into_iter()
        .chain(model_dir.map(Path::to_path_buf))
        .chain([PathBuf::from("models/gpt2")])
        .collect();
    for c in &candidates {
        if let Ok(t) = Tokenizer::gpt2_from(c) {
            return Ok(t);
        }
    }
    match explicit {
        Some(p) => Ok(Tokenizer::gpt2_from(p)?),
        None => bail!("this model uses GPT-2's BPE: pass --tokenizer PATH or run `cargo xtask fetch-gpt2 gpt2`"),
    }
}

/// The tokenizer a training run recorded, checked against the model it goes with.
fn run_tokenizer(
    spec: &TokenizerSpec,
    bpe_files: Option<&Path>,
    ckpt: &Path,
    model: &Gpt,
) -> anyhow::Result<Tokenizer> {
    let check_vocab = |tok: Tokenizer| {
        if tok.vocab_size() != model.config.vocab_size {
            bail!(
                "{}/state.json: the tokenizer has {} tokens and the model {} outputs; the checkpoint is damaged",
                ckpt.display(),
                tok.vocab_size(),
                model.config.vocab_size
            );
        }
        Ok(tok)
    };
    match spec {
        TokenizerSpec::Gpt2 => bpe(bpe_files, None),
        // A checkpoint carries its trained tokenizer (the file itself, in state.json).
        TokenizerSpec::Trained { .. } => check_vocab(Tokenizer::from_spec(spec, None)?),
        TokenizerSpec::Char { itos } => {
            // Every id the model can emit needs a character, or those tokens print nothing.
            if itos.len() != model.config.vocab_size {
                bail!(
                    "{}/state.json: the character table has {} entries and the model {} outputs; the \
                     checkpoint is damaged",
                    ckpt.display(),
                    itos.len(),
                    model.config.vocab_size
                );
            }
            Ok(Tokenizer::from_spec(spec, None)?)
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (_, kernels) = args.device.select()?;
    let (mut model, tokenizer): (Gpt, Tokenizer) = match (&args.out_dir, &args.init_from) {
        (Some(dir), _) => {
            let ckpt = checkpoint::latest(dir).with_context(|| {
                format!("--out-dir {}: no complete checkpoint in {}/checkpoints", dir.display(), dir.display())
            })?;
            let state: checkpoint::TrainState = serde_json::from_str(
                &std::fs::read_to_string(ckpt.join("state.json")).with_context(|| ckpt.display().to_string())?,
            )
            .with_context(|| format!("{}/state.json", ckpt.display()))?;
            // The weights, their config and the state, as written (the optimizer is not needed).
            checkpoint::verify(&ckpt, &checkpoint::MODEL_FILES)?;
            let model = hf::load_pretrained(&ckpt)?;
            let tok = run_tokenizer(&state.tokenizer, args.tokenizer.as_deref(), &ckpt, &model)?;
            (model, tok)
        }
        (None, Some(name)) => {
            let dir = if mlx_gpt_data::pretrained::GPT2_MODELS.contains(&name.as_str()) {
                let d = PathBuf::from("models").join(name);
                if !d.join("config.json").is_file() {
                    bail!("{name} is not in {}; run `cargo xtask fetch-gpt2 {name}`", d.display());
                }
                d
            } else {
                PathBuf::from(name)
            };
            let model = hf::load_pretrained(&dir)?;
            // A checkpoint folder of a training run says which tokenizer it was trained with.
            let tok = match std::fs::read_to_string(dir.join("state.json")) {
                Ok(text) => {
                    let state: checkpoint::TrainState =
                        serde_json::from_str(&text).with_context(|| format!("{}/state.json", dir.display()))?;
                    run_tokenizer(&state.tokenizer, args.tokenizer.as_deref(), &dir, &model)?
                }
                Err(_) => bpe(args.tokenizer.as_deref(), Some(&dir))?,
            };
            (model, tok)
        }
        (None, None) => bail!("say what to sample: --out-dir DIR (a training run) or --init-from gpt2"),
    };
    model.kernels = kernels;
    if args.decode_dtype == "bfloat16" {
        model.set_matrices_dtype(mlx_rs::Dtype::Bfloat16)?;
    }
    // NaN weights would print nothing at all (every logit NaN); say why instead.
    if let Some(name) = model.first_non_finite_parameter()? {
        bail!("the model's parameter {name} holds NaN or infinite values: these weights come from a diverged run or a damaged file");
    }
    let start = match args.start.strip_prefix("FILE:") {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("--start FILE:{path}"))?,
        None => args.start.clone(),
    };
    let prompt = tokenizer.encode(&start).context("--start")?;
    if prompt.is_empty() {
        bail!("--start encodes to no tokens");
    }
    let mut out = std::io::stdout().lock();
    for k in 0..args.num_samples {
        let params = SamplingParams {
            temperature: args.temperature,
            top_k: Some(args.top_k),
            top_p: args.top_p,
            seed: args.seed.wrapping_add(k as u64),
            stop_token: None,
            use_kv_cache: !args.no_kv_cache,
        };
        write!(out, "{start}")?;
        // Decode the growing sequence and print what is new; a token that ends inside a
        // UTF-8 character waits for the next one.
        let mut ids: Vec<u32> = Vec::new();
        let mut printed = 0usize;
        let mut io_err = None;
        generate(&mut model, &prompt, args.max_new_tokens, &params, |t| {
            ids.push(t);
            if let Ok(text) = tokenizer.decode(&ids) {
                if !text.ends_with('\u{FFFD}') && text.len() > printed {
                    if let Err(e) = out.write_all(&text.as_bytes()[printed..]).and_then(|_| out.flush()) {
                        io_err = Some(e);
                        return false;
                    }
                    printed = text.len();
                }
            }
            true
        })?;
        if let Some(e) = io_err {
            return Err(e.into());
        }
        writeln!(out, "\n---------------")?;
    }
    Ok(())
}
