//! `cargo xtask <task>`: project chores. Thin on purpose: the logic lives in
//! mlx-gpt-data so other programs can call it.
//!
//! - `cargo xtask fetch-data [NAME…] [--from PATH] [--mirror URL] [--tokenizer PATH]`
//! - `cargo xtask fetch-gpt2 [gpt2|gpt2-medium|gpt2-large|gpt2-xl] [--mirror URL]`

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use mlx_gpt_data::datasets::{prepare, thousands, HubParquet, Manifest, PrepareOptions, TokenizerKind};
use mlx_gpt_data::download::Downloader;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "mlx-gpt project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Download and prepare datasets into train.bin / val.bin / meta.json.
    FetchData(FetchData),
    /// Download OpenAI's GPT-2 weights and tokenizer from the Hugging Face hub into models/NAME/.
    FetchGpt2(FetchGpt2),
}

#[derive(clap::Args)]
struct FetchData {
    /// Datasets to prepare (shakespeare_char, shakespeare, openwebtext, or a new name with --from / --hf-dataset),
    /// or hellaswag (the evaluation set, kept as published).
    #[arg(default_value = "shakespeare_char")]
    names: Vec<String>,
    /// Use local text instead of downloading: a file, or a folder of .txt files (with --tokenizer train:VOCAB
    /// also .jsonl with a "text" field and .parquet with a "text" column).
    #[arg(long, num_args = 1.., action = clap::ArgAction::Append)]
    from: Vec<PathBuf>,
    /// Fetch every URL from this base instead (its path is kept), e.g. http://127.0.0.1:8000 or file:///srv/mirror.
    #[arg(long)]
    mirror: Option<String>,
    /// GPT-2 BPE files: a tokenizer.json, or a folder with vocab.json + merges.txt or encoder.json + vocab.bpe
    /// [default: models/gpt2 when present]; or train:VOCAB to train a byte-level BPE of VOCAB tokens on the
    /// --from text (without --from, the text the dataset was prepared from before) and tokenize with it
    /// (tokenizer.json beside the token files; an interrupted run resumes where it stopped).
    #[arg(long)]
    tokenizer: Option<String>,
    /// Where dataset folders live [default: $MLX_GPT_DATA_DIR, else datasets/].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Prepare a Hugging Face parquet text dataset (owner/name) under the given NAME.
    #[arg(long)]
    hf_dataset: Option<String>,
    /// Column holding the text, with --hf-dataset.
    #[arg(long, default_value = "text")]
    column: String,
    /// Dataset configuration, with --hf-dataset.
    #[arg(long, default_value = "default")]
    config: String,
    /// Split to read, with --hf-dataset.
    #[arg(long, default_value = "train")]
    split: String,
}

#[derive(clap::Args)]
struct FetchGpt2 {
    /// Which checkpoint.
    #[arg(default_value = "gpt2", value_parser = clap::builder::PossibleValuesParser::new(mlx_gpt_data::pretrained::GPT2_MODELS))]
    name: String,
    /// Fetch from this base URL instead of the hub (its path is kept); HF_ENDPOINT also works.
    #[arg(long)]
    mirror: Option<String>,
    /// Where model folders live [default: models/].
    #[arg(long)]
    models_dir: Option<PathBuf>,
}

/// The repository root (xtask lives one level below it).
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is in the workspace").to_path_buf()
}

fn main() {
    // Colours only on a terminal: a redirected log stays plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt().with_target(false).without_time().with_ansi(ansi).init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {}", mlx_gpt_data::error_chain(&*e));
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.task {
        Task::FetchData(a) => fetch_data(a),
        Task::FetchGpt2(a) => fetch_gpt2(a),
    }
}

fn fetch_data(a: FetchData) -> anyhow::Result<()> {
    let data_dir = a
        .data_dir
        .or_else(|| std::env::var_os("MLX_GPT_DATA_DIR").map(PathBuf::from))
        .unwrap_or_else(|| project_root().join("datasets"));
    let default_bpe = project_root().join("models/gpt2");
    let (tokenizer, train_tokenizer) = match a.tokenizer.as_deref().map(|t| (t, t.strip_prefix("train:"))) {
        Some((_, Some(vocab))) => {
            let v: usize =
                vocab.parse().with_context(|| format!("--tokenizer train:{vocab}: not a vocabulary size"))?;
            // GPT-2's files, where present, only for the report's comparison.
            (default_bpe.join("vocab.json").is_file().then_some(default_bpe), Some(v))
        }
        Some((path, None)) => (Some(PathBuf::from(path)), None),
        None => (default_bpe.join("vocab.json").is_file().then_some(default_bpe), None),
    };
    if !a.from.is_empty() && a.names.len() > 1 {
        bail!("--from gives the text of one dataset; name only one");
    }
    for name in &a.names {
        if name == "hellaswag" {
            // An evaluation set, not a corpus: kept as published, nothing to tokenize.
            let downloader = Downloader::new().with_mirror(a.mirror.clone());
            let path = mlx_gpt_data::hellaswag::fetch(&data_dir, &downloader, a.from.first().map(PathBuf::as_path))
                .map_err(|e| {
                    let offline = matches!(e, mlx_gpt_data::DataError::Http { .. });
                    let e = anyhow::Error::new(e).context("fetching HellaSwag");
                    if offline {
                        e.context("cannot download: give the file with --from PATH, or a mirror with --mirror URL")
                    } else {
                        e
                    }
                })?;
            println!(
                "hellaswag: validation set in {} (git blob {} verified)",
                path.display(),
                mlx_gpt_data::hellaswag::GIT_BLOB_SHA1
            );
            continue;
        }
        // Before anything is written under the name (the hub manifest below).
        mlx_gpt_data::datasets::check_name(name)?;
        if let Some(repo) = &a.hf_dataset {
            // A hub dataset under a name of the user's: write its manifest, then prepare.
            let manifest = Manifest {
                name: name.clone(),
                description: format!("Hugging Face dataset {repo}, column {}", a.column),
                sources: vec![],
                hub_parquet: Some(HubParquet {
                    repo: repo.clone(),
                    config: a.config.clone(),
                    split: a.split.clone(),
                    column: a.column.clone(),
                }),
                tokenizer: TokenizerKind::Gpt2,
                train_fraction: None,
                val_fraction: Some(0.0005),
                seed: Some(2357),
            };
            manifest.write(&data_dir)?;
        }
        let opts = PrepareOptions {
            data_dir: data_dir.clone(),
            downloader: Downloader::new().with_mirror(a.mirror.clone()),
            tokenizer: tokenizer.clone(),
            from: a.from.clone(),
            train_tokenizer,
        };
        let p = prepare(name, &opts).map_err(|e| {
            let offline = matches!(e, mlx_gpt_data::DataError::Http { .. });
            let e = anyhow::Error::new(e).context(format!("preparing dataset '{name}'"));
            if offline {
                e.context(
                    "cannot download: give the text with --from PATH, or a mirror with --mirror URL (docs/data.md)",
                )
            } else {
                e
            }
        })?;
        let verb = if p.already { "already prepared" } else { "prepared" };
        println!(
            "{name}: {verb} in {} — vocab {}, train {} tokens, val {} tokens ({} tokenizer)",
            p.dir.display(),
            thousands(p.meta.vocab_size as u64),
            thousands(p.meta.files["train"].tokens),
            thousands(p.meta.files["val"].tokens),
            p.meta.tokenizer.kind_name()
        );
    }
    Ok(())
}

fn fetch_gpt2(a: FetchGpt2) -> anyhow::Result<()> {
    let models = a.models_dir.unwrap_or_else(|| project_root().join("models"));
    let files = mlx_gpt_data::pretrained::fetch_gpt2(&a.name, &models, &Downloader::new().with_mirror(a.mirror))
        .with_context(|| format!("fetching {}", a.name))?;
    for f in files {
        let hash = f
            .sha256
            .as_deref()
            .map(|h| format!("sha256 {h} (verified)"))
            .unwrap_or_else(|| "no published sha256".into());
        println!("{}/{}: {} bytes, {hash}", a.name, f.file, thousands(f.size));
    }
    Ok(())
}
