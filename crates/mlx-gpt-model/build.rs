//! Builds the C++ MLX primitives in `csrc/` against the MLX that mlx-sys located, which
//! it publishes as `links = "mlx"` metadata: DEP_MLX_INCLUDE (MLX's and mlx-c's headers),
//! DEP_MLX_PRELUDE and DEP_MLX_HALF_SHIM (the portability shims mlx-c is built with).
//! The static library lands before libmlx on the link line, which resolves its MLX calls.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-changed=build.rs");
    let include = env::var_os("DEP_MLX_INCLUDE").expect(
        "DEP_MLX_INCLUDE is not set: mlx-gpt-model needs the workspace's mlx-sys (crates/mlx-sys, \
         wired in by [patch.crates-io] in the root Cargo.toml), which publishes MLX's headers",
    );
    let mut build = cc::Build::new();
    build.cpp(true).std("c++20").files([
        "csrc/entry.cpp",
        "csrc/host_gemv.cpp",
        "csrc/gelu.cpp",
        "csrc/layer_norm.cpp",
        "csrc/decode_attention.cpp",
        "csrc/causal_attention.cpp",
        "csrc/adamw.cpp",
        "csrc/gemm.cpp",
        "csrc/linear.cpp",
    ]);
    println!("cargo:rerun-if-env-changed=DEP_MLX_INCLUDE");
    println!("cargo:rerun-if-env-changed=DEP_MLX_LIB_DIR");
    // As system headers: their warnings are MLX's, ours stay visible.
    for dir in env::split_paths(&include) {
        build.flag("-isystem").flag(dir.to_str().expect("a UTF-8 path"));
    }
    // Lets the element-wise loops (csrc/gelu.cpp) vectorise their selects and floor, as
    // MLX's own JIT kernels are built (mlx_gpt_model::jit).
    build.flag_if_supported("-fno-trapping-math").flag_if_supported("-fno-math-errno");
    if let Some(prelude) = env::var_os("DEP_MLX_PRELUDE") {
        build.flag("-include").flag(prelude.to_str().expect("a UTF-8 path"));
    }
    if env::var("DEP_MLX_HALF_SHIM").as_deref() == Ok("1") {
        build.define("MLX_SYS_HALF_SHIM", None);
    }
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("macos") {
        build.cpp_link_stdlib("c++");
    }
    build.compile("mlx_gpt_kernels");

    // `links = "mlx_gpt_model"` metadata: a program that depends on this crate (and not on
    // mlx-sys directly, so it does not see DEP_MLX_LIB_DIR) reads libmlx's folder as
    // DEP_MLX_GPT_MODEL_LIB_DIR and gives its binaries an rpath to it (examples/dependent).
    if let Ok(dir) = env::var("DEP_MLX_LIB_DIR") {
        println!("cargo:lib_dir={dir}");
    }
}
