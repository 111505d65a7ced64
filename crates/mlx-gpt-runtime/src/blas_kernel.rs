//! The OpenBLAS kernel behind MLX's CPU matmuls: checked against the CPU when the program
//! starts, and corrected when OpenBLAS picked a weaker one than the CPU supports.
//!
//! OpenBLAS built with `DYNAMIC_ARCH` (Debian's, every distribution's) chooses its kernels
//! once, when the library loads, from the CPU's family and model numbers. A CPU newer than
//! the library (Debian 12's 0.3.21 on a Xeon of family 6 model 207, say) is not in its
//! table, and it falls back to its generic "Prescott" SSE3 kernels: 37 GFLOP/s instead of
//! 210 on a 2048³ product (docs/mlx-build.md). The CPU's features say what it can run, so
//! the check compares the kernel's class with the CPU's:
//!
//! | class | CPU features | OpenBLAS cores of that class |
//! |---|---|---|
//! | [`KernelClass::Avx512`] | AVX-512 F, BW, VL, DQ, CD | SkylakeX, Cooperlake, SapphireRapids |
//! | [`KernelClass::Avx2`] | AVX2 and FMA | Haswell, Zen (and the AVX-512 ones) |
//! | [`KernelClass::Generic`] | anything else | Prescott, Nehalem, Sandybridge, ... |
//!
//! OpenBLAS reads `OPENBLAS_CORETYPE` only while it loads, before any of our code runs,
//! so a weaker kernel is corrected by re-executing the program once with
//! `OPENBLAS_CORETYPE` set to the CPU's class (`SkylakeX` or `Haswell`): a constructor
//! that runs before `main` (and before any thread of ours) does it, so every program that
//! builds a `Gpt` (or asks [`status`]) gets it with nothing to call. The re-executed program then checks the
//! forced kernel against a plain double-precision product; if it computes wrong results,
//! the program re-executes once more without it and says so ([`Correction::Rejected`]).
//!
//! A user's own `OPENBLAS_CORETYPE` is always kept ([`Correction::UserChoice`]); that is
//! also the way to switch the correction off (`OPENBLAS_CORETYPE=Prescott` keeps the
//! generic kernels on purpose). [`status`] says what happened; `mlx-gpt info` prints it.

use std::ffi::{CStr, CString};
use std::sync::OnceLock;

/// What OpenBLAS reads when it loads.
pub const CORETYPE_VAR: &str = "OPENBLAS_CORETYPE";
/// Set by the correction beside `OPENBLAS_CORETYPE`, so the re-executed program (and its
/// children, which inherit both) know the setting is mlx-gpt's and not the user's:
/// `FROM>TO@PID` when forced (the process `PID`, which `execv` keeps, checks the kernel;
/// its children trust that check), `rejected:TO:why` when the forced kernel failed it.
pub const MARKER_VAR: &str = "MLX_GPT_BLAS_CORRECTION";

/// How capable a kernel set (or a CPU) is, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KernelClass {
    /// SSE-era kernels (OpenBLAS's fallback).
    Generic,
    /// 256-bit AVX2 with FMA.
    Avx2,
    /// 512-bit AVX-512.
    Avx512,
}

impl KernelClass {
    /// The OpenBLAS core forced for a CPU of this class, if any.
    pub fn openblas_core(self) -> Option<&'static str> {
        match self {
            KernelClass::Avx512 => Some("SkylakeX"),
            KernelClass::Avx2 => Some("Haswell"),
            KernelClass::Generic => None,
        }
    }
}

impl std::fmt::Display for KernelClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KernelClass::Generic => "generic",
            KernelClass::Avx2 => "AVX2+FMA",
            KernelClass::Avx512 => "AVX-512",
        })
    }
}

/// The class of an OpenBLAS core name (`openblas_get_corename()`, or a value of
/// `OPENBLAS_CORETYPE`), case-insensitively; unknown names count as generic.
pub fn core_class(core: &str) -> KernelClass {
    match core.to_ascii_lowercase().as_str() {
        "skylakex" | "cooperlake" | "sapphirerapids" => KernelClass::Avx512,
        "haswell" | "zen" | "skylake" => KernelClass::Avx2,
        _ => KernelClass::Generic,
    }
}

/// The widest kernel class this CPU (and its operating system) can run.
pub fn cpu_class() -> KernelClass {
    #[cfg(target_arch = "x86_64")]
    {
        use std::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512dq") && has!("avx512cd") {
            return KernelClass::Avx512;
        }
        if has!("avx2") && has!("fma") {
            return KernelClass::Avx2;
        }
    }
    KernelClass::Generic
}

/// What the start-up check did about the kernel.
#[derive(Debug, Clone, PartialEq)]
pub enum Correction {
    /// The BLAS is not OpenBLAS: nothing to check.
    NotApplicable(String),
    /// OpenBLAS's own choice is of the CPU's class.
    NotNeeded,
    /// `OPENBLAS_CORETYPE` was set by the user and is kept as it is.
    UserChoice(String),
    /// The program (or the mlx-gpt process that started it, whose environment it
    /// inherited) re-executed itself with `OPENBLAS_CORETYPE` set, and the forced kernel
    /// passed its check.
    Corrected {
        /// OpenBLAS's own choice.
        from: String,
        /// The core forced.
        to: String,
        /// The check's largest relative error; None where the parent process checked.
        max_rel_err: Option<f32>,
    },
    /// The forced kernel failed its check; the program runs on OpenBLAS's own choice.
    Rejected {
        /// The core that was forced.
        core: String,
        /// What the check found.
        reason: String,
    },
    /// Weaker than the CPU, and not corrected (the program could not re-execute itself).
    NotCorrected(String),
}

/// The kernel this process's BLAS runs, and how it came to be.
#[derive(Debug, Clone, PartialEq)]
pub struct BlasKernel {
    /// OpenBLAS's core in use (`openblas_get_corename()`), if it is OpenBLAS.
    pub core: Option<String>,
    /// The class of that core.
    pub kernel_class: KernelClass,
    /// The CPU's own class.
    pub cpu_class: KernelClass,
    /// What was done about it.
    pub correction: Correction,
}

impl BlasKernel {
    /// One line for logs and `info`: `SkylakeX (AVX-512; corrected from Prescott, ...)`.
    pub fn describe(&self) -> String {
        let core = self.core.as_deref().unwrap_or("n/a");
        let how = match &self.correction {
            Correction::NotApplicable(why) => why.clone(),
            Correction::NotNeeded => format!("OpenBLAS's own choice; the CPU is {}", self.cpu_class),
            Correction::UserChoice(v) => format!("{CORETYPE_VAR}={v} set by the user, kept"),
            Correction::Corrected { from, to, max_rel_err } => format!(
                "corrected from {from}, which OpenBLAS chose for this CPU: re-executed with \
                 {CORETYPE_VAR}={to}; checked against a reference product{}",
                match max_rel_err {
                    Some(e) => format!(", max rel. error {e:.1e}"),
                    None => " by the parent process".into(),
                }
            ),
            Correction::Rejected { core, reason } => {
                format!("{core} was forced and failed its check ({reason}); OpenBLAS's own choice kept")
            }
            Correction::NotCorrected(why) => {
                format!("WEAKER than the CPU ({}) and not corrected: {why}", self.cpu_class)
            }
        };
        format!("{core} ({}; {how})", self.kernel_class)
    }

    /// Whether the kernel is weaker than the CPU supports.
    pub fn is_weaker_than_cpu(&self) -> bool {
        self.core.is_some() && self.kernel_class < self.cpu_class
    }
}

static STATUS: OnceLock<BlasKernel> = OnceLock::new();

/// The kernel this process runs, and what the start-up check did. Cheap after the first
/// call.
pub fn status() -> &'static BlasKernel {
    keep_linked();
    STATUS.get_or_init(|| startup(None))
}

/// Refers to the constructor, so that it is linked into every program that builds a model
/// or asks about its BLAS: the linker takes an object out of this crate's archive only
/// when something refers to it, and nothing calls a constructor by name. [`status`],
/// [`crate::blas::blas`] and every `mlx_gpt_ops::Kernels` constructor call this.
#[inline]
pub fn keep_linked() {
    std::hint::black_box(&STARTUP);
}

/// `openblas_get_corename()`, if the process's BLAS is OpenBLAS.
pub fn openblas_corename() -> Option<String> {
    openblas_string("openblas_get_corename").map(|s| s.trim().to_string())
}

/// The result of one of OpenBLAS's `char* openblas_get_*(void)` functions, if the
/// process's BLAS has it.
fn openblas_string(symbol: &str) -> Option<String> {
    let f = crate::blas::lookup(symbol);
    if f.is_null() {
        return None;
    }
    // SAFETY: OpenBLAS's `char* openblas_get_corename(void)` and `openblas_get_config`
    // take nothing and return a static string.
    unsafe {
        let f: extern "C" fn() -> *const libc::c_char = std::mem::transmute(f);
        let p = f();
        (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

/// Check `cblas_sgemm` against a double-precision product on shapes that reach both
/// OpenBLAS's small-matrix path and its packed kernels, with odd edges and both
/// transpositions. Returns the largest error relative to the product's scale.
pub fn check_sgemm() -> Result<f32, String> {
    let f = crate::blas::lookup("cblas_sgemm");
    if f.is_null() {
        return Err("no cblas_sgemm in the process".into());
    }
    // SAFETY: the CBLAS signature of sgemm.
    let sgemm: Sgemm = unsafe { std::mem::transmute(f) };
    let mut worst = 0.0f32;
    for &(m, n, k, ta, tb) in &[(37, 29, 53, false, false), (163, 141, 131, false, true), (130, 97, 160, true, false)] {
        let e = check_one(sgemm, m, n, k, ta, tb);
        // check_one reports NaN as infinity, so this also refuses NaN.
        if e > 1e-4 {
            return Err(format!("{m}x{n}x{k} product off by {e:.2e} (relative)"));
        }
        worst = worst.max(e);
    }
    Ok(worst)
}

type Sgemm = extern "C" fn(i32, i32, i32, i32, i32, i32, f32, *const f32, i32, *const f32, i32, f32, *mut f32, i32);

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

/// One row-major product C = op(A)·op(B) with C's previous contents scaled by beta = 0.5,
/// compared with the same in f64.
fn check_one(sgemm: Sgemm, m: usize, n: usize, k: usize, ta: bool, tb: bool) -> f32 {
    // A small deterministic generator: values in [-1, 1).
    let mut state = 0x2545_f491_4f6c_dd1du64 ^ (m * 131 + n * 17 + k) as u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    };
    let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
    let b: Vec<f32> = (0..k * n).map(|_| next()).collect();
    let c0: Vec<f32> = (0..m * n).map(|_| next()).collect();
    // op(A) is m×k: stored k×m when transposed.
    let (lda, ldb) = (if ta { m } else { k }, if tb { k } else { n });
    let at = |i: usize, p: usize| if ta { a[p * m + i] } else { a[i * k + p] } as f64;
    let bt = |p: usize, j: usize| if tb { b[j * k + p] } else { b[p * n + j] } as f64;
    let mut c = c0.clone();
    let trans = |t: bool| if t { TRANS } else { NO_TRANS };
    sgemm(
        ROW_MAJOR,
        trans(ta),
        trans(tb),
        m as i32,
        n as i32,
        k as i32,
        1.0,
        a.as_ptr(),
        lda as i32,
        b.as_ptr(),
        ldb as i32,
        0.5,
        c.as_mut_ptr(),
        n as i32,
    );
    let mut worst = 0.0f64;
    for i in 0..m {
        for j in 0..n {
            let want = (0..k).map(|p| at(i, p) * bt(p, j)).sum::<f64>() + 0.5 * c0[i * n + j] as f64;
            // Scale: the size of the terms summed, so cancellation does not inflate it.
            let scale = (k as f64).sqrt().max(1.0);
            let err = (c[i * n + j] as f64 - want).abs() / scale;
            // NaN compares false: make it the worst.
            worst = if err.is_nan() { f64::INFINITY } else { worst.max(err) };
        }
    }
    worst as f32
}

/// The constructor: glibc calls `.init_array` entries with `(argc, argv, envp)` after
/// every shared library (libopenblas included) is initialised and before `main`.
#[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
#[used]
#[link_section = ".init_array"]
static STARTUP: extern "C" fn(libc::c_int, *const *const libc::c_char, *const *const libc::c_char) = on_load;

#[cfg(not(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64")))]
static STARTUP: () = ();

#[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
extern "C" fn on_load(_argc: libc::c_int, argv: *const *const libc::c_char, _envp: *const *const libc::c_char) {
    // A panic must not unwind out of a C constructor.
    let status = std::panic::catch_unwind(|| startup(Some(argv))).unwrap_or_else(|_| {
        let core = openblas_corename();
        BlasKernel {
            kernel_class: core.as_deref().map_or(KernelClass::Generic, core_class),
            core,
            cpu_class: cpu_class(),
            correction: Correction::NotCorrected("the start-up check panicked".into()),
        }
    });
    let _ = STATUS.set(status);
}

/// Whether the code at `addr` belongs to the file `/proc/self/exe` names (the program's
/// own executable, mapped from the same device and inode).
#[cfg(target_os = "linux")]
fn in_main_executable(addr: usize) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(exe) = std::fs::metadata("/proc/self/exe") else { return false };
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else { return false };
    maps.lines().any(|line| {
        // start-end perms offset dev inode path
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some((lo, hi)) = f.first().and_then(|r| r.split_once('-')) else { return false };
        let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)) else { return false };
        let inode = f.get(4).and_then(|i| i.parse::<u64>().ok());
        (lo..hi).contains(&addr)
            && f.len() >= 6
            && inode == Some(exe.ino())
            && std::fs::metadata(f[5]).is_ok_and(|m| m.dev() == exe.dev())
    })
}

/// What the start-up check does, from what it reads; a pure function of its inputs.
#[derive(Debug, Clone, PartialEq)]
enum Action {
    /// Nothing to do: report this.
    Report(Correction),
    /// Re-execute with `OPENBLAS_CORETYPE=to` and the marker `FROM>TO@pid`.
    Force { to: &'static str },
    /// This process was re-executed with `to` forced: check the kernel.
    Check { from: String, to: String },
}

/// Decide from OpenBLAS's core and build, the CPU's class, `OPENBLAS_CORETYPE`, the
/// marker and this process's id.
fn decide(
    core: &str,
    dynamic_arch: bool,
    cpu: KernelClass,
    coretype: Option<&str>,
    marker: Option<&str>,
    pid: u32,
) -> Action {
    if let Some(set) = coretype {
        // Ours when the marker names the same core: `FROM>TO@PID`.
        let ours = marker
            .and_then(|m| m.split_once('>'))
            .and_then(|(from, rest)| Some((from, rest.split_once('@')?)))
            .filter(|(_, (to, _))| *to == set);
        let Some((from, (to, by))) = ours else {
            return Action::Report(Correction::UserChoice(set.into()));
        };
        if core_class(core) < core_class(to) {
            // OpenBLAS did not take the setting (or lowered it itself).
            return Action::Report(Correction::NotCorrected(format!(
                "{CORETYPE_VAR}={to} was set, but OpenBLAS runs {core}"
            )));
        }
        return if by == pid.to_string() {
            Action::Check { from: from.into(), to: to.into() }
        } else {
            // A child of the process that checked it, with the same library.
            Action::Report(Correction::Corrected { from: from.into(), to: to.into(), max_rel_err: None })
        };
    }
    if let Some(rejected) = marker.and_then(|m| m.strip_prefix("rejected:")) {
        let (forced, reason) = rejected.split_once(':').unwrap_or((rejected, "failed its check"));
        return Action::Report(Correction::Rejected { core: forced.into(), reason: reason.into() });
    }
    if core_class(core) >= cpu {
        return Action::Report(Correction::NotNeeded);
    }
    let Some(to) = cpu.openblas_core() else { return Action::Report(Correction::NotNeeded) };
    if !dynamic_arch {
        return Action::Report(Correction::NotCorrected(
            "this OpenBLAS was built for one CPU (no DYNAMIC_ARCH), so OPENBLAS_CORETYPE cannot change it".into(),
        ));
    }
    Action::Force { to }
}

/// Decide, and when `argv` is given (the program's own constructor), correct by
/// re-executing.
fn startup(argv: Option<*const *const libc::c_char>) -> BlasKernel {
    let cpu = cpu_class();
    let Some(core) = openblas_corename() else {
        return BlasKernel {
            core: None,
            kernel_class: KernelClass::Generic,
            cpu_class: cpu,
            correction: Correction::NotApplicable("the BLAS is not OpenBLAS".into()),
        };
    };
    let kernel = core_class(&core);
    let done = |correction| BlasKernel { core: Some(core.clone()), kernel_class: kernel, cpu_class: cpu, correction };
    // A value that is not UTF-8 is the user's all the same: kept, shown lossily.
    let coretype = std::env::var_os(CORETYPE_VAR).map(|v| v.to_string_lossy().into_owned());
    let marker = std::env::var(MARKER_VAR).ok();
    let dynamic_arch = openblas_config().is_some_and(|c| c.contains("DYNAMIC_ARCH"));
    let pid = std::process::id();
    match decide(&core, dynamic_arch, cpu, coretype.as_deref(), marker.as_deref(), pid) {
        Action::Report(correction) => done(correction),
        Action::Check { from, to } => match check_sgemm() {
            Ok(e) => done(Correction::Corrected { from, to, max_rel_err: Some(e) }),
            Err(reason) => {
                let reason = reason.replace(':', ";");
                let marker = format!("rejected:{to}:{reason}");
                // Back to OpenBLAS's own choice: it must load again without the variable.
                if let Some(argv) = argv {
                    let err = reexec(argv, &[(MARKER_VAR, Some(&marker)), (CORETYPE_VAR, None)]);
                    return done(Correction::NotCorrected(format!(
                        "{to} failed its check ({reason}) and re-executing without it failed: {err}"
                    )));
                }
                done(Correction::Rejected { core: to, reason })
            }
        },
        Action::Force { to } => {
            let Some(argv) = argv else {
                return done(Correction::NotCorrected(
                    "not re-executed: the check runs at the program's own start only".into(),
                ));
            };
            let marker = format!("{core}>{to}@{pid}");
            let err = reexec(argv, &[(CORETYPE_VAR, Some(to)), (MARKER_VAR, Some(&marker))]);
            done(Correction::NotCorrected(format!("could not re-execute the program: {err}")))
        }
    }
}

/// `openblas_get_config()`, if the process's BLAS is OpenBLAS.
fn openblas_config() -> Option<String> {
    openblas_string("openblas_get_config")
}

/// Replace the process with a fresh start of the same program and arguments, with `env`
/// changed (None removes a variable). Returns only on failure, with the environment as it
/// was.
#[cfg(target_os = "linux")]
fn reexec(argv: *const *const libc::c_char, env: &[(&str, Option<&str>)]) -> String {
    if argv.is_null() {
        return "no argv".into();
    }
    // Only the program's own start may re-execute it: not a library that was dlopen'ed
    // into a running process (a Python extension, say), nor a program started through
    // `ld.so prog`, where /proc/self/exe is the loader. (Read only here, where it is
    // needed: most starts re-execute nothing.)
    if !in_main_executable(reexec as *const () as usize) {
        return "this code is not part of the program's own executable (a library loaded into another \
                program, or a program started through ld.so)"
            .into();
    }
    let saved: Vec<_> = env.iter().map(|(k, _)| (*k, std::env::var_os(k))).collect();
    for (k, v) in env {
        // SAFETY (set_var/remove_var): called from the constructor, before `main` and any
        // thread of the program's own; OpenBLAS's idle workers do not read the environment.
        match v {
            Some(v) => std::env::set_var(k, v),
            None => std::env::remove_var(k),
        }
    }
    let exe = CString::new("/proc/self/exe").expect("no NUL");
    // SAFETY: argv is the NULL-terminated vector glibc passed to the constructor; execv
    // returns only on failure.
    unsafe { libc::execv(exe.as_ptr(), argv) };
    let err = std::io::Error::last_os_error().to_string();
    for (k, v) in saved {
        match v {
            Some(v) => std::env::set_var(k, v),
            None => std::env::remove_var(k),
        }
    }
    err
}

#[cfg(not(target_os = "linux"))]
fn reexec(_argv: *const *const libc::c_char, _env: &[(&str, Option<&str>)]) -> String {
    "re-executing is only done on Linux".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_of_openblas_cores() {
        assert_eq!(core_class("Prescott"), KernelClass::Generic);
        assert_eq!(core_class("Sandybridge"), KernelClass::Generic);
        assert_eq!(core_class("Haswell"), KernelClass::Avx2);
        assert_eq!(core_class("ZEN"), KernelClass::Avx2);
        assert_eq!(core_class("SkylakeX"), KernelClass::Avx512);
        assert_eq!(core_class("cooperlake"), KernelClass::Avx512);
        assert_eq!(core_class("SapphireRapids"), KernelClass::Avx512);
        assert!(KernelClass::Generic < KernelClass::Avx2 && KernelClass::Avx2 < KernelClass::Avx512);
        for class in [KernelClass::Avx2, KernelClass::Avx512] {
            assert_eq!(core_class(class.openblas_core().unwrap()), class);
        }
    }

    /// The test that would have caught a generic kernel on an AVX2 or AVX-512 CPU: this
    /// test binary links the crate, so its constructor ran, and the kernel must now be of
    /// the CPU's class (unless the user chose one on purpose).
    #[test]
    fn openblas_runs_a_kernel_of_the_cpus_class() {
        let _ = mlx_rs::Array::from_f32(1.0); // libmlx (and its BLAS) in use
        let s = status();
        if s.core.is_none() {
            assert!(!mlx_sys::build_info::BLAS_WIRING.starts_with("openblas:"), "{s:?}");
            return;
        }
        if let Correction::UserChoice(v) = &s.correction {
            eprintln!("OPENBLAS_CORETYPE={v} set by the user: not judged");
            return;
        }
        assert!(!s.is_weaker_than_cpu(), "OpenBLAS runs a kernel weaker than the CPU: {}", s.describe());
        // And what OpenBLAS reports now agrees with the record.
        assert_eq!(openblas_corename(), s.core);
    }

    /// The kernel in use, forced or not, computes correct products.
    #[test]
    fn the_kernel_in_use_passes_the_check() {
        let _ = mlx_rs::Array::from_f32(1.0);
        if openblas_corename().is_some() {
            let err = check_sgemm().unwrap();
            assert!(err < 1e-5, "{err}");
        }
    }

    #[test]
    fn decisions() {
        use KernelClass::*;
        let report = |c| Action::Report(c);
        let d = |core, cpu, coretype, marker| decide(core, true, cpu, coretype, marker, 42);
        // OpenBLAS's own choice fits, or is better.
        assert_eq!(d("SkylakeX", Avx512, None, None), report(Correction::NotNeeded));
        assert_eq!(d("Haswell", Avx2, None, None), report(Correction::NotNeeded));
        assert_eq!(d("Prescott", Generic, None, None), report(Correction::NotNeeded));
        // Weaker: force the CPU's class.
        assert_eq!(d("Prescott", Avx512, None, None), Action::Force { to: "SkylakeX" });
        assert_eq!(d("Sandybridge", Avx2, None, None), Action::Force { to: "Haswell" });
        assert_eq!(d("Haswell", Avx512, None, None), Action::Force { to: "SkylakeX" });
        // Not without DYNAMIC_ARCH.
        assert!(matches!(
            decide("Prescott", false, Avx512, None, None, 42),
            Action::Report(Correction::NotCorrected(_))
        ));
        // The re-executed process checks; its children only report.
        let check = Action::Check { from: "Prescott".into(), to: "SkylakeX".into() };
        assert_eq!(d("SkylakeX", Avx512, Some("SkylakeX"), Some("Prescott>SkylakeX@42")), check);
        assert_eq!(
            d("SkylakeX", Avx512, Some("SkylakeX"), Some("Prescott>SkylakeX@7")),
            report(Correction::Corrected { from: "Prescott".into(), to: "SkylakeX".into(), max_rel_err: None })
        );
        // OpenBLAS ignored the setting.
        assert!(matches!(
            d("Prescott", Avx512, Some("SkylakeX"), Some("Prescott>SkylakeX@42")),
            Action::Report(Correction::NotCorrected(_))
        ));
        // The user's own setting wins, whatever a marker says.
        for marker in [None, Some("Prescott>Haswell@42"), Some("rejected:SkylakeX:why"), Some("junk")] {
            assert_eq!(
                d("Prescott", Avx512, Some("Prescott"), marker),
                report(Correction::UserChoice("Prescott".into()))
            );
        }
        // A rejected kernel is not forced again.
        assert_eq!(
            d("Prescott", Avx512, None, Some("rejected:SkylakeX:off by 1e-2")),
            report(Correction::Rejected { core: "SkylakeX".into(), reason: "off by 1e-2".into() })
        );
    }

    #[test]
    fn the_test_binary_is_the_main_executable() {
        fn probe() {}
        assert!(in_main_executable(probe as *const () as usize));
        // libc's code is not.
        assert!(!in_main_executable(libc::getpid as *const () as usize));
    }

    #[test]
    fn describe_says_what_was_done() {
        let k = BlasKernel {
            core: Some("SkylakeX".into()),
            kernel_class: KernelClass::Avx512,
            cpu_class: KernelClass::Avx512,
            correction: Correction::Corrected {
                from: "Prescott".into(),
                to: "SkylakeX".into(),
                max_rel_err: Some(1e-7),
            },
        };
        let d = k.describe();
        assert!(d.contains("corrected from Prescott") && d.contains("OPENBLAS_CORETYPE=SkylakeX"), "{d}");
        let weak = BlasKernel { core: Some("Prescott".into()), kernel_class: KernelClass::Generic, ..k };
        assert!(weak.is_weaker_than_cpu());
    }
}
