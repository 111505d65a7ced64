// The CBLAS routines the primitives in csrc/ call: those of the BLAS MLX itself calls,
// found at run time by the Rust side (csrc.rs, `blas_ready`) and handed over once with
// mlx_gpt_set_blas (defined in entry.cpp). A primitive that needs one declines (or
// fails, naming it) while it is unset.

#pragma once

namespace mlx_gpt {

using Sgemm = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*, int);

constexpr int kRowMajor = 101;
constexpr int kNoTrans = 111;
constexpr int kTrans = 112;

extern Sgemm sgemm;

}  // namespace mlx_gpt
