//! Your text, your tokenizer: a user's corpus ([`crate::corpus`]) becomes a byte-level BPE
//! trained on it ([`crate::bpe_train`]) and token files in its vocabulary, in bounded
//! memory and resumably, whatever the corpus size.
//!
//! 1. `corpus.json` records what is being prepared: the corpus folder, each file's size and
//!    modification time, the vocabulary size. A run that finds the same record resumes; any
//!    difference starts over.
//! 2. The BPE is trained on the corpus as a stream of pieces; its memory grows with the
//!    number of distinct pieces of text (words, numbers, punctuation runs), not with the
//!    corpus (docs/data.md has the measurements). `tokenizer.json` is written when training
//!    ends; a resumed run reuses it.
//! 3. The stream is read again and encoded in parts of about [`PART_BYTES`] of text, each
//!    on every core: `parts/NNNNN.bin` (the tokens, a separator after each document), then
//!    `parts/NNNNN.json` (its counts) once the tokens are safely written. A resumed run
//!    skips the parts with their `.json`.
//! 4. The parts are joined into `train.bin` (the first 90 % of the tokens) and `val.bin`
//!    (the rest), each written under a temporary name and renamed; the report
//!    ([`TokenizerReport`], with GPT-2's BPE compared on the first part) and `meta.json`
//!    come last, and the parts are removed.

use crate::corpus::{Piece, Stream};
use crate::error::{DataError, Result};
use crate::manifest::{thousands, PrepareOptions, Prepared};
use crate::token_file::{hex, to_bytes, write_atomic, FileEntry, Meta, TokenDtype, META_FILE};
use crate::tokenizer::{Tokenizer, TRAINED_FILE};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Where [`TokenizerReport`] is saved, beside the token files.
pub const REPORT_FILE: &str = "tokenizer_report.json";

/// Where the record of the corpus a dataset was prepared from is kept.
pub const CORPUS_FILE: &str = "corpus.json";

/// About how much text one part of the encoding holds: what preparation keeps in memory
/// (with its tokens), and what an interrupted run loses at most.
pub const PART_BYTES: usize = 32 << 20;

/// The tokenizer learns its merges from the corpus's first this many bytes of text (as
/// nanochat's learns from its first two billion characters): the trainer keeps a count
/// per distinct piece of text, so this is what bounds its memory on a corpus of any size.
pub const TOKENIZER_TRAIN_BYTES: u64 = 2_000_000_000;

/// Share of the tokens in `train.bin`; the rest is `val.bin`.
const TRAIN_FRACTION: f64 = 0.9;

/// What a dataset was prepared from: a resumed run must find exactly this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CorpusRecord {
    /// The corpus (files or folders), absolute.
    from: Vec<PathBuf>,
    /// Each corpus file with its size and modification time (ns since 1970).
    files: Vec<(PathBuf, u64, u64)>,
    vocab_size: usize,
    part_bytes: usize,
    piece_bytes: usize,
}

impl CorpusRecord {
    fn of(from: &[PathBuf], vocab_size: usize, part_bytes: usize) -> Result<Self> {
        let from: Vec<PathBuf> =
            from.iter().map(|f| std::fs::canonicalize(f).map_err(DataError::io(f))).collect::<Result<_>>()?;
        let files = crate::corpus::files(&from)?
            .into_iter()
            .map(|f| {
                let m = std::fs::metadata(&f).map_err(DataError::io(&f))?;
                let ns = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos() as u64);
                Ok((f, m.len(), ns))
            })
            .collect::<Result<_>>()?;
        Ok(CorpusRecord { from, files, vocab_size, part_bytes, piece_bytes: crate::corpus::PIECE_BYTES })
    }

    fn read(dir: &Path) -> Option<Self> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(CORPUS_FILE)).ok()?).ok()
    }

    /// The corpus's paths, for messages.
    fn named(&self) -> PathBuf {
        let names: Vec<String> = self.from.iter().map(|p| p.display().to_string()).collect();
        PathBuf::from(names.join(", "))
    }

    /// Bytes of the corpus files, when they are all text (parquet is compressed).
    fn text_bytes(&self) -> Option<u64> {
        let text = self.files.iter().all(|(f, _, _)| f.extension().is_none_or(|x| x != "parquet"));
        text.then(|| self.files.iter().map(|(_, n, _)| n).sum())
    }
}

/// The counts of one encoded part, written once its tokens are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PartDone {
    /// sha256 of the tokenizer.json that encoded it: a part of another tokenizer is redone.
    tokenizer: String,
    documents: u64,
    bytes: u64,
    tokens: u64,
    /// GPT-2's BPE on the same text (first part only, when its files are at hand).
    gpt2_tokens: Option<u64>,
}

/// How a call went, for the tests of resumption.
#[derive(Debug)]
struct Outcome {
    /// `None` when stopped early.
    prepared: Option<Prepared>,
    trained: bool,
    parts_encoded: usize,
}

/// Prepare dataset folder `dir` from the corpus at `opts.from` (or, without it, the one
/// recorded by an earlier run) with a `vocab`-token BPE trained on it.
pub(crate) fn prepare(name: &str, dir: &Path, opts: &PrepareOptions, vocab: usize) -> Result<Prepared> {
    let outcome = run(name, dir, opts, vocab, PART_BYTES, None)?;
    tracing::debug!("'{name}': tokenizer trained: {}; parts encoded: {}", outcome.trained, outcome.parts_encoded);
    Ok(outcome.prepared.expect("runs to the end without a stop"))
}

fn run(
    name: &str,
    dir: &Path,
    opts: &PrepareOptions,
    vocab: usize,
    part_bytes: usize,
    stop_after_parts: Option<usize>,
) -> Result<Outcome> {
    let recorded = CorpusRecord::read(dir);
    let from = match (&opts.from[..], &recorded) {
        ([_, ..], _) => opts.from.clone(),
        ([], Some(r)) => r.from.clone(),
        ([], None) => {
            return Err(DataError::Tokenizer(format!(
                "dataset '{name}': a tokenizer is trained on your own text: give it with --from PATH (a file, or a \
                 folder of .txt, .jsonl or .parquet files)"
            )))
        }
    };
    // Checked before anything of an earlier preparation is removed.
    let min = crate::bpe_train::min_vocab(1);
    if vocab < min {
        return Err(DataError::Tokenizer(format!(
            "a vocabulary of {vocab} tokens is too small: a byte-level BPE needs the 256 bytes and the separator \
             ({min} at least)"
        )));
    }
    let record = CorpusRecord::of(&from, vocab, part_bytes)?;
    std::fs::create_dir_all(dir).map_err(DataError::io(dir))?;
    if recorded.as_ref() == Some(&record) {
        let ours =
            |m: &Meta| m.vocab_size == vocab && matches!(m.tokenizer, crate::tokenizer::TokenizerSpec::Trained { .. });
        if let Some(meta) = crate::datasets::is_prepared(dir).filter(|m| ours(m) && dir.join(REPORT_FILE).is_file()) {
            return Ok(Outcome {
                prepared: Some(Prepared { dir: dir.into(), meta, already: true }),
                trained: false,
                parts_encoded: 0,
            });
        }
        tracing::info!("resuming the preparation of '{name}' from {}", record.named().display());
    }
    // A stale meta.json must not vouch for the files rewritten below.
    remove_if_there(&dir.join(META_FILE))?;
    let parts_dir = dir.join("parts");
    if recorded.as_ref() != Some(&record) {
        for f in [TRAINED_FILE, REPORT_FILE, "train.bin", "val.bin"] {
            remove_if_there(&dir.join(f))?;
        }
        if parts_dir.exists() {
            std::fs::remove_dir_all(&parts_dir).map_err(DataError::io(&parts_dir))?;
        }
        let text = serde_json::to_string_pretty(&record).expect("the record serializes");
        write_atomic(&dir.join(CORPUS_FILE), |w| w.write_all(text.as_bytes()))?;
    }

    let tok_path = dir.join(TRAINED_FILE);
    let trained = !tok_path.is_file();
    let tokenizer = if trained {
        train(&record, &tok_path)?
    } else {
        tracing::info!("reusing the trained tokenizer {}", tok_path.display());
        Tokenizer::trained_from_file(&tok_path, None)?
    };

    std::fs::create_dir_all(&parts_dir).map_err(DataError::io(&parts_dir))?;
    let gpt2 = opts.tokenizer.as_deref().and_then(|p| match Tokenizer::gpt2_from(p) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!("GPT-2's BPE is not compared: {e}");
            None
        }
    });
    let dtype = TokenDtype::for_vocab(tokenizer.vocab_size());
    let tokenizer_sha = match tokenizer.spec() {
        crate::tokenizer::TokenizerSpec::Trained { sha256, .. } => sha256,
        _ => unreachable!("a trained tokenizer"),
    };
    let bar = crate::progress::bytes(record.text_bytes(), "encoding");
    let mut stream = Stream::open(&record.from)?;
    let mut parts = Vec::new();
    let mut parts_encoded = 0;
    loop {
        let mut pieces: Vec<Piece> = Vec::new();
        let mut bytes = 0;
        while bytes < part_bytes {
            let Some(piece) = stream.next().transpose()? else { break };
            bytes += piece.text.len();
            pieces.push(piece);
        }
        if pieces.is_empty() {
            break;
        }
        let k = parts.len();
        let (bin, marker) = (parts_dir.join(format!("{k:05}.bin")), parts_dir.join(format!("{k:05}.json")));
        // A finished part: its marker, by this tokenizer, and its tokens all there.
        let finished = |d: &PartDone| {
            let size = std::fs::metadata(&bin).map_or(0, |m| m.len());
            d.tokenizer == tokenizer_sha && size == d.tokens * dtype.width() as u64
        };
        let marked: Option<PartDone> =
            std::fs::read_to_string(&marker).ok().and_then(|t| serde_json::from_str(&t).ok());
        let done = match marked {
            Some(done) if finished(&done) => done,
            _ => {
                if stop_after_parts.is_some_and(|n| parts_encoded >= n) {
                    bar.finish_and_clear();
                    return Ok(Outcome { prepared: None, trained, parts_encoded });
                }
                let (tokens, done) =
                    encode_part(&pieces, &tokenizer, &tokenizer_sha, gpt2.as_ref().filter(|_| k == 0))?;
                let bytes = to_bytes(&tokens, dtype)?;
                write_atomic(&bin, |w| w.write_all(&bytes))?;
                let json = serde_json::to_string(&done).expect("counts serialize");
                write_atomic(&marker, |w| w.write_all(json.as_bytes()))?;
                parts_encoded += 1;
                done
            }
        };
        bar.inc(done.bytes);
        parts.push((bin, done.clone()));
    }
    bar.finish_and_clear();
    let bytes: u64 = parts.iter().map(|(_, d)| d.bytes).sum();
    if bytes == 0 {
        return Err(DataError::Invalid { path: record.named(), what: "holds no text".into() });
    }

    // Files that changed while they were read would make a dataset of neither version.
    if CorpusRecord::of(&record.from, vocab, part_bytes)? != record {
        return Err(DataError::Invalid {
            path: record.named(),
            what: "changed while it was being prepared; run the command again".into(),
        });
    }
    let total: u64 = parts.iter().map(|(_, d)| d.tokens).sum();
    let cut = (total as f64 * TRAIN_FRACTION) as u64;
    let token_bytes = tokenizer.token_bytes();
    let counts: Vec<(PathBuf, u64)> = parts.iter().map(|(p, d)| (p.clone(), d.tokens)).collect();
    let mut files = BTreeMap::new();
    let mut text_bytes = Vec::new();
    for (split, range) in [("train", 0..cut), ("val", cut..total)] {
        let (entry, text) = join_range(&counts, range, &dir.join(format!("{split}.bin")), dtype, &token_bytes)?;
        tracing::info!("{split} has {} tokens", thousands(entry.tokens));
        text_bytes.push(text as f64 / entry.tokens.max(1) as f64);
        files.insert(split.to_string(), entry);
    }
    let first = parts[0].1.clone();
    let report = TokenizerReport {
        vocab_size: tokenizer.vocab_size(),
        documents: parts.iter().map(|(_, d)| d.documents).sum(),
        bytes,
        train_bytes_per_token: text_bytes[0],
        val_bytes_per_token: text_bytes[1],
        gpt2: first.gpt2_tokens.map(|g| Gpt2Comparison {
            bytes: first.bytes,
            bytes_per_token: first.bytes as f64 / first.tokens.max(1) as f64,
            gpt2_bytes_per_token: first.bytes as f64 / g.max(1) as f64,
        }),
    };
    let text = serde_json::to_string_pretty(&report).expect("the report serializes");
    write_atomic(&dir.join(REPORT_FILE), |w| w.write_all(text.as_bytes()))?;
    tracing::info!("{}", report.summary());
    let meta = Meta::new(&tokenizer, files);
    meta.write(&dir.join(META_FILE))?;
    std::fs::remove_dir_all(&parts_dir).map_err(DataError::io(&parts_dir))?;
    Ok(Outcome { prepared: Some(Prepared { dir: dir.into(), meta, already: false }), trained, parts_encoded })
}

fn remove_if_there(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DataError::io(path)(e)),
        _ => Ok(()),
    }
}

/// Train the BPE on the corpus stream and write it to `path`.
fn train(record: &CorpusRecord, path: &Path) -> Result<Tokenizer> {
    let show = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing::info!(
        "training a {}-token BPE on {} ({} files)",
        record.vocab_size,
        record.named().display(),
        record.files.len()
    );
    let bar = crate::progress::bytes(record.text_bytes(), "counting pieces");
    let mut error = None;
    let mut bytes = 0u64;
    let texts = Stream::open(&record.from)?.map_while(|p| match p {
        Ok(_) if bytes >= TOKENIZER_TRAIN_BYTES => {
            tracing::info!("the tokenizer learns from the first {} bytes of text", thousands(bytes));
            None
        }
        Ok(p) => {
            bar.inc(p.text.len() as u64);
            bytes += p.text.len() as u64;
            Some(p.text)
        }
        Err(e) => {
            error = Some(e);
            None
        }
    });
    let trained = crate::bpe_train::train_bpe(texts, record.vocab_size, show);
    bar.finish_and_clear();
    if let Some(e) = error {
        return Err(e);
    }
    if bytes == 0 {
        return Err(DataError::Invalid { path: record.named(), what: "holds no text".into() });
    }
    let json = trained?.to_string(false).map_err(|e| DataError::Tokenizer(format!("saving the tokenizer: {e}")))?;
    write_atomic(path, |w| w.write_all(json.as_bytes()))?;
    Tokenizer::trained_from_json(json, None, &path.display().to_string())
}

/// The tokens of a part's pieces (a separator after each document's last), on every core,
/// with its counts; `gpt2` also counts GPT-2's tokens for the same text.
fn encode_part(
    pieces: &[Piece],
    tokenizer: &Tokenizer,
    tokenizer_sha: &str,
    gpt2: Option<&Tokenizer>,
) -> Result<(Vec<u32>, PartDone)> {
    let separator = tokenizer.eot().expect("a trained tokenizer has a separator");
    let encoded: Vec<Vec<u32>> = pieces
        .par_iter()
        .map(|p| {
            let mut ids = tokenizer.encode(&p.text)?;
            if p.ends_document {
                ids.push(separator);
            }
            Ok(ids)
        })
        .collect::<Result<_>>()?;
    let gpt2_tokens = match gpt2 {
        Some(g) => Some(
            pieces
                .par_iter()
                .map(|p| g.encode(&p.text).map(|ids| (ids.len() + p.ends_document as usize) as u64))
                .sum::<Result<u64>>()?,
        ),
        None => None,
    };
    let tokens = encoded.concat();
    let done = PartDone {
        tokenizer: tokenizer_sha.to_string(),
        documents: pieces.iter().filter(|p| p.ends_document).count() as u64,
        bytes: pieces.iter().map(|p| p.text.len() as u64).sum(),
        tokens: tokens.len() as u64,
        gpt2_tokens,
    };
    Ok((tokens, done))
}

/// Tokens `range` of the parts (each `(file, tokens)`, in order) into `dest`, atomically;
/// its `meta.json` entry and the bytes of text its tokens stand for.
fn join_range(
    parts: &[(PathBuf, u64)],
    range: std::ops::Range<u64>,
    dest: &Path,
    dtype: TokenDtype,
    token_bytes: &[u32],
) -> Result<(FileEntry, u64)> {
    let width = dtype.width() as u64;
    let mut hasher = Sha256::new();
    let mut text = 0u64;
    write_atomic(dest, |out| {
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        for (path, n) in parts {
            let (lo, hi) = (range.start.max(at), range.end.min(at + n));
            if lo < hi {
                let mut f = std::fs::File::open(path)?;
                f.seek(std::io::SeekFrom::Start((lo - at) * width))?;
                let mut left = (hi - lo) * width;
                while left > 0 {
                    let k = left.min(buf.len() as u64) as usize;
                    f.read_exact(&mut buf[..k])?;
                    hasher.update(&buf[..k]);
                    text += buf[..k]
                        .chunks_exact(width as usize)
                        .map(|t| token_bytes.get(dtype.decode(t) as usize).copied().unwrap_or(0) as u64)
                        .sum::<u64>();
                    out.write_all(&buf[..k])?;
                    left -= k as u64;
                }
            }
            at += n;
        }
        Ok(())
    })?;
    let tokens = range.end - range.start;
    Ok((FileEntry { tokens, bytes: tokens * width, sha256: hex(&hasher.finalize()) }, text))
}

/// How well a trained tokenizer compresses its corpus (nanochat's tok_eval): bytes of text
/// per token on the train and val splits, and against GPT-2's BPE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerReport {
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Documents in the corpus.
    pub documents: u64,
    /// UTF-8 bytes of text in the corpus.
    pub bytes: u64,
    /// Bytes per token on the train split (separators count as tokens of no text).
    pub train_bytes_per_token: f64,
    /// The same on the val split.
    pub val_bytes_per_token: f64,
    /// Both tokenizers on the same text, when GPT-2's files are at hand.
    pub gpt2: Option<Gpt2Comparison>,
}

/// The trained tokenizer and GPT-2's on the same text: the corpus's first part (all of a
/// corpus under [`PART_BYTES`]), a separator per document for both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpt2Comparison {
    /// Bytes of text compared.
    pub bytes: u64,
    /// The trained tokenizer's bytes per token on it.
    pub bytes_per_token: f64,
    /// GPT-2's BPE's bytes per token on it.
    pub gpt2_bytes_per_token: f64,
}

impl TokenizerReport {
    /// One line for the log.
    pub fn summary(&self) -> String {
        let gpt2 = match &self.gpt2 {
            Some(g) => format!(
                "; on {} bytes of it, {:.2} against GPT-2's BPE's {:.2} ({:+.1}%)",
                thousands(g.bytes),
                g.bytes_per_token,
                g.gpt2_bytes_per_token,
                (g.bytes_per_token / g.gpt2_bytes_per_token - 1.0) * 100.0
            ),
            None => "; GPT-2's BPE not compared (its files are not at hand: cargo xtask fetch-gpt2)".into(),
        };
        format!(
            "tokenizer: {} tokens; bytes per token: train {:.2}, val {:.2}{gpt2}",
            self.vocab_size, self.train_bytes_per_token, self.val_bytes_per_token
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A corpus of made-up words (syllables, so that there are many to merge): a `.txt`
    /// file and a `.jsonl` of short documents.
    fn corpus(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        let syllables = ["ka", "lo", "mi", "ne", "su", "ta", "ro", "vi", "de", "pa", "gu", "ze", "fo", "hi", "ju"];
        let mut state = 7u64;
        let mut next = |n: usize| (crate::batches::splitmix(&mut state) % n as u64) as usize;
        let mut text = String::new();
        for i in 0..6000 {
            for _ in 0..1 + next(3) {
                text.push_str(syllables[next(syllables.len())]);
            }
            text.push_str(if i % 13 == 12 { ".\n" } else { " " });
        }
        std::fs::write(dir.join("a.txt"), &text).unwrap();
        let docs: Vec<String> =
            text.lines().take(200).map(|l| serde_json::json!({ "text": l, "id": 1 }).to_string()).collect();
        std::fs::write(dir.join("b.jsonl"), docs.join("\n")).unwrap();
    }

    fn options(root: &Path, from: Vec<PathBuf>) -> PrepareOptions {
        PrepareOptions {
            data_dir: root.join("data"),
            downloader: crate::download::Downloader::new().quiet(true),
            tokenizer: None,
            from,
            train_tokenizer: Some(300),
        }
    }

    fn files_of(p: &Prepared) -> Vec<(String, Vec<u8>)> {
        ["train.bin", "val.bin", TRAINED_FILE, REPORT_FILE, META_FILE]
            .iter()
            .map(|f| (f.to_string(), std::fs::read(p.dir.join(f)).unwrap()))
            .collect()
    }

    #[test]
    fn an_interrupted_preparation_resumes_and_ends_as_an_uninterrupted_one() {
        let root = std::env::temp_dir().join(format!("mlx-gpt-own-text-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let from = root.join("corpus");
        corpus(&from);
        let opts = options(&root, vec![from.clone()]);
        let part = 4096;
        let whole = run("whole", &opts.data_dir.join("whole"), &opts, 300, part, None).unwrap();
        let parts = whole.parts_encoded;
        assert!(whole.trained && parts > 4, "{whole:?}");
        let whole = whole.prepared.unwrap();
        assert_eq!(whole.meta.vocab_size, 300);
        assert!(!whole.dir.join("parts").exists());

        // Stopped after two parts: the tokenizer and two parts are kept, no meta.json.
        let dir = opts.data_dir.join("resumed");
        let stopped = run("resumed", &dir, &opts, 300, part, Some(2)).unwrap();
        assert!(stopped.prepared.is_none() && stopped.trained && stopped.parts_encoded == 2);
        assert!(dir.join(TRAINED_FILE).is_file() && !dir.join(META_FILE).exists());
        let resumed = run("resumed", &dir, &opts, 300, part, None).unwrap();
        assert!(!resumed.trained && resumed.parts_encoded == parts - 2, "{resumed:?}");
        assert_eq!(files_of(&resumed.prepared.unwrap()), files_of(&whole));
        let again = run("resumed", &dir, &opts, 300, part, None).unwrap();
        assert!(again.prepared.unwrap().already);

        // Another vocabulary without --from: trained again on the recorded corpus.
        let p =
            crate::datasets::prepare("whole", &PrepareOptions { train_tokenizer: Some(320), ..options(&root, vec![]) })
                .unwrap();
        assert!(!p.already && p.meta.vocab_size == 320);
        // A changed corpus starts over.
        std::fs::write(from.join("c.txt"), "a new file of text\n").unwrap();
        let changed = run("resumed", &dir, &opts, 300, part, None).unwrap();
        assert!(changed.trained && changed.parts_encoded == parts, "{changed:?}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A vocabulary above 65,536 tokens: the token files are uint32 and decode back to the
    /// corpus, each document followed by the separator.
    #[test]
    fn a_vocabulary_over_65536_goes_through_uint32_files() {
        let root = std::env::temp_dir().join(format!("mlx-gpt-own-text-wide-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let from = root.join("corpus");
        std::fs::create_dir_all(&from).unwrap();
        // Random words: every adjacent pair is rare, so there are merges enough to learn.
        let mut state = 11u64;
        let mut next = |n: u64| crate::batches::splitmix(&mut state) % n;
        let mut docs: Vec<String> = (0..400)
            .map(|_| {
                let words: Vec<String> =
                    (0..120).map(|_| (0..3 + next(6)).map(|_| (b'a' + next(26) as u8) as char).collect()).collect();
                words.join(" ")
            })
            .collect();
        // The separator's text inside a document is text, not a document boundary.
        docs[3].push_str(" <|endoftext|> still the same document");
        let lines: Vec<String> = docs.iter().map(|d| serde_json::json!({ "text": d }).to_string()).collect();
        std::fs::write(from.join("words.jsonl"), lines.join("\n")).unwrap();
        let vocab = 70_000;
        let opts = PrepareOptions { train_tokenizer: Some(vocab), ..options(&root, vec![from.clone()]) };
        let p = crate::datasets::prepare("wide", &opts).unwrap();
        assert_eq!((p.meta.vocab_size, p.meta.dtype), (vocab, TokenDtype::U32));
        let tok = crate::datasets::tokenizer_of(&p.meta, Some(&p.dir)).unwrap();
        let mut ids = Vec::new();
        for split in ["train", "val"] {
            let (f, _) = crate::token_file::TokenFile::open(&p.dir, split).unwrap();
            ids.extend((0..f.len()).map(|i| f.get(i).unwrap()));
        }
        assert!(ids.iter().any(|&i| i >= 1 << 16), "no id above 65,535 was used");
        let separator = tok.eot().unwrap();
        assert_eq!(ids.iter().filter(|&&i| i == separator).count(), docs.len());
        let joined: String = docs.iter().map(|d| format!("{d}{}", crate::bpe_train::DOC_SEPARATOR)).collect();
        assert_eq!(tok.decode(&ids).unwrap(), joined);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn bad_corpora_are_named() {
        let root = std::env::temp_dir().join(format!("mlx-gpt-own-text-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let from = root.join("corpus");
        std::fs::create_dir_all(&from).unwrap();
        std::fs::write(from.join("empty.txt"), "").unwrap();
        let opts = options(&root, vec![from.clone()]);
        let e = crate::datasets::prepare("x", &opts).unwrap_err().to_string();
        assert!(e.contains("corpus") && e.contains("holds no text"), "{e}");
        std::fs::write(from.join("bin.txt"), [0u8, 159, 146, 150]).unwrap();
        let e = crate::datasets::prepare("x", &opts).unwrap_err().to_string();
        assert!(e.contains("bin.txt") && e.contains("a binary file?"), "{e}");
        let e = crate::datasets::prepare("y", &options(&root, vec![])).unwrap_err().to_string();
        assert!(e.contains("--from"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
