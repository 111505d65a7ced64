//! The `mlx-gpt` binary as a user runs it.

use std::process::Command;

fn mlx_gpt(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mlx-gpt")).args(args).output().expect("run mlx-gpt")
}

#[test]
fn info_names_mlx_devices_and_blas() {
    let out = mlx_gpt(&["info"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("MLX 0.32"), "{stdout}");
    assert!(stdout.contains("cpu: 1 (available)"), "{stdout}");
    let blas = stdout.lines().find(|l| l.starts_with("BLAS: ")).expect("a BLAS line");
    assert!(!blas.contains("no cblas_sgemm"), "{blas}");
    if cfg!(target_os = "linux") && mlx_sys::build_info::BLAS_WIRING.starts_with("openblas:") {
        assert!(blas.starts_with("BLAS: OpenBLAS"), "{blas}");
    }
}

#[test]
fn gpu_on_a_cpu_build_is_a_clear_error() {
    if mlx_gpt_model::device::count(mlx_gpt_model::DeviceKind::Gpu) > 0 {
        eprintln!("skipped: this MLX build has a GPU backend");
        return;
    }
    let out = mlx_gpt(&["info", "--device", "gpu"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error: --device gpu: this MLX build"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn unknown_device_and_flags_are_named() {
    let out = mlx_gpt(&["info", "--device", "tpu"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown device 'tpu'"));
    let out = mlx_gpt(&["info", "--frobnicate"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--frobnicate"));
}

#[test]
fn binary_runs_without_library_path() {
    // The rpath must find libmlx on its own, as for a user who runs target/release/mlx-gpt.
    let out = Command::new(env!("CARGO_BIN_EXE_mlx-gpt"))
        .arg("--version")
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("DYLD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn matmul_bench_prints_figures() {
    let out = mlx_gpt(&["bench", "matmul", "--sizes", "64", "--reps", "2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let row = stdout.lines().last().unwrap();
    let cols: Vec<f64> = row.split_whitespace().map(|c| c.parse().unwrap()).collect();
    assert_eq!(cols.len(), 5, "{row}");
    assert!(cols.iter().all(|v| v.is_finite() && *v > 0.0), "{row}");
}
