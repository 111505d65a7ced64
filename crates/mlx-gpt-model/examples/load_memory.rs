//! Measures what loading a GPT-2-124M-sized checkpoint (≈ 500 MB of float32) costs in
//! memory. Run: `cargo run --release -p mlx-gpt-model --example load_memory`.
//! It saves a randomly initialised GPT-2 to a temporary folder, then re-runs itself to load
//! it in a fresh process and prints that process's peak and final memory.

use mlx_gpt_model::{hf, Gpt, GptConfig};
use std::process::Command;

fn status(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        / 1024
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join("mlx-gpt-load-memory");
    if let Some(arg) = std::env::args().nth(1) {
        assert_eq!(arg, "--load");
        let before = status("VmRSS:");
        let model = hf::load_pretrained(&dir)?;
        let size = std::fs::metadata(dir.join(hf::WEIGHTS_FILE))?.len() / (1 << 20);
        println!("checkpoint {size} MiB, {} parameters", model.num_params(false));
        println!(
            "RSS before load {before} MiB; peak (VmHWM) {} MiB; after: anonymous {} MiB, file-backed {} MiB",
            status("VmHWM:"),
            status("RssAnon:"),
            status("RssFile:")
        );
        return Ok(());
    }
    let model = Gpt::new(GptConfig::gpt2(), 0)?;
    hf::save_pretrained(&model, &dir)?;
    drop(model);
    let out = Command::new(std::env::current_exe()?).arg("--load").output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
