//! nanoGPT's GPT on MLX.
//!
//! Crate map (start here):
//! - [`device`]: pick `cpu` or `gpu`, with a clear error when the MLX build lacks one;
//! - [`runtime`]: MLX's version and the BLAS library its matmuls are bound to.
//!
//! The model itself (config, layers, GPT, generation, Hugging Face weights) arrives with
//! the model issue; see docs/model.md.

pub mod device;
pub mod runtime;

pub use device::{DeviceError, DeviceKind};
