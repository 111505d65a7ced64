//! Where libmlx and its headers come from.
//!
//! Two routes, tried in this order:
//! - `MLX_DIR`: an existing MLX install with `include/mlx/mlx.h` and `lib/libmlx.{so,dylib}`
//!   (a CMake install prefix, or the `mlx/` folder of a pip-installed MLX);
//! - MLX's official wheel: `MLX_WHEEL` names a `.whl` already on disk, else pip downloads
//!   `mlx-cpu` (Linux), `mlx-cuda-12` (Linux, feature `cuda`) or `mlx-metal` (macOS).

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The MLX version whose C API mlx-c (as pinned by mlx-sys 0.7.0) targets.
pub const MLX_VERSION: &str = "0.32.2";

pub struct MlxInstall {
    pub include_dir: PathBuf,
    pub lib_dir: PathBuf,
    /// Root of an unpacked wheel (holds `mlx/` and, on Linux, `<pkg>.libs/`), if any.
    pub wheel_root: Option<PathBuf>,
    /// One line for humans: how this MLX was found.
    pub origin: String,
    pub version: String,
}

pub fn locate(out_dir: &Path, target_os: &str) -> Result<MlxInstall, String> {
    if let Some(dir) = env::var_os("MLX_DIR") {
        return from_prefix(Path::new(&dir), format!("MLX_DIR={}", Path::new(&dir).display()), None);
    }
    let package = wheel_package(target_os)?;
    let root = out_dir.join("mlx-wheel");
    let marker = root.join(".mlx-sys-complete");
    let wheel_id = format!("{package}=={MLX_VERSION}");
    let origin = match env::var_os("MLX_WHEEL") {
        Some(w) => format!("wheel {}", Path::new(&w).display()),
        None => format!("pip wheel {wheel_id}"),
    };
    // Unpacking is skipped when an earlier run of this build script completed it with the
    // same source: the marker is written last, so a half-unpacked tree is never trusted.
    if fs::read_to_string(&marker).ok().as_deref() != Some(origin.as_str()) {
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        let wheel = match env::var_os("MLX_WHEEL") {
            Some(w) => PathBuf::from(w),
            None => download_wheel(&wheel_id, &out_dir.join("wheel-download"))?,
        };
        unpack_wheel(&wheel, &root)?;
        fs::write(&marker, &origin).map_err(|e| e.to_string())?;
    }
    from_prefix(&root.join("mlx"), origin, Some(root.clone()))
}

fn wheel_package(target_os: &str) -> Result<String, String> {
    if let Ok(p) = env::var("MLX_WHEEL_PACKAGE") {
        return Ok(p);
    }
    match target_os {
        "macos" => Ok("mlx-metal".into()),
        "linux" if cfg!(feature = "cuda") => Ok("mlx-cuda-12".into()),
        "linux" => Ok("mlx-cpu".into()),
        other => Err(format!(
            "no official MLX build exists for target OS '{other}'. Build MLX yourself and set \
             MLX_DIR to its install prefix (with include/ and lib/)."
        )),
    }
}

fn from_prefix(prefix: &Path, origin: String, wheel_root: Option<PathBuf>) -> Result<MlxInstall, String> {
    let include_dir = prefix.join("include");
    let lib_dir = prefix.join("lib");
    if !include_dir.join("mlx/mlx.h").is_file() {
        return Err(format!("{origin}: {} has no mlx/mlx.h", include_dir.display()));
    }
    let has_lib = ["libmlx.so", "libmlx.dylib"].iter().any(|l| lib_dir.join(l).is_file());
    if !has_lib {
        return Err(format!("{origin}: {} has no libmlx.so or libmlx.dylib", lib_dir.display()));
    }
    let version = read_version(&include_dir.join("mlx/version.h"))
        .ok_or_else(|| format!("{origin}: cannot read MLX's version from mlx/version.h"))?;
    if !version.starts_with("0.32.") {
        println!(
            "cargo:warning=MLX {version} from {origin}: mlx-c here targets MLX {MLX_VERSION}; \
             the build may fail or misbehave"
        );
    }
    Ok(MlxInstall { include_dir, lib_dir, wheel_root, origin, version })
}

fn read_version(version_h: &Path) -> Option<String> {
    let text = fs::read_to_string(version_h).ok()?;
    let part = |name: &str| -> Option<String> {
        text.lines().find_map(|l| {
            let rest = l.trim().strip_prefix("#define ")?.strip_prefix(name)?;
            Some(rest.trim().to_string())
        })
    };
    Some(format!("{}.{}.{}", part("MLX_VERSION_MAJOR ")?, part("MLX_VERSION_MINOR ")?, part("MLX_VERSION_PATCH ")?))
}

fn python() -> String {
    env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

fn both_routes(reason: &str) -> String {
    format!(
        "{reason}\n\
         mlx-sys needs a prebuilt MLX {MLX_VERSION}. Either:\n  \
         - let it download MLX's official wheel: needs python3 with pip, access to PyPI \
         (or a pip mirror), and on Linux glibc >= 2.35 (manylinux_2_35); or\n  \
         - point MLX_DIR at an MLX install with include/mlx/mlx.h and lib/libmlx.so \
         (for example the mlx/ folder of `pip install mlx-cpu=={MLX_VERSION}`), or MLX_WHEEL \
         at a downloaded .whl file."
    )
}

fn download_wheel(wheel_id: &str, dir: &Path) -> Result<PathBuf, String> {
    if env::var_os("CARGO_NET_OFFLINE").is_some_and(|v| v == "true") {
        return Err(both_routes("CARGO_NET_OFFLINE is set, so no wheel is downloaded."));
    }
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let output = Command::new(python())
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "-q", "-d"])
        .arg(dir)
        .arg(wheel_id)
        .output()
        .map_err(|e| both_routes(&format!("could not run `{} -m pip`: {e}", python())))?;
    if !output.status.success() {
        return Err(both_routes(&format!(
            "`pip download {wheel_id}` failed:\n{}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| both_routes(&format!("pip reported success but left no .whl in {}", dir.display())))
}

fn unpack_wheel(wheel: &Path, root: &Path) -> Result<(), String> {
    // A wheel is a zip file; Python's zipfile is the unzip every pip user already has.
    let status = Command::new(python())
        .args(["-m", "zipfile", "-e"])
        .arg(wheel)
        .arg(root)
        .status()
        .map_err(|e| both_routes(&format!("could not run python to unpack {}: {e}", wheel.display())))?;
    if !status.success() {
        return Err(format!("could not unpack {} (not a wheel?)", wheel.display()));
    }
    Ok(())
}
