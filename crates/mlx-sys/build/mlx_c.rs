//! mlx-c, the C API that mlx-rs binds: sources from the published mlx-sys 0.7.0 crate,
//! compiled with `cc` against the located MLX.
//!
//! The sources are never copied into this repository: cargo downloads the pinned crate
//! into its own cache (a nested `cargo fetch`, checksummed by cargo against the registry
//! index and again here), and we unpack `src/mlx-c` from it. `MLX_C_DIR` points at an
//! mlx-c checkout instead, for offline builds.

use crate::mlx_install::MlxInstall;
use sha2::{Digest, Sha256};
use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const UPSTREAM_CRATE: &str = "mlx-sys-0.7.0";
/// sha256 of mlx-sys-0.7.0.crate as published on crates.io (its Cargo.lock checksum).
const UPSTREAM_SHA256: &str = "da965f83ce211b80f9b681d9bbd6fa625fe6bb2e659ba7bc55dd95eea8d3b028";

/// Returns the mlx-c root (the folder holding `mlx/c/*.h` and `CMakeLists.txt`).
pub fn sources(out_dir: &Path) -> Result<PathBuf, String> {
    if let Some(dir) = env::var_os("MLX_C_DIR") {
        let dir = PathBuf::from(dir);
        if !dir.join("mlx/c/mlx.h").is_file() {
            return Err(format!("MLX_C_DIR={} has no mlx/c/mlx.h", dir.display()));
        }
        return Ok(dir);
    }
    let root = out_dir.join(UPSTREAM_CRATE);
    let mlx_c = root.join("src/mlx-c");
    let marker = root.join(".mlx-sys-complete");
    if marker.is_file() {
        return Ok(mlx_c);
    }
    let crate_file = match find_cached_crate() {
        Some(f) => f,
        None => {
            nested_fetch(out_dir)?;
            find_cached_crate().ok_or_else(|| {
                format!("cargo fetch succeeded but {UPSTREAM_CRATE}.crate is not in {}", cargo_home().display())
            })?
        }
    };
    let bytes = fs::read(&crate_file).map_err(|e| format!("{}: {e}", crate_file.display()))?;
    let digest = Sha256::digest(&bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    if hex != UPSTREAM_SHA256 {
        return Err(format!(
            "{} has sha256 {hex}, expected {UPSTREAM_SHA256}: delete it and build again",
            crate_file.display()
        ));
    }
    let _ = fs::remove_dir_all(&root);
    tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]))
        .unpack(out_dir)
        .map_err(|e| format!("cannot unpack {}: {e}", crate_file.display()))?;
    fs::write(&marker, UPSTREAM_SHA256).map_err(|e| e.to_string())?;
    Ok(mlx_c)
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var_os("HOME").unwrap_or_default()).join(".cargo"))
}

fn find_cached_crate() -> Option<PathBuf> {
    let cache = cargo_home().join("registry/cache");
    fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join(format!("{UPSTREAM_CRATE}.crate")))
        .find(|p| p.is_file())
}

/// Ask cargo to download the pinned crate into its cache, through whatever registry
/// configuration (mirrors, proxies) the user's cargo already has.
fn nested_fetch(out_dir: &Path) -> Result<(), String> {
    let dir = out_dir.join("fetch-mlx-c");
    fs::create_dir_all(dir.join("src")).map_err(|e| e.to_string())?;
    // An empty [workspace] makes this its own root, so the outer [patch] does not apply.
    fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"fetch-mlx-c\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n\
         [dependencies]\nmlx-sys = { version = \"=0.7.0\", default-features = false }\n\n[workspace]\n",
    )
    .map_err(|e| e.to_string())?;
    fs::write(dir.join("src/lib.rs"), "").map_err(|e| e.to_string())?;
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("fetch").arg("--manifest-path").arg(dir.join("Cargo.toml"));
    if env::var_os("CARGO_NET_OFFLINE").is_some_and(|v| v == "true") {
        cmd.arg("--offline");
    }
    for var in
        ["CARGO_TARGET_DIR", "RUSTC_WRAPPER", "CARGO_MAKEFLAGS", "MAKEFLAGS", "MFLAGS", "CARGO_ENCODED_RUSTFLAGS"]
    {
        cmd.env_remove(var);
    }
    let output = cmd.output().map_err(|e| format!("cannot run cargo fetch: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "could not download {UPSTREAM_CRATE} (the mlx-c sources) with cargo:\n{}\n\
             Offline, set MLX_C_DIR to an mlx-c checkout at the revision mlx-sys 0.7.0 pins.",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(())
}

/// The `.cpp` files mlx-c's own CMakeLists.txt builds (commented-out entries excluded).
fn listed_sources(mlx_c_root: &Path) -> Vec<PathBuf> {
    let cmake = fs::read_to_string(mlx_c_root.join("CMakeLists.txt")).unwrap_or_default();
    cmake
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("${CMAKE_CURRENT_LIST_DIR}/"))
        .map(|l| l.trim_end_matches(')'))
        .filter(|l| l.starts_with("mlx/c/") && l.ends_with(".cpp"))
        .map(|l| mlx_c_root.join(l))
        .collect()
}

pub fn compile(mlx_c_root: &Path, mlx: &MlxInstall, prelude_dir: &Path, half_shim: bool, target_os: &str) {
    let files = listed_sources(mlx_c_root);
    assert!(files.len() > 20, "found only {} sources in {}/CMakeLists.txt", files.len(), mlx_c_root.display());
    let mut build = cc::Build::new();
    build.cpp(true).std("c++20").warnings(false).include(mlx_c_root).include(&mlx.include_dir).files(&files);
    // Portability shims (std::format on g++ 12, half types off ARM), force-included.
    build.flag("-include").flag(prelude_dir.join("prelude.hpp").to_str().unwrap());
    if half_shim {
        build.define("MLX_SYS_HALF_SHIM", None);
    }
    if target_os == "macos" {
        build.cpp_link_stdlib("c++");
    }
    build.compile("mlxc");
}
