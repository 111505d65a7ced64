//! Resumable, verified downloads over HTTP(S) (and `file://` for local mirrors).
//!
//! A file is received under `<name>.partial`; an interrupted download continues from
//! there with a `Range` request; transient failures (connection errors, 5xx, 429) are
//! retried with exponential backoff; the finished file is checked against its sha256 and
//! only then renamed to its final name. So nothing partial ever sits under a final name,
//! and a checksum mismatch removes the bytes and names both hashes. Proxy variables
//! (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`) are honoured; a mirror replaces
//! the scheme and host of every URL, keeping its path.

use crate::error::{DataError, Result};
use crate::token_file::{hex, sha256_file};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a server says about a file without sending it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteInfo {
    /// Size in bytes, when announced.
    pub size: Option<u64>,
    /// sha256, when the server publishes it (the Hugging Face hub sends large files'
    /// sha256 as `X-Linked-Etag` on the resolve URL).
    pub sha256: Option<String>,
}

/// Downloads files, resumably.
#[derive(Debug, Clone)]
pub struct Downloader {
    agent: ureq::Agent,
    mirror: Option<String>,
    retries: u32,
    backoff: Duration,
    quiet: bool,
}

impl Default for Downloader {
    fn default() -> Self {
        Self::new()
    }
}

fn partial_path(dest: &Path) -> PathBuf {
    let mut p = dest.as_os_str().to_owned();
    p.push(".partial");
    PathBuf::from(p)
}

impl Downloader {
    /// A downloader with 5 retries, 1 s initial backoff, and progress bars.
    pub fn new() -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_recv_body(None)
            .user_agent(concat!("mlx-gpt/", env!("CARGO_PKG_VERSION")))
            .build();
        Downloader { agent: config.into(), mirror: None, retries: 5, backoff: Duration::from_secs(1), quiet: false }
    }

    /// Fetch every URL from `mirror` instead: its scheme and host (and path prefix) replace
    /// the URL's, and the URL's path is kept. `file:///srv/mirror` reads local files.
    pub fn with_mirror(mut self, mirror: Option<String>) -> Self {
        self.mirror = mirror.map(|m| m.trim_end_matches('/').to_string());
        self
    }

    /// Retry count and first backoff (doubling each retry).
    pub fn with_retries(mut self, retries: u32, backoff: Duration) -> Self {
        self.retries = retries;
        self.backoff = backoff;
        self
    }

    /// No progress bars.
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// The URL actually requested for `url`.
    pub fn resolve(&self, url: &str) -> String {
        match &self.mirror {
            None => url.to_string(),
            Some(m) => {
                let path = url.split_once("://").map(|(_, rest)| rest).unwrap_or(url);
                let path = path.find('/').map(|i| &path[i..]).unwrap_or("/");
                format!("{m}{path}")
            }
        }
    }

    /// Size and sha256 a server announces for `url`, without following redirects (the
    /// hub sends `X-Linked-Size` and `X-Linked-Etag` on the redirect itself).
    pub fn remote_info(&self, url: &str) -> Result<RemoteInfo> {
        let url = self.resolve(url);
        if url.starts_with("file://") {
            return Ok(RemoteInfo::default());
        }
        let http = |e: ureq::Error| DataError::Http { url: url.clone(), reason: e.to_string() };
        let resp = self.agent.head(&url).config().max_redirects(0).build().call().map_err(http)?;
        let status = resp.status().as_u16();
        if status == 404 {
            return Err(DataError::NotFound { url });
        }
        if status >= 400 {
            return Err(DataError::Http { url, reason: format!("HTTP {status}") });
        }
        let header = |name: &str| {
            resp.headers().get(name).and_then(|v| v.to_str().ok()).map(|v| v.trim_matches('"').to_string())
        };
        let sha256 = header("x-linked-etag").filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()));
        let size = header("x-linked-size").or_else(|| header("content-length")).and_then(|v| v.parse().ok());
        Ok(RemoteInfo { size, sha256 })
    }

    /// Download `url` to `dest` unless a complete file is already there (and matches
    /// `sha256` when given). Returns whether bytes were downloaded.
    pub fn fetch(&self, url: &str, dest: &Path, sha256: Option<&str>) -> Result<bool> {
        if dest.is_file() {
            match sha256 {
                None => return Ok(false),
                Some(want) if sha256_file(dest)? == want.to_ascii_lowercase() => return Ok(false),
                Some(_) => {
                    tracing::warn!(file = %dest.display(), "existing file fails its checksum; downloading again");
                    std::fs::remove_file(dest).map_err(DataError::io(dest))?;
                }
            }
        }
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(DataError::io(dir))?;
        }
        let url = self.resolve(url);
        let partial = partial_path(dest);
        if let Some(path) = url.strip_prefix("file://") {
            std::fs::copy(path, &partial).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => DataError::NotFound { url: url.clone() },
                _ => DataError::Io { path: path.into(), source: e },
            })?;
        } else {
            self.fetch_http(&url, &partial, dest)?;
        }
        if let Some(want) = sha256 {
            let got = sha256_file(&partial)?;
            if got != want.to_ascii_lowercase() {
                let _ = std::fs::remove_file(&partial);
                return Err(DataError::Checksum { path: dest.into(), expected: want.to_string(), actual: got });
            }
        }
        std::fs::rename(&partial, dest).map_err(DataError::io(dest))?;
        tracing::info!(url = %url, file = %dest.display(), "downloaded");
        Ok(true)
    }

    fn fetch_http(&self, url: &str, partial: &Path, dest: &Path) -> Result<()> {
        let mut attempt = 0;
        loop {
            match self.try_once(url, partial, dest) {
                Ok(()) => return Ok(()),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(reason)) if attempt < self.retries => {
                    let wait = self.backoff * 2u32.saturating_pow(attempt);
                    tracing::warn!(url, reason = %reason, retry_in_ms = wait.as_millis() as u64, "download interrupted; retrying");
                    std::thread::sleep(wait);
                    attempt += 1;
                }
                Err(Attempt::Retry(reason)) => {
                    return Err(DataError::Http {
                        url: url.into(),
                        reason: format!("{reason} (gave up after {} retries; run again to resume)", self.retries),
                    })
                }
            }
        }
    }

    /// One request: resume from the partial file's length.
    fn try_once(&self, url: &str, partial: &Path, dest: &Path) -> Result<(), Attempt> {
        let have = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
        let mut req = self.agent.get(url);
        if have > 0 {
            req = req.header("Range", format!("bytes={have}-"));
        }
        let resp = req.call().map_err(|e| {
            let text = e.to_string();
            // A name that does not resolve will not resolve in a second either: no network,
            // or no route to that host. Say so at once instead of after minutes of retries.
            if text.to_ascii_lowercase().contains("dns") {
                Attempt::Fatal(DataError::Http {
                    url: url.into(),
                    reason: format!("{text} (the host name does not resolve: no network?)"),
                })
            } else {
                Attempt::Retry(text)
            }
        })?;
        let status = resp.status().as_u16();
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let (mut file, start) = match status {
            200 => (std::fs::File::create(partial).map_err(|e| Attempt::fatal_io(partial, e))?, 0),
            206 => {
                // Only trust a range that starts where our bytes end.
                let from = header("content-range")
                    .and_then(|v| v.strip_prefix("bytes ")?.split('-').next()?.parse::<u64>().ok());
                if from != Some(have) {
                    let _ = std::fs::remove_file(partial);
                    return Err(Attempt::Retry(format!("server resumed at {from:?}, not byte {have}")));
                }
                let f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(partial)
                    .map_err(|e| Attempt::fatal_io(partial, e))?;
                (f, have)
            }
            416 => {
                // Nothing left to send: our partial file is already whole (or stale).
                let total = header("content-range").and_then(|v| v.rsplit('/').next()?.parse::<u64>().ok());
                if total == Some(have) {
                    return Ok(());
                }
                let _ = std::fs::remove_file(partial);
                return Err(Attempt::Retry("range not satisfiable; starting over".into()));
            }
            404 => return Err(Attempt::Fatal(DataError::NotFound { url: url.into() })),
            429 | 500..=599 => return Err(Attempt::Retry(format!("HTTP {status}"))),
            _ => return Err(Attempt::Fatal(DataError::Http { url: url.into(), reason: format!("HTTP {status}") })),
        };
        let length = header("content-length").and_then(|v| v.parse::<u64>().ok());
        let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let bar = if self.quiet {
            indicatif::ProgressBar::hidden()
        } else {
            crate::progress::bytes(length.map(|l| l + start), name)
        };
        bar.set_position(start);
        let mut body = resp.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 16];
        let mut received = 0u64;
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let _ = file.flush();
                    bar.abandon();
                    return Err(Attempt::Retry(format!("connection lost after {} bytes: {e}", start + received)));
                }
            };
            file.write_all(&buf[..n]).map_err(|e| Attempt::fatal_io(partial, e))?;
            received += n as u64;
            bar.inc(n as u64);
        }
        file.sync_all().map_err(|e| Attempt::fatal_io(partial, e))?;
        bar.finish_and_clear();
        if let Some(len) = length {
            if received < len {
                return Err(Attempt::Retry(format!("body ended after {received} of {len} bytes")));
            }
        }
        Ok(())
    }
}

enum Attempt {
    Retry(String),
    Fatal(DataError),
}

impl Attempt {
    fn fatal_io(path: &Path, e: std::io::Error) -> Attempt {
        Attempt::Fatal(DataError::Io { path: path.into(), source: e })
    }
}

/// sha256 of bytes in memory, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_keeps_the_path() {
        let d = Downloader::new().with_mirror(Some("http://127.0.0.1:9/m/".into()));
        assert_eq!(
            d.resolve("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"),
            "http://127.0.0.1:9/m/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
        );
        assert_eq!(Downloader::new().resolve("https://x.org/a"), "https://x.org/a");
    }
}
