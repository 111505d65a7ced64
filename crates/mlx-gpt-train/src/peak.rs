//! The device's floating-point ceiling, MFU's denominator: what the CPU's fused
//! multiply-adds can do at their widest vector width on every core used, measured by a
//! loop of independent FMAs (nothing else: no memory traffic, no dependencies between
//! them). nanoGPT divides by an A100's 312 TFLOP/s whatever the machine, which says nothing
//! on a laptop; dividing by a matmul through the BLAS (this file's first version) says
//! even less when the BLAS runs a slow kernel: MFU read 90–260 % on a CPU where OpenBLAS
//! had fallen back to SSE3 (docs/performance-history.md). Against this ceiling MFU cannot pass
//! 100 % unless the FLOP count is wrong.
//!
//! The measurement takes about a quarter of a second; it is cached per machine (CPU model,
//! vector width, thread count) in `~/.cache/mlx-gpt/peak-flops.json`, keeping the highest
//! figure seen, since a run disturbed by other work can only measure too low.
//! `peak_flops` in the training config overrides it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// A FLOP/s ceiling and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Peak {
    /// FLOP/s, all threads together.
    pub flops: f64,
    /// Threads it counts.
    pub threads: usize,
    /// The FMA loop's vector width in bits (0 when given by the user).
    pub vector_bits: u32,
    /// How it was obtained.
    pub source: PeakSource,
}

/// How a [`Peak`] was obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeakSource {
    /// Measured now by the FMA loop.
    Measured,
    /// Measured earlier on this machine, read from the cache file.
    Cached(PathBuf),
    /// `peak_flops` in the configuration.
    Config,
    /// A GPU: the best of a few f32 1024³ matmuls on it (the FMA loop measures the CPU).
    DeviceMatmul,
}

impl Peak {
    /// For logs and `info`: `334.2 GFLOP/s (FMA loop, 512-bit vectors, 2 threads; measured)`.
    pub fn describe(&self) -> String {
        let how = match &self.source {
            PeakSource::Measured => "measured now".to_string(),
            PeakSource::Cached(p) => format!("measured earlier, cached in {}", p.display()),
            PeakSource::Config => {
                return format!("{:.1} GFLOP/s (peak_flops from the configuration)", self.flops / 1e9)
            }
            PeakSource::DeviceMatmul => {
                return format!(
                    "{:.1} GFLOP/s (best f32 1024³ matmul on the GPU; set peak_flops for its datasheet figure)",
                    self.flops / 1e9
                )
            }
        };
        format!(
            "{:.1} GFLOP/s (f32 FMA loop, {}-bit vectors, {} thread{}; {how})",
            self.flops / 1e9,
            self.vector_bits,
            self.threads,
            if self.threads == 1 { "" } else { "s" }
        )
    }
}

/// The ceiling of a run on `device`: [`device_peak`] on the CPU; on a GPU, `peak_flops`
/// when given, else its best f32 matmul (the CPU's FMA loop says nothing of a GPU).
pub fn peak_for(
    device: mlx_gpt_runtime::DeviceKind,
    peak_flops: f64,
    threads: usize,
) -> Result<Peak, mlx_rs::error::Exception> {
    if device == mlx_gpt_runtime::DeviceKind::Gpu && peak_flops <= 0.0 {
        return measure_matmul_flops().map(|flops| Peak {
            flops,
            threads: 0,
            vector_bits: 0,
            source: PeakSource::DeviceMatmul,
        });
    }
    Ok(device_peak(peak_flops, threads))
}

/// Best f32 matmul FLOP/s on the default device over a few 1024³ products.
fn measure_matmul_flops() -> Result<f64, mlx_rs::error::Exception> {
    let n = 1024;
    let key = mlx_rs::random::key(0)?;
    let a = mlx_rs::random::normal::<f32>(&[n, n][..], None, None, &key)?;
    let b = mlx_rs::random::normal::<f32>(&[n, n][..], None, None, &key)?;
    mlx_rs::transforms::eval([&a, &b])?;
    let mut best = f64::INFINITY;
    for _ in 0..6 {
        let t = Instant::now();
        a.matmul(&b)?.eval()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n as f64).powi(3) / best)
}

/// Cores a run computes on: every core this process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The ceiling MFU divides by: `peak_flops` when positive, else the cached measurement for
/// this machine, else a fresh one (which is cached).
pub fn device_peak(peak_flops: f64, threads: usize) -> Peak {
    if peak_flops > 0.0 {
        return Peak { flops: peak_flops, threads, vector_bits: 0, source: PeakSource::Config };
    }
    let key = cache_key(threads);
    if let Some(path) = cache_path() {
        if let Some(&flops) = read_cache(&path).get(&key) {
            if flops > 0.0 {
                return Peak { flops, threads, vector_bits: fma_loop().bits, source: PeakSource::Cached(path) };
            }
        }
    }
    measure_and_cache(threads)
}

/// Measure now, and keep the figure in the cache if it is the highest seen on this machine.
/// Returns the measured figure (not the cached one).
pub fn measure_and_cache(threads: usize) -> Peak {
    let peak = measure_fma_flops(threads);
    if let Some(path) = cache_path() {
        let mut cache = read_cache(&path);
        let key = cache_key(threads);
        if cache.get(&key).is_none_or(|&old| old < peak.flops) {
            cache.insert(key, peak.flops);
            // Best effort: a read-only home only means measuring again next time.
            if let Ok(json) = serde_json::to_string_pretty(&cache) {
                if let Some(dir) = path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                let _ = mlx_gpt_model::write_atomic(&path, json.as_bytes());
            }
        }
    }
    peak
}

/// The FMA ceiling on `threads` threads: the larger of the loop run on all of them at
/// once and one thread's rate times `threads`, each the best of five rounds of about
/// 40 ms. The second guards against measuring too low when other work shares the cores
/// (the ranks of a distributed run starting together, a test suite): a lone thread still
/// finds a free core at some point, and with turbo clocks one core alone runs at least
/// as fast as each of several, so the figure errs high (MFU low), never low.
pub fn measure_fma_flops(threads: usize) -> Peak {
    let threads = threads.max(1);
    let kernel = fma_loop();
    let iters = calibrate(kernel);
    let (mut all, mut single) = (0.0f64, 0.0f64);
    for _ in 0..5 {
        all = all.max(run_on(kernel, iters, threads));
        single = single.max(run_on(kernel, iters, 1));
    }
    Peak { flops: all.max(single * threads as f64), threads, vector_bits: kernel.bits, source: PeakSource::Measured }
}

/// Iterations for about 40 ms on one thread.
fn calibrate(kernel: FmaLoop) -> u64 {
    let mut iters = 1u64 << 14;
    loop {
        let t = Instant::now();
        (kernel.run)(iters);
        let secs = t.elapsed().as_secs_f64();
        if secs > 0.01 || iters > 1 << 30 {
            return ((0.04 / (secs / iters as f64)) as u64).max(1);
        }
        iters *= 2;
    }
}

/// FLOP/s of `threads` threads running `iters` iterations each, started together: all
/// their work over the time until the last one finished.
fn run_on(kernel: FmaLoop, iters: u64, threads: usize) -> f64 {
    let barrier = std::sync::Barrier::new(threads);
    let start = std::sync::Mutex::new(None::<Instant>);
    let elapsed: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let t0 = *start.lock().unwrap().get_or_insert_with(Instant::now);
                    (kernel.run)(iters);
                    t0.elapsed().as_secs_f64()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("FMA thread")).collect()
    });
    let wall = elapsed.iter().cloned().fold(0.0, f64::max);
    threads as f64 * iters as f64 * kernel.flops_per_iter / wall
}

/// One FMA loop: `run(iters)` does `iters × flops_per_iter` FLOPs.
#[derive(Clone, Copy)]
struct FmaLoop {
    run: fn(u64),
    flops_per_iter: f64,
    bits: u32,
}

// The loops are inline assembly, not intrinsics: the instructions are then the same in a
// debug build as in a release one (unoptimised intrinsics go through memory, and a test
// binary once measured 2.8 GFLOP/s, which the cache would have kept), and no compiler can
// fold them away. Each register is its own accumulator, zeroed first so no value becomes
// denormal (a denormal would be slow); more accumulators than FMA latency × FMA ports
// (4 × 2 on current cores) keep the loop bound by throughput, not latency.

/// The widest FMA loop this CPU runs.
fn fma_loop() -> FmaLoop {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return FmaLoop { run: x86::fma512, flops_per_iter: (14 * 16 * 2) as f64, bits: 512 };
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return FmaLoop { run: x86::fma256, flops_per_iter: (12 * 8 * 2) as f64, bits: 256 };
        }
        // No FMA (Sandy Bridge, Ivy Bridge): multiplies and adds, which such cores issue
        // on separate ports, 7 of each into their own accumulators.
        if std::is_x86_feature_detected!("avx") {
            return FmaLoop { run: x86::mul_add256, flops_per_iter: (14 * 8) as f64, bits: 256 };
        }
        FmaLoop { run: x86::mul_add128, flops_per_iter: (14 * 4) as f64, bits: 128 }
    }
    #[cfg(target_arch = "aarch64")]
    {
        FmaLoop { run: arm::fmla128, flops_per_iter: (16 * 4 * 2) as f64, bits: 128 }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        FmaLoop { run: portable, flops_per_iter: (16 * 2) as f64, bits: 32 }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;

    pub fn fma512(iters: u64) {
        // SAFETY: chosen only where avx512f is detected; touches only the listed registers.
        unsafe { fma512_impl(iters) }
    }

    /// 14 accumulators and the two factors in zmm0–15: registers `vzeroupper` clears, so
    /// no dirty upper half is left behind for SSE code.
    #[target_feature(enable = "avx512f")]
    unsafe fn fma512_impl(iters: u64) {
        asm!(
            "vpxord zmm0, zmm0, zmm0", "vmovaps zmm1, zmm0", "vmovaps zmm2, zmm0", "vmovaps zmm3, zmm0",
            "vmovaps zmm4, zmm0", "vmovaps zmm5, zmm0", "vmovaps zmm6, zmm0", "vmovaps zmm7, zmm0",
            "vmovaps zmm8, zmm0", "vmovaps zmm9, zmm0", "vmovaps zmm10, zmm0", "vmovaps zmm11, zmm0",
            "vmovaps zmm12, zmm0", "vmovaps zmm13, zmm0", "vmovaps zmm14, zmm0", "vmovaps zmm15, zmm0",
            "2:",
            "vfmadd231ps zmm0, zmm14, zmm15", "vfmadd231ps zmm1, zmm14, zmm15",
            "vfmadd231ps zmm2, zmm14, zmm15", "vfmadd231ps zmm3, zmm14, zmm15",
            "vfmadd231ps zmm4, zmm14, zmm15", "vfmadd231ps zmm5, zmm14, zmm15",
            "vfmadd231ps zmm6, zmm14, zmm15", "vfmadd231ps zmm7, zmm14, zmm15",
            "vfmadd231ps zmm8, zmm14, zmm15", "vfmadd231ps zmm9, zmm14, zmm15",
            "vfmadd231ps zmm10, zmm14, zmm15", "vfmadd231ps zmm11, zmm14, zmm15",
            "vfmadd231ps zmm12, zmm14, zmm15", "vfmadd231ps zmm13, zmm14, zmm15",
            "dec {n}",
            "jnz 2b",
            "vzeroupper",
            n = inout(reg) iters.max(1) => _,
            out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _, out("zmm5") _,
            out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
            out("zmm12") _, out("zmm13") _, out("zmm14") _, out("zmm15") _,
            options(nostack, nomem),
        );
    }

    pub fn fma256(iters: u64) {
        // SAFETY: chosen only where avx2 and fma are detected; touches only the listed registers.
        unsafe { fma256_impl(iters) }
    }

    /// 12 accumulators: AVX2 has 16 vector registers, and two hold the factors.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn fma256_impl(iters: u64) {
        asm!(
            "vxorps ymm0, ymm0, ymm0", "vmovaps ymm1, ymm0", "vmovaps ymm2, ymm0", "vmovaps ymm3, ymm0",
            "vmovaps ymm4, ymm0", "vmovaps ymm5, ymm0", "vmovaps ymm6, ymm0", "vmovaps ymm7, ymm0",
            "vmovaps ymm8, ymm0", "vmovaps ymm9, ymm0", "vmovaps ymm10, ymm0", "vmovaps ymm11, ymm0",
            "vmovaps ymm12, ymm0", "vmovaps ymm13, ymm0",
            "2:",
            "vfmadd231ps ymm0, ymm12, ymm13", "vfmadd231ps ymm1, ymm12, ymm13",
            "vfmadd231ps ymm2, ymm12, ymm13", "vfmadd231ps ymm3, ymm12, ymm13",
            "vfmadd231ps ymm4, ymm12, ymm13", "vfmadd231ps ymm5, ymm12, ymm13",
            "vfmadd231ps ymm6, ymm12, ymm13", "vfmadd231ps ymm7, ymm12, ymm13",
            "vfmadd231ps ymm8, ymm12, ymm13", "vfmadd231ps ymm9, ymm12, ymm13",
            "vfmadd231ps ymm10, ymm12, ymm13", "vfmadd231ps ymm11, ymm12, ymm13",
            "dec {n}",
            "jnz 2b",
            "vzeroupper",
            n = inout(reg) iters.max(1) => _,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _, out("ymm5") _,
            out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm12") _, out("ymm13") _,
            options(nostack, nomem),
        );
    }

    pub fn mul_add256(iters: u64) {
        // SAFETY: chosen only where avx is detected; touches only the listed registers.
        unsafe { mul_add256_impl(iters) }
    }

    #[target_feature(enable = "avx")]
    unsafe fn mul_add256_impl(iters: u64) {
        asm!(
            "vxorps ymm0, ymm0, ymm0", "vmovaps ymm1, ymm0", "vmovaps ymm2, ymm0", "vmovaps ymm3, ymm0",
            "vmovaps ymm4, ymm0", "vmovaps ymm5, ymm0", "vmovaps ymm6, ymm0", "vmovaps ymm7, ymm0",
            "vmovaps ymm8, ymm0", "vmovaps ymm9, ymm0", "vmovaps ymm10, ymm0", "vmovaps ymm11, ymm0",
            "vmovaps ymm12, ymm0", "vmovaps ymm13, ymm0", "vmovaps ymm14, ymm0", "vmovaps ymm15, ymm0",
            "2:",
            "vmulps ymm0, ymm0, ymm15", "vaddps ymm7, ymm7, ymm14", "vmulps ymm1, ymm1, ymm15", "vaddps ymm8, ymm8, ymm14",
            "vmulps ymm2, ymm2, ymm15", "vaddps ymm9, ymm9, ymm14", "vmulps ymm3, ymm3, ymm15", "vaddps ymm10, ymm10, ymm14",
            "vmulps ymm4, ymm4, ymm15", "vaddps ymm11, ymm11, ymm14", "vmulps ymm5, ymm5, ymm15", "vaddps ymm12, ymm12, ymm14",
            "vmulps ymm6, ymm6, ymm15", "vaddps ymm13, ymm13, ymm14",
            "dec {n}",
            "jnz 2b",
            "vzeroupper",
            n = inout(reg) iters.max(1) => _,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _, out("ymm5") _,
            out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
            out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
            options(nostack, nomem),
        );
    }

    pub fn mul_add128(iters: u64) {
        // SAFETY: SSE2 is part of x86-64; touches only the listed registers.
        unsafe {
            asm!(
                "xorps xmm0, xmm0", "movaps xmm1, xmm0", "movaps xmm2, xmm0", "movaps xmm3, xmm0",
                "movaps xmm4, xmm0", "movaps xmm5, xmm0", "movaps xmm6, xmm0", "movaps xmm7, xmm0",
                "movaps xmm8, xmm0", "movaps xmm9, xmm0", "movaps xmm10, xmm0", "movaps xmm11, xmm0",
                "movaps xmm12, xmm0", "movaps xmm13, xmm0", "movaps xmm14, xmm0", "movaps xmm15, xmm0",
                "2:",
                "mulps xmm0, xmm15", "addps xmm7, xmm14", "mulps xmm1, xmm15", "addps xmm8, xmm14",
                "mulps xmm2, xmm15", "addps xmm9, xmm14", "mulps xmm3, xmm15", "addps xmm10, xmm14",
                "mulps xmm4, xmm15", "addps xmm11, xmm14", "mulps xmm5, xmm15", "addps xmm12, xmm14",
                "mulps xmm6, xmm15", "addps xmm13, xmm14",
                "dec {n}",
                "jnz 2b",
                n = inout(reg) iters.max(1) => _,
                out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _, out("xmm4") _, out("xmm5") _,
                out("xmm6") _, out("xmm7") _, out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
                out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
                options(nostack, nomem),
            );
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use std::arch::asm;

    /// NEON's fused multiply-add on 16 accumulators.
    pub fn fmla128(iters: u64) {
        // SAFETY: NEON is part of AArch64; touches only the listed registers.
        unsafe {
            asm!(
                "movi v0.4s, #0", "mov v1.16b, v0.16b", "mov v2.16b, v0.16b", "mov v3.16b, v0.16b",
                "mov v4.16b, v0.16b", "mov v5.16b, v0.16b", "mov v6.16b, v0.16b", "mov v7.16b, v0.16b",
                "mov v8.16b, v0.16b", "mov v9.16b, v0.16b", "mov v10.16b, v0.16b", "mov v11.16b, v0.16b",
                "mov v12.16b, v0.16b", "mov v13.16b, v0.16b", "mov v14.16b, v0.16b", "mov v15.16b, v0.16b",
                "mov v16.16b, v0.16b", "mov v17.16b, v0.16b",
                "2:",
                "fmla v0.4s, v16.4s, v17.4s", "fmla v1.4s, v16.4s, v17.4s", "fmla v2.4s, v16.4s, v17.4s",
                "fmla v3.4s, v16.4s, v17.4s", "fmla v4.4s, v16.4s, v17.4s", "fmla v5.4s, v16.4s, v17.4s",
                "fmla v6.4s, v16.4s, v17.4s", "fmla v7.4s, v16.4s, v17.4s", "fmla v8.4s, v16.4s, v17.4s",
                "fmla v9.4s, v16.4s, v17.4s", "fmla v10.4s, v16.4s, v17.4s", "fmla v11.4s, v16.4s, v17.4s",
                "fmla v12.4s, v16.4s, v17.4s", "fmla v13.4s, v16.4s, v17.4s", "fmla v14.4s, v16.4s, v17.4s",
                "fmla v15.4s, v16.4s, v17.4s",
                "subs {n}, {n}, #1",
                "b.ne 2b",
                n = inout(reg) iters.max(1) => _,
                out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _,
                out("v6") _, out("v7") _, out("v8") _, out("v9") _, out("v10") _, out("v11") _,
                out("v12") _, out("v13") _, out("v14") _, out("v15") _, out("v16") _, out("v17") _,
                options(nostack, nomem),
            );
        }
    }
}

/// Other architectures: scalar multiply-adds, a rough ceiling (the compiler may or may not
/// vectorise them, so MFU there can read high).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn portable(iters: u64) {
    let (b, c) = (std::hint::black_box(0.999_99f32), std::hint::black_box(1e-6f32));
    let mut acc = [std::hint::black_box(0.5f32); 16];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = *x * b + c;
        }
    }
    std::hint::black_box(acc);
}

fn cache_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("mlx-gpt").join("peak-flops.json"))
}

/// What makes two machines' ceilings differ: the CPU, the loop's width, the threads.
fn cache_key(threads: usize) -> String {
    // x86 names its CPU in "model name"; Arm in "CPU implementer" and "CPU part".
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string())
    };
    let model = field("model name")
        .or_else(|| Some(format!("{} {}", field("CPU implementer")?, field("CPU part")?)))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    format!("v2 {model} | {}-bit | {threads} threads", fma_loop().bits)
}

fn read_cache(path: &std::path::Path) -> BTreeMap<String, f64> {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fma_loop_counts_its_flops() {
        // Per thread, a plausible CPU core: more than 1 GFLOP/s, less than 1 TFLOP/s.
        let p = measure_fma_flops(1);
        assert!(p.flops > 1e9 && p.flops < 1e12, "{p:?}");
        assert_eq!(p.source, PeakSource::Measured);
        assert!(p.describe().contains("GFLOP/s"), "{}", p.describe());
    }

    #[test]
    fn the_config_overrides_the_measurement() {
        let p = device_peak(123e9, 2);
        assert_eq!(p.flops, 123e9);
        assert_eq!(p.source, PeakSource::Config);
    }

    #[test]
    fn the_fma_ceiling_is_above_the_blas() {
        // A product through the BLAS cannot beat the FMA loop on the same threads; if it
        // did, the loop would not be measuring the ceiling.
        let threads = default_threads();
        let peak = measure_fma_flops(threads);
        let n = 512;
        let key = mlx_rs::random::key(0).unwrap();
        let a = mlx_rs::random::normal::<f32>(&[n, n][..], None, None, &key).unwrap();
        mlx_rs::transforms::eval([&a]).unwrap();
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let t = Instant::now();
            a.matmul(&a).unwrap().eval().unwrap();
            best = best.min(t.elapsed().as_secs_f64());
        }
        let blas = 2.0 * (n as f64).powi(3) / best;
        assert!(blas < peak.flops * 1.05, "BLAS {:.1} GFLOP/s above the ceiling {}", blas / 1e9, peak.describe());
    }
}
