//! Give the `mlx-gpt` binary an rpath to libmlx, so `target/release/mlx-gpt` runs without
//! LD_LIBRARY_PATH. mlx-sys publishes the folder as `links` metadata (DEP_MLX_LIB_DIR).
fn main() {
    if let Ok(dir) = std::env::var("DEP_MLX_LIB_DIR") {
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{dir}");
    }
}
