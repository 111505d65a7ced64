//! A dataset's manifest (`datasets/<name>/manifest.json`): its sources with their size
//! and sha256, the tokenizer and the split; and the options and result of preparing one.
//! Shared by the preparations in `datasets` (text files) and `openwebtext` (Hugging Face
//! parquet exports).

use crate::download::Downloader;
use crate::error::{DataError, Result};
use crate::token_file::Meta;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One file a dataset is made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    /// Where to download it.
    pub url: String,
    /// Its name in the dataset folder.
    pub file: String,
    /// Size in bytes, when known.
    #[serde(default)]
    pub size: Option<u64>,
    /// sha256, when it was actually obtained from a trusted copy.
    #[serde(default)]
    pub sha256: Option<String>,
}

/// A Hugging Face dataset read through its parquet export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubParquet {
    /// `owner/name` on the hub.
    pub repo: String,
    /// Dataset configuration (subset).
    pub config: String,
    /// Split to read.
    pub split: String,
    /// Column holding the text.
    pub column: String,
}

/// Which tokenizer a dataset uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    /// Character vocabulary of the corpus.
    Char,
    /// GPT-2 byte-level BPE.
    Gpt2,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Folder name.
    pub name: String,
    /// One line for humans.
    pub description: String,
    /// Text files (concatenated in order), for text datasets.
    #[serde(default)]
    pub sources: Vec<SourceFile>,
    /// A hub parquet dataset, for document datasets.
    #[serde(default)]
    pub hub_parquet: Option<HubParquet>,
    /// Tokenizer.
    pub tokenizer: TokenizerKind,
    /// Text datasets: the first `train_fraction` of the characters is train, the rest val
    /// (nanoGPT's 0.9).
    #[serde(default)]
    pub train_fraction: Option<f64>,
    /// Document datasets: the fraction of documents that goes to val (nanoGPT's 0.0005).
    #[serde(default)]
    pub val_fraction: Option<f64>,
    /// Document datasets: seed of the split.
    #[serde(default)]
    pub seed: Option<u64>,
}

const BUILTIN: &[(&str, &str)] = &[
    ("shakespeare_char", include_str!("../../../datasets/shakespeare_char/manifest.json")),
    ("shakespeare", include_str!("../../../datasets/shakespeare/manifest.json")),
    ("openwebtext", include_str!("../../../datasets/openwebtext/manifest.json")),
];

impl Manifest {
    /// The manifest of `name`: `<data_dir>/<name>/manifest.json` if present, else a
    /// built-in one.
    pub fn find(name: &str, data_dir: &Path) -> Result<Option<Manifest>> {
        let local = data_dir.join(name).join("manifest.json");
        let text = if local.is_file() {
            std::fs::read_to_string(&local).map_err(DataError::io(&local))?
        } else if let Some((_, t)) = BUILTIN.iter().find(|(n, _)| *n == name) {
            t.to_string()
        } else {
            return Ok(None);
        };
        let m: Manifest = serde_json::from_str(&text)
            .map_err(|e| DataError::Invalid { path: local.clone(), what: format!("not a valid manifest: {e}") })?;
        Ok(Some(m))
    }

    /// Write as `<data_dir>/<name>/manifest.json`, so `prepare` finds it.
    pub fn write(&self, data_dir: &Path) -> Result<()> {
        let dir = data_dir.join(&self.name);
        std::fs::create_dir_all(&dir).map_err(DataError::io(&dir))?;
        let text = serde_json::to_string_pretty(self).expect("manifest serializes");
        crate::token_file::write_atomic(&dir.join("manifest.json"), |w| std::io::Write::write_all(w, text.as_bytes()))
    }

    /// Names of the built-in datasets.
    pub fn builtin_names() -> Vec<&'static str> {
        BUILTIN.iter().map(|(n, _)| *n).collect()
    }
}

/// Options of `datasets::prepare`.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// Parent of the dataset folders.
    pub data_dir: PathBuf,
    /// Downloads (with its mirror, if any).
    pub downloader: Downloader,
    /// GPT-2 BPE files (a `tokenizer.json`, or a folder); see `Tokenizer::gpt2_from`.
    pub tokenizer: Option<PathBuf>,
    /// Local text instead of downloading (empty: download): files, or folders of `.txt`
    /// files (with `train_tokenizer`, also `.jsonl` and `.parquet`: `corpus::Stream`), in
    /// the order given.
    pub from: Vec<PathBuf>,
    /// Train a byte-level BPE of this many tokens on the `from` corpus (without `from`, the
    /// one an earlier preparation of the dataset recorded) and tokenize with it
    /// (`own_text`), instead of characters or GPT-2's BPE.
    pub train_tokenizer: Option<usize>,
}

/// What `datasets::prepare` produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// The dataset folder.
    pub dir: PathBuf,
    /// Its meta.json.
    pub meta: Meta,
    /// Whether it was already there.
    pub already: bool,
}

/// `1234567` → `1,234,567`, as nanoGPT prints counts.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
