//! mlx-gpt's CPU kernels: custom MLX primitives written in C++ (`csrc/`, built by
//! build.rs), each behind a Rust function that returns `Ok(None)` where it does not apply
//! (another dtype than float32, shapes it does not take, no CBLAS in the process), so the
//! entry point in the crate root runs the plain-MLX formulation instead.
//!
//! Every primitive runs on the stream's worker thread like MLX's own kernels, stays in the
//! lazy graph, and (except `decode_product` and `decode_attention`, used for generation only)
//! has its gradient as a second primitive. docs/performance-history.md has the measurements that
//! motivated each one.

pub mod adamw;
pub mod causal_attention;
pub mod decode_attention;
pub mod decode_block;
pub mod decode_step;
pub mod ffi;
pub mod gelu;
pub mod gemm;
pub mod huge_pages;
pub mod layer_norm;
pub mod linear;
pub mod matvec;
pub mod rms_norm;
pub mod rotary_qkv;
