//! Downloading OpenAI's GPT-2 checkpoints from the Hugging Face hub into `models/<name>/`.
//!
//! Files: `model.safetensors`, `config.json`, `tokenizer.json`, `vocab.json`,
//! `merges.txt`. The hub publishes the sha256 of large (LFS) files as `X-Linked-Etag` on
//! the resolve URL; those are verified and recorded in `models/<name>/manifest.json`.
//! Small files have no published sha256 and are recorded by size only: a manifest never
//! holds a hash that could not be checked. A complete, verified file is not fetched again.

use crate::download::Downloader;
use crate::error::{DataError, Result};
use crate::token_file::{sha256_file, write_atomic};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// The checkpoints OpenAI released.
pub const GPT2_MODELS: &[&str] = &["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"];
/// The files fetched for each.
pub const GPT2_FILES: &[&str] = &["config.json", "tokenizer.json", "vocab.json", "merges.txt", "model.safetensors"];

/// One fetched file, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchedFile {
    /// File name.
    pub file: String,
    /// Where it came from.
    pub url: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256 published by the hub and verified, if the hub published one.
    pub sha256: Option<String>,
}

/// Fetch checkpoint `name` into `models_dir/name`. Returns the recorded files.
pub fn fetch_gpt2(name: &str, models_dir: &Path, downloader: &Downloader) -> Result<Vec<FetchedFile>> {
    if !GPT2_MODELS.contains(&name) {
        return Err(DataError::UnknownDataset { name: name.into(), known: GPT2_MODELS.join(", ") });
    }
    let dir = models_dir.join(name);
    std::fs::create_dir_all(&dir).map_err(DataError::io(&dir))?;
    let manifest_path = dir.join("manifest.json");
    let previous: Vec<FetchedFile> =
        std::fs::read_to_string(&manifest_path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    let endpoint = crate::openwebtext::hub_endpoint();
    let mut out = Vec::new();
    for file in GPT2_FILES {
        let url = format!("{endpoint}/openai-community/{name}/resolve/main/{file}");
        let dest = dir.join(file);
        let recorded = previous.iter().find(|f| f.file == *file);
        // Complete and verified already: keep it without asking the hub.
        if let Some(r) = recorded {
            let size_ok = std::fs::metadata(&dest).map(|m| m.len() == r.size).unwrap_or(false);
            let hash_ok = match &r.sha256 {
                Some(h) => size_ok && sha256_file(&dest)? == *h,
                None => size_ok,
            };
            if hash_ok {
                out.push(r.clone());
                continue;
            }
            let _ = std::fs::remove_file(&dest);
        }
        let info = downloader.remote_info(&url)?;
        downloader.fetch(&url, &dest, info.sha256.as_deref())?;
        let size = std::fs::metadata(&dest).map_err(DataError::io(&dest))?.len();
        if let Some(expected) = info.size.filter(|_| info.sha256.is_some()) {
            if expected != size {
                let _ = std::fs::remove_file(&dest);
                return Err(DataError::Size {
                    path: dest,
                    what: format!("{size} bytes, the hub announced {expected}"),
                });
            }
        }
        out.push(FetchedFile { file: file.to_string(), url, size, sha256: info.sha256 });
        // Record progress after each file, so an interrupted fetch keeps what it verified.
        let json = serde_json::to_string_pretty(&out).expect("json");
        write_atomic(&manifest_path, |w| w.write_all(json.as_bytes()))?;
    }
    Ok(out)
}
