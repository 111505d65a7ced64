//! With the `cpu-kernels` feature on x86-64 Linux: builds the C++ MLX primitives in `csrc/`
//! against the MLX that mlx-sys located, which it publishes as `links = "mlx"` metadata:
//! DEP_MLX_INCLUDE (MLX's and mlx-c's headers), DEP_MLX_PRELUDE and DEP_MLX_HALF_SHIM (the
//! portability shims mlx-c is built with), and sets `cfg(cpu_kernels)` for the Rust side.
//! The static library lands before libmlx on the link line, which resolves its MLX calls.

use std::env;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(cpu_kernels)");
    println!("cargo:rerun-if-changed=build.rs");
    let wanted = env::var_os("CARGO_FEATURE_CPU_KERNELS").is_some();
    let x86_linux = env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64")
        && env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    if wanted && x86_linux {
        compile_kernels();
        println!("cargo:rustc-cfg=cpu_kernels");
    }
}

#[cfg(feature = "cpu-kernels")]
fn compile_kernels() {
    println!("cargo:rerun-if-changed=csrc");
    let include = env::var_os("DEP_MLX_INCLUDE").expect(
        "DEP_MLX_INCLUDE is not set: mlx-gpt-ops needs the workspace's mlx-sys (crates/mlx-sys, \
         wired in by [patch.crates-io] in the root Cargo.toml), which publishes MLX's headers",
    );
    let mut build = cc::Build::new();
    build.cpp(true).std("c++20").files([
        "csrc/entry.cpp",
        "csrc/decode_product.cpp",
        "csrc/gelu.cpp",
        "csrc/rotary_qkv.cpp",
        "csrc/rms_norm.cpp",
        "csrc/layer_norm.cpp",
        "csrc/decode_attention.cpp",
        "csrc/decode_block.cpp",
        "csrc/causal_attention.cpp",
        "csrc/adamw.cpp",
        "csrc/gemm.cpp",
        "csrc/linear.cpp",
        "csrc/huge_pages.cpp",
        "csrc/run_ahead.cpp",
        "csrc/scheduler.cpp",
        "csrc/decode_step.cpp",
    ]);
    println!("cargo:rerun-if-env-changed=DEP_MLX_INCLUDE");
    // As system headers: their warnings are MLX's, ours stay visible.
    for dir in env::split_paths(&include) {
        build.flag("-isystem").flag(dir.to_str().expect("a UTF-8 path"));
    }
    // Lets the element-wise loops (csrc/gelu.cpp) vectorise their selects and floor, as
    // MLX's own JIT kernels are built (mlx_gpt_runtime::jit).
    build.flag_if_supported("-fno-trapping-math").flag_if_supported("-fno-math-errno");
    if env::var_os("CARGO_FEATURE_GENERIC_CPU").is_some() {
        // csrc/vector.h: no AVX-512 intrinsics, no per-feature-level clones.
        build.define("MLX_GPT_GENERIC_CPU", None);
    }
    if let Some(prelude) = env::var_os("DEP_MLX_PRELUDE") {
        build.flag("-include").flag(prelude.to_str().expect("a UTF-8 path"));
    }
    if env::var("DEP_MLX_HALF_SHIM").as_deref() == Ok("1") {
        build.define("MLX_SYS_HALF_SHIM", None);
    }
    build.compile("mlx_gpt_kernels");
}

#[cfg(not(feature = "cpu-kernels"))]
fn compile_kernels() {
    unreachable!("only called with the cpu-kernels feature")
}
