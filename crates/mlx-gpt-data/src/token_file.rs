//! nanoGPT's token files (`train.bin`, `val.bin`: little-endian uint16, no header) and the
//! `meta.json` sidecar that makes them checkable; little-endian uint32 where a vocabulary
//! has more than 65,536 tokens ([`TokenDtype`]). Layout: docs/data.md.

use crate::error::{DataError, Result};
use crate::tokenizer::TokenizerSpec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Version of the `meta.json` layout.
pub const META_VERSION: u32 = 1;
/// Name of the sidecar file.
pub const META_FILE: &str = "meta.json";

/// How a token file stores its ids: nanoGPT's uint16, or uint32 for a vocabulary that
/// does not fit 16 bits. Written in `meta.json` as `"uint16-le"` or `"uint32-le"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenDtype {
    /// Little-endian uint16: nanoGPT's `np.uint16` memmap layout, the default.
    #[serde(rename = "uint16-le")]
    U16,
    /// Little-endian uint32.
    #[serde(rename = "uint32-le")]
    U32,
}

impl TokenDtype {
    /// uint16 where every id of a `vocab`-token vocabulary fits, else uint32.
    pub fn for_vocab(vocab: usize) -> Self {
        if vocab <= 1 << 16 {
            TokenDtype::U16
        } else {
            TokenDtype::U32
        }
    }
    /// Bytes per token.
    pub fn width(self) -> usize {
        match self {
            TokenDtype::U16 => 2,
            TokenDtype::U32 => 4,
        }
    }
    /// The name in `meta.json`.
    pub fn name(self) -> &'static str {
        match self {
            TokenDtype::U16 => "uint16-le",
            TokenDtype::U32 => "uint32-le",
        }
    }
    /// Whether every id below `vocab` fits.
    pub fn holds(self, vocab: usize) -> bool {
        (vocab as u64) <= 1u64 << (8 * self.width())
    }
    pub(crate) fn decode(self, bytes: &[u8]) -> u32 {
        match self {
            TokenDtype::U16 => u16::from_le_bytes([bytes[0], bytes[1]]) as u32,
            TokenDtype::U32 => u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        }
    }
}

/// One token file as recorded in `meta.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Number of tokens.
    pub tokens: u64,
    /// Size in bytes (tokens × the dtype's width).
    pub bytes: u64,
    /// sha256 of the file, lowercase hex.
    pub sha256: String,
}

/// `meta.json`: what the token files in a dataset folder hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// Layout version ([`META_VERSION`]).
    pub format_version: u32,
    /// How the token files store ids: `"uint16-le"` (nanoGPT's `np.uint16` memmap
    /// layout) unless the vocabulary needs `"uint32-le"`.
    pub dtype: TokenDtype,
    /// Number of token ids; every token is below it.
    pub vocab_size: usize,
    /// The tokenizer (with the character table for character vocabularies).
    pub tokenizer: TokenizerSpec,
    /// Token files by split name (`train`, `val`).
    pub files: BTreeMap<String, FileEntry>,
}

impl Meta {
    /// The sidecar for token files made with `tokenizer`.
    pub fn new(tokenizer: &crate::tokenizer::Tokenizer, files: BTreeMap<String, FileEntry>) -> Meta {
        Meta {
            format_version: META_VERSION,
            dtype: TokenDtype::for_vocab(tokenizer.vocab_size()),
            vocab_size: tokenizer.vocab_size(),
            tokenizer: tokenizer.spec(),
            files,
        }
    }

    /// Read and check a `meta.json`.
    pub fn read(path: &Path) -> Result<Meta> {
        let text = std::fs::read_to_string(path).map_err(DataError::io(path))?;
        let meta: Meta = serde_json::from_str(&text)
            .map_err(|e| DataError::Invalid { path: path.into(), what: format!("not a valid meta.json: {e}") })?;
        let bad = |what: String| Err(DataError::Invalid { path: path.into(), what });
        if meta.format_version != META_VERSION {
            return bad(format!("format_version {} is not supported (expected {META_VERSION})", meta.format_version));
        }
        if meta.vocab_size == 0 || !meta.dtype.holds(meta.vocab_size) {
            return bad(format!("vocab_size {} does not fit {} token files", meta.vocab_size, meta.dtype.name()));
        }
        if let TokenizerSpec::Char { itos } = &meta.tokenizer {
            if itos.len() != meta.vocab_size {
                return bad(format!("itos has {} characters but vocab_size is {}", itos.len(), meta.vocab_size));
            }
        }
        Ok(meta)
    }

    /// Write atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("meta serializes");
        write_atomic(path, |w| w.write_all(text.as_bytes()))
    }
}

/// Write a file through a temporary name in the same folder, then rename
/// (`mlx_gpt_runtime::fs::write_atomic_with`, with the path in the error).
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    mlx_gpt_runtime::fs::write_atomic_with(path, fill).map_err(DataError::io(path))
}

/// Encode tokens as little-endian bytes of `dtype`; a token that does not fit is an error.
pub fn to_bytes(tokens: &[u32], dtype: TokenDtype) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(tokens.len() * dtype.width());
    for (i, &t) in tokens.iter().enumerate() {
        match dtype {
            TokenDtype::U16 => {
                let t = u16::try_from(t).map_err(|_| {
                    DataError::Tokenizer(format!("token {t} at index {i} does not fit a uint16 token file"))
                })?;
                out.extend_from_slice(&t.to_le_bytes());
            }
            TokenDtype::U32 => out.extend_from_slice(&t.to_le_bytes()),
        }
    }
    Ok(out)
}

/// Write `tokens` as a token file of `dtype`, atomically; returns its `meta.json` entry.
pub fn write_tokens(path: &Path, tokens: &[u32], dtype: TokenDtype) -> Result<FileEntry> {
    let bytes = to_bytes(tokens, dtype)?;
    write_atomic(path, |w| w.write_all(&bytes))?;
    Ok(FileEntry { tokens: tokens.len() as u64, bytes: bytes.len() as u64, sha256: hex(&Sha256::digest(&bytes)) })
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(DataError::io(path))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(DataError::io(path))?;
    Ok(hex(&h.finalize()))
}

/// A token file opened read-only (into memory, or read where needed when large) and
/// checked against `meta.json`.
#[derive(Debug)]
pub struct TokenFile {
    storage: Storage,
    /// Bytes when opened.
    bytes: u64,
    /// How ids are stored.
    dtype: TokenDtype,
    path: PathBuf,
}

/// Up to this size a token file is read into memory; beyond it, read where needed.
///
/// Never mapped: a mapped file that someone truncates in place while training reads it
/// (re-preparing into the same folder with a tool that does not replace the file) kills
/// the process with SIGBUS and no message. Read into memory, the run keeps the tokens it
/// opened; read with `pread` (files of OpenWebText's size, 17 GB, which would cost their
/// size in memory), a shrunk file is a short read and a named error. A batch is a dozen
/// reads of a few KiB, nothing beside a training step.
pub const READ_INTO_MEMORY_BELOW: u64 = 1 << 30;

/// The file's bytes: in memory, or the open file to read from.
#[derive(Debug)]
enum Storage {
    Heap(Vec<u8>),
    File(std::fs::File),
}

impl TokenFile {
    /// Open `dir/<split>.bin`, checking it against `dir/meta.json`: the split is listed,
    /// the size matches, and every token is below the vocabulary size.
    pub fn open(dir: &Path, split: &str) -> Result<(TokenFile, Meta)> {
        let meta = Meta::read(&dir.join(META_FILE))?;
        let path = dir.join(format!("{split}.bin"));
        let entry = meta.files.get(split).ok_or_else(|| DataError::Invalid {
            path: dir.join(META_FILE),
            what: format!(
                "lists no '{split}' file (has: {})",
                meta.files.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        })?;
        let file = Self::open_unchecked(&path, meta.dtype)?;
        if file.bytes != entry.bytes || entry.bytes != meta.dtype.width() as u64 * entry.tokens {
            return Err(DataError::Size {
                path,
                what: format!(
                    "{} bytes, but meta.json records {} tokens in {} bytes of {}; prepare the dataset again",
                    file.bytes,
                    entry.tokens,
                    entry.bytes,
                    meta.dtype.name()
                ),
            });
        }
        if let Some((i, t)) = file.first_out_of_range(meta.vocab_size)? {
            return Err(DataError::Invalid {
                path,
                what: format!("token {t} at index {i} is not below vocab_size {}", meta.vocab_size),
            });
        }
        Ok((file, meta))
    }

    /// Open a token file without a `meta.json` (e.g. one nanoGPT prepared).
    pub fn open_unchecked(path: &Path, dtype: TokenDtype) -> Result<TokenFile> {
        let mut f = std::fs::File::open(path).map_err(DataError::io(path))?;
        let meta = f.metadata().map_err(DataError::io(path))?;
        if !meta.is_file() {
            return Err(DataError::Invalid { path: path.into(), what: "is not a file".into() });
        }
        let bytes = meta.len();
        let storage = if bytes < READ_INTO_MEMORY_BELOW {
            let mut buf = Vec::with_capacity(bytes as usize);
            std::io::Read::read_to_end(&mut f, &mut buf).map_err(DataError::io(path))?;
            Storage::Heap(buf)
        } else {
            Storage::File(f)
        };
        let bytes = match &storage {
            Storage::Heap(v) => v.len() as u64,
            Storage::File(_) => bytes,
        };
        if bytes % dtype.width() as u64 != 0 {
            return Err(DataError::Size {
                path: path.into(),
                what: format!("{bytes} bytes is not a whole number of {} tokens", dtype.name()),
            });
        }
        Ok(TokenFile { storage, bytes, dtype, path: path.into() })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        (self.bytes / self.dtype.width() as u64) as usize
    }

    /// Whether the file holds no token.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Bytes `start..start + buf.len()` of the file into `buf`. A file read from disk that
    /// shrank since it was opened is an error naming it.
    fn read_at(&self, start: u64, buf: &mut [u8]) -> Result<()> {
        match &self.storage {
            Storage::Heap(v) => {
                buf.copy_from_slice(&v[start as usize..start as usize + buf.len()]);
                Ok(())
            }
            Storage::File(f) => read_exact_at(f, buf, start).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => DataError::Size {
                    path: self.path.clone(),
                    what: format!(
                        "was {} bytes when opened and is shorter now: it was changed while in use; \
                         prepare the dataset again (into a new folder, or with cargo xtask fetch-data, \
                         which replaces files whole) and resume",
                        self.bytes
                    ),
                },
                _ => DataError::Io { path: self.path.clone(), source: e },
            }),
        }
    }

    /// Token `i`.
    pub fn get(&self, i: usize) -> Result<u32> {
        let w = self.dtype.width();
        let mut b = [0u8; 4];
        self.read_at((w * i) as u64, &mut b[..w])?;
        Ok(self.dtype.decode(&b))
    }

    /// Copy tokens `start..start + out.len()` into `out` as i32 (MLX's index type).
    pub fn copy_i32(&self, start: usize, out: &mut [i32]) -> Result<()> {
        let (dtype, w) = (self.dtype, self.dtype.width());
        // Ids at or above 2³¹ would not survive as i32: no vocabulary is that large, and
        // TokenFile::open has checked every id against the vocabulary.
        let convert = |out: &mut [i32], bytes: &[u8]| {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(w)) {
                *o = dtype.decode(b) as i32;
            }
        };
        match &self.storage {
            Storage::Heap(v) => convert(out, &v[w * start..w * (start + out.len())]),
            Storage::File(_) => {
                let mut bytes = vec![0u8; w * out.len()];
                self.read_at((w * start) as u64, &mut bytes)?;
                convert(out, &bytes);
            }
        }
        Ok(())
    }

    fn first_out_of_range(&self, vocab: usize) -> Result<Option<(usize, u32)>> {
        use rayon::prelude::*;
        let (dtype, w) = (self.dtype, self.dtype.width());
        if vocab as u64 >= 1u64 << (8 * w) {
            return Ok(None);
        }
        const CHUNK: u64 = 1 << 22; // a multiple of every width
        let scan = |c: usize, chunk: &[u8]| {
            chunk.chunks_exact(w).enumerate().find_map(|(i, b)| {
                let t = dtype.decode(b);
                (t as usize >= vocab).then_some((c * CHUNK as usize / w + i, t))
            })
        };
        match &self.storage {
            Storage::Heap(v) => Ok(v.par_chunks(CHUNK as usize).enumerate().find_map_first(|(c, ch)| scan(c, ch))),
            Storage::File(_) => (0..self.bytes.div_ceil(CHUNK) as usize)
                .into_par_iter()
                .map(|c| {
                    let start = c as u64 * CHUNK;
                    let mut buf = vec![0u8; CHUNK.min(self.bytes - start) as usize];
                    self.read_at(start, &mut buf)?;
                    Ok(scan(c, &buf))
                })
                .find_map_first(|r: Result<Option<(usize, u32)>>| match r {
                    Ok(None) => None,
                    Ok(Some(hit)) => Some(Ok(Some(hit))),
                    Err(e) => Some(Err(e)),
                })
                .unwrap_or(Ok(None)),
        }
    }
}

#[cfg(unix)]
fn read_exact_at(f: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(f: &std::fs::File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        match std::os::windows::fs::FileExt::seek_read(f, buf, offset)? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Truncating the file in place under an open token file (what killed a run with
    /// SIGBUS when it was mapped) leaves the opened tokens readable.
    #[test]
    fn a_file_truncated_underneath_stays_readable() {
        let p = std::env::temp_dir().join(format!("mlx-gpt-trunc-{}.bin", std::process::id()));
        let tokens: Vec<u32> = (0..5000).map(|i| i % 65).collect();
        write_tokens(&p, &tokens, TokenDtype::U16).unwrap();
        let f = TokenFile::open_unchecked(&p, TokenDtype::U16).unwrap();
        std::fs::File::create(&p).unwrap(); // truncates in place, same inode
        let mut out = vec![0i32; 5000];
        f.copy_i32(0, &mut out).unwrap();
        assert!(out.iter().zip(&tokens).all(|(a, &b)| *a as u32 == b));
        std::fs::remove_file(&p).unwrap();
    }

    /// A file too large to read into memory is read where needed; truncated underneath,
    /// the next read is an error naming it, not SIGBUS.
    #[test]
    fn a_large_file_truncated_underneath_is_a_named_error() {
        let p = std::env::temp_dir().join(format!("mlx-gpt-trunc-large-{}.bin", std::process::id()));
        let tokens: Vec<u32> = (0..5000).map(|i| i % 65).collect();
        write_tokens(&p, &tokens, TokenDtype::U16).unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let f = TokenFile { storage: Storage::File(f), bytes: 10_000, dtype: TokenDtype::U16, path: p.clone() };
        assert_eq!(f.first_out_of_range(65).unwrap(), None);
        assert_eq!(f.first_out_of_range(64).unwrap(), Some((64, 64)));
        let mut out = vec![0i32; 100];
        f.copy_i32(4900, &mut out).unwrap();
        assert!(out.iter().zip(&tokens[4900..]).all(|(a, &b)| *a as u32 == b));
        assert_eq!(f.get(130).unwrap(), 0);
        std::fs::File::create(&p).unwrap(); // truncates in place, same inode
        let e = f.copy_i32(4900, &mut out).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()) && e.contains("changed while in use"), "{e}");
        std::fs::remove_file(&p).unwrap();
    }
    use proptest::prelude::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mlx-gpt-tf-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn prepare(d: &Path, tokens: &[u32], vocab: usize) -> Meta {
        let dtype = TokenDtype::for_vocab(vocab);
        let entry = write_tokens(&d.join("train.bin"), tokens, dtype).unwrap();
        let meta = Meta {
            format_version: META_VERSION,
            dtype,
            vocab_size: vocab,
            // Characters from U+4E00 on (the surrogates skipped): enough distinct ones for
            // any vocabulary here.
            tokenizer: TokenizerSpec::Char { itos: (0x4E00u32..).filter_map(char::from_u32).take(vocab).collect() },
            files: [("train".to_string(), entry)].into(),
        };
        meta.write(&d.join(META_FILE)).unwrap();
        meta
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
        /// Both widths: a vocabulary up to 65,536 in nanoGPT's uint16, a larger one in
        /// uint32; ids, length and meta.json come back as written, through every reader.
        #[test]
        fn token_file_round_trip(
            tokens in proptest::collection::vec(0u32..500, 0..2000), wide in proptest::bool::ANY, case in 0u32..1000,
        ) {
            let d = dir(&format!("rt{case}"));
            // A vocabulary above 65,535: ids spread over all of it.
            let (vocab, tokens): (usize, Vec<u32>) =
                if wide { (70_000, tokens.iter().map(|t| t * 139).collect()) } else { (500, tokens) };
            let meta = prepare(&d, &tokens, vocab);
            prop_assert_eq!(meta.dtype, if wide { TokenDtype::U32 } else { TokenDtype::U16 });
            let (f, back) = TokenFile::open(&d, "train").unwrap();
            prop_assert_eq!(back, meta);
            prop_assert_eq!(f.len(), tokens.len());
            let got: Vec<u32> = (0..f.len()).map(|i| f.get(i).unwrap()).collect();
            prop_assert_eq!(&got, &tokens);
            let mut all = vec![0i32; tokens.len()];
            f.copy_i32(0, &mut all).unwrap();
            prop_assert!(all.iter().zip(&tokens).all(|(a, &b)| *a as u32 == b));
            std::fs::remove_dir_all(&d).unwrap();
        }

        #[test]
        fn corrupted_meta_or_files_are_rejected(cut in 1usize..10, flip in 0usize..100, case in 0u32..1000) {
            let d = dir(&format!("bad{case}"));
            prepare(&d, &(0..100u32).map(|i| i % 50).collect::<Vec<_>>(), 50);
            let bin = d.join("train.bin");
            let bytes = std::fs::read(&bin).unwrap();
            // A truncated file.
            std::fs::write(&bin, &bytes[..bytes.len() - 2 * cut]).unwrap();
            let e = TokenFile::open(&d, "train").unwrap_err().to_string();
            prop_assert!(e.contains("train.bin") && e.contains("meta.json records"), "{}", e);
            // A token beyond the vocabulary.
            let mut bad = bytes.clone();
            bad[2 * flip] = 200;
            std::fs::write(&bin, &bad).unwrap();
            let e = TokenFile::open(&d, "train").unwrap_err().to_string();
            prop_assert!(e.contains(&format!("token 200 at index {flip}")), "{}", e);
            // A meta.json that is not JSON, or lies about its vocabulary.
            std::fs::write(&bin, &bytes).unwrap();
            let meta_path = d.join(META_FILE);
            let text = std::fs::read_to_string(&meta_path).unwrap();
            std::fs::write(&meta_path, &text[..text.len() / 2]).unwrap();
            prop_assert!(TokenFile::open(&d, "train").unwrap_err().to_string().contains("not a valid meta.json"));
            std::fs::write(&meta_path, text.replace("\"vocab_size\": 50", "\"vocab_size\": 70000")).unwrap();
            prop_assert!(TokenFile::open(&d, "train").unwrap_err().to_string().contains("vocab_size 70000"));
            // A dtype that is not one, or that does not match the file's size.
            std::fs::write(&meta_path, text.replace("uint16-le", "float16")).unwrap();
            let e = TokenFile::open(&d, "train").unwrap_err().to_string();
            prop_assert!(e.contains("float16") && e.contains("uint32-le"), "{}", e);
            std::fs::write(&meta_path, text.replace("uint16-le", "uint32-le")).unwrap();
            let e = TokenFile::open(&d, "train").unwrap_err().to_string();
            prop_assert!(e.contains("train.bin") && e.contains("uint32-le"), "{}", e);
            prop_assert!(TokenFile::open(&d, "val").is_err());
            std::fs::remove_dir_all(&d).unwrap();
        }
    }
}
