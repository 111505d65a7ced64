//! A user's corpus as documents: `.txt` files (one document each), `.jsonl` (one JSON
//! object per line, its `text` field a document) and `.parquet` (its `text` column), given
//! as one file or a folder of them.

use crate::error::{DataError, Result};
use std::path::{Path, PathBuf};

/// The field (`.jsonl`) or column (`.parquet`) that holds a document's text.
pub const TEXT_FIELD: &str = "text";

/// The corpus files at `path`: the file itself, or the `.txt`, `.jsonl` and `.parquet`
/// files in the folder, sorted by name (so that the documents come in a fixed order).
pub fn files(path: &Path) -> Result<Vec<PathBuf>> {
    let readable = |p: &Path| p.extension().is_some_and(|x| x == "txt" || x == "jsonl" || x == "parquet");
    if path.is_dir() {
        let mut out: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(DataError::io(path))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && readable(p))
            .collect();
        out.sort();
        if out.is_empty() {
            return Err(DataError::Invalid {
                path: path.into(),
                what: "holds no .txt, .jsonl or .parquet file".into(),
            });
        }
        return Ok(out);
    }
    if !path.is_file() {
        return Err(DataError::io(path)(std::io::ErrorKind::NotFound.into()));
    }
    if !readable(path) {
        return Err(DataError::Invalid { path: path.into(), what: "is not a .txt, .jsonl or .parquet file".into() });
    }
    Ok(vec![path.to_path_buf()])
}

/// Every document of the corpus at `path`, in order. Empty documents are dropped; a
/// corpus with no text at all is an error, as is a file that is not UTF-8 text or a
/// `.jsonl` line without a text field, each naming the file (and line).
pub fn read_documents(path: &Path) -> Result<Vec<String>> {
    let mut docs = Vec::new();
    for f in files(path)? {
        match f.extension().and_then(|x| x.to_str()) {
            Some("jsonl") => docs.extend(jsonl(&f)?),
            Some("parquet") => docs.extend(parquet(&f)?),
            _ => docs.push(text(&f)?),
        }
    }
    docs.retain(|d| !d.is_empty());
    if docs.is_empty() {
        return Err(DataError::Invalid { path: path.into(), what: "holds no text".into() });
    }
    Ok(docs)
}

fn text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(DataError::io(path))?;
    String::from_utf8(bytes).map_err(|e| DataError::Invalid {
        path: path.into(),
        what: format!("is not UTF-8 text (invalid byte at offset {}): a binary file?", e.utf8_error().valid_up_to()),
    })
}

fn jsonl(path: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (i, line) in text(path)?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |what: String| DataError::Invalid { path: path.into(), what: format!("line {}: {what}", i + 1) };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        match v.get(TEXT_FIELD) {
            Some(serde_json::Value::String(s)) => out.push(s.clone()),
            Some(other) => return Err(bad(format!("the \"{TEXT_FIELD}\" field is not a string: {other}"))),
            None => return Err(bad(format!("no \"{TEXT_FIELD}\" field"))),
        }
    }
    Ok(out)
}

fn parquet(path: &Path) -> Result<Vec<String>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let pq = |e: parquet::errors::ParquetError| DataError::Parquet { path: path.into(), reason: e.to_string() };
    let file = std::fs::File::open(path).map_err(DataError::io(path))?;
    let reader = SerializedFileReader::new(file).map_err(pq)?;
    let mut out = Vec::new();
    for row in reader.get_row_iter(None).map_err(pq)? {
        out.push(row_text(&row.map_err(pq)?, TEXT_FIELD, path)?);
    }
    Ok(out)
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

    #[test]
    fn documents_of_a_folder_in_order_and_bad_input_named() {
        let d = std::env::temp_dir().join(format!("mlx-gpt-corpus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("b.txt"), "second file\n").unwrap();
        std::fs::write(d.join("a.jsonl"), "{\"text\": \"one\"}\n\n{\"text\": \"two\", \"id\": 3}\n").unwrap();
        std::fs::write(d.join("notes.md"), "ignored").unwrap();
        assert_eq!(read_documents(&d).unwrap(), ["one", "two", "second file\n"]);
        std::fs::write(d.join("c.jsonl"), "{\"body\": \"x\"}\n").unwrap();
        let e = read_documents(&d).unwrap_err().to_string();
        assert!(e.contains("c.jsonl") && e.contains("line 1") && e.contains("\"text\""), "{e}");
        std::fs::remove_file(d.join("c.jsonl")).unwrap();
        std::fs::write(d.join("d.txt"), [0x66, 0x6f, 0xff, 0xfe]).unwrap();
        let e = read_documents(&d).unwrap_err().to_string();
        assert!(e.contains("d.txt") && e.contains("not UTF-8"), "{e}");
        let empty = d.join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::write(empty.join("e.txt"), "").unwrap();
        assert!(read_documents(&empty).unwrap_err().to_string().contains("holds no text"));
        assert!(read_documents(&d.join("missing.txt")).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
