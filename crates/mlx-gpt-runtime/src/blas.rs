//! What this process's MLX runs on: MLX's version and origin, and the BLAS library the
//! dynamic loader actually bound MLX's matmuls to.
//!
//! The BLAS is read from the loader, not from the build: `cblas_sgemm` is looked up in the
//! process's global symbol scope (the scope libmlx's own reference resolved against), and
//! `dladdr` names the file that defines it. So `LD_PRELOAD`, a moved library or a missing
//! OpenBLAS show up here as they really are.

use std::ffi::{CStr, CString};
use std::path::PathBuf;

/// The BLAS implementation behind MLX's CPU matmuls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlasKind {
    /// OpenBLAS, with its build configuration string (`openblas_get_config`).
    OpenBlas {
        /// e.g. `OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Cooperlake MAX_THREADS=64`.
        config: String,
        /// Threads OpenBLAS will use.
        threads: i32,
    },
    /// Apple's Accelerate framework.
    Accelerate,
    /// Intel MKL.
    Mkl,
    /// Netlib's reference BLAS (as bundled in MLX's Linux wheel): correct but ~30x slower.
    Reference,
    /// Some other library.
    Other,
}

/// The BLAS library bound at run time.
#[derive(Debug, Clone)]
pub struct BlasInfo {
    /// What kind of BLAS it is.
    pub kind: BlasKind,
    /// The file that defines `cblas_sgemm`, symbolic links resolved.
    pub library: Option<PathBuf>,
}

impl BlasInfo {
    /// A short name for logs: `OpenBLAS`, `Accelerate`, `MKL`, `reference BLAS`, ...
    pub fn name(&self) -> &'static str {
        match self.kind {
            BlasKind::OpenBlas { .. } => "OpenBLAS",
            BlasKind::Accelerate => "Accelerate",
            BlasKind::Mkl => "MKL",
            BlasKind::Reference => "reference BLAS (netlib)",
            BlasKind::Other => "unknown BLAS",
        }
    }

    /// Whether matmuls will run at an optimized library's speed.
    pub fn is_optimized(&self) -> bool {
        !matches!(self.kind, BlasKind::Reference)
    }
}

/// The address of `symbol` in the process's global scope (null when absent).
pub fn lookup(symbol: &str) -> *mut libc::c_void {
    let name = CString::new(symbol).expect("symbol names have no NUL");
    // SAFETY: RTLD_DEFAULT searches the global scope; a null result is handled by callers.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }
}

/// Inspect the BLAS that MLX's `cblas_sgemm` calls resolve to in this process.
pub fn blas() -> BlasInfo {
    // A program that asks which BLAS it runs gets the kernel check too.
    crate::blas_kernel::keep_linked();
    let sgemm = lookup("cblas_sgemm");
    let library = if sgemm.is_null() {
        None
    } else {
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        // SAFETY: `sgemm` is an address inside a loaded object; `info` is an out-pointer.
        if unsafe { libc::dladdr(sgemm, &mut info) } != 0 && !info.dli_fname.is_null() {
            // SAFETY: dladdr returns a NUL-terminated path owned by the loader.
            let path = unsafe { CStr::from_ptr(info.dli_fname) }.to_string_lossy().into_owned();
            let path = PathBuf::from(path);
            Some(std::fs::canonicalize(&path).unwrap_or(path))
        } else {
            None
        }
    };
    let file = library.as_ref().and_then(|p| p.to_str()).unwrap_or_default().to_ascii_lowercase();
    let get_config = lookup("openblas_get_config");
    let kind = if !get_config.is_null() && file.contains("openblas") {
        // SAFETY: OpenBLAS's `char* openblas_get_config(void)` returns a static string;
        // `int openblas_get_num_threads(void)` takes nothing.
        let config = unsafe {
            let f: extern "C" fn() -> *const libc::c_char = std::mem::transmute(get_config);
            CStr::from_ptr(f()).to_string_lossy().trim().to_string()
        };
        let num_threads = lookup("openblas_get_num_threads");
        let threads = if num_threads.is_null() {
            0
        } else {
            unsafe {
                let f: extern "C" fn() -> libc::c_int = std::mem::transmute(num_threads);
                f()
            }
        };
        BlasKind::OpenBlas { config, threads }
    } else if file.contains("accelerate") || file.contains("veclib") {
        BlasKind::Accelerate
    } else if file.contains("mkl") {
        BlasKind::Mkl
    } else if file.contains("libblas") || file.contains("libcblas") {
        BlasKind::Reference
    } else {
        BlasKind::Other
    };
    BlasInfo { kind, library }
}

/// Ask OpenBLAS to use `n` threads (no effect with another BLAS). Returns whether an
/// OpenBLAS took the setting.
pub fn set_blas_threads(n: i32) -> bool {
    let f = lookup("openblas_set_num_threads");
    if f.is_null() {
        return false;
    }
    // SAFETY: OpenBLAS's `void openblas_set_num_threads(int)`.
    unsafe {
        let f: extern "C" fn(libc::c_int) = std::mem::transmute(f);
        f(n);
    }
    true
}

/// MLX's version as reported by the loaded library (`mlx_version`).
pub fn mlx_version() -> String {
    // SAFETY: mlx_string is created, read and freed here.
    unsafe {
        let mut s = mlx_sys::mlx_string_new();
        let version = if mlx_sys::mlx_version(&mut s) == 0 {
            CStr::from_ptr(mlx_sys::mlx_string_data(s)).to_string_lossy().into_owned()
        } else {
            "unknown".to_string()
        };
        mlx_sys::mlx_string_free(s);
        version
    }
}

/// How this build obtained MLX (e.g. `pip wheel mlx-cpu==0.32.2`).
pub fn mlx_origin() -> &'static str {
    mlx_sys::build_info::MLX_ORIGIN
}

/// The folder of the libmlx this binary was linked against.
pub fn mlx_lib_dir() -> &'static str {
    mlx_sys::build_info::MLX_LIB_DIR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_linked_mlx() {
        assert!(mlx_version().starts_with("0.32"), "{}", mlx_version());
        assert!(!mlx_origin().is_empty());
    }

    #[test]
    fn finds_the_bound_blas() {
        // Force libmlx to be used, so the test does not depend on link order subtleties.
        let _ = mlx_rs::Array::from_f32(1.0);
        let info = blas();
        let lib = info.library.clone().expect("cblas_sgemm is bound to some library");
        assert!(lib.exists(), "{}", lib.display());
        if mlx_sys::build_info::BLAS_WIRING.starts_with("openblas:") {
            assert!(matches!(info.kind, BlasKind::OpenBlas { .. }), "{info:?}");
        }
    }
}
