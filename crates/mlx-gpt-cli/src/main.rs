//! `mlx-gpt`: nanoGPT's workflow on MLX. A tiny `main` that parses flags, installs the log
//! subscriber and runs one subcommand; each subcommand lives in its own file.

mod bench;
mod export;
mod info;
mod launch;
mod overrides;
mod sample;
mod signals;
mod train;

use clap::{Parser, Subcommand};
use mlx_gpt_model::{KernelChoice, Kernels};
use mlx_gpt_runtime::device::{self, DeviceKind};

#[derive(Parser)]
#[command(name = "mlx-gpt", version, about = "Train and sample GPTs on MLX, nanoGPT style")]
struct Cli {
    /// Leave MLX's CPU JIT with its default (scalar) compiler flags. See
    /// docs/performance-history.md.
    #[arg(long, global = true)]
    no_native_jit: bool,
    /// Leave glibc malloc's thresholds as they are (freed memory goes back to the system
    /// at once, at the cost of fresh page faults each step).
    #[arg(long, global = true)]
    no_malloc_tuning: bool,
    /// Log lines as plain text, or one JSON object per line (for log collectors).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Print versions, devices, the BLAS library in use, CPU features and memory.
    Info(info::Args),
    /// Train a GPT (nanoGPT's train.py): mlx-gpt train [CONFIG] [--key value]...
    Train(train::Args),
    /// Sample text from a training run or from GPT-2 (nanoGPT's sample.py).
    Sample(sample::Args),
    /// Train and val loss of a checkpoint or of GPT-2: mlx-gpt eval [CONFIG] [--key value]...
    Eval(train::Args),
    /// Write a trained model in another program's layout (mlx-lm's nanochat).
    Export(export::Args),
    /// Start N local processes that train together (MLX distributed, ring backend).
    Launch(launch::Args),
    /// Benchmarks that print figures (no pass/fail).
    Bench(bench::Args),
}

/// `--device` and `--kernels`, shared by every command that computes outside a training
/// configuration (which has its own `device` and `kernels` keys).
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Where to compute: cpu or gpu [default: the best available]
    #[arg(long, value_parser = parse_device)]
    pub device: Option<DeviceKind>,
    /// Which formulation of each operation runs: auto, cpu (mlx-gpt's CPU kernels), mlx
    /// (plain MLX ops) or mlx-fast (MLX's dedicated primitives)
    #[arg(long, default_value = "auto", value_parser = parse_kernels)]
    pub kernels: KernelChoice,
}

fn parse_device(s: &str) -> Result<DeviceKind, String> {
    s.parse().map_err(|e: device::DeviceError| e.to_string())
}

fn parse_kernels(s: &str) -> Result<KernelChoice, String> {
    s.parse().map_err(|e: mlx_gpt_model::KernelsError| e.to_string())
}

impl DeviceArgs {
    /// Check the device, make it MLX's default, and resolve the kernels for it.
    pub fn select(&self) -> anyhow::Result<(DeviceKind, Kernels)> {
        let device = device::select(self.device)?;
        Ok((device, Kernels::resolve(self.kernels, device)?))
    }
}

fn main() {
    let cli = Cli::parse();
    // Before the first large allocation (see the function).
    if !cli.no_malloc_tuning {
        mlx_gpt_runtime::malloc::keep_freed_memory();
    }
    // Before any thread exists and before MLX compiles anything (it sets PATH and TMPDIR).
    let jit = if cli.no_native_jit {
        None
    } else {
        match mlx_gpt_runtime::jit::configure() {
            Ok(j) => j,
            // Only compiled steps need a compiler; everything else still works, so say it
            // once and go on. A compiled step then fails with MLX's own error.
            Err(e) => {
                eprintln!("warning: {e}");
                None
            }
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false);
    match cli.log_format {
        // Colours only on a terminal: a redirected log (a file, a CI job) stays plain text.
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())).init(),
        LogFormat::Json => logs.json().init(),
    }
    if let Err(err) = run(cli, jit) {
        eprintln!("error: {}", mlx_gpt_data::error_chain(&*err));
        std::process::exit(1);
    }
}

fn run(cli: Cli, jit: Option<mlx_gpt_runtime::jit::JitSetup>) -> anyhow::Result<()> {
    match cli.command {
        Command::Info(args) => info::run(args, jit),
        Command::Train(args) => train::run_cmd(args, false),
        Command::Sample(args) => sample::run(args),
        Command::Eval(args) => train::run_cmd(args, true),
        Command::Export(args) => export::run(args),
        Command::Launch(args) => launch::run(args),
        Command::Bench(args) => bench::run(args, jit),
    }
}
