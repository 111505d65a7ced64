//! Builds the C++ MLX primitives in `csrc/` against the MLX that mlx-sys located, which
//! it publishes as `links = "mlx"` metadata: DEP_MLX_INCLUDE (MLX's and mlx-c's headers),
//! DEP_MLX_PRELUDE and DEP_MLX_HALF_SHIM (the portability shims mlx-c is built with).
//! The static library lands before libmlx on the link line, which resolves its MLX calls.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-changed=build.rs");
    let include = env::var_os("DEP_MLX_INCLUDE").expect("mlx-sys publishes DEP_MLX_INCLUDE");
    let mut build = cc::Build::new();
    build.cpp(true).std("c++20").file("csrc/host_gemv.cpp");
    // As system headers: their warnings are MLX's, ours stay visible.
    for dir in env::split_paths(&include) {
        build.flag("-isystem").flag(dir.to_str().expect("a UTF-8 path"));
    }
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
}
