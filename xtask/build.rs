//! Give the `xtask` binary an rpath to libmlx (mlx-gpt-data links it), so
//! `target/debug/xtask` also runs without LD_LIBRARY_PATH, not only through `cargo xtask`.
fn main() {
    if let Ok(dir) = std::env::var("DEP_MLX_LIB_DIR") {
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{dir}");
    }
}
