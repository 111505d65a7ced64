//! `mlx-gpt export`: a trained model in another program's layout. For now mlx-lm's
//! `nanochat` (a modern GPT; crates/mlx-gpt-model/src/mlx_lm.rs says what matches).

use anyhow::Context;
use mlx_gpt_model::{hf, mlx_lm};
use mlx_gpt_train::checkpoint;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(after_help = "Example: mlx-gpt export --out-dir out-baby-modern-shakespeare-char --to exported. \
Then in Python: `from mlx_lm.utils import load_model; model, _ = load_model(pathlib.Path(\"exported\"))`.")]
pub struct Args {
    /// A run directory: its latest checkpoint is exported.
    #[arg(long, conflicts_with = "model")]
    out_dir: Option<PathBuf>,
    /// A model directory (config.json + model.safetensors) instead.
    #[arg(long, required_unless_present = "out_dir")]
    model: Option<PathBuf>,
    /// The directory to write (created if needed; its config.json and model.safetensors
    /// are replaced).
    #[arg(long)]
    to: PathBuf,
    /// The layout: mlx-lm (mlx-lm's nanochat model).
    #[arg(long, default_value = "mlx-lm", value_parser = ["mlx-lm"])]
    format: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = match (&args.out_dir, &args.model) {
        (Some(run), _) => checkpoint::latest(run).with_context(|| {
            format!("--out-dir {}: no complete checkpoint in {}/checkpoints", run.display(), run.display())
        })?,
        (None, Some(model)) => model.clone(),
        (None, None) => unreachable!("clap requires one"),
    };
    let model = hf::load_pretrained(&dir).with_context(|| format!("loading {}", dir.display()))?;
    mlx_lm::save(&model, &args.to)?;
    println!("wrote {} (mlx-lm nanochat) from {}", args.to.display(), dir.display());
    Ok(())
}
