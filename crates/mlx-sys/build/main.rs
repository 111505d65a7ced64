//! Build script of the project's `mlx-sys`: find or fetch a prebuilt MLX, compile mlx-c
//! against it, generate the bindings mlx-rs expects, and wire a fast BLAS on Linux.
//!
//! The order mirrors what a reader needs to know to debug a failed build:
//! 1. `mlx_install`: where libmlx and its headers come from (`MLX_DIR`, `MLX_WHEEL`, or
//!    the official wheel fetched with pip);
//! 2. `blas`: on Linux, point the wheel's bundled reference BLAS at the system OpenBLAS;
//! 3. `mlx_c`: the mlx-c sources pinned by crates.io's mlx-sys 0.7.0, compiled with `cc`;
//! 4. `bindings`: bindgen over mlx-c's headers, configured like upstream's build.

mod bindings;
mod blas;
mod mlx_c;
mod mlx_install;

use std::env;
use std::path::PathBuf;

fn main() {
    // Only inputs outside OUT_DIR are tracked: tracking generated files would make the
    // crate dirty on every build.
    println!("cargo:rerun-if-changed=build");
    for var in [
        "MLX_DIR",
        "MLX_WHEEL",
        "MLX_WHEEL_PACKAGE",
        "MLX_C_DIR",
        "MLX_SYS_BLAS",
        "OPENBLAS_LIB",
        "PYTHON",
        "CARGO_NET_OFFLINE",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target_arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();

    let mlx = mlx_install::locate(&out_dir, &target_os).unwrap_or_else(|e| fail(&e));
    let blas = if target_os == "linux" {
        blas::wire(&mlx).unwrap_or_else(|e| fail(&e))
    } else {
        blas::Wiring::platform_default(&target_os)
    };
    let mlx_c_root = mlx_c::sources(&out_dir).unwrap_or_else(|e| fail(&e));
    let prelude_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap()).join("build");
    let needs_half_shim = target_arch != "aarch64";
    mlx_c::compile(&mlx_c_root, &mlx, &prelude_dir, needs_half_shim, &target_os);
    bindings::generate(&mlx_c_root, &prelude_dir, needs_half_shim, &out_dir.join("bindings.rs"))
        .unwrap_or_else(|e| fail(&e));

    // Link: the static mlx-c (emitted by cc above, with the C++ runtime) then libmlx.
    println!("cargo:rustc-link-search=native={}", mlx.lib_dir.display());
    println!("cargo:rustc-link-lib=dylib=mlx");

    // `links = "mlx"` metadata: dependents read these as DEP_MLX_*. Binary crates use
    // LIB_DIR for their rpath; native extensions use INCLUDE to build against MLX.
    println!("cargo:lib_dir={}", mlx.lib_dir.display());
    let include = env::join_paths([&mlx.include_dir, &mlx_c_root]).expect("include path");
    println!("cargo:include={}", include.to_string_lossy());
    println!("cargo:version={}", mlx.version);
    // What C++ built against these headers needs too: the portability prelude (force-include
    // it) and whether the half-type shim is on.
    println!("cargo:prelude={}", prelude_dir.join("prelude.hpp").display());
    println!("cargo:half_shim={}", if needs_half_shim { "1" } else { "0" });

    // What `mlx_sys::build_info` reports at run time.
    println!("cargo:rustc-env=MLX_SYS_LIB_DIR={}", mlx.lib_dir.display());
    println!("cargo:rustc-env=MLX_SYS_INCLUDE_DIRS={}", include.to_string_lossy());
    println!("cargo:rustc-env=MLX_SYS_ORIGIN={}", mlx.origin);
    println!("cargo:rustc-env=MLX_SYS_VERSION={}", mlx.version);
    println!("cargo:rustc-env=MLX_SYS_BLAS_WIRING={}", blas.describe());
}

/// Stop the build with a message cargo shows in full.
fn fail(message: &str) -> ! {
    eprintln!("\nmlx-sys: {message}\n");
    panic!("mlx-sys build failed: {message}");
}
