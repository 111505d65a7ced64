//! Unpacking compressed sources: `.gz`, `.xz`, `.zip`, `.tar`, `.tar.gz`/`.tgz`,
//! `.tar.xz`. Every output is written under a temporary name and renamed.

use crate::error::{DataError, Result};
use crate::token_file::write_atomic;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Whether `name` is a format this module unpacks.
pub fn is_archive(name: &str) -> bool {
    [".gz", ".tgz", ".xz", ".zip", ".tar"].iter().any(|ext| name.ends_with(ext))
}

fn stream_to(dest: &Path, mut reader: impl Read) -> Result<()> {
    write_atomic(dest, |w| std::io::copy(&mut reader, w).map(|_| ()))
}

/// Unpack `archive` into `out_dir`; returns the files written, in archive order.
/// Entries that would land outside `out_dir` (absolute paths, `..`) are refused.
pub fn extract(archive: &Path, out_dir: &Path) -> Result<Vec<PathBuf>> {
    let name = archive.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    std::fs::create_dir_all(out_dir).map_err(DataError::io(out_dir))?;
    let open = || std::fs::File::open(archive).map_err(DataError::io(archive));
    let bad = |what: String| DataError::Invalid { path: archive.into(), what };
    if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        untar(archive, flate2::read::GzDecoder::new(open()?), out_dir)
    } else if name.ends_with(".tar.xz") {
        let mut raw = Vec::new();
        lzma_rs::xz_decompress(&mut std::io::BufReader::new(open()?), &mut raw).map_err(|e| bad(format!("xz: {e}")))?;
        untar(archive, &raw[..], out_dir)
    } else if name.ends_with(".tar") {
        untar(archive, open()?, out_dir)
    } else if let Some(stem) = name.strip_suffix(".gz") {
        let dest = out_dir.join(stem);
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(open()?).read_to_end(&mut decoded).map_err(|e| bad(format!("gzip: {e}")))?;
        stream_to(&dest, &decoded[..])?;
        Ok(vec![dest])
    } else if let Some(stem) = name.strip_suffix(".xz") {
        let dest = out_dir.join(stem);
        let mut raw = Vec::new();
        lzma_rs::xz_decompress(&mut std::io::BufReader::new(open()?), &mut raw).map_err(|e| bad(format!("xz: {e}")))?;
        stream_to(&dest, &raw[..])?;
        Ok(vec![dest])
    } else if name.ends_with(".zip") {
        let mut zip = zip::ZipArchive::new(open()?).map_err(|e| bad(format!("zip: {e}")))?;
        let mut out = Vec::new();
        for i in 0..zip.len() {
            let mut entry = zip.by_index(i).map_err(|e| bad(format!("zip: {e}")))?;
            if entry.is_dir() {
                continue;
            }
            let rel = entry.enclosed_name().ok_or_else(|| bad(format!("unsafe path {:?}", entry.name())))?;
            let dest = out_dir.join(rel);
            if let Some(d) = dest.parent() {
                std::fs::create_dir_all(d).map_err(DataError::io(d))?;
            }
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(|e| bad(format!("zip entry {}: {e}", dest.display())))?;
            stream_to(&dest, &bytes[..])?;
            out.push(dest);
        }
        Ok(out)
    } else {
        Err(bad("not a .gz, .xz, .zip or .tar archive".into()))
    }
}

fn untar(archive: &Path, reader: impl Read, out_dir: &Path) -> Result<Vec<PathBuf>> {
    let bad = |e: std::io::Error| DataError::Invalid { path: archive.into(), what: format!("tar: {e}") };
    let mut tar = tar::Archive::new(reader);
    let mut out = Vec::new();
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let rel = entry.path().map_err(bad)?.into_owned();
        if rel.is_absolute() || rel.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
            return Err(DataError::Invalid { path: archive.into(), what: format!("unsafe path {}", rel.display()) });
        }
        let dest = out_dir.join(&rel);
        if let Some(d) = dest.parent() {
            std::fs::create_dir_all(d).map_err(DataError::io(d))?;
        }
        stream_to(&dest, &mut entry)?;
        out.push(dest);
    }
    Ok(out)
}
