//! Linux: make libmlx's BLAS calls land in OpenBLAS instead of the wheel's reference BLAS.
//!
//! The `mlx-cpu` wheel's libmlx.so needs `libblas-<hash>.so.3.10.0` from the wheel's
//! `mlx_cpu.libs/`, found through its `$ORIGIN` rpath: netlib's reference BLAS, about
//! 5 GFLOP/s for an f32 matmul here against about 190 with OpenBLAS. We replace that file
//! in our unpacked copy with a symbolic link to the system OpenBLAS, which exports the
//! same unversioned `cblas_*` symbols. Every binary and test then gets OpenBLAS with no
//! environment variable and no linker flag. `MLX_SYS_BLAS=reference` keeps the bundled
//! one (for comparisons); an `MLX_DIR` install is used as it is.

use crate::mlx_install::MlxInstall;
use std::env;
use std::fs;
use std::path::{Path, PathBuf};

pub enum Wiring {
    OpenBlas(PathBuf),
    Reference(String),
    Unchanged(String),
}

impl Wiring {
    pub fn platform_default(target_os: &str) -> Self {
        Wiring::Unchanged(match target_os {
            "macos" => "as built into MLX (Accelerate on macOS)".into(),
            os => format!("as built into MLX for {os}"),
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Wiring::OpenBlas(p) => format!("openblas:{}", p.display()),
            Wiring::Reference(why) => format!("reference:{why}"),
            Wiring::Unchanged(why) => format!("unchanged:{why}"),
        }
    }
}

/// Candidate locations of the OpenBLAS shared library on common distributions.
const OPENBLAS_CANDIDATES: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
    "/usr/local/lib/libopenblas.so.0",
];

pub fn wire(mlx: &MlxInstall) -> Result<Wiring, String> {
    let Some(root) = &mlx.wheel_root else {
        return Ok(Wiring::Unchanged(format!("MLX from {} is used as installed", mlx.origin)));
    };
    let Some(bundled) = find_bundled_blas(root) else {
        return Ok(Wiring::Unchanged("the MLX wheel bundles no libblas".into()));
    };
    if env::var("MLX_SYS_BLAS").is_ok_and(|v| v == "reference") {
        restore(&bundled)?;
        return Ok(Wiring::Reference("MLX_SYS_BLAS=reference".into()));
    }
    let openblas = match env::var_os("OPENBLAS_LIB") {
        Some(p) => {
            let p = PathBuf::from(p);
            if !p.is_file() {
                return Err(format!("OPENBLAS_LIB={} is not a file", p.display()));
            }
            Some(p)
        }
        None => OPENBLAS_CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file()),
    };
    let Some(openblas) = openblas else {
        restore(&bundled)?;
        println!(
            "cargo:warning=OpenBLAS not found: MLX will use its bundled reference BLAS, \
             30x slower for matmuls. Install it (Debian/Ubuntu: apt-get install libopenblas0-pthread) \
             or set OPENBLAS_LIB, then rebuild."
        );
        return Ok(Wiring::Reference("OpenBLAS not found at build time".into()));
    };
    // Keep the original beside it so MLX_SYS_BLAS=reference can restore it later.
    let original = original_path(&bundled);
    if !original.exists() {
        fs::rename(&bundled, &original).map_err(|e| format!("{}: {e}", bundled.display()))?;
    }
    let _ = fs::remove_file(&bundled);
    std::os::unix::fs::symlink(&openblas, &bundled)
        .map_err(|e| format!("cannot link {} -> {}: {e}", bundled.display(), openblas.display()))?;
    Ok(Wiring::OpenBlas(openblas))
}

fn find_bundled_blas(root: &Path) -> Option<PathBuf> {
    let libs = fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().ends_with(".libs") && e.path().is_dir())?;
    fs::read_dir(libs.path()).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
        p.file_name()
            .map(|n| n.to_string_lossy())
            .is_some_and(|n| n.starts_with("libblas") && n.contains(".so") && !n.ends_with(".orig"))
    })
}

fn original_path(bundled: &Path) -> PathBuf {
    let mut name = bundled.file_name().unwrap().to_os_string();
    name.push(".orig");
    bundled.with_file_name(name)
}

fn restore(bundled: &Path) -> Result<(), String> {
    let original = original_path(bundled);
    if original.exists() {
        let _ = fs::remove_file(bundled);
        fs::rename(&original, bundled).map_err(|e| format!("{}: {e}", original.display()))?;
    }
    Ok(())
}
