//! Tokenisers: nanoGPT's character vocabulary, GPT-2's byte-level BPE, and a byte-level
//! BPE trained on the dataset's own text (`bpe_train`), the last two through the
//! `tokenizers` crate. Encoding large texts runs on every core.

use crate::error::{DataError, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// GPT-2's `<|endoftext|>` id, appended after each document.
pub const GPT2_EOT: u32 = 50256;

/// The file a trained tokenizer is kept in, beside the token files.
pub const TRAINED_FILE: &str = "tokenizer.json";

/// Character-level vocabulary: the sorted unique characters of a corpus (nanoGPT's
/// `shakespeare_char`).
#[derive(Debug, Clone, PartialEq)]
pub struct CharTokenizer {
    itos: Vec<char>,
    stoi: HashMap<char, u32>,
}

impl CharTokenizer {
    /// The vocabulary of `text`: its distinct characters in code point order.
    pub fn from_corpus(text: &str) -> Self {
        let mut chars: Vec<char> = text.chars().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        chars.sort_unstable();
        Self::from_itos(chars)
    }

    /// A vocabulary from its id → character table.
    pub fn from_itos(itos: Vec<char>) -> Self {
        let stoi = itos.iter().enumerate().map(|(i, &c)| (c, i as u32)).collect();
        CharTokenizer { itos, stoi }
    }

    /// id → character.
    pub fn itos(&self) -> &[char] {
        &self.itos
    }

    /// Encode; a character outside the vocabulary is an error naming it and its position.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        text.chars()
            .enumerate()
            .map(|(i, c)| {
                self.stoi.get(&c).copied().ok_or_else(|| {
                    DataError::Tokenizer(format!(
                        "character {c:?} (U+{:04X}) at position {i} is not in the {}-character vocabulary",
                        c as u32,
                        self.itos.len()
                    ))
                })
            })
            .collect()
    }
}

/// Where a BPE tokenizer was loaded from, recorded in `meta.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TokenizerSpec {
    /// Character-level, with its table.
    Char {
        /// id → character
        itos: Vec<char>,
    },
    /// GPT-2 byte-level BPE (vocabulary 50,257).
    Gpt2,
    /// A byte-level BPE trained on the dataset's text, kept in [`TRAINED_FILE`] beside the
    /// token files (`meta.json` records its sha256). Where the spec must stand alone (a
    /// checkpoint's `state.json`, which `sample` reads), `json` holds the file itself.
    Trained {
        /// sha256 of the tokenizer.json, lowercase hex.
        sha256: String,
        /// The tokenizer.json itself, where the spec travels without the dataset.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        json: Option<String>,
    },
}

/// A tokenizer of either kind.
#[derive(Clone)]
pub enum Tokenizer {
    /// Character-level.
    Char(CharTokenizer),
    /// GPT-2 byte-level BPE.
    Gpt2(Box<tokenizers::Tokenizer>),
    /// A byte-level BPE trained on the dataset's text ([`crate::bpe_train`]).
    Trained(Box<Trained>),
}

/// A trained tokenizer with the file it was read from.
#[derive(Clone)]
pub struct Trained {
    tok: tokenizers::Tokenizer,
    /// The tokenizer.json text.
    json: String,
    /// Its sha256.
    sha256: String,
    /// The document separator's id.
    separator: u32,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tokenizer::Char(c) => write!(f, "Tokenizer::Char({} chars)", c.itos.len()),
            Tokenizer::Gpt2(_) => write!(f, "Tokenizer::Gpt2"),
            Tokenizer::Trained(t) => write!(f, "Tokenizer::Trained({} tokens)", t.tok.get_vocab_size(true)),
        }
    }
}

/// Files that make up a GPT-2 BPE tokenizer, in the layouts people have.
fn bpe_files(path: &Path) -> Result<Option<(PathBuf, PathBuf)>> {
    if path.is_file() {
        return Ok(None); // a tokenizer.json
    }
    for (vocab, merges) in [("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe")] {
        let (v, m) = (path.join(vocab), path.join(merges));
        if v.is_file() && m.is_file() {
            return Ok(Some((v, m)));
        }
    }
    if path.join("tokenizer.json").is_file() {
        return Ok(None);
    }
    Err(DataError::Tokenizer(format!(
        "{}: no GPT-2 tokenizer found: expected tokenizer.json, vocab.json + merges.txt, or encoder.json + vocab.bpe \
         (get them with `cargo xtask fetch-gpt2`)",
        path.display()
    )))
}

impl Tokenizer {
    /// GPT-2's BPE from a `tokenizer.json`, or a folder holding one of: `tokenizer.json`,
    /// `vocab.json` + `merges.txt` (Hugging Face), `encoder.json` + `vocab.bpe` (OpenAI).
    pub fn gpt2_from(path: &Path) -> Result<Self> {
        let err =
            |e: Box<dyn std::error::Error + Send + Sync>| DataError::Tokenizer(format!("{}: {e}", path.display()));
        let tok = match bpe_files(path)? {
            None => {
                let file = if path.is_file() { path.to_path_buf() } else { path.join("tokenizer.json") };
                tokenizers::Tokenizer::from_file(&file).map_err(err)?
            }
            Some((vocab, merges)) => {
                let bpe = tokenizers::models::bpe::BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
                    .build()
                    .map_err(err)?;
                let mut tok = tokenizers::Tokenizer::new(bpe);
                // GPT-2: no prefix space, GPT-2's split regex, bytes mapped to printable chars.
                let byte_level = tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, true, true);
                tok.with_pre_tokenizer(Some(byte_level));
                tok.with_decoder(Some(byte_level));
                tok
            }
        };
        let v = tok.get_vocab_size(true);
        if v != GPT2_EOT as usize + 1 {
            return Err(DataError::Tokenizer(format!(
                "{}: vocabulary has {v} tokens, GPT-2's has 50257",
                path.display()
            )));
        }
        Ok(Tokenizer::Gpt2(Box::new(tok)))
    }

    /// A trained tokenizer from the text of its tokenizer.json (`origin` names where it
    /// came from in errors); checked against `sha256` when given.
    pub fn trained_from_json(json: String, sha256: Option<&str>, origin: &str) -> Result<Self> {
        use sha2::Digest;
        let got = crate::token_file::hex(&sha2::Sha256::digest(json.as_bytes()));
        if let Some(want) = sha256.filter(|w| *w != got) {
            return Err(DataError::Tokenizer(format!(
                "{origin}: sha256 {got}, but the dataset was tokenized with {want}: the tokenizer was replaced; \
                 prepare the dataset again"
            )));
        }
        let mut tok: tokenizers::Tokenizer =
            json.parse().map_err(|e| DataError::Tokenizer(format!("{origin}: not a tokenizer.json: {e}")))?;
        // A literal "<|endoftext|>" in a document is text like any other (tiktoken's
        // encode_ordinary); only data preparation puts the separator's id between documents.
        tok.set_encode_special_tokens(true);
        let separator = tok.token_to_id(crate::bpe_train::DOC_SEPARATOR).ok_or_else(|| {
            DataError::Tokenizer(format!("{origin}: has no {} token", crate::bpe_train::DOC_SEPARATOR))
        })?;
        Ok(Tokenizer::Trained(Box::new(Trained { tok, json, sha256: got, separator })))
    }

    /// A trained tokenizer from its file, checked against `sha256` when given.
    pub fn trained_from_file(path: &Path, sha256: Option<&str>) -> Result<Self> {
        let json = std::fs::read_to_string(path).map_err(DataError::io(path))?;
        Self::trained_from_json(json, sha256, &path.display().to_string())
    }

    /// Rebuild the tokenizer `meta.json` describes: `dir` supplies GPT-2's files, or holds
    /// a trained tokenizer's [`TRAINED_FILE`] (a spec that carries its file needs neither).
    pub fn from_spec(spec: &TokenizerSpec, bpe_dir: Option<&Path>) -> Result<Self> {
        match spec {
            TokenizerSpec::Trained { sha256, json: Some(json) } => {
                Self::trained_from_json(json.clone(), Some(sha256), "the checkpoint's tokenizer")
            }
            TokenizerSpec::Trained { sha256, json: None } => match bpe_dir {
                Some(dir) => Self::trained_from_file(&dir.join(TRAINED_FILE), Some(sha256)),
                None => Err(DataError::Tokenizer(format!(
                    "this dataset uses its own trained tokenizer: its {TRAINED_FILE} is in the dataset's folder"
                ))),
            },
            TokenizerSpec::Char { itos } => Ok(Tokenizer::Char(CharTokenizer::from_itos(itos.clone()))),
            TokenizerSpec::Gpt2 => match bpe_dir {
                Some(dir) => Self::gpt2_from(dir),
                None => Err(DataError::Tokenizer(
                    "this dataset uses GPT-2's BPE: pass the tokenizer files (--tokenizer PATH)".into(),
                )),
            },
        }
    }

    /// What `meta.json` records.
    pub fn spec(&self) -> TokenizerSpec {
        match self {
            Tokenizer::Char(c) => TokenizerSpec::Char { itos: c.itos.clone() },
            Tokenizer::Gpt2(_) => TokenizerSpec::Gpt2,
            Tokenizer::Trained(t) => TokenizerSpec::Trained { sha256: t.sha256.clone(), json: None },
        }
    }

    /// [`Tokenizer::spec`] that stands alone: a trained tokenizer's file included (for a
    /// checkpoint, which `sample` reads without the dataset).
    pub fn standalone_spec(&self) -> TokenizerSpec {
        match self {
            Tokenizer::Trained(t) => TokenizerSpec::Trained { sha256: t.sha256.clone(), json: Some(t.json.clone()) },
            other => other.spec(),
        }
    }

    /// Number of token ids.
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Char(c) => c.itos.len(),
            Tokenizer::Gpt2(t) => t.get_vocab_size(true),
            Tokenizer::Trained(t) => t.tok.get_vocab_size(true),
        }
    }

    /// The end-of-text token, if the vocabulary has one.
    pub fn eot(&self) -> Option<u32> {
        match self {
            Tokenizer::Char(_) => None,
            Tokenizer::Gpt2(_) => Some(GPT2_EOT),
            Tokenizer::Trained(t) => Some(t.separator),
        }
    }

    /// Encode a piece of text on the calling thread. Text that looks like a special token
    /// is encoded as ordinary text (tiktoken's `encode_ordinary`, as nanoGPT uses).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Tokenizer::Char(c) => c.encode(text),
            Tokenizer::Gpt2(t) => t
                .encode_fast(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| DataError::Tokenizer(format!("GPT-2 BPE: {e}"))),
            Tokenizer::Trained(t) => t
                .tok
                .encode_fast(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| DataError::Tokenizer(format!("trained BPE: {e}"))),
        }
    }

    /// Encode a large text on every core: it is cut into pieces at boundaries where the
    /// tokenizer would split anyway, so the result equals [`Tokenizer::encode`].
    pub fn encode_parallel(&self, text: &str) -> Result<Vec<u32>> {
        if let Tokenizer::Trained(_) = self {
            // GPT-4's split pattern keeps a line break with the punctuation before it, so
            // those cuts are not neutral for it: one piece (data preparation runs the
            // documents in parallel instead).
            return self.encode(text);
        }
        let pieces = split_for_parallel(text, 1 << 16);
        let parts: Vec<Vec<u32>> = pieces.par_iter().map(|p| self.encode(p)).collect::<Result<_>>()?;
        Ok(parts.concat())
    }

    /// The number of UTF-8 bytes of text each token id stands for, by id; 0 for special
    /// tokens (GPT-2's `<|endoftext|>`), which stand for no text. Bits per byte divides
    /// by these, so models with different tokenizers compare.
    pub fn token_bytes(&self) -> Vec<u32> {
        match self {
            Tokenizer::Char(c) => c.itos.iter().map(|ch| ch.len_utf8() as u32).collect(),
            Tokenizer::Gpt2(t) => byte_level_token_bytes(t, GPT2_EOT),
            Tokenizer::Trained(t) => byte_level_token_bytes(&t.tok, t.separator),
        }
    }

    /// Decode ids to text.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            Tokenizer::Char(c) => ids
                .iter()
                .map(|&i| {
                    c.itos.get(i as usize).copied().ok_or_else(|| {
                        DataError::Tokenizer(format!("token {i} is outside the {}-character vocabulary", c.itos.len()))
                    })
                })
                .collect(),
            Tokenizer::Gpt2(t) => t.decode(ids, false).map_err(|e| DataError::Tokenizer(format!("GPT-2 BPE: {e}"))),
            Tokenizer::Trained(t) => {
                t.tok.decode(ids, false).map_err(|e| DataError::Tokenizer(format!("trained BPE: {e}")))
            }
        }
    }
}

/// Bytes of each token of a byte-level BPE: each byte is spelled as one printable
/// character, so a token's byte count is its string's character count; the separator
/// (a special token, no text) counts none.
fn byte_level_token_bytes(t: &tokenizers::Tokenizer, separator: u32) -> Vec<u32> {
    (0..t.get_vocab_size(true) as u32)
        .map(|id| match t.id_to_token(id) {
            Some(_) if id == separator => 0,
            Some(s) => s.chars().count() as u32,
            None => 0,
        })
        .collect()
}

/// Cut `text` into pieces of about `target` bytes, each ending with a non-whitespace
/// character followed by a newline. Every tokenizer here ends a token at such a point (a
/// character tokenizer everywhere; GPT-2's pre-tokenizer regex never joins a non-space
/// character to the whitespace after it), so pieces encode independently.
pub fn split_for_parallel(text: &str, target: usize) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut pieces = Vec::new();
    let mut start = 0;
    while start < bytes.len() {
        let mut cut = (start + target).min(bytes.len());
        while cut < bytes.len() && !(bytes[cut] == b'\n' && cut > start && !bytes[cut - 1].is_ascii_whitespace()) {
            cut += 1;
        }
        // `cut` is at a '\n' (an ASCII byte, so a char boundary) or the end.
        pieces.push(&text[start..cut]);
        start = cut;
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn char_vocabulary_is_sorted_and_rejects_unknown_characters() {
        let t = CharTokenizer::from_corpus("hello world");
        assert_eq!(t.itos(), &[' ', 'd', 'e', 'h', 'l', 'o', 'r', 'w']);
        assert_eq!(t.encode("hold").unwrap(), vec![3, 5, 4, 1]);
        let err = t.encode("help!").unwrap_err().to_string();
        assert!(err.contains("'p'") && err.contains("position 3"), "{err}");
    }

    #[test]
    fn char_token_bytes_add_up_to_the_text() {
        let text = "héllo → wörld";
        let t = Tokenizer::Char(CharTokenizer::from_corpus(text));
        let bytes = t.token_bytes();
        let ids = t.encode(text).unwrap();
        assert_eq!(ids.iter().map(|&i| bytes[i as usize] as usize).sum::<usize>(), text.len());
    }

    #[test]
    fn pieces_cover_the_text() {
        let text = "a b\n\nc d\n e\nfg\n";
        for target in 1..8 {
            let pieces = split_for_parallel(text, target);
            assert_eq!(pieces.concat(), text);
            for p in &pieces[1..] {
                assert!(p.starts_with('\n'));
            }
        }
    }

    proptest! {
        #[test]
        fn char_round_trip(text in "\\PC{0,200}") {
            let t = Tokenizer::Char(CharTokenizer::from_corpus(&text));
            let ids = t.encode_parallel(&text).unwrap();
            prop_assert_eq!(ids.len(), text.chars().count());
            prop_assert_eq!(t.decode(&ids).unwrap(), text);
        }
    }
}
