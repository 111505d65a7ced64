//! Choosing where MLX computes: `cpu` or `gpu`, checked before use.
//!
//! mlx-rs does not fail cleanly on a build without a GPU backend:
//! `Device::set_default(gpu)` is silently ignored and `with_device(gpu, ..)` panics. Every
//! command therefore goes through [`select`], which asks MLX whether the device exists and
//! returns a [`DeviceError`] naming the build when it does not.

use std::fmt;
use std::str::FromStr;

/// A kind of MLX device, as named on the command line (`--device cpu|gpu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// MLX's CPU backend (BLAS for matmuls, its own kernels for the rest).
    Cpu,
    /// Metal on Apple silicon, CUDA on Linux with MLX's CUDA build.
    Gpu,
}

/// Errors of device selection.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    /// The device kind is not one this program knows.
    #[error("unknown device '{0}': expected 'cpu' or 'gpu'")]
    Unknown(String),
    /// The MLX build has no backend for this device.
    #[error(
        "--device {kind}: this MLX build ({origin}) has no {kind} backend. Use --device cpu, \
         or build mlx-gpt against an MLX with a GPU backend (mlx-metal on macOS, MLX's CUDA \
         build on Linux with the `cuda` feature); see docs/mlx-build.md"
    )]
    Unavailable {
        /// The device asked for.
        kind: DeviceKind,
        /// How this build obtained MLX.
        origin: &'static str,
    },
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Gpu => "gpu",
        })
    }
}

impl FromStr for DeviceKind {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceKind::Cpu),
            "gpu" => Ok(DeviceKind::Gpu),
            _ => Err(DeviceError::Unknown(s.to_string())),
        }
    }
}

impl DeviceKind {
    fn raw(self) -> mlx_sys::mlx_device_type {
        match self {
            DeviceKind::Cpu => mlx_sys::mlx_device_type__MLX_CPU,
            DeviceKind::Gpu => mlx_sys::mlx_device_type__MLX_GPU,
        }
    }

    /// The mlx-rs device of this kind (index 0).
    pub fn to_mlx(self) -> mlx_rs::Device {
        match self {
            DeviceKind::Cpu => mlx_rs::Device::cpu(),
            DeviceKind::Gpu => mlx_rs::Device::gpu(),
        }
    }
}

/// Number of devices of this kind that MLX can use (0 when the backend is not built in).
pub fn count(kind: DeviceKind) -> usize {
    let mut n: std::os::raw::c_int = 0;
    // SAFETY: `n` is a valid out-pointer; the call only reads MLX's static backend tables.
    let rc = unsafe { mlx_sys::mlx_device_count(&mut n, kind.raw()) };
    if rc == 0 {
        n.max(0) as usize
    } else {
        0
    }
}

/// Whether MLX can run on a device of this kind.
pub fn is_available(kind: DeviceKind) -> bool {
    let mut available = false;
    // SAFETY: the handle is created, used and freed here; errors leave `available` false.
    let rc = unsafe {
        let dev = mlx_sys::mlx_device_new_type(kind.raw(), 0);
        let rc = mlx_sys::mlx_device_is_available(&mut available, dev);
        mlx_sys::mlx_device_free(dev);
        rc
    };
    rc == 0 && available && count(kind) > 0
}

/// The fastest device present: the GPU when MLX has one, else the CPU.
pub fn best_available() -> DeviceKind {
    if is_available(DeviceKind::Gpu) {
        DeviceKind::Gpu
    } else {
        DeviceKind::Cpu
    }
}

/// Check `requested` (or pick the best device when `None`) and make it MLX's default
/// device for this process. Returns the device in use.
pub fn select(requested: Option<DeviceKind>) -> Result<DeviceKind, DeviceError> {
    let kind = requested.unwrap_or_else(best_available);
    if !is_available(kind) {
        return Err(DeviceError::Unavailable { kind, origin: mlx_sys::build_info::MLX_ORIGIN });
    }
    mlx_rs::Device::set_default(&kind.to_mlx());
    Ok(kind)
}

/// The device MLX uses when an operation names none.
pub fn default_device() -> Option<DeviceKind> {
    let dev = mlx_rs::Device::try_default().ok()?;
    match dev.get_type().ok()? {
        mlx_rs::DeviceType::Cpu => Some(DeviceKind::Cpu),
        mlx_rs::DeviceType::Gpu => Some(DeviceKind::Gpu),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("cpu".parse::<DeviceKind>(), Ok(DeviceKind::Cpu));
        assert_eq!("GPU".parse::<DeviceKind>(), Ok(DeviceKind::Gpu));
        assert_eq!("tpu".parse::<DeviceKind>(), Err(DeviceError::Unknown("tpu".into())));
    }

    #[test]
    fn cpu_is_always_available() {
        assert!(is_available(DeviceKind::Cpu));
        assert!(count(DeviceKind::Cpu) >= 1);
        assert_eq!(select(Some(DeviceKind::Cpu)), Ok(DeviceKind::Cpu));
        assert_eq!(default_device(), Some(DeviceKind::Cpu));
    }

    #[test]
    fn gpu_request_matches_the_build() {
        let gpu_built = count(DeviceKind::Gpu) > 0;
        match select(Some(DeviceKind::Gpu)) {
            Ok(k) => assert!(gpu_built && k == DeviceKind::Gpu),
            Err(e) => {
                assert!(!gpu_built);
                let msg = e.to_string();
                assert!(msg.contains("--device gpu") && msg.contains("no gpu backend"), "{msg}");
            }
        }
    }
}
