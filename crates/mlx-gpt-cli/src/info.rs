//! `mlx-gpt info`: what this build of mlx-gpt will compute with.

use crate::DeviceArgs;
use mlx_gpt_runtime::blas::{self as runtime, BlasKind};
use mlx_gpt_runtime::device::{self, DeviceKind};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(args: Args, jit: Option<mlx_gpt_runtime::jit::JitSetup>) -> anyhow::Result<()> {
    let (selected, kernels) = args.device.select()?;
    println!("mlx-gpt {}", env!("CARGO_PKG_VERSION"));
    println!("MLX {} ({})", runtime::mlx_version(), runtime::mlx_origin());
    println!("  libmlx: {}", runtime::mlx_lib_dir());
    println!("devices:");
    for kind in [DeviceKind::Cpu, DeviceKind::Gpu] {
        let n = device::count(kind);
        let state = if device::is_available(kind) { "available" } else { "not in this build" };
        println!("  {kind}: {n} ({state})");
    }
    println!("default device: {}", device::best_available());
    println!("selected device: {selected}");
    println!("kernels: {}", kernels.describe());
    println!(
        "  mlx-gpt's CPU kernels: {}",
        if mlx_gpt_model::Kernels::cpu_built() { "built" } else { "not in this build (pure-MLX)" }
    );
    let blas = runtime::blas();
    let lib = blas.library.as_ref().map(|p| p.display().to_string());
    println!("BLAS: {} ({})", blas.name(), lib.as_deref().unwrap_or("no cblas_sgemm bound"));
    if let BlasKind::OpenBlas { config, threads } = &blas.kind {
        println!("  {config}, {threads} threads");
    }
    let kernel = mlx_gpt_runtime::blas_kernel::status();
    if kernel.core.is_some() {
        println!("  kernel: {}", kernel.describe());
    }
    if !blas.is_optimized() {
        println!(
            "  warning: matmuls will be ~30x slower than with OpenBLAS; install it \
             (apt-get install libopenblas0-pthread) and rebuild"
        );
    }
    match &jit {
        Some(j) => println!("CPU JIT: {} {} (kernel cache {})", j.compiler.display(), j.flags, j.dir.display()),
        None => println!("CPU JIT: MLX's default flags (native JIT off)"),
    }
    println!(
        "malloc: {}",
        if mlx_gpt_runtime::malloc::freed_memory_kept() {
            "freed memory kept in the process (mmap threshold 256 MiB, the heap never trimmed)"
        } else {
            "system defaults (--no-malloc-tuning, or not glibc)"
        }
    );
    println!(
        "decoding's weights: {}",
        if mlx_gpt_model::huge_pages_available() {
            "on 2 MiB pages (Linux's transparent huge pages, asked for with madvise)"
        } else {
            "on the allocator's pages (no transparent huge pages here, or a build without the CPU kernels)"
        }
    );
    println!(
        "  read ahead {}",
        if mlx_gpt_model::decode_weights_non_temporal() {
            "as non-temporal (prefetchnta: an AMD CPU; docs/model.md)"
        } else {
            "into every cache level (the ordinary prefetch), or a build without the CPU kernels"
        }
    );
    println!("CPU: {} ({} logical cores)", cpu_model(), available_cores());
    println!("  features: {}", cpu_features().join(" "));
    // Measured now (a quarter of a second), so `info` also refreshes the cached figure
    // that training divides MFU by.
    let peak = mlx_gpt_train::peak::measure_and_cache(mlx_gpt_train::peak::default_threads());
    println!("  FMA ceiling (MFU's denominator): {}", peak.describe());
    match memory_bytes() {
        Some(b) => println!("memory: {:.1} GiB", b as f64 / (1u64 << 30) as f64),
        None => println!("memory: unknown"),
    }
    Ok(())
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// The vector extensions that matter for MLX's CPU kernels and BLAS.
fn cpu_features() -> Vec<&'static str> {
    let mut found = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => { $( if std::is_x86_feature_detected!($f) { found.push($f); } )* };
        }
        probe!("sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512bf16");
    }
    #[cfg(target_arch = "aarch64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => { $( if std::arch::is_aarch64_feature_detected!($f) { found.push($f); } )* };
        }
        probe!("neon", "fp16", "bf16", "dotprod", "sve");
    }
    found
}

fn memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
