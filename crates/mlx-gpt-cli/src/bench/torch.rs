//! The PyTorch references (scripts/bench_torch.py), run through the Python the user names.

/// One run of the PyTorch reference: its version, threads and step times (sorted, ms).
pub struct TorchRun {
    pub version: String,
    pub threads: serde_json::Value,
    pub median_ms: f64,
    pub times_ms: Vec<f64>,
}

/// The PyTorch reference (scripts/bench_torch.py) for one configuration: the same model
/// and step, timed in a Python with torch (`MLX_GPT_TORCH_PYTHON`, else `python3`).
pub struct TorchReference {
    args: Vec<String>,
}

impl TorchReference {
    /// `Err` says why there is no reference (accumulation, or no Python with torch).
    pub fn new(c: &mlx_gpt_train::TrainConfig, vocab: usize, iters: usize, warmup: usize) -> Result<Self, String> {
        if c.gradient_accumulation_steps != 1 {
            return Err("skipped: it needs gradient_accumulation_steps = 1".into());
        }
        if c.arch != mlx_gpt_model::config::Arch::Gpt2 || c.optimizer != "adamw" {
            return Err("skipped: it is nanoGPT's step (GPT-2, AdamW); the modern GPT is measured against its \
                        GPT-2 twin"
                .into());
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

    pub fn run(&self) -> Result<TorchRun, String> {
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
pub fn run_torch_script(args: &[String]) -> Result<serde_json::Value, String> {
    run_python_script("bench_torch.py", args)
}

/// Run `scripts/<name>` with `args` under the reference's Python (torch, and for
/// `bench_hf_generate.py` transformers) and parse the JSON line it prints last.
pub fn run_python_script(name: &str, args: &[String]) -> Result<serde_json::Value, String> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts").join(name);
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
        if stderr.contains("No module named 'transformers'") {
            return Err(format!(
                "{python} has torch but not transformers; install it there (pip install transformers) \
                 or name a Python that has both with MLX_GPT_TORCH_PYTHON"
            ));
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
