//! [`Kernels`]: which formulation of each operation runs, resolved once at start-up from
//! the configuration's `kernels` value and passed to whatever computes.

use mlx_gpt_runtime::DeviceKind;
use std::fmt;
use std::str::FromStr;

/// The families of formulations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelSet {
    /// mlx-gpt's CPU kernels (custom MLX primitives, csrc/) where they apply: float32
    /// arrays on the CPU; plain MLX ops for the rest.
    Cpu,
    /// Plain MLX ops only: element-wise chains and reductions, which MLX's `compile`
    /// fuses into generated kernels. The reference formulation, and the CPU's best
    /// without mlx-gpt's kernels (MLX's dedicated primitives are scalar loops there).
    Mlx,
    /// MLX's dedicated primitives (`fast::layer_norm`, `fast::scaled_dot_product_attention`,
    /// `softmax`, `logsumexp`) where they exist: what a GPU runs best.
    MlxFast,
}

/// The configuration's `kernels` value: what the user asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelChoice {
    /// `cpu` on the CPU when this build has the CPU kernels, else `mlx`; `mlx-fast` on a
    /// GPU.
    #[default]
    Auto,
    /// [`KernelSet::Cpu`].
    Cpu,
    /// [`KernelSet::Mlx`].
    Mlx,
    /// [`KernelSet::MlxFast`].
    MlxFast,
}

impl KernelChoice {
    /// Every value, as written in configurations.
    pub const NAMES: [&'static str; 4] = ["auto", "cpu", "mlx", "mlx-fast"];
}

impl fmt::Display for KernelChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KernelChoice::Auto => "auto",
            KernelChoice::Cpu => "cpu",
            KernelChoice::Mlx => "mlx",
            KernelChoice::MlxFast => "mlx-fast",
        })
    }
}

impl FromStr for KernelChoice {
    type Err = KernelsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(KernelChoice::Auto),
            "cpu" => Ok(KernelChoice::Cpu),
            "mlx" => Ok(KernelChoice::Mlx),
            "mlx-fast" => Ok(KernelChoice::MlxFast),
            other => Err(KernelsError::Unknown(other.to_string())),
        }
    }
}

/// Why a choice cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelsError {
    /// Not one of [`KernelChoice::NAMES`].
    #[error("unknown kernels '{0}': expected one of auto, cpu, mlx, mlx-fast")]
    Unknown(String),
    /// `cpu` asked of a build without the CPU kernels.
    #[error(
        "kernels = \"cpu\": this build has no CPU kernels (they are built on x86-64 Linux with the \
         `cpu-kernels` feature of mlx-gpt-ops, on by default); use kernels = \"mlx\" or \"auto\""
    )]
    NotBuilt,
    /// `cpu` asked for a run on another device.
    #[error("kernels = \"cpu\" runs on the CPU only, and the device is {0}; use kernels = \"auto\" or \"mlx-fast\"")]
    NotOnCpu(DeviceKind),
}

/// Which formulation of each operation runs (see the crate documentation's table).
///
/// A plain value: resolved once ([`Kernels::resolve`]), printed by `mlx-gpt info` and the
/// training header, and handed to the model (`Gpt::kernels`) and the optimizer.
/// Refinements of the CPU set are part of it, chosen by the caller that knows the
/// situation: [`Kernels::with_gemm_layers`] and [`Kernels::with_layer_threads`] (training:
/// dense layers on mlx-gpt's GEMM, on all cores or one per stream) and
/// [`Kernels::for_decoding`] (generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernels {
    set: KernelSet,
    gemm_layers: bool,
    layer_threads: u16,
    decoding: bool,
    threads: u16,
}

impl Default for Kernels {
    /// [`Kernels::mlx`]: correct on every device and build.
    fn default() -> Self {
        Kernels::mlx()
    }
}

impl Kernels {
    fn of(set: KernelSet) -> Self {
        // Every program that computes gets OpenBLAS's start-up kernel check.
        mlx_gpt_runtime::blas_kernel::keep_linked();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(64) as u16);
        Kernels { set, gemm_layers: false, layer_threads: threads, decoding: false, threads }
    }

    /// Plain MLX ops ([`KernelSet::Mlx`]).
    pub fn mlx() -> Self {
        Kernels::of(KernelSet::Mlx)
    }

    /// MLX's dedicated primitives ([`KernelSet::MlxFast`]).
    pub fn mlx_fast() -> Self {
        Kernels::of(KernelSet::MlxFast)
    }

    /// mlx-gpt's CPU kernels ([`KernelSet::Cpu`]), when this build has them.
    pub fn cpu() -> Result<Self, KernelsError> {
        if Kernels::cpu_built() {
            Ok(Kernels::of(KernelSet::Cpu))
        } else {
            Err(KernelsError::NotBuilt)
        }
    }

    /// Whether this build has the CPU kernels (the `cpu-kernels` feature, x86-64 Linux).
    pub const fn cpu_built() -> bool {
        cfg!(cpu_kernels)
    }

    /// The kernels for `choice` on `device`.
    pub fn resolve(choice: KernelChoice, device: DeviceKind) -> Result<Self, KernelsError> {
        match (choice, device) {
            (KernelChoice::Cpu, DeviceKind::Gpu) => Err(KernelsError::NotOnCpu(device)),
            (KernelChoice::Cpu, DeviceKind::Cpu) => Kernels::cpu(),
            (KernelChoice::Mlx, _) => Ok(Kernels::mlx()),
            (KernelChoice::MlxFast, _) => Ok(Kernels::mlx_fast()),
            (KernelChoice::Auto, DeviceKind::Gpu) => Ok(Kernels::mlx_fast()),
            (KernelChoice::Auto, DeviceKind::Cpu) => Ok(Kernels::cpu().unwrap_or_else(|_| Kernels::mlx())),
        }
    }

    /// The family.
    pub fn set(&self) -> KernelSet {
        self.set
    }

    /// With the CPU set, run the dense layers and the tied head through the `Linear`
    /// primitive on mlx-gpt's GEMM (`on`), or MLX's matmul on the BLAS. The GEMM runs
    /// each product on [`Kernels::layer_threads`] threads: one where each core computes a
    /// part of the batch on its own (the training step's streams), all of them otherwise.
    /// It kept pace with OpenBLAS's AVX-512 kernel where measured
    /// (docs/performance-history.md, 2026-12-05) and does not depend on the kernel
    /// OpenBLAS picked. Where the GEMM does not run (neither AVX-512 nor AVX2, a
    /// `generic-cpu` build) the primitive would call the BLAS, measured no faster than
    /// MLX's matmul, so this stays off. No effect on the other sets.
    pub fn with_gemm_layers(self, on: bool) -> Self {
        Kernels { gemm_layers: on && self.set == KernelSet::Cpu && own_gemm_active(), ..self }
    }

    /// Whether dense layers use the GEMM primitive (see [`Kernels::with_gemm_layers`]).
    pub fn gemm_layers(&self) -> bool {
        self.gemm_layers
    }

    /// The same kernels with the work of each whole-sequence layer primitive (the GEMM's
    /// products, causal attention's sequences and heads) split over `n` threads (1 to
    /// 64), the persistent pool's: 1 for a stream that has a core of its own. By default,
    /// every core this process may run on. The split never changes a result.
    pub fn with_layer_threads(self, n: usize) -> Self {
        Kernels { layer_threads: n.clamp(1, 64) as u16, ..self }
    }

    /// Threads a layer primitive splits its work over (see [`Kernels::with_layer_threads`]).
    pub fn layer_threads(&self) -> usize {
        self.layer_threads as usize
    }

    /// The same kernels for decoding: with the CPU set, products of at most
    /// `cpu::matvec::MAX_ROWS` rows (a batch of decoded tokens, a short prompt) go
    /// through mlx-gpt's decoding product, which reads each weight once, float32 or
    /// bfloat16, on [`Kernels::threads`] threads, where `sgemm` would first copy ("pack")
    /// it. Generation uses this.
    pub fn for_decoding(self) -> Self {
        Kernels { decoding: self.set == KernelSet::Cpu, ..self }
    }

    /// Whether this is the decoding variant (see [`Kernels::for_decoding`]).
    pub fn decoding(&self) -> bool {
        self.decoding
    }

    /// Threads a kernel that splits its work uses (the decoding product): every core this
    /// process may run on, unless [`Kernels::with_threads`] says otherwise.
    pub fn threads(&self) -> usize {
        self.threads as usize
    }

    /// The same kernels splitting their work over `n` threads (1 to 64).
    pub fn with_threads(self, n: usize) -> Self {
        Kernels { threads: n.clamp(1, 64) as u16, ..self }
    }

    /// The configuration name of the set: `cpu`, `mlx` or `mlx-fast`.
    pub fn name(&self) -> &'static str {
        match self.set {
            KernelSet::Cpu => "cpu",
            KernelSet::Mlx => "mlx",
            KernelSet::MlxFast => "mlx-fast",
        }
    }

    /// One line for `info` and the training header.
    pub fn describe(&self) -> String {
        match self.set {
            KernelSet::Cpu => format!(
                "cpu: mlx-gpt's CPU kernels ({}); dense layers on {}; decoding products on {} thread{}",
                cpu_isa(),
                if !self.gemm_layers {
                    "MLX's matmul (the BLAS)".to_string()
                } else if self.layer_threads == 1 {
                    "mlx-gpt's GEMM (1 thread per layer)".to_string()
                } else {
                    format!("mlx-gpt's GEMM ({} threads per layer)", self.layer_threads)
                },
                self.threads,
                if self.threads == 1 { "" } else { "s" }
            ),
            KernelSet::Mlx => "mlx: plain MLX ops (fused by compile)".into(),
            KernelSet::MlxFast => "mlx-fast: MLX's dedicated primitives".into(),
        }
    }
}

/// Whether mlx-gpt's own GEMM runs the CPU kernels' products here (built; AVX2 and FMA,
/// or AVX-512).
fn own_gemm_active() -> bool {
    #[cfg(cpu_kernels)]
    {
        crate::cpu::ffi::own_gemm_active()
    }
    #[cfg(not(cpu_kernels))]
    {
        false
    }
}

/// Which code paths the CPU kernels take on this machine.
fn cpu_isa() -> &'static str {
    #[cfg(cpu_kernels)]
    {
        use crate::cpu::gemm::{gemm_path, GemmPath};
        match gemm_path() {
            GemmPath::Avx512 => "AVX-512 paths",
            GemmPath::Avx2 => "AVX2 paths: no AVX-512 on this CPU",
            GemmPath::Blas if cfg!(feature = "generic-cpu") => "portable paths, built with generic-cpu",
            GemmPath::Blas => "portable paths: neither AVX-512 nor AVX2 on this CPU",
        }
    }
    #[cfg(not(cpu_kernels))]
    {
        "not built"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_resolve() {
        for name in KernelChoice::NAMES {
            assert_eq!(name.parse::<KernelChoice>().unwrap().to_string(), name);
        }
        let err = "fast".parse::<KernelChoice>().unwrap_err().to_string();
        assert!(err.contains("'fast'") && err.contains("auto, cpu, mlx, mlx-fast"), "{err}");
        assert_eq!(Kernels::resolve(KernelChoice::Auto, DeviceKind::Gpu).unwrap().set(), KernelSet::MlxFast);
        assert_eq!(Kernels::resolve(KernelChoice::Mlx, DeviceKind::Cpu).unwrap().set(), KernelSet::Mlx);
        assert!(Kernels::resolve(KernelChoice::Cpu, DeviceKind::Gpu).unwrap_err().to_string().contains("CPU only"));
        let auto = Kernels::resolve(KernelChoice::Auto, DeviceKind::Cpu).unwrap();
        assert_eq!(auto.set(), if Kernels::cpu_built() { KernelSet::Cpu } else { KernelSet::Mlx });
        assert_eq!(Kernels::cpu().is_ok(), Kernels::cpu_built());
        // The refinements only refine the CPU set.
        assert!(!Kernels::mlx().with_gemm_layers(true).gemm_layers());
        assert!(!Kernels::mlx().for_decoding().decoding());
        if let Ok(cpu) = Kernels::cpu() {
            assert_eq!(cpu.with_gemm_layers(true).gemm_layers(), own_gemm_active());
            assert!(cpu.for_decoding().decoding());
        }
    }
}
