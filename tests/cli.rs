//! The `mlx-gpt` binary as a user runs it.

mod common;

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
    // The kernels, resolved for the CPU: mlx-gpt's where this build has them.
    let want = if mlx_gpt_model::Kernels::cpu_built() { "kernels: cpu: " } else { "kernels: mlx: " };
    assert!(stdout.contains(want), "{stdout}");
    // Decoding's weights read ahead as non-temporal on an AMD CPU, with the CPU kernels.
    let amd = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| c.contains("AuthenticAMD"));
    let line = stdout.lines().find(|l| l.trim_start().starts_with("read ahead ")).expect("a read-ahead line");
    assert_eq!(line.contains("non-temporal"), amd && mlx_gpt_model::Kernels::cpu_built(), "{line}");
    let out = mlx_gpt(&["info", "--kernels", "mlx-fast"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("kernels: mlx-fast: "));
}

#[test]
fn gpu_on_a_cpu_build_is_a_clear_error() {
    if mlx_gpt_runtime::device::count(mlx_gpt_runtime::DeviceKind::Gpu) > 0 {
        common::skip("this MLX build has a GPU backend");
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
    let out = mlx_gpt(&["info", "--kernels", "fast"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown kernels 'fast'") && stderr.contains("mlx-fast"), "{stderr}");
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
    let out = mlx_gpt(&["bench", "matmul", "--sizes", "64", "--shapes", "48x40x56", "--reps", "2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("BLAS kernel: ") && stdout.contains("ceiling: "), "{stdout}");
    let rows: Vec<&str> = stdout.lines().rev().take(2).collect();
    for (row, shape) in rows.iter().zip(["48x40x56", "64x64x64"]) {
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cols.len(), 6, "{row}");
        assert_eq!(cols[0], shape, "{row}");
        let nums: Vec<f64> = cols[1..].iter().map(|c| c.trim_end_matches('%').parse().unwrap()).collect();
        // GFLOP/s (a debug build's tiny products round the ratio and share down to 0).
        assert!(nums[..3].iter().all(|v| v.is_finite() && *v > 0.0), "{row}");
        // The ratio, and the product's share of the FMA ceiling.
        assert!(nums[3] >= 0.0 && (0.0..100.0).contains(&nums[4]), "{row}");
    }
    let bad = mlx_gpt(&["bench", "matmul", "--shapes", "12x0x4"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--shapes: '12x0x4'"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// What `info` says of the BLAS kernel and the FMA ceiling; with the user's own
/// OPENBLAS_CORETYPE, that choice is kept and named.
#[test]
fn info_names_the_blas_kernel_and_the_ceiling() {
    let out = mlx_gpt(&["info"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("FMA ceiling (MFU's denominator): ") && stdout.contains("GFLOP/s"), "{stdout}");
    if mlx_gpt_runtime::blas_kernel::openblas_corename().is_none() {
        return; // not OpenBLAS: no kernel line
    }
    let kernel = stdout.lines().find(|l| l.trim_start().starts_with("kernel: ")).expect("a kernel line");
    assert!(!kernel.contains("WEAKER"), "{kernel}");
    let user = Command::new(env!("CARGO_BIN_EXE_mlx-gpt"))
        .arg("info")
        .env("OPENBLAS_CORETYPE", "Prescott")
        .env_remove("MLX_GPT_BLAS_CORRECTION")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&user.stdout);
    assert!(
        stdout.contains("kernel: Prescott (generic; OPENBLAS_CORETYPE=Prescott set by the user, kept)"),
        "{stdout}"
    );
}

/// The correction's protocol, on any CPU with AVX2 or AVX-512: a process started with
/// the kernel mlx-gpt would force and a marker naming its own pid (as after the
/// re-execution) checks that kernel against the reference product and reports it as
/// corrected; with another pid (a child) it trusts the parent's check; a marker of
/// rejection is reported as such.
#[test]
fn a_forced_kernel_is_checked_and_reported() {
    use mlx_gpt_runtime::blas_kernel::{cpu_class, openblas_corename};
    let Some(target) = cpu_class().openblas_core() else { return };
    if openblas_corename().is_none() {
        return;
    }
    // `exec` keeps the shell's pid, so $$ is mlx-gpt's.
    let out = Command::new("sh")
        .args(["-c", &format!("MLX_GPT_BLAS_CORRECTION=\"Prescott>{target}@$$\" exec \"$0\" info")])
        .arg(env!("CARGO_BIN_EXE_mlx-gpt"))
        .env("OPENBLAS_CORETYPE", target)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("kernel: {target} (")), "{stdout}");
    assert!(stdout.contains("corrected from Prescott") && stdout.contains("max rel. error"), "{stdout}");
    let child = Command::new(env!("CARGO_BIN_EXE_mlx-gpt"))
        .arg("info")
        .env("OPENBLAS_CORETYPE", target)
        .env("MLX_GPT_BLAS_CORRECTION", format!("Prescott>{target}@1"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(stdout.contains("corrected from Prescott") && stdout.contains("by the parent process"), "{stdout}");
    let out = Command::new(env!("CARGO_BIN_EXE_mlx-gpt"))
        .arg("info")
        .env_remove("OPENBLAS_CORETYPE")
        .env("MLX_GPT_BLAS_CORRECTION", format!("rejected:{target}:wrong products"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("{target} was forced and failed its check (wrong products)")), "{stdout}");
}

/// An error's cause is said once, not once by the error and again by the chain. A run
/// that cannot start leaves no run directory behind.
#[test]
fn errors_say_their_cause_once() {
    let out = std::env::temp_dir().join(format!("mlx-gpt-cause-{}", std::process::id()));
    let out_arg = out.display().to_string();
    for args in [
        &["sample", "--init-from", "/nonexistent-mlx-gpt"][..],
        &["train", "baby_shakespeare_char", "--data_dir", "/nonexistent-mlx-gpt", "--out_dir", &out_arg][..],
    ] {
        let out = mlx_gpt(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert_eq!(stderr.matches("(os error 2)").count(), 1, "{stderr}");
    }
    assert!(!out.exists(), "a run that could not start created {}", out.display());
}
