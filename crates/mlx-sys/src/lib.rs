//! Bindings to mlx-c (MLX's C API), as crates.io's `mlx-sys` 0.7.0 provides them, built
//! against MLX's official binary builds so that they work on Linux as well as macOS.
//!
//! Crate map:
//! - the generated `mlx_*` items (bindgen output, same contract as upstream);
//! - [`build_info`]: where this build found MLX and which BLAS it wired;
//! - a `mach_approximate_time` stand-in on non-Apple targets (mlx-rs seeds its RNG with it).
//!
//! `build/main.rs` explains how MLX is found; `docs/mlx-build.md` in the repository explains
//! the choices.
#![allow(non_upper_case_globals)]
#![allow(non_camel_case_types)]
#![allow(non_snake_case)]
#![allow(clippy::all)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

/// Facts recorded by the build script.
pub mod build_info {
    /// Folder holding the libmlx this crate was linked against.
    pub const MLX_LIB_DIR: &str = env!("MLX_SYS_LIB_DIR");
    /// MLX's and mlx-c's header folders, joined with the platform's path separator.
    pub const MLX_INCLUDE_DIRS: &str = env!("MLX_SYS_INCLUDE_DIRS");
    /// How MLX was obtained, e.g. `pip wheel mlx-cpu==0.32.2` or `MLX_DIR=/opt/mlx`.
    pub const MLX_ORIGIN: &str = env!("MLX_SYS_ORIGIN");
    /// MLX version read from the headers at build time.
    pub const MLX_VERSION: &str = env!("MLX_SYS_VERSION");
    /// What the build did about BLAS: `openblas:<path>`, `reference:<why>` or
    /// `unchanged:<why>`. The library actually bound at run time can differ (LD_PRELOAD,
    /// a moved library); ask the dynamic loader for that.
    pub const BLAS_WIRING: &str = env!("MLX_SYS_BLAS_WIRING");
}

/// mlx-rs seeds its random state from Mach's clock through `mach-sys`, which declares the
/// function on every platform but only Apple's libc defines it. Off Apple, a monotonic
/// clock in nanoseconds plays the same role.
#[cfg(not(target_vendor = "apple"))]
#[no_mangle]
pub extern "C" fn mach_approximate_time() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(ts.tv_nsec as u64)
}
