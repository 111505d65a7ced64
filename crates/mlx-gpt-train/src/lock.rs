//! One writer per run directory: `out_dir/train.lock`, held with an exclusive `flock` for
//! as long as a training run writes there.
//!
//! Two runs writing into one folder destroy each other's work: one prunes the other's
//! checkpoints and temporary folders, and `metrics.jsonl` gets both runs' lines. The
//! lock is the kernel's (`flock(2)`), so it goes away with its process however that
//! process ends, SIGKILL included: there are no stale locks to clean up. The file holds
//! the owner's pid, host and start time, so a refused run can name the run it met.
//! Readers (`sample`, `eval`) take no lock and keep working beside a training run.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name inside the run directory.
pub const LOCK_FILE: &str = "train.lock";

/// Why the run directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error(
        "{} is in use by another training run ({owner}); wait for it to finish, stop it, \
         or train into another --out_dir",
        .dir.display()
    )]
    Busy {
        /// The run directory.
        dir: PathBuf,
        /// What the lock file says of its owner (pid, host, start).
        owner: String,
    },
    /// The lock file could not be created or locked.
    #[error("cannot lock {}: {source}", .path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Take the run directory's lock, or say who holds it.
pub fn acquire(dir: &Path) -> Result<RunLock, LockError> {
    let path = dir.join(LOCK_FILE);
    let io = |source| LockError::Io { path: path.clone(), source };
    // Not truncated on open: the owner's details must stay readable until we hold it.
    let mut file =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io(err));
        }
        let mut owner = String::new();
        let _ = file.read_to_string(&mut owner);
        let owner = owner.trim();
        let owner = if owner.is_empty() { "owner unknown".to_string() } else { owner.replace('\n', ", ") };
        return Err(LockError::Busy { dir: dir.to_path_buf(), owner });
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let owner = format!("pid {}\nhost {host}\nsince unix time {since}\n", std::process::id());
    file.set_len(0).and_then(|_| file.rewind()).and_then(|_| file.write_all(owner.as_bytes())).map_err(io)?;
    Ok(RunLock { _file: file, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_and_named_until_the_first_lets_go() {
        let dir = std::env::temp_dir().join(format!("mlx-gpt-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = acquire(&dir).unwrap();
        assert_eq!(first.path(), dir.join(LOCK_FILE));
        // flock locks belong to the open file: a second open conflicts, in this process too.
        let err = acquire(&dir).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, LockError::Busy { .. }), "{msg}");
        assert!(msg.contains(&format!("pid {}", std::process::id())) && msg.contains("another --out_dir"), "{msg}");
        drop(first);
        let again = acquire(&dir).unwrap();
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
