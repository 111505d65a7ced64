//! HellaSwag (Zellers et al., 2019), the validation set: 10,042 sentence completions, each
//! a context and four endings of which one (`label`) is right. A model is scored
//! zero-shot by how likely it finds each ending after the context (`mlx_gpt_train::hellaswag`).
//!
//! The file comes from the authors' repository (`rowanz/hellaswag`, `data/`), as llm.c and
//! nanoGPT-era projects take it. The only content hash its authors publish is the file's
//! git blob id in that repository (SHA-1 of `blob <size>\0<bytes>`); a download is checked
//! against it before it is kept, like every other download here.

use crate::download::Downloader;
use crate::error::{DataError, Result};
use serde::Deserialize;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// Where the validation set is published.
pub const URL: &str = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl";

/// Its git blob id at the repository's last commit (a29ff8e, 2020-05-28).
pub const GIT_BLOB_SHA1: &str = "0f5ee25d72216f12317d5d8a7b92deafa423d81e";

/// Examples in the validation set.
pub const VAL_EXAMPLES: usize = 10_042;

/// The file's name inside `data_dir/hellaswag/`.
pub const FILE: &str = "hellaswag_val.jsonl";

/// One example: the context, four endings, and the index of the right one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// The text to continue (`ctx`).
    pub ctx: String,
    /// The four candidate endings.
    pub endings: [String; 4],
    /// Which ending is right (0–3).
    pub label: usize,
}

#[derive(Deserialize)]
struct Line {
    ctx: String,
    endings: Vec<String>,
    label: serde_json::Value,
}

/// The git blob id of `bytes`: what `git hash-object` prints.
pub fn git_blob_sha1(bytes: &[u8]) -> String {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    crate::token_file::hex(&h.finalize())
}

/// The validation file's path under `data_dir`.
pub fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join("hellaswag").join(FILE)
}

/// Download the validation set into `data_dir/hellaswag/` (or copy it from `from`), and
/// check it against [`GIT_BLOB_SHA1`]. A file that fails the check is removed and named.
pub fn fetch(data_dir: &Path, downloader: &Downloader, from: Option<&Path>) -> Result<PathBuf> {
    let dest = path_in(data_dir);
    let dir = dest.parent().expect("inside data_dir");
    std::fs::create_dir_all(dir).map_err(DataError::io(dir))?;
    match from {
        Some(src) => {
            let bytes = std::fs::read(src).map_err(DataError::io(src))?;
            check(src, &bytes)?;
            crate::token_file::write_atomic(&dest, |w| std::io::Write::write_all(w, &bytes))?;
        }
        None => {
            downloader.fetch(URL, &dest, None)?;
            let bytes = std::fs::read(&dest).map_err(DataError::io(&dest))?;
            if let Err(e) = check(&dest, &bytes) {
                let _ = std::fs::remove_file(&dest);
                return Err(e);
            }
        }
    }
    Ok(dest)
}

fn check(path: &Path, bytes: &[u8]) -> Result<()> {
    let got = git_blob_sha1(bytes);
    if got != GIT_BLOB_SHA1 {
        return Err(DataError::Invalid {
            path: path.into(),
            what: format!(
                "is not HellaSwag's validation set ({} bytes, git blob {got}; expected {GIT_BLOB_SHA1}): \
                 a truncated or changed download; fetch it again",
                bytes.len()
            ),
        });
    }
    Ok(())
}

/// Read examples from a HellaSwag JSON-lines file, the first `limit` when given. A line
/// that is not an example (cut short, a missing field, not four endings, a label out of
/// range) is an error naming the file and the line.
pub fn load(path: &Path, limit: Option<usize>) -> Result<Vec<Example>> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::Invalid {
            path: path.into(),
            what: "not found: get HellaSwag with `cargo xtask fetch-data hellaswag`".into(),
        },
        _ => DataError::Io { path: path.into(), source: e },
    })?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        if limit.is_some_and(|n| out.len() >= n) {
            break;
        }
        let line = line.map_err(DataError::io(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: String| DataError::Invalid { path: path.into(), what: format!("line {}: {what}", i + 1) };
        let l: Line = serde_json::from_str(&line).map_err(|e| bad(format!("not a HellaSwag example ({e})")))?;
        let label = match &l.label {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .filter(|&n| n < 4)
        .ok_or_else(|| bad(format!("label {} is not 0, 1, 2 or 3", l.label)))? as usize;
        let endings: [String; 4] =
            l.endings.try_into().map_err(|e: Vec<String>| bad(format!("{} endings, expected 4", e.len())))?;
        out.push(Example { ctx: l.ctx, endings, label });
    }
    if out.is_empty() {
        return Err(DataError::Invalid { path: path.into(), what: "holds no example".into() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_ids_match_git() {
        // `printf 'hello\n' | git hash-object --stdin`, and the empty blob.
        assert_eq!(git_blob_sha1(b"hello\n"), "ce013625030ba8dba906f756967f9e9ca394464a");
        assert_eq!(git_blob_sha1(b""), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
    }

    #[test]
    fn examples_load_and_bad_lines_are_named() {
        let d = std::env::temp_dir().join(format!("mlx-gpt-hellaswag-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join(FILE);
        let good = r#"{"ind": 24, "ctx": "A man is sitting on a roof. he", "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.", "is holding a rubik's cube.", "starts pulling up roofing on a roof."], "label": 3}"#;
        std::fs::write(&p, format!("{good}\n{good}\n")).unwrap();
        let ex = load(&p, None).unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!((ex[0].label, ex[0].endings[1].as_str()), (3, "is ripping level tiles off."));
        assert_eq!(load(&p, Some(1)).unwrap().len(), 1);
        // Cut short by an interrupted copy: named with its line.
        std::fs::write(&p, format!("{good}\n{}", &good[..40])).unwrap();
        let e = load(&p, None).unwrap_err().to_string();
        assert!(e.contains(FILE) && e.contains("line 2"), "{e}");
        std::fs::write(&p, good.replace("\"label\": 3", "\"label\": 7")).unwrap();
        assert!(load(&p, None).unwrap_err().to_string().contains("label 7"));
        std::fs::write(&p, good.replace("\"is holding a rubik's cube.\", ", "")).unwrap();
        assert!(load(&p, None).unwrap_err().to_string().contains("3 endings"));
        let e = load(&d.join("missing.jsonl"), None).unwrap_err().to_string();
        assert!(e.contains("cargo xtask fetch-data hellaswag"), "{e}");
        // A file that is not the published one is refused and named.
        let e = fetch(&d, &Downloader::new().quiet(true), Some(&p)).unwrap_err().to_string();
        assert!(e.contains("is not HellaSwag's validation set"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
