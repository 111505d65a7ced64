//! A small safe layer over MLX's distributed API (mlx-c's `mlx_distributed_*`; mlx-rs 0.33
//! has no wrapper): a process group and the collectives data-parallel training needs.
//! Backends are MLX's own — `ring` (TCP, what `mlx-gpt launch` uses), `mpi`, `jaccl`
//! (RDMA over Thunderbolt) and `nccl` (CUDA) where the MLX build has them — never a
//! protocol of ours. Failures come back as `Result`s, never a panic or an abort.

use mlx_rs::error::Exception;
use mlx_rs::Array;
use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};

/// Why the group could not be formed or a collective failed.
#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// MLX reported an error (connection refused, a peer gone, a malformed hostfile …).
    #[error("distributed ({what}): {message}")]
    Mlx {
        /// The operation.
        what: String,
        /// MLX's message.
        message: String,
    },
    /// The requested backend is not in this MLX build.
    #[error("distributed backend '{0}' is not available in this MLX build")]
    Unavailable(String),
    /// A hostfile problem found before MLX reads it.
    #[error("hostfile {path}: {what}")]
    Hostfile {
        /// The file.
        path: String,
        /// What is wrong.
        what: String,
    },
}

thread_local! {
    static LAST_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

extern "C" {
    // mlx-rs's own handler (exported unmangled); ours forwards to it so mlx-rs keeps
    // reporting its errors.
    fn default_mlx_error_handler(msg: *const c_char, data: *mut std::ffi::c_void);
}

extern "C" fn capture_error(msg: *const c_char, data: *mut std::ffi::c_void) {
    // SAFETY: MLX passes a NUL-terminated message.
    let text = unsafe { CStr::from_ptr(msg) }.to_string_lossy().into_owned();
    LAST_ERROR.with(|e| *e.borrow_mut() = Some(text));
    // SAFETY: same arguments as MLX gave us.
    unsafe { default_mlx_error_handler(msg, data) };
}

fn install_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Make mlx-rs register its handler first (it does so on its first fallible call).
        let _ = mlx_rs::ops::zeros::<f32>(&[1]).and_then(|a| a.eval());
        // SAFETY: a valid handler with no user data to free.
        unsafe { mlx_sys::mlx_set_error_handler(Some(capture_error), std::ptr::null_mut(), None) };
    });
}

fn take_error() -> String {
    LAST_ERROR.with(|e| e.borrow_mut().take()).unwrap_or_else(|| "unknown error".into())
}

fn check(rc: i32, what: &str) -> Result<(), DistError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(DistError::Mlx { what: what.into(), message: take_error() })
    }
}

/// A group of processes (the world, as MLX's `init` forms it).
#[derive(Debug)]
pub struct Group {
    raw: mlx_sys::mlx_distributed_group,
}

// SAFETY: the group handle is only read by MLX after creation.
unsafe impl Send for Group {}

/// Whether MLX was built with `backend` (`ring`, `mpi`, `jaccl`, `nccl`, or `any`).
pub fn is_available(backend: &str) -> bool {
    let b = CString::new(backend).unwrap_or_default();
    // SAFETY: a valid C string.
    unsafe { mlx_sys::mlx_distributed_is_available(b.as_ptr()) }
}

impl Group {
    /// Join the group described by the environment (`MLX_RANK` and `MLX_HOSTFILE` for
    /// `ring`). With `strict`, failing to form a multi-process group is an error;
    /// otherwise MLX falls back to a group of one.
    pub fn init(backend: &str, strict: bool) -> Result<Group, DistError> {
        install_handler();
        if !is_available(backend) {
            return Err(DistError::Unavailable(backend.into()));
        }
        let b = CString::new(backend).unwrap_or_default();
        // SAFETY: out-pointer to a fresh handle; `b` lives across the call.
        let mut raw = unsafe { mlx_sys::mlx_distributed_group_new() };
        let rc = unsafe { mlx_sys::mlx_distributed_init(&mut raw, strict, b.as_ptr()) };
        check(rc, "init")?;
        Ok(Group { raw })
    }

    /// This process's rank, 0 … size − 1.
    pub fn rank(&self) -> usize {
        // SAFETY: a live group handle.
        unsafe { mlx_sys::mlx_distributed_group_rank(self.raw) }.max(0) as usize
    }

    /// Number of processes.
    pub fn size(&self) -> usize {
        // SAFETY: a live group handle.
        unsafe { mlx_sys::mlx_distributed_group_size(self.raw) }.max(1) as usize
    }

    fn collective(
        &self,
        x: &Array,
        what: &str,
        op: unsafe extern "C" fn(
            *mut mlx_sys::mlx_array,
            mlx_sys::mlx_array,
            mlx_sys::mlx_distributed_group,
            mlx_sys::mlx_stream,
        ) -> i32,
    ) -> Result<Array, Exception> {
        install_handler();
        let stream = mlx_rs::Stream::cpu();
        // SAFETY: `res` is a fresh handle that MLX fills; ownership passes to the Array.
        unsafe {
            let mut res = mlx_sys::mlx_array_new();
            let rc = op(&mut res, x.as_ptr(), self.raw, stream.as_ptr());
            if rc != 0 {
                mlx_sys::mlx_array_free(res);
                return Err(Exception::custom(format!("distributed {what}: {}", take_error())));
            }
            let out = Array::from_ptr(res);
            // Collectives run when evaluated; surface connection failures here.
            out.eval().map_err(|e| Exception::custom(format!("distributed {what}: {}", e.what())))?;
            Ok(out)
        }
    }

    /// Element-wise sum of `x` over all ranks (every rank gets the result).
    pub fn all_sum(&self, x: &Array) -> Result<Array, Exception> {
        self.collective(x, "all_sum", mlx_sys::mlx_distributed_all_sum)
    }

    /// Concatenation of every rank's `x` along the first axis, in rank order.
    pub fn all_gather(&self, x: &Array) -> Result<Array, Exception> {
        self.collective(x, "all_gather", mlx_sys::mlx_distributed_all_gather)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: the handle was created by mlx_distributed_group_new/init and is freed once.
        unsafe { mlx_sys::mlx_distributed_group_free(self.raw) };
    }
}

/// Check an MLX hostfile (`[["host:port"], …]`, one list of addresses per rank) before MLX
/// reads it, so a malformed one is a named error rather than an abort deep in MLX.
pub fn check_hostfile(path: &str) -> Result<usize, DistError> {
    let bad = |what: String| DistError::Hostfile { path: path.into(), what };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let ranks =
        v.as_array().ok_or_else(|| bad("expected a JSON list with one list of \"host:port\" per rank".into()))?;
    if ranks.is_empty() {
        return Err(bad("lists no rank".into()));
    }
    for (r, addrs) in ranks.iter().enumerate() {
        let list =
            addrs.as_array().ok_or_else(|| bad(format!("rank {r}: expected a list of \"host:port\" strings")))?;
        if list.is_empty() {
            return Err(bad(format!("rank {r}: no address")));
        }
        for a in list {
            let s = a.as_str().ok_or_else(|| bad(format!("rank {r}: {a} is not a string")))?;
            let (host, port) = s.rsplit_once(':').ok_or_else(|| bad(format!("rank {r}: '{s}' is not host:port")))?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(bad(format!("rank {r}: '{s}' is not host:port")));
            }
            if port.parse::<u16>() == Ok(0) {
                return Err(bad(format!("rank {r}: '{s}': port 0 is no port a peer can connect to")));
            }
        }
    }
    Ok(ranks.len())
}

/// Where this machine can bind rank `rank`'s first address, check it is free, so a busy
/// port is named with its address rather than as MLX's "Couldn't bind socket (error: 98)".
/// An address of another machine (it cannot be bound here) is left to MLX.
pub fn check_own_address(path: &str, rank: usize) -> Result<(), DistError> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else { return Ok(()) };
    let Some(addr) = v.get(rank).and_then(|a| a.get(0)).and_then(|a| a.as_str()) else { return Ok(()) };
    match std::net::TcpListener::bind(addr) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(DistError::Hostfile {
            path: path.into(),
            what: format!("rank {rank}'s address {addr} is in use by another program; free it or list another port"),
        }),
        _ => Ok(()),
    }
}

/// How many machines a hostfile spreads its ranks over: the distinct hosts of each rank's
/// first address, loopback addresses counting as this one machine. None if unreadable.
pub fn machines_in_hostfile(path: &str) -> Option<usize> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    let mut hosts: Vec<String> = v
        .as_array()?
        .iter()
        .filter_map(|addrs| addrs.as_array()?.first()?.as_str()?.rsplit_once(':').map(|(h, _)| h.to_string()))
        .map(|h| if h == "localhost" || h.starts_with("127.") || h == "[::1]" { "loopback".into() } else { h })
        .collect();
    hosts.sort();
    hosts.dedup();
    (!hosts.is_empty()).then_some(hosts.len())
}

#[cfg(test)]
mod tests {
    #[test]
    fn machines_are_distinct_hosts() {
        let dir = std::env::temp_dir().join(format!("mlx-gpt-hosts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("h.json");
        std::fs::write(&p, r#"[["127.0.0.1:5000"],["localhost:5001"],["10.0.0.2:5000"],["10.0.0.2:5001"]]"#).unwrap();
        assert_eq!(super::machines_in_hostfile(p.to_str().unwrap()), Some(2));
        std::fs::write(&p, "not json").unwrap();
        assert_eq!(super::machines_in_hostfile(p.to_str().unwrap()), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
