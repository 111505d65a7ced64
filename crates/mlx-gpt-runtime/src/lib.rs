//! The process around the model: what an mlx-gpt program sets up once, at start-up,
//! before it builds anything, and reports in `mlx-gpt info`.
//!
//! - [`device`]: `cpu` or `gpu`, checked against the MLX build and made MLX's default;
//! - [`blas`]: MLX's version and the BLAS library the loader bound its matmuls to;
//! - [`blas_kernel`]: OpenBLAS's kernel checked against the CPU before `main`, and
//!   corrected when OpenBLAS fell back to a generic one;
//! - [`malloc`]: glibc's thresholds, so a training step does not pay fresh page faults
//!   for the same large buffers every step;
//! - [`jit`]: a native compiler for the kernels MLX's CPU `compile` generates;
//! - [`affinity`]: the training step's stream workers on a core each;
//! - [`fs`]: files written through a temporary name and renamed, so that a crash never
//!   leaves half a file under the final name.
//!
//! Nothing here is read from the environment deep inside a computation: the program
//! calls what it wants, with values from its configuration (see docs/architecture.md).

#![warn(missing_docs)]

pub mod affinity;
pub mod blas;
pub mod blas_kernel;
pub mod device;
pub mod fs;
pub mod jit;
pub mod malloc;

pub use device::{DeviceError, DeviceKind};
