//! Rust bindings for mlx-c, generated the way crates.io's mlx-sys 0.7.0 generates them
//! (every `mlx/c/*.h` in sorted order, `rust_target` 1.73, `malloc`/`realloc` blocked):
//! that output is the contract mlx-rs 0.33 compiles against.

use std::path::Path;

pub fn generate(mlx_c_root: &Path, prelude_dir: &Path, half_shim: bool, out: &Path) -> Result<(), String> {
    let mut headers: Vec<_> = std::fs::read_dir(mlx_c_root.join("mlx/c"))
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "h"))
        .collect();
    headers.sort();
    let mut builder = bindgen::Builder::default()
        .rust_target("1.73.0".parse().expect("rust target"))
        .clang_arg(format!("-I{}", mlx_c_root.display()))
        .blocklist_function("malloc")
        .blocklist_function("realloc");
    if half_shim {
        // mlx-c declares float16_t/bfloat16_t only on ARM; mlx-rs expects them everywhere
        // (as bindgen's __BindgenFloat16 and as u16).
        builder = builder.clang_arg("-include").clang_arg(prelude_dir.join("bindgen_prelude.h").display().to_string());
    }
    for h in &headers {
        builder = builder.header(h.to_string_lossy());
    }
    let bindings = builder.generate().map_err(|e| {
        format!(
            "bindgen failed on mlx-c's headers: {e}. bindgen needs libclang \
             (Debian/Ubuntu: apt-get install libclang1-14 libclang-common-14-dev, or libclang-dev)"
        )
    })?;
    bindings.write_to_file(out).map_err(|e| format!("{}: {e}", out.display()))
}
