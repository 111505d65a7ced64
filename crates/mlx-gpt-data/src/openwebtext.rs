//! Streaming preparation of Hugging Face parquet text datasets (OpenWebText and any other
//! `owner/name` with a text column).
//!
//! 1. The shard list comes from the hub's parquet API
//!    (`{endpoint}/api/datasets/{repo}/parquet/{config}/{split}`), not a hard-coded list;
//!    it is saved as `shards.json` so a resumed run needs no second listing.
//! 2. Each shard is downloaded (resumable; verified by sha256 when the hub announces one),
//!    read row group by row group, and its documents encoded on every core, each followed
//!    by `<|endoftext|>` (50256) as nanoGPT does. Its tokens go to `shards/NNNNN.train.bin`
//!    and `.val.bin`, then a `.done` marker is written and the parquet file removed. Memory
//!    is bounded by one row group, whatever the corpus size. An interrupted run resumes
//!    at the first shard without a marker.
//! 3. Validation split: document `r` of shard `s` is in val when
//!    `splitmix64(seed ^ s·2³² ^ r) / 2⁶⁴ < val_fraction` — deterministic, streaming, and
//!    the same fraction as nanoGPT's `train_test_split(test_size=0.0005, seed=2357)`
//!    (not the same documents: that split needs the whole corpus in memory).
//! 4. The shards are concatenated into `train.bin` / `val.bin` (streamed, under temporary
//!    names), then `meta.json` is written and the shard files removed.

use crate::error::{DataError, Result};
use crate::manifest::{thousands, HubParquet, Manifest, PrepareOptions, Prepared};
use crate::token_file::{hex, to_bytes, write_atomic, FileEntry, Meta, TokenDtype, META_FILE};
use crate::tokenizer::{Tokenizer, GPT2_EOT};
use parquet::file::reader::{FileReader, SerializedFileReader};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The hub's address; `HF_ENDPOINT` overrides it, as in Hugging Face's own tools.
pub fn hub_endpoint() -> String {
    std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into()).trim_end_matches('/').to_string()
}

/// One parquet shard, as listed and (where announced) checksummed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// Download URL.
    pub url: String,
    /// Size in bytes, if the server announced it.
    pub size: Option<u64>,
    /// sha256, only if the server published it.
    pub sha256: Option<String>,
}

/// Whether document `row` of shard `shard` belongs to the validation split.
pub fn is_val(seed: u64, shard: u64, row: u64, val_fraction: f64) -> bool {
    let h = crate::batches::splitmix(&mut (seed ^ (shard << 32) ^ row));
    (h as f64) / 18_446_744_073_709_551_616.0 < val_fraction
}

/// List the parquet shards of a hub dataset split, with size and sha256 where announced.
pub fn list_shards(hub: &HubParquet, opts: &PrepareOptions) -> Result<Vec<Shard>> {
    let api = format!("{}/api/datasets/{}/parquet/{}/{}", hub_endpoint(), hub.repo, hub.config, hub.split);
    let url = opts.downloader.resolve(&api);
    let tmp = std::env::temp_dir().join(format!("mlx-gpt-shards-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    opts.downloader.fetch(&api, &tmp, None)?;
    let text = std::fs::read_to_string(&tmp).map_err(DataError::io(&tmp))?;
    let _ = std::fs::remove_file(&tmp);
    let urls: Vec<String> = serde_json::from_str(&text)
        .map_err(|e| DataError::Http { url: url.clone(), reason: format!("unexpected shard list: {e}") })?;
    if urls.is_empty() {
        return Err(DataError::Http { url, reason: "the hub lists no parquet shard for this split".into() });
    }
    urls.into_iter()
        .map(|u| {
            let info = opts.downloader.remote_info(&u)?;
            Ok(Shard { url: u, size: info.size, sha256: info.sha256 })
        })
        .collect()
}

/// Prepare a dataset whose manifest names a hub parquet source.
pub fn prepare_hub(manifest: &Manifest, dir: &Path, opts: &PrepareOptions) -> Result<Prepared> {
    let hub = manifest.hub_parquet.as_ref().expect("caller checked");
    let tok_path = opts.tokenizer.as_deref().ok_or_else(|| {
        DataError::Tokenizer(format!("dataset '{}' uses GPT-2's BPE: pass --tokenizer PATH", manifest.name))
    })?;
    let tokenizer = Tokenizer::gpt2_from(tok_path)?;
    let val_fraction = manifest.val_fraction.unwrap_or(0.0005);
    let seed = manifest.seed.unwrap_or(2357);

    let _ = std::fs::remove_file(dir.join(META_FILE));
    let list_path = dir.join("shards.json");
    let shards: Vec<Shard> = match std::fs::read_to_string(&list_path) {
        Ok(t) => {
            serde_json::from_str(&t).map_err(|e| DataError::Invalid { path: list_path.clone(), what: e.to_string() })?
        }
        Err(_) => {
            let s = list_shards(hub, opts)?;
            write_atomic(&list_path, |w| w.write_all(serde_json::to_string_pretty(&s).expect("json").as_bytes()))?;
            s
        }
    };
    let shard_dir = dir.join("shards");
    std::fs::create_dir_all(&shard_dir).map_err(DataError::io(&shard_dir))?;
    let total: u64 = shards.iter().filter_map(|s| s.size).sum();
    let bar = crate::progress::bytes((total > 0).then_some(total), format!("{} shards", shards.len()));
    for (i, shard) in shards.iter().enumerate() {
        let done = shard_dir.join(format!("{i:05}.done"));
        if done.is_file() {
            bar.inc(shard.size.unwrap_or(0));
            continue;
        }
        let parquet = dir.join("downloads").join(format!("{i:05}.parquet"));
        opts.downloader.fetch(&shard.url, &parquet, shard.sha256.as_deref())?;
        let docs = encode_shard(
            &parquet,
            i as u64,
            &hub.column,
            &tokenizer,
            seed,
            val_fraction,
            &shard_dir,
            &bar,
            shard.size,
        )?;
        std::fs::write(&done, docs.to_string()).map_err(DataError::io(&done))?;
        std::fs::remove_file(&parquet).map_err(DataError::io(&parquet))?;
    }
    bar.finish_and_clear();

    let mut files = BTreeMap::new();
    for split in ["train", "val"] {
        let parts: Vec<PathBuf> = (0..shards.len()).map(|i| shard_dir.join(format!("{i:05}.{split}.bin"))).collect();
        let entry = concat(&parts, &dir.join(format!("{split}.bin")))?;
        tracing::info!("{split} has {} tokens", thousands(entry.tokens));
        files.insert(split.to_string(), entry);
    }
    let meta = Meta::new(&tokenizer, files);
    meta.write(&dir.join(META_FILE))?;
    std::fs::remove_dir_all(&shard_dir).map_err(DataError::io(&shard_dir))?;
    Ok(Prepared { dir: dir.into(), meta, already: false })
}

/// Encode one parquet shard into `<shard_dir>/NNNNN.{train,val}.bin`; returns the number
/// of documents.
#[allow(clippy::too_many_arguments)]
fn encode_shard(
    parquet: &Path,
    shard: u64,
    column: &str,
    tokenizer: &Tokenizer,
    seed: u64,
    val_fraction: f64,
    shard_dir: &Path,
    bar: &indicatif::ProgressBar,
    size: Option<u64>,
) -> Result<u64> {
    let pq = |e: parquet::errors::ParquetError| DataError::Parquet { path: parquet.into(), reason: e.to_string() };
    let file = std::fs::File::open(parquet).map_err(DataError::io(parquet))?;
    let reader = SerializedFileReader::new(file).map_err(pq)?;
    let groups = reader.metadata().num_row_groups();
    let mut writers = Vec::new();
    for split in ["train", "val"] {
        let tmp = shard_dir.join(format!("{shard:05}.{split}.bin.partial"));
        writers.push((tmp.clone(), std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(DataError::io(&tmp))?)));
    }
    let mut row = 0u64;
    for g in 0..groups {
        let group = reader.get_row_group(g).map_err(pq)?;
        let mut docs: Vec<(bool, String)> = Vec::new();
        for r in group.get_row_iter(None).map_err(pq)? {
            let r = r.map_err(pq)?;
            let text = crate::corpus::row_text(&r, column, parquet)?;
            docs.push((is_val(seed, shard, row, val_fraction), text));
            row += 1;
        }
        // Every core encodes documents; order is kept.
        let encoded: Vec<(bool, Vec<u32>)> = docs
            .par_iter()
            .map(|(val, text)| {
                let mut ids = tokenizer.encode(text)?;
                ids.push(GPT2_EOT);
                Ok((*val, ids))
            })
            .collect::<Result<_>>()?;
        for (val, ids) in encoded {
            let (path, w) = &mut writers[val as usize];
            w.write_all(&to_bytes(&ids, TokenDtype::U16)?).map_err(DataError::io(path.as_path()))?;
        }
        if let Some(s) = size {
            bar.inc(s / groups.max(1) as u64);
        }
    }
    for (i, (tmp, w)) in writers.into_iter().enumerate() {
        let f = w.into_inner().map_err(|e| DataError::io(&tmp)(e.into_error()))?;
        f.sync_all().map_err(DataError::io(&tmp))?;
        let dest = shard_dir.join(format!("{shard:05}.{}.bin", ["train", "val"][i]));
        std::fs::rename(&tmp, &dest).map_err(DataError::io(&dest))?;
    }
    Ok(row)
}

/// Concatenate token files into `dest` (atomically), hashing as it goes.
fn concat(parts: &[PathBuf], dest: &Path) -> Result<FileEntry> {
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    write_atomic(dest, |w| {
        for p in parts {
            let mut f = std::fs::File::open(p)?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = std::io::Read::read(&mut f, &mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                w.write_all(&buf[..n])?;
                bytes += n as u64;
            }
        }
        Ok(())
    })?;
    Ok(FileEntry { tokens: bytes / TokenDtype::U16.width() as u64, bytes, sha256: hex(&hasher.finalize()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_deterministic_and_near_the_fraction() {
        let n = 200_000u64;
        let val = (0..n).filter(|&r| is_val(2357, r % 7, r, 0.01)).count() as f64;
        assert!((val / n as f64 - 0.01).abs() < 0.002, "{}", val / n as f64);
        assert_eq!(is_val(1, 2, 3, 0.5), is_val(1, 2, 3, 0.5));
    }
}
