//! `mlx-gpt bench`: programs that print figures. Nothing here passes or fails on speed;
//! docs/performance.md records what they printed, with the machine and the command.

//!
//! One file per benchmark: [`matmul`], [`train`] (with the PyTorch reference in
//! [`torch`]), [`generate`], and [`data`] (tokenisation, batches).

mod data;
mod generate;
mod matmul;
mod torch;
mod train;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// f32 matmul GFLOP/s through MLX, next to a direct OpenBLAS `cblas_sgemm` in the same run.
    Matmul(matmul::MatmulArgs),
    /// Training-step time of a preset (nanoGPT's bench.py): warm-up, then timed steps.
    Train(train::TrainBenchArgs),
    /// Generation tokens/s with and without the KV cache (GPT-2 124M shape, random weights).
    Generate(generate::GenerateArgs),
    /// Tokenisation MB/s on one core and on all cores.
    Tokenize(data::TokenizeArgs),
    /// Microseconds to draw a training batch from a prepared dataset.
    Batches(data::BatchesArgs),
}

pub fn run(args: Args, jit: Option<mlx_gpt_runtime::jit::JitSetup>) -> anyhow::Result<()> {
    match args.what {
        What::Matmul(a) => matmul::matmul(a),
        What::Train(a) => train::train_step(a, jit),
        What::Generate(a) => generate::generate_bench(a),
        What::Tokenize(a) => data::tokenize(a),
        What::Batches(a) => data::batches(a),
    }
}

/// The median of `v` (sorted in place).
pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The `q`-quantile (0 < q ≤ 1) of `sorted` by the nearest-rank rule: the smallest value
/// with at least a fraction `q` of the values at or below it.
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_quantiles_by_rank() {
        let mut v: Vec<f64> = (1..=10).rev().map(f64::from).collect();
        assert_eq!(median(&mut v), 6.0);
        assert_eq!(quantile(&v, 0.9), 9.0);
        assert_eq!(quantile(&v, 1.0), 10.0);
        assert_eq!(quantile(&v, 0.01), 1.0);
        assert_eq!(quantile(&[4.0], 0.9), 4.0);
    }
}
