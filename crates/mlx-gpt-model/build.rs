//! `links = "mlx_gpt_model"` metadata: a program that depends on this crate (and not on
//! mlx-sys directly, so it does not see DEP_MLX_LIB_DIR) reads libmlx's folder as
//! DEP_MLX_GPT_MODEL_LIB_DIR and gives its binaries an rpath to it (examples/dependent).

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_MLX_LIB_DIR");
    if let Ok(dir) = std::env::var("DEP_MLX_LIB_DIR") {
        println!("cargo:lib_dir={dir}");
    }
}
