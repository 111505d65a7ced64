//! A user's corpus as a stream of text: `.txt` files (one document each), `.jsonl` (one
//! JSON object per line, its `text` field a document) and `.parquet` (its `text` column),
//! given as one file or a folder of them.
//!
//! The stream holds one piece of text at a time, never the corpus: documents come in
//! pieces of about [`PIECE_BYTES`], cut where GPT-4's split pattern (and GPT-2's) cuts
//! anyway, so that encoding the pieces gives the tokens of the whole document: after a
//! line break that a visible ASCII character follows; failing that (a long line), before a
//! space between two ASCII letters; failing both for [`HARD_CUT_PIECES`] pieces' worth of
//! text (no line break, no space between letters), anywhere between two characters, the
//! one place where the tokens can differ from the whole's. A `.txt` file is read in
//! blocks, a `.jsonl` a line at a time, a parquet file a row group at a time; memory is
//! bounded whatever the file (but for one `.jsonl` line, which is parsed whole).

use crate::error::{DataError, Result};
use std::collections::VecDeque;
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// The field (`.jsonl`) or column (`.parquet`) that holds a document's text.
pub const TEXT_FIELD: &str = "text";

/// About how much of a document one piece holds. Encoding a piece takes some hundred bytes
/// per byte of it for a moment (the tokenizer's offsets and token strings), so pieces are
/// kept small.
pub const PIECE_BYTES: usize = 256 << 10;

/// A piece without a place to cut safely is cut anyway at this many times
/// [`PIECE_BYTES`] (see the module's documentation).
pub const HARD_CUT_PIECES: usize = 64;

/// The corpus files at `paths`, in the order given: a file itself, a folder's `.txt`,
/// `.jsonl` and `.parquet` files sorted by name (so that the documents come in a fixed
/// order).
pub fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    if paths.is_empty() {
        return Err(DataError::Invalid { path: PathBuf::new(), what: "no corpus given".into() });
    }
    let mut out = Vec::new();
    for p in paths {
        out.extend(files_at(p)?);
    }
    Ok(out)
}

/// The files of folder `dir` whose extension is one of `extensions`, sorted by name; none
/// is an error naming the folder and the extensions (also `datasets`' `.txt` folders).
pub(crate) fn folder_files(dir: &Path, extensions: &[&str]) -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(DataError::io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| extensions.iter().any(|e| x == *e)))
        .collect();
    out.sort();
    if out.is_empty() {
        let names: Vec<String> = extensions.iter().map(|e| format!(".{e}")).collect();
        let names = match names.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        return Err(DataError::Invalid { path: dir.into(), what: format!("holds no {names} file") });
    }
    Ok(out)
}

/// The corpus files at one path (see [`files`]).
fn files_at(path: &Path) -> Result<Vec<PathBuf>> {
    let readable = |p: &Path| p.extension().is_some_and(|x| x == "txt" || x == "jsonl" || x == "parquet");
    if path.is_dir() {
        return folder_files(path, &["txt", "jsonl", "parquet"]);
    }
    if !path.is_file() {
        return Err(DataError::io(path)(std::io::ErrorKind::NotFound.into()));
    }
    if !readable(path) {
        return Err(DataError::Invalid { path: path.into(), what: "is not a .txt, .jsonl or .parquet file".into() });
    }
    Ok(vec![path.to_path_buf()])
}

/// A piece of a document, in corpus order; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// The text.
    pub text: String,
    /// Whether the document ends with this piece (a separator follows it).
    pub ends_document: bool,
}

/// The corpus at a path as [`Piece`]s, read as they are asked for. An error (a file that
/// is not UTF-8 text, a `.jsonl` line without a text field, a parquet file without a text
/// column) names the file, and the line where there is one.
pub struct Stream {
    files: VecDeque<PathBuf>,
    current: Option<Source>,
    piece_bytes: usize,
    /// The rest of a long document cut into pieces.
    pending: VecDeque<Piece>,
}

impl Stream {
    /// The corpus at `paths` (see [`files`]).
    pub fn open(paths: &[PathBuf]) -> Result<Stream> {
        Self::with_piece_bytes(paths, PIECE_BYTES)
    }

    /// The same, with pieces of about `piece_bytes`.
    pub fn with_piece_bytes(paths: &[PathBuf], piece_bytes: usize) -> Result<Stream> {
        let piece_bytes = piece_bytes.max(1);
        Ok(Stream { files: files(paths)?.into(), current: None, piece_bytes, pending: VecDeque::new() })
    }
}

impl Iterator for Stream {
    type Item = Result<Piece>;

    fn next(&mut self) -> Option<Result<Piece>> {
        loop {
            if let Some(p) = self.pending.pop_front() {
                return Some(Ok(p));
            }
            if let Some(source) = &mut self.current {
                match source.next() {
                    Some(Ok(p)) if p.text.is_empty() => continue,
                    Some(Ok(p)) if p.text.len() > 2 * self.piece_bytes => {
                        let (bytes, mut start) = (p.text.as_bytes(), 0);
                        while let Some(cut) = next_cut(&bytes[start..], self.piece_bytes, true, &mut 0) {
                            let text = p.text[start..start + cut].to_string();
                            self.pending.push_back(Piece { text, ends_document: false });
                            start += cut;
                        }
                        let text = p.text[start..].to_string();
                        self.pending.push_back(Piece { text, ends_document: p.ends_document });
                        continue;
                    }
                    Some(item) => return Some(item),
                    None => self.current = None,
                }
            }
            let path = self.files.pop_front()?;
            match Source::open(path, self.piece_bytes) {
                Ok(s) => self.current = Some(s),
                Err(e) => {
                    self.files.clear();
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Every document of the corpus at `path`, in order, whole (for small corpora and tests;
/// preparation reads the [`Stream`]). Empty documents are dropped; a corpus with no text
/// at all is an error.
pub fn read_documents(path: &Path) -> Result<Vec<String>> {
    let mut docs = Vec::new();
    let mut doc = String::new();
    for piece in Stream::open(&[path.to_path_buf()])? {
        let piece = piece?;
        doc.push_str(&piece.text);
        if piece.ends_document {
            docs.push(std::mem::take(&mut doc));
        }
    }
    if docs.is_empty() {
        return Err(DataError::Invalid { path: path.into(), what: "holds no text".into() });
    }
    Ok(docs)
}

/// Where the first piece of `bytes` ends, at least `piece_bytes` in, or `None` when more
/// bytes are needed to decide (or, with `complete` — no more will follow — when the rest
/// is one piece). The places, in the order met: after a line break that a visible ASCII
/// character follows; from 4 × `piece_bytes` on, also before a space between two ASCII
/// letters; at [`HARD_CUT_PIECES`] × `piece_bytes`, between any two characters. `scan` is
/// how far earlier calls on the same bytes (now perhaps more of them) have looked.
fn next_cut(bytes: &[u8], piece_bytes: usize, complete: bool, scan: &mut usize) -> Option<usize> {
    let min = piece_bytes.max(1);
    let mut i = (*scan).max(min);
    while i < bytes.len() {
        let (before, b) = (bytes[i - 1], bytes[i]);
        if before == b'\n' && b.is_ascii_graphic() {
            return Some(i);
        }
        if i >= 4 * min && b == b' ' && before.is_ascii_alphabetic() {
            match bytes.get(i + 1) {
                Some(next) if next.is_ascii_alphabetic() => return Some(i),
                None if !complete => break, // decided by the next byte, once read
                _ => {}
            }
        }
        i += 1;
    }
    *scan = i;
    if bytes.len() > HARD_CUT_PIECES * min {
        // The last character boundary (not a UTF-8 continuation byte) within the bound.
        return (1..=HARD_CUT_PIECES * min).rev().find(|&i| bytes[i] & 0xC0 != 0x80);
    }
    None
}

/// One file being read.
enum Source {
    Text(TextPieces),
    Jsonl {
        path: PathBuf,
        lines: std::io::BufReader<std::fs::File>,
        line: usize,
    },
    Parquet {
        path: PathBuf,
        reader: parquet::file::serialized_reader::SerializedFileReader<std::fs::File>,
        group: usize,
        rows: VecDeque<String>,
    },
}

impl Source {
    fn open(path: PathBuf, piece_bytes: usize) -> Result<Source> {
        let file = std::fs::File::open(&path).map_err(DataError::io(&path))?;
        Ok(match path.extension().and_then(|x| x.to_str()) {
            Some("jsonl") => Source::Jsonl { lines: std::io::BufReader::new(file), path, line: 0 },
            Some("parquet") => {
                let reader = parquet::file::serialized_reader::SerializedFileReader::new(file)
                    .map_err(|e| DataError::Parquet { path: path.clone(), reason: e.to_string() })?;
                Source::Parquet { path, reader, group: 0, rows: VecDeque::new() }
            }
            _ => Source::Text(TextPieces {
                path,
                reader: std::io::BufReader::new(file),
                offset: 0,
                buf: Vec::new(),
                scan: 0,
                piece_bytes,
                eof: false,
                done: false,
            }),
        })
    }

    fn next(&mut self) -> Option<Result<Piece>> {
        match self {
            Source::Text(t) => t.next(),
            Source::Jsonl { path, lines, line } => {
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    *line += 1;
                    match lines.read_until(b'\n', &mut buf) {
                        Ok(0) => return None,
                        Ok(_) => {}
                        Err(e) => return Some(Err(DataError::io(path.as_path())(e))),
                    }
                    if buf.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return Some(jsonl_text(path, *line, &buf).map(|text| Piece { text, ends_document: true }));
                }
            }
            Source::Parquet { path, reader, group, rows } => {
                use parquet::file::reader::FileReader;
                while rows.is_empty() {
                    if *group >= reader.metadata().num_row_groups() {
                        return None;
                    }
                    if let Err(e) = parquet_group(path, reader, *group, rows) {
                        return Some(Err(e));
                    }
                    *group += 1;
                }
                rows.pop_front().map(|text| Ok(Piece { text, ends_document: true }))
            }
        }
    }
}

fn jsonl_text(path: &Path, line: usize, bytes: &[u8]) -> Result<String> {
    let bad = |what: String| DataError::Invalid { path: path.into(), what: format!("line {line}: {what}") };
    let text = std::str::from_utf8(bytes).map_err(|e| bad(not_utf8(e.valid_up_to() as u64)))?;
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
    match v.get(TEXT_FIELD) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(bad(format!("the \"{TEXT_FIELD}\" field is not a string: {other}"))),
        None => Err(bad(format!("no \"{TEXT_FIELD}\" field"))),
    }
}

fn not_utf8(offset: u64) -> String {
    format!("is not UTF-8 text (invalid byte at offset {offset}): a binary file?")
}

/// The texts of row group `group` of a parquet file, appended to `rows`.
fn parquet_group(
    path: &Path,
    reader: &parquet::file::serialized_reader::SerializedFileReader<std::fs::File>,
    group: usize,
    rows: &mut VecDeque<String>,
) -> Result<()> {
    use parquet::file::reader::FileReader;
    let pq = |e: parquet::errors::ParquetError| DataError::Parquet { path: path.into(), reason: e.to_string() };
    let g = reader.get_row_group(group).map_err(pq)?;
    for row in g.get_row_iter(None).map_err(pq)? {
        let row = row.map_err(pq)?;
        // A row without text (null) is no document.
        let null = row.get_column_iter().any(|(n, f)| n == TEXT_FIELD && matches!(f, parquet::record::Field::Null));
        if !null {
            rows.push_back(row_text(&row, TEXT_FIELD, path)?);
        }
    }
    Ok(())
}

/// A `.txt` file in pieces (see the module's documentation), read in blocks.
struct TextPieces {
    path: PathBuf,
    reader: std::io::BufReader<std::fs::File>,
    /// Bytes of the file already returned (for the offset of a bad byte).
    offset: u64,
    /// Read and not yet returned.
    buf: Vec<u8>,
    /// How far `next_cut` has looked into `buf`.
    scan: usize,
    piece_bytes: usize,
    eof: bool,
    done: bool,
}

impl TextPieces {
    fn next(&mut self) -> Option<Result<Piece>> {
        if self.done {
            return None;
        }
        let cut = loop {
            if let Some(cut) = next_cut(&self.buf, self.piece_bytes, self.eof, &mut self.scan) {
                break cut;
            }
            if self.eof {
                self.done = true;
                break self.buf.len();
            }
            let mut block = [0u8; 1 << 16];
            match std::io::Read::read(&mut self.reader, &mut block) {
                Ok(0) => self.eof = true,
                Ok(n) => self.buf.extend_from_slice(&block[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(DataError::io(self.path.as_path())(e))),
            }
        };
        self.scan = 0;
        let rest = self.buf.split_off(cut);
        let bytes = std::mem::replace(&mut self.buf, rest);
        if bytes.is_empty() {
            return None;
        }
        let bad = |what: String| Some(Err(DataError::Invalid { path: self.path.clone(), what }));
        if let Some(at) = bytes.iter().position(|&b| b == 0) {
            self.done = true;
            return bad(format!("holds a NUL byte at offset {}: a binary file?", self.offset + at as u64));
        }
        let len = bytes.len() as u64;
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                self.done = true;
                return bad(not_utf8(self.offset + e.utf8_error().valid_up_to() as u64));
            }
        };
        self.offset += len;
        Some(Ok(Piece { text, ends_document: self.done }))
    }
}

/// The text in `column` of a parquet row of the file `path`; a missing column, or one
/// that is not text, is an error naming the file and the column.
pub(crate) fn row_text(row: &parquet::record::Row, column: &str, path: &Path) -> Result<String> {
    use parquet::record::Field;
    match row.get_column_iter().find(|(name, _)| name.as_str() == column).map(|(_, f)| f) {
        Some(Field::Str(s)) => Ok(s.clone()),
        Some(other) => Err(DataError::Parquet {
            path: path.into(),
            reason: format!("column '{column}' holds {other:?}, not text"),
        }),
        None => Err(DataError::Parquet { path: path.into(), reason: format!("no column named '{column}'") }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mlx-gpt-corpus-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn documents_of_a_folder_in_order_and_bad_input_named() {
        let d = scratch("folder");
        std::fs::write(d.join("b.txt"), "second file\n").unwrap();
        std::fs::write(d.join("a.jsonl"), "{\"text\": \"one\"}\n\n{\"text\": \"two\", \"id\": 3}\n{\"text\": \"\"}")
            .unwrap();
        std::fs::write(d.join("notes.md"), "ignored").unwrap();
        assert_eq!(read_documents(&d).unwrap(), ["one", "two", "second file\n"]);
        // Several paths: in the order given, each folder's files by name.
        let listed = files(&[d.join("b.txt"), d.clone()]).unwrap();
        assert_eq!(listed, [d.join("b.txt"), d.join("a.jsonl"), d.join("b.txt")]);
        assert!(files(&[]).is_err());
        std::fs::write(d.join("c.jsonl"), "{\"text\": \"fine\"}\n{\"body\": \"x\"}\n").unwrap();
        let e = read_documents(&d).unwrap_err().to_string();
        assert!(e.contains("c.jsonl") && e.contains("line 2") && e.contains("\"text\""), "{e}");
        std::fs::remove_file(d.join("c.jsonl")).unwrap();
        std::fs::write(d.join("d.txt"), [0x66, 0x6f, 0xff, 0xfe]).unwrap();
        let e = read_documents(&d).unwrap_err().to_string();
        assert!(e.contains("d.txt") && e.contains("not UTF-8") && e.contains("offset 2"), "{e}");
        let empty = d.join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::write(empty.join("e.txt"), "").unwrap();
        assert!(read_documents(&empty).unwrap_err().to_string().contains("holds no text"));
        assert!(read_documents(&d.join("missing.txt")).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_bad_byte_deep_in_a_long_file_is_placed() {
        let d = scratch("offset");
        let mut bytes = "Line of text.\n".repeat(1000).into_bytes();
        bytes.extend_from_slice(&[b'x', 0xc3]);
        std::fs::write(d.join("long.txt"), &bytes).unwrap();
        let e =
            Stream::with_piece_bytes(std::slice::from_ref(&d), 100).unwrap().find_map(|p| p.err()).unwrap().to_string();
        assert!(e.contains("long.txt") && e.contains("offset 14001"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_parquet_file_without_a_text_column_is_named() {
        use parquet::data_type::ByteArrayType;
        use parquet::file::writer::SerializedFileWriter;
        let d = scratch("parquet");
        let write = |name: &str, column: &str, rows: &[&str]| {
            let schema = std::sync::Arc::new(
                parquet::schema::parser::parse_message_type(&format!(
                    "message doc {{ required binary {column} (UTF8); }}"
                ))
                .unwrap(),
            );
            let file = std::fs::File::create(d.join(name)).unwrap();
            let mut w = SerializedFileWriter::new(file, schema, Default::default()).unwrap();
            let mut g = w.next_row_group().unwrap();
            let mut c = g.next_column().unwrap().unwrap();
            let values: Vec<parquet::data_type::ByteArray> = rows.iter().map(|r| (*r).into()).collect();
            c.typed::<ByteArrayType>().write_batch(&values, None, None).unwrap();
            c.close().unwrap();
            g.close().unwrap();
            w.close().unwrap();
        };
        write("a.parquet", "text", &["first row", "second row"]);
        assert_eq!(read_documents(&d).unwrap(), ["first row", "second row"]);
        write("b.parquet", "body", &["x"]);
        let e = read_documents(&d).unwrap_err().to_string();
        assert!(e.contains("b.parquet") && e.contains("no column named 'text'"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn tokenizer() -> &'static tokenizers::Tokenizer {
        static TOK: std::sync::OnceLock<tokenizers::Tokenizer> = std::sync::OnceLock::new();
        TOK.get_or_init(|| {
            let docs = ["Hello there, friend!\n\n  Indented line.\nWhat's up?\n"; 20];
            crate::bpe_train::train_bpe(docs.iter(), 320, false).unwrap()
        })
    }

    fn pieces_of(name: &str, file: &str, content: &[u8], piece_bytes: usize) -> Vec<Piece> {
        let d = scratch(name);
        std::fs::write(d.join(file), content).unwrap();
        let pieces = Stream::with_piece_bytes(std::slice::from_ref(&d), piece_bytes).unwrap().collect::<Result<_>>();
        std::fs::remove_dir_all(&d).unwrap();
        pieces.unwrap()
    }

    /// One long line: cut before spaces between letters (the tokens unchanged), and text
    /// with no such place cut at 64 pieces' worth: memory stays bounded.
    #[test]
    fn long_lines_are_cut_and_stay_bounded() {
        let ids = |s: &str| tokenizer().encode_fast(s, false).unwrap().get_ids().to_vec();
        let words: String = (0..20_000).map(|i| ["lorem ", "ipsum ", "dolor, ", "sit "][i % 4]).collect();
        for file in ["w.txt", "w.jsonl"] {
            let content =
                if file == "w.txt" { words.clone() } else { serde_json::json!({ "text": words }).to_string() };
            let pieces = pieces_of("long-words", file, content.as_bytes(), 1000);
            assert!(pieces.len() > 20 && pieces.iter().all(|p| p.text.len() < 4 * 1000 + 10), "{file}");
            assert_eq!(pieces.iter().map(|p| p.text.as_str()).collect::<String>(), words);
            let joined: Vec<u32> = pieces.iter().flat_map(|p| ids(&p.text)).collect();
            assert_eq!(joined, ids(&words), "{file}");
        }
        let run = "é".repeat(300_000); // 600 kB, no line break, no space
        let pieces = pieces_of("long-run", "r.txt", run.as_bytes(), 1000);
        assert!(pieces.iter().all(|p| p.text.len() <= 64 * 1000), "a piece over the bound");
        assert_eq!(pieces.iter().map(|p| p.text.as_str()).collect::<String>(), run);
        let e = pieces_of_err("nul", "n.txt", b"text\0more");
        assert!(e.contains("n.txt") && e.contains("NUL byte at offset 4"), "{e}");
    }

    fn pieces_of_err(name: &str, file: &str, content: &[u8]) -> String {
        let d = scratch(name);
        std::fs::write(d.join(file), content).unwrap();
        let e = Stream::open(std::slice::from_ref(&d)).unwrap().find_map(|p| p.err()).unwrap().to_string();
        std::fs::remove_dir_all(&d).unwrap();
        e
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// A document read in pieces of any size, from a `.txt` file or as one `.jsonl`
        /// line, gives the document back, and the pieces encode to its tokens.
        #[test]
        fn pieces_encode_like_the_whole_document(
            lines in prop::collection::vec("[ \\t]{0,2}[a-zA-Z,.!?'’ \\n]{0,12}\\n{0,2}", 0..80),
            piece_bytes in 64usize..128, // texts under 64 × that: no hard cut
            jsonl in any::<bool>(),
        ) {
            let tok = tokenizer();
            let text: String = lines.concat();
            let d = scratch(&format!("pieces-{piece_bytes}-{jsonl}"));
            if jsonl {
                std::fs::write(d.join("t.jsonl"), serde_json::json!({ "text": text }).to_string()).unwrap();
            } else {
                std::fs::write(d.join("t.txt"), &text).unwrap();
            }
            let pieces: Vec<Piece> = Stream::with_piece_bytes(std::slice::from_ref(&d), piece_bytes).unwrap().collect::<Result<_>>().unwrap();
            std::fs::remove_dir_all(&d).unwrap();
            prop_assert_eq!(pieces.iter().map(|p| p.text.as_str()).collect::<String>(), text.clone());
            prop_assert!(pieces.iter().rev().skip(1).all(|p| !p.ends_document));
            prop_assert!(pieces.last().is_none_or(|p| p.ends_document));
            let ids = |s: &str| tok.encode_fast(s, false).unwrap().get_ids().to_vec();
            let joined: Vec<u32> = pieces.iter().flat_map(|p| ids(&p.text)).collect();
            prop_assert_eq!(joined, ids(&text));
        }
    }
}
