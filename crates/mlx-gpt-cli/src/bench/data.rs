//! `mlx-gpt bench tokenize` and `bench batches`: the data pipeline's speed.

use super::median;
use crate::DeviceArgs;
use anyhow::Context;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct TokenizeArgs {
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
pub struct BatchesArgs {
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

pub fn tokenize(args: TokenizeArgs) -> anyhow::Result<()> {
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

pub fn batches(args: BatchesArgs) -> anyhow::Result<()> {
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
