//! Dense layers as a custom MLX primitive (`csrc/linear.cpp`) on mlx-gpt's own GEMM
//! (`csrc/gemm.cpp`): `y = x·W + b` in one product with the bias added in its store, and
//! the gradient (dx, dW, db) in one task, where MLX ops make a matmul and an add forward
//! and two matmuls and a reduction backward, each through the BLAS.
//!
//! The GEMM is a single-threaded AVX-512 kernel that packs only one operand, never clears
//! its output first, and asks for all of its operands' cache lines before it starts:
//! in a training step they were written long before, and waiting on them one line at a
//! time cost more than OpenBLAS's packing did (docs/performance.md, third round). On a CPU
//! without AVX-512, with `MLX_GPT_OWN_GEMM=0`, or for products beyond a small model's,
//! the primitive calls the BLAS's `cblas_sgemm`; the causal-attention primitive's
//! products follow the same rules.
//!
//! The model's layers use the primitive where its own GEMM runs and the BLAS would run on
//! one thread anyway (the training step's streams set it so; see [`model_uses_it`]):
//! on the BLAS the primitive measured no faster than MLX's matmul, and elsewhere a
//! multi-threaded BLAS does one large product faster. `MLX_GPT_CUSTOM_LINEAR=0` (or
//! [`set_enabled`]) switches it off for comparison; results agree to float rounding
//! (tested here, and by the parity and training tests).

use crate::switch::Switch;
use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype};

static ENABLED: Switch = Switch::new("MLX_GPT_CUSTOM_LINEAR");
static OWN_GEMM: Switch = Switch::new("MLX_GPT_OWN_GEMM");

/// Switch the primitive on or off for the whole process.
pub fn set_enabled(on: bool) {
    ENABLED.set(on);
}

/// Whether the primitive is switched on (by default yes, unless `MLX_GPT_CUSTOM_LINEAR=0`).
pub fn enabled() -> bool {
    ENABLED.get()
}

/// Switch mlx-gpt's own GEMM on or off for the whole process (the primitives then call
/// the BLAS). Returns whether it is active: on, and the CPU has AVX-512.
pub fn set_own_gemm(on: bool) -> bool {
    OWN_GEMM.set(on);
    own_gemm_active()
}

/// Whether the primitives' products run on mlx-gpt's own GEMM (switched on, unless
/// `MLX_GPT_OWN_GEMM=0`, and the CPU has AVX-512) rather than the BLAS.
pub fn own_gemm_active() -> bool {
    // SAFETY: a plain flag store on the C++ side.
    unsafe { crate::csrc::mlx_gpt_set_own_gemm(OWN_GEMM.get()) }
}

/// Whether the model's dense layers (and the tied head) go through the primitive: it is
/// switched on, mlx-gpt's GEMM is active (its speed is the gain: on the BLAS the
/// primitive measured the same as MLX's matmul), and the BLAS has been set to one thread
/// (the training step's streams do, `runtime::set_blas_threads`) or the machine has one
/// core, since the GEMM is single-threaded.
pub fn model_uses_it() -> bool {
    enabled()
        && own_gemm_active()
        && (crate::runtime::blas_threads_set() == Some(1)
            || std::thread::available_parallelism().map_or(true, |n| n.get() == 1))
}

/// `x·W + bias` for x (..., in) and W (in, out), or `x·Wᵀ + bias` with `w_transposed`
/// (W stored (out, in), as the tied head reads wte), through the primitive; `Ok(None)`
/// when it does not apply (switched off, not all float32, not on the CPU, no CBLAS for
/// the fallback). A shape mismatch is an error naming both sizes.
pub fn linear(x: &Array, w: &Array, bias: Option<&Array>, w_transposed: bool) -> Result<Option<Array>, Exception> {
    if !enabled()
        || x.dtype() != Dtype::Float32
        || w.dtype() != Dtype::Float32
        || bias.is_some_and(|b| b.dtype() != Dtype::Float32)
        || crate::device::default_device() != Some(crate::device::DeviceKind::Cpu)
        || !crate::csrc::blas_ready()
    {
        return Ok(None);
    }
    own_gemm_active();
    // SAFETY: mlx_gpt_linear with the given handles (an empty one for "no bias"); the
    // arrays outlive the call.
    unsafe {
        crate::csrc::call_with_optional(bias, |res, b| {
            crate::csrc::mlx_gpt_linear(res, x.as_ptr(), w.as_ptr(), b, w_transposed)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx_rs::{ops, random, transforms};

    /// The switches are process-wide and tests run on parallel threads.
    fn lock() -> std::sync::MutexGuard<'static, ()> {
        static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
        LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn close(a: &Array, b: &Array, what: &str) {
        assert_eq!(a.shape(), b.shape(), "{what}");
        let (a, b) = (a.reshape(&[-1]).unwrap(), b.reshape(&[-1]).unwrap());
        for (i, (p, q)) in a.as_slice::<f32>().iter().zip(b.as_slice::<f32>()).enumerate() {
            assert!((p - q).abs() <= 1e-4 * (1.0 + q.abs()), "{what}[{i}]: {p} vs {q}");
        }
    }

    /// MLX ops: the reference the primitive is checked against.
    fn reference(x: &Array, w: &Array, b: Option<&Array>, w_t: bool) -> Array {
        let w = if w_t { w.t() } else { w.clone() };
        let y = ops::matmul(x, &w).unwrap();
        b.map_or(y.clone(), |b| y.add(b).unwrap())
    }

    /// Forward and all three gradients against MLX ops, over shapes that cover every tile
    /// edge (rows not a multiple of 12, 1–65 outputs, a depth past one 256-deep block),
    /// both weight orientations, with and without bias, with mlx-gpt's GEMM and with the
    /// BLAS.
    #[test]
    fn forward_and_gradients_match_mlx_ops() {
        let _guard = lock();
        let key = |k| random::key(k).unwrap();
        let normal = |shape: &[i32], k| random::normal::<f32>(shape, None, None, &key(k)).unwrap();
        for own in [true, false] {
            set_own_gemm(own);
            for &(lead, n_in, n_out) in &[
                (&[1][..], 5, 1),
                (&[13][..], 7, 16),
                (&[2, 11][..], 33, 17),
                (&[3, 9][..], 300, 65),
                (&[25][..], 64, 32),
            ] {
                let x_shape: Vec<i32> = lead.iter().copied().chain([n_in]).collect();
                let x = normal(&x_shape, 1);
                let b = normal(&[n_out], 3);
                let cot_shape: Vec<i32> = lead.iter().copied().chain([n_out]).collect();
                let cot = normal(&cot_shape, 4);
                for w_t in [false, true] {
                    let w_shape = if w_t { [n_out, n_in] } else { [n_in, n_out] };
                    let w = normal(&w_shape, 2);
                    for bias in [Some(&b), None] {
                        let what = format!("own {own}, x {x_shape:?}, w_t {w_t}, bias {}", bias.is_some());
                        let custom = linear(&x, &w, bias, w_t).unwrap().expect("float32 on the CPU");
                        close(&custom, &reference(&x, &w, bias, w_t), &what);
                        // Gradients of sum(cot · f(x, w, b)) for every input.
                        let grads = |custom: bool| -> Vec<Array> {
                            let cot = cot.clone();
                            let f = move |a: &[Array]| -> Result<Vec<Array>, Exception> {
                                let y = if custom {
                                    linear(&a[0], &a[1], a.get(2), w_t)?.expect("float32 on the CPU")
                                } else {
                                    reference(&a[0], &a[1], a.get(2), w_t)
                                };
                                Ok(vec![y.multiply(&cot)?.sum(None)?])
                            };
                            let mut args = vec![x.clone(), w.clone()];
                            args.extend(bias.cloned());
                            let argnums: Vec<i32> = (0..args.len() as i32).collect();
                            let mut vg = transforms::value_and_grad_with_argnums(f, &argnums[..]);
                            let (_, grads) = vg(&args).unwrap();
                            grads
                        };
                        let (mine, theirs) = (grads(true), grads(false));
                        assert_eq!(mine.len(), theirs.len());
                        for (i, (p, q)) in mine.iter().zip(&theirs).enumerate() {
                            close(p, q, &format!("{what}, gradient {i}"));
                        }
                    }
                }
            }
        }
        set_own_gemm(true);
    }

    /// Inputs that are views (a transposed x) are read correctly, other dtypes are
    /// declined, and a wrong width is an error that names both sizes.
    #[test]
    fn strided_inputs_other_dtypes_and_bad_shapes() {
        let _guard = lock();
        let x = random::normal::<f32>(&[20, 6], None, None, &random::key(7).unwrap()).unwrap().t(); // (6, 20)
        let w = random::normal::<f32>(&[20, 3], None, None, &random::key(8).unwrap()).unwrap();
        close(&linear(&x, &w, None, false).unwrap().unwrap(), &reference(&x, &w, None, false), "strided x");
        assert!(linear(&x.as_dtype(Dtype::Float16).unwrap(), &w, None, false).unwrap().is_none());
        let err = linear(&x, &w.t(), None, false).unwrap_err().to_string();
        assert!(err.contains("20 features") && err.contains("takes 3"), "{err}");
    }

    /// The model wired through the primitive (every dense layer and the tied head, as in
    /// training) gives the same loss and gradients as through MLX ops.
    #[test]
    fn model_loss_and_gradients_match_mlx_ops() {
        let _guard = lock();
        use crate::{Gpt, GptConfig};
        use mlx_rs::module::ModuleParameters as _;
        // The condition the training step's streams create (see `model_uses_it`).
        crate::runtime::set_blas_threads(1);
        let c = GptConfig { block_size: 16, vocab_size: 37, n_layer: 2, n_head: 2, n_embd: 48, ..GptConfig::baby(37) };
        let x = random::randint::<_, i32>(0, 37, &[3, 16], &random::key(11).unwrap()).unwrap();
        let y = random::randint::<_, i32>(0, 37, &[3, 16], &random::key(12).unwrap()).unwrap();
        if !own_gemm_active() {
            // Then the model never uses the primitive (its BLAS fallback is covered above).
            eprintln!("model_loss_and_gradients_match_mlx_ops: no AVX-512 here, the model keeps MLX's matmul");
            return;
        }
        let run = |on: bool| {
            set_enabled(on);
            assert_eq!(model_uses_it(), on);
            let mut m = Gpt::new(c.clone(), 3).unwrap();
            let loss_fn = |m: &mut Gpt, (x, y): (&Array, &Array)| -> Result<Array, Exception> { m.loss(x, y) };
            let (loss, grads) = mlx_rs::nn::value_and_grad(loss_fn)(&mut m, (&x, &y)).unwrap();
            let n = m.parameters().flatten().len();
            assert_eq!(grads.len(), n);
            (loss, grads)
        };
        let (loss_on, grads_on) = run(true);
        let (loss_off, grads_off) = run(false);
        set_enabled(true);
        close(&loss_on, &loss_off, "loss");
        for (name, g) in &grads_off {
            close(&grads_on[name], g, name);
        }
    }
}
