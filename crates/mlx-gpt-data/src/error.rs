//! `DataError`: everything that can go wrong between a URL and a batch, each naming the
//! file, URL or flag involved.

use std::path::PathBuf;

/// Errors of the data pipeline.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An HTTP request failed for good (after retries where retrying makes sense).
    #[error("{url}: {reason}")]
    Http {
        /// The URL.
        url: String,
        /// What happened.
        reason: String,
    },
    /// The server has no such file.
    #[error("{url}: not found (HTTP 404)")]
    NotFound {
        /// The URL.
        url: String,
    },
    /// A download's content is not what the manifest promised; the file was removed.
    #[error("{path}: sha256 mismatch: expected {expected}, got {actual} (the file was removed; download again)")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// From the manifest.
        expected: String,
        /// Of the bytes received.
        actual: String,
    },
    /// A file has the wrong size.
    #[error("{path}: {what}")]
    Size {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Text the tokenizer cannot encode, or a tokenizer that cannot be loaded.
    #[error("{0}")]
    Tokenizer(String),
    /// A malformed or inconsistent `meta.json`, manifest or token file.
    #[error("{path}: {what}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A dataset name that is a path, not a folder name.
    #[error("dataset name '{0}' is not a plain name (letters, digits, _ - . and no leading dot): it names a folder inside the data folder, never a path")]
    BadDatasetName(String),
    /// A dataset name no manifest describes.
    #[error("unknown dataset '{name}' (known: {known})")]
    UnknownDataset {
        /// Asked for.
        name: String,
        /// Names with a manifest.
        known: String,
    },
    /// A parquet file could not be read.
    #[error("{path}: parquet: {reason}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The reader's message.
        reason: String,
    },
    /// MLX failed while building a batch.
    #[error("MLX: {}", .0.what())]
    Mlx(#[from] mlx_rs::error::Exception),
}

impl DataError {
    /// An I/O error about `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DataError {
        let path = path.into();
        move |source| DataError::Io { path, source }
    }
}

/// Result with [`DataError`].
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// An error and its causes on one line, `outer: cause: cause`, each cause said once: many
/// errors already write their cause into their own message ("{path}: {source}"), and
/// printing the chain as well said it twice ("No such file or directory (os error 2):
/// No such file or directory (os error 2)").
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        let e = super::DataError::Io { path: "/x/train.bin".into(), source: io };
        let e = anyhow::Error::new(e).context("preparing dataset 'x'");
        assert_eq!(
            super::error_chain(&*e),
            "preparing dataset 'x': /x/train.bin: No such file or directory (os error 2)"
        );
    }
}
