//! Dataset manifests and `prepare`: from sources (downloaded, or local files) to
//! `train.bin`, `val.bin` and `meta.json` in `<data_dir>/<name>/`.
//!
//! A manifest (`datasets/<name>/manifest.json`, committed) names the sources with their
//! size and sha256, the tokenizer and the split. The built-in ones are compiled in, so the
//! data directory can live anywhere (`--data-dir` or `MLX_GPT_DATA_DIR`); a folder in the
//! data directory with its own `manifest.json` adds a dataset.

use crate::error::{DataError, Result};
use crate::token_file::{write_tokens, FileEntry, Meta, TokenDtype, TokenFile, META_FILE};
use crate::tokenizer::{CharTokenizer, Tokenizer, TokenizerSpec};
use std::collections::BTreeMap;
use std::path::Path;

pub use crate::manifest::{thousands, HubParquet, Manifest, PrepareOptions, Prepared, SourceFile, TokenizerKind};
pub use crate::own_text::{Gpt2Comparison, TokenizerReport, REPORT_FILE};

/// Whether `dir` holds a complete, consistent preparation.
pub fn is_prepared(dir: &Path) -> Option<Meta> {
    let meta = Meta::read(&dir.join(META_FILE)).ok()?;
    let ok = meta.files.keys().all(|split| TokenFile::open(dir, split).is_ok());
    ok.then_some(meta)
}

/// Prepare dataset `name` (a manifest's, or a new one made `--from` local text).
pub fn prepare(name: &str, opts: &PrepareOptions) -> Result<Prepared> {
    check_name(name)?;
    let dir = opts.data_dir.join(name);
    if opts.from.is_empty() {
        if let Some(meta) = is_prepared(&dir) {
            // Asked for another trained vocabulary: trained again on the recorded corpus.
            let other_vocab = opts
                .train_tokenizer
                .is_some_and(|v| v != meta.vocab_size || !matches!(meta.tokenizer, TokenizerSpec::Trained { .. }));
            if !other_vocab {
                return Ok(Prepared { dir, meta, already: true });
            }
        }
    }
    std::fs::create_dir_all(&dir).map_err(DataError::io(&dir))?;
    if let Some(vocab) = opts.train_tokenizer {
        return crate::own_text::prepare(name, &dir, opts, vocab);
    }
    let manifest = Manifest::find(name, &opts.data_dir)?;
    let manifest = match (manifest, opts.from.first()) {
        (Some(m), _) => m,
        (None, Some(_)) => Manifest {
            name: name.into(),
            description: "local text".into(),
            sources: vec![],
            hub_parquet: None,
            tokenizer: if opts.tokenizer.is_some() { TokenizerKind::Gpt2 } else { TokenizerKind::Char },
            train_fraction: Some(0.9),
            val_fraction: None,
            seed: None,
        },
        (None, None) => {
            return Err(DataError::UnknownDataset {
                name: name.into(),
                known: format!("{} (or --from PATH for your own text)", Manifest::builtin_names().join(", ")),
            })
        }
    };
    if manifest.hub_parquet.is_some() {
        return crate::openwebtext::prepare_hub(&manifest, &dir, opts);
    }
    let text = read_sources(&manifest, &dir, opts)?;
    let tokenizer = match manifest.tokenizer {
        TokenizerKind::Char => Tokenizer::Char(CharTokenizer::from_corpus(&text)),
        TokenizerKind::Gpt2 => Tokenizer::gpt2_from(opts.tokenizer.as_deref().ok_or_else(|| {
            DataError::Tokenizer(format!(
                "dataset '{name}' uses GPT-2's BPE: pass --tokenizer PATH (a tokenizer.json, or a folder with \
                 vocab.json + merges.txt or encoder.json + vocab.bpe), e.g. models/gpt2 after `cargo xtask fetch-gpt2`"
            ))
        })?)?,
    };
    let meta = write_split(&dir, &text, manifest.train_fraction.unwrap_or(0.9), &tokenizer)?;
    Ok(Prepared { dir, meta, already: false })
}

/// A dataset's name is a folder inside the data folder, never a path out of it: letters,
/// digits, `_`, `-` and `.`, not starting with a dot.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(DataError::BadDatasetName(name.into()))
    }
}

/// The dataset's text: local files (`--from`), or its sources, downloaded and verified.
fn read_sources(manifest: &Manifest, dir: &Path, opts: &PrepareOptions) -> Result<String> {
    let mut files = Vec::new();
    for from in &opts.from {
        if from.is_dir() {
            files.extend(crate::corpus::folder_files(from, &["txt"])?);
        } else {
            // A local copy of a manifest's single source must be that very file.
            if let ([src], [_]) = (&manifest.sources[..], &opts.from[..]) {
                if let Some(want) = &src.sha256 {
                    let got = crate::token_file::sha256_file(from)?;
                    if &got != want {
                        return Err(DataError::Invalid {
                            path: from.clone(),
                            what: format!(
                                "is not {}'s source file (sha256 {got}, expected {want}); for your own text \
                                 choose another dataset name",
                                manifest.name
                            ),
                        });
                    }
                }
            }
            files.push(from.clone());
        }
    }
    if opts.from.is_empty() {
        for src in &manifest.sources {
            let dest = dir.join(&src.file);
            let dest = if crate::extract::is_archive(&src.file) {
                opts.downloader.fetch(&src.url, &dest, src.sha256.as_deref())?;
                crate::extract::extract(&dest, &dir.join("extracted"))?
                    .into_iter()
                    .next()
                    .ok_or_else(|| DataError::Invalid { path: dest.clone(), what: "archive holds no file".into() })?
            } else {
                opts.downloader.fetch(&src.url, &dest, src.sha256.as_deref())?;
                dest
            };
            files.push(dest);
        }
    }
    let mut text = String::new();
    for f in &files {
        if std::fs::metadata(f).map_err(DataError::io(f))?.len() == 0 {
            return Err(DataError::Invalid { path: f.clone(), what: "is empty: there is no text to train on".into() });
        }
        let bytes = std::fs::read(f).map_err(DataError::io(f))?;
        let t = String::from_utf8(bytes)
            .map_err(|e| DataError::Invalid { path: f.clone(), what: format!("not UTF-8 text: {e}") })?;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&t);
    }
    Ok(text)
}

/// nanoGPT's split: the first `train_fraction` of the characters is train, the rest val;
/// each part is encoded on its own.
fn write_split(dir: &Path, text: &str, train_fraction: f64, tokenizer: &Tokenizer) -> Result<Meta> {
    // A stale meta.json must not vouch for the files rewritten below, nor the record of
    // a trained tokenizer's corpus for a dataset that no longer uses one.
    let _ = std::fs::remove_file(dir.join(META_FILE));
    let _ = std::fs::remove_file(dir.join(crate::own_text::CORPUS_FILE));
    let n_chars = text.chars().count();
    let cut_chars = (n_chars as f64 * train_fraction) as usize;
    let cut = text.char_indices().nth(cut_chars).map_or(text.len(), |(i, _)| i);
    let mut files = BTreeMap::new();
    for (split, part) in [("train", &text[..cut]), ("val", &text[cut..])] {
        let tokens = tokenizer.encode_parallel(part)?;
        let dtype = TokenDtype::for_vocab(tokenizer.vocab_size());
        let entry: FileEntry = write_tokens(&dir.join(format!("{split}.bin")), &tokens, dtype)?;
        tracing::info!("{split} has {} tokens", thousands(entry.tokens));
        files.insert(split.to_string(), entry);
    }
    let meta = Meta::new(tokenizer, files);
    // meta.json last: its presence marks a complete preparation.
    meta.write(&dir.join(META_FILE))?;
    Ok(meta)
}

/// The tokenizer a prepared dataset was made with (GPT-2 needs its files).
pub fn tokenizer_of(meta: &Meta, bpe: Option<&Path>) -> Result<Tokenizer> {
    Tokenizer::from_spec(&meta.tokenizer, bpe)
}

impl TokenizerSpec {
    /// Short name: `char`, `gpt2` or `trained BPE`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            TokenizerSpec::Char { .. } => "char",
            TokenizerSpec::Gpt2 => "gpt2",
            TokenizerSpec::Trained { .. } => "trained BPE",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_names_stay_inside_the_data_folder() {
        for bad in ["../x", "../../escape", "a/b", "/abs", ".hidden", "", "..", "a\\b"] {
            assert!(matches!(check_name(bad), Err(DataError::BadDatasetName(_))), "{bad:?}");
        }
        for good in ["shakespeare_char", "openwebtext", "my-text.v2"] {
            check_name(good).unwrap();
        }
    }

    /// Preparing into `dir/data` from the local file `from`, quietly.
    fn from_file(dir: &Path, from: &Path) -> PrepareOptions {
        PrepareOptions {
            data_dir: dir.join("data"),
            downloader: crate::download::Downloader::new().quiet(true),
            tokenizer: None,
            from: vec![from.to_path_buf()],
            train_tokenizer: None,
        }
    }

    #[test]
    fn a_local_copy_of_a_builtin_source_must_be_that_file() {
        let dir = std::env::temp_dir().join(format!("mlx-gpt-from-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mine = dir.join("mine.txt");
        std::fs::write(&mine, "not Shakespeare\n").unwrap();
        let err = prepare("shakespeare_char", &from_file(&dir, &mine)).unwrap_err().to_string();
        assert!(err.contains("mine.txt") && err.contains("is not shakespeare_char's source file"), "{err}");
        assert!(!err.contains("removed") && mine.exists(), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_empty_corpus_is_refused() {
        let dir = std::env::temp_dir().join(format!("mlx-gpt-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.txt");
        std::fs::write(&empty, "").unwrap();
        let err = prepare("mine", &from_file(&dir, &empty)).unwrap_err().to_string();
        assert!(err.contains("empty.txt") && err.contains("is empty"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn builtin_manifests_parse() {
        for name in Manifest::builtin_names() {
            let m = Manifest::find(name, Path::new("/nonexistent")).unwrap().unwrap();
            assert_eq!(m.name, name);
        }
        assert!(Manifest::find("nope", Path::new("/nonexistent")).unwrap().is_none());
        assert_eq!(thousands(1003854), "1,003,854");
        assert_eq!(thousands(65), "65");
    }
}
