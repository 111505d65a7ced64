//! The one step a program that uses mlx-gpt-model needs on Linux: an rpath to the folder of
//! libmlx, which mlx-gpt-model publishes to its direct dependents as
//! DEP_MLX_GPT_MODEL_LIB_DIR. Without it the program stops at start-up with "libmlx.so:
//! cannot open shared object file" unless LD_LIBRARY_PATH names that folder.
fn main() {
    if let Ok(dir) = std::env::var("DEP_MLX_GPT_MODEL_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
