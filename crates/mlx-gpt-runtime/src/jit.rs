//! Native code for MLX's CPU `compile`.
//!
//! On Linux, MLX's CPU backend fuses the element-wise operations of a compiled function
//! into C++ that it builds at run time with `g++ -std=c++17 -O3 -Wall -fPIC -shared`,
//! found on `PATH`, caching the libraries in the system temp directory. Without `-m`
//! flags those kernels are scalar (every `std::fma` a libm call); the wheel's own kernels
//! are built for baseline x86-64 too. [`configure`] puts a private `g++` first on `PATH`
//! that adds this machine's vector units and a few safe optimisation flags
//! ([`NATIVE_FLAGS`]), and points `TMPDIR` at a kernel cache keyed by everything that
//! decides the generated code (compiler and its version, flags, MLX version, CPU), so a
//! stale or foreign kernel is never reused.
//!
//! Call it at the start of `main`, before any thread exists and before MLX compiles
//! anything: it changes `PATH` and `TMPDIR` for the whole process. It is the program's
//! choice (`mlx-gpt --no-native-jit` does not call it), never a library's.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Flags added to MLX's JIT compiler command. `-fno-trapping-math` lets GCC vectorise
/// `exp`/`erf` polynomial code that would otherwise keep FP-exception order;
/// `-fno-semantic-interposition` and `-finline-limit` let the kernel's helpers inline.
/// None changes results beyond floating-point contraction (FMA), which MLX's own Metal
/// and ARM builds already use.
pub const NATIVE_FLAGS: &str = "-march=native -fno-trapping-math -fno-semantic-interposition -finline-limit=1000";

/// What [`configure`] set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JitSetup {
    /// The real compiler the wrapper calls.
    pub compiler: PathBuf,
    /// Its `--version` first line.
    pub compiler_version: String,
    /// Flags added.
    pub flags: String,
    /// Folder of the wrapper and the kernel cache.
    pub dir: PathBuf,
}

/// Why the native JIT could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum JitError {
    /// No C++ compiler.
    #[error(
        "MLX's CPU compile needs a C++ compiler and none was found (looked for $CXX and g++ on PATH): \
         install one (apt-get install g++), or pass --no-native-jit to run MLX's own scalar kernels"
    )]
    NoCompiler,
    /// The cache folder could not be prepared.
    #[error("{path}: {source}")]
    Io {
        /// The folder or file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn find_on_path(name: &str, skip: Option<&Path>) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .filter(|d| skip.is_none_or(|s| d != s))
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

fn cache_root() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("mlx-gpt")
}

fn fnv64(parts: &[&str]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for p in parts {
        for b in p.bytes().chain([0]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

fn cpu_signature() -> String {
    // The model name and feature flags decide what -march=native generates.
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let pick = |key: &str| info.lines().find(|l| l.starts_with(key)).unwrap_or("").to_string();
    format!("{}|{}|{}", std::env::consts::ARCH, pick("model name"), pick("flags"))
}

/// The `g++` MLX will run: the real compiler with [`NATIVE_FLAGS`], writing its output
/// under a temporary name and renaming it, because MLX loads a kernel library as soon as
/// the file exists — another process (a second training run, another rank) must never
/// find a half-written one.
fn wrapper_script(real: &Path) -> String {
    format!(
        r#"#!/bin/sh
# mlx-gpt: MLX's JIT compiler with this machine's vector units ({NATIVE_FLAGS}).
out=""; prev=""
for a in "$@"; do [ "$prev" = "-o" ] && out="$a"; prev="$a"; done
[ -z "$out" ] && exec '{real}' "$@" {NATIVE_FLAGS}
# A short temporary name beside the output: MLX's kernel names already use most of the
# 255 bytes a file name may have, so nothing can be appended to them.
tmp="$(dirname "$out")/.jit-tmp.$$.so"
n=$#; prev=""
for a in "$@"; do
  if [ "$prev" = "-o" ]; then set -- "$@" "$tmp"; else set -- "$@" "$a"; fi
  prev="$a"
done
shift $n
'{real}' "$@" {NATIVE_FLAGS} || {{ rm -f "$tmp"; exit 1; }}
mv -f "$tmp" "$out"
"#,
        real = real.display()
    )
}

/// Set up the native JIT compiler for this process (see the module docs), with its cache
/// under `$XDG_CACHE_HOME/mlx-gpt` (or `~/.cache/mlx-gpt`). Returns `None` off Linux
/// (MLX compiles Metal kernels on macOS).
pub fn configure() -> Result<Option<JitSetup>, JitError> {
    configure_in(&cache_root())
}

/// [`configure`] with the cache under `root`.
pub fn configure_in(root: &Path) -> Result<Option<JitSetup>, JitError> {
    if !cfg!(target_os = "linux") {
        return Ok(None);
    }
    let root = root.to_path_buf();
    let real = std::env::var_os("CXX")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| find_on_path("g++", None).filter(|p| !p.starts_with(&root)))
        .or_else(|| {
            // A wrapper of ours may already lead PATH (a child of a configured process).
            let ours = std::env::var_os("PATH").and_then(|p| std::env::split_paths(&p).find(|d| d.starts_with(&root)));
            find_on_path("g++", ours.as_deref())
        })
        .ok_or(JitError::NoCompiler)?;
    let version = Command::new(&real)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string())
        .ok_or(JitError::NoCompiler)?;
    let key = fnv64(&[&real.to_string_lossy(), &version, NATIVE_FLAGS, &crate::blas::mlx_version(), &cpu_signature()]);
    let dir = root.join(format!("jit-{key:016x}"));
    let bin = dir.join("bin");
    let tmp = dir.join("kernels");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| JitError::Io { path, source }
    };
    std::fs::create_dir_all(&bin).map_err(io(&bin))?;
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let wrapper = bin.join("g++");
    let script = wrapper_script(&real);
    if std::fs::read_to_string(&wrapper).ok().as_deref() != Some(script.as_str()) {
        let staged = bin.join(format!(".g++.{}", std::process::id()));
        std::fs::write(&staged, &script).map_err(io(&staged))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755)).map_err(io(&staged))?;
        std::fs::rename(&staged, &wrapper).map_err(io(&wrapper))?;
    }
    let record = format!(
        "compiler: {}\nversion: {version}\nflags: {NATIVE_FLAGS}\nmlx: {}\ncpu: {}\n",
        real.display(),
        crate::blas::mlx_version(),
        cpu_signature()
    );
    let _ = std::fs::write(dir.join("flags.txt"), record);
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths: Vec<PathBuf> = vec![bin.clone()];
    paths.extend(std::env::split_paths(&path).filter(|p| !p.starts_with(&root)));
    let joined = std::env::join_paths(paths).expect("paths without separators");
    // SAFETY (of the process environment): documented as a start-of-main call, before
    // threads exist; MLX reads PATH and TMPDIR only when it compiles.
    std::env::set_var("PATH", joined);
    let _ = USER_TMPDIR.set(std::env::temp_dir());
    std::env::set_var("TMPDIR", &tmp);
    Ok(Some(JitSetup { compiler: real, compiler_version: version, flags: NATIVE_FLAGS.to_string(), dir }))
}

static USER_TMPDIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// The temporary folder the user's environment names (`TMPDIR`, else `/tmp`), also after
/// [`configure`] pointed `TMPDIR` at the kernel cache: for files of the program's own
/// that belong in the user's temporary folder, not among compiled kernels.
pub fn user_temp_dir() -> PathBuf {
    USER_TMPDIR.get().cloned().unwrap_or_else(std::env::temp_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapper_compiles_with_native_flags_and_renames_its_output() {
        let Some(real) = find_on_path("g++", None) else {
            eprintln!("skipped: no g++ on PATH");
            return;
        };
        let dir = std::env::temp_dir().join(format!("mlx-gpt-jit-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let wrapper = dir.join("g++");
        std::fs::write(&wrapper, wrapper_script(&real)).unwrap();
        std::fs::write(dir.join("k.cpp"), "extern \"C\" int twice(int x) { return 2 * x; }\n").unwrap();
        // The wrapper, called as MLX calls g++.
        let compile = |src: &str, out: &Path| {
            Command::new("sh")
                .arg(&wrapper)
                .args(["-std=c++17", "-O3", "-fPIC", "-shared"])
                .arg(dir.join(src))
                .arg("-o")
                .arg(out)
                .output()
                .unwrap()
                .status
                .success()
        };
        let out = dir.join("lib k.so"); // a space, as in real temp paths
        assert!(compile("k.cpp", &out));
        assert!(out.is_file());
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
            .collect();
        assert!(leftovers.is_empty());
        // MLX's kernel library names can use nearly all of the 255 bytes a name may have.
        let long = dir.join(format!("lib{}.so", "K".repeat(248)));
        assert!(compile("k.cpp", &long) && long.is_file());
        // A failing compile leaves nothing under the output name.
        std::fs::write(dir.join("bad.cpp"), "this is not C++").unwrap();
        let bad = dir.join("bad.so");
        assert!(!compile("bad.cpp", &bad) && !bad.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
