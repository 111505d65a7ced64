//! The `Linear` primitive where it needs the process to itself: it switches mlx-gpt's GEMM
//! off (the BLAS fallback) and sets the BLAS to one thread (which puts the model's layers
//! on the primitive), both process-wide, so it runs as one test in its own binary while
//! other binaries compare forward passes bit for bit.

use mlx_gpt_model::linear_primitive::{linear, model_uses_it, own_gemm_active, set_enabled, set_own_gemm};
use mlx_gpt_model::{hf, Gpt, GptConfig};
use mlx_rs::error::Exception;
use mlx_rs::module::ModuleParameters as _;
use mlx_rs::{ops, random, transforms, Array};
use std::path::Path;

#[path = "common/hf_fixture.rs"]
mod hf_fixture;
use hf_fixture::{check_against, expected};

fn close(a: &Array, b: &Array, tol: f32, what: &str) {
    assert_eq!(a.shape(), b.shape(), "{what}");
    let (a, b) = (a.reshape(&[-1]).unwrap(), b.reshape(&[-1]).unwrap());
    for (i, (p, q)) in a.as_slice::<f32>().iter().zip(b.as_slice::<f32>()).enumerate() {
        assert!((p - q).abs() <= tol * (1.0 + q.abs()), "{what}[{i}]: {p} vs {q}");
    }
}

fn normal(shape: &[i32], k: u64) -> Array {
    random::normal::<f32>(shape, None, None, &random::key(k).unwrap()).unwrap()
}

/// On the BLAS: forward and the gradients of x, W and b against MLX ops.
fn blas_fallback_matches_mlx_ops() {
    set_own_gemm(false);
    for &(rows, n_in, n_out, w_t) in &[(13, 7, 17, false), (300, 33, 65, true), (5, 300, 40, false)] {
        let (x, w, b, cot) = (
            normal(&[rows, n_in], 1),
            normal(&if w_t { [n_out, n_in] } else { [n_in, n_out] }, 2),
            normal(&[n_out], 3),
            normal(&[rows, n_out], 4),
        );
        let run = |custom: bool| {
            let cot = cot.clone();
            let f = move |a: &[Array]| -> Result<Vec<Array>, Exception> {
                let y = if custom {
                    linear(&a[0], &a[1], Some(&a[2]), w_t)?.expect("float32 on the CPU")
                } else {
                    ops::matmul(&a[0], if w_t { a[1].t() } else { a[1].clone() })?.add(&a[2])?
                };
                Ok(vec![y.multiply(&cot)?.sum(None)?, y])
            };
            let mut vg = transforms::value_and_grad_with_argnums(f, &[0, 1, 2][..]);
            vg(&[x.clone(), w.clone(), b.clone()]).unwrap()
        };
        let ((v1, g1), (v2, g2)) = (run(true), run(false));
        let what = format!("BLAS, {rows}x{n_in} -> {n_out}, w_t {w_t}");
        close(&v1[1], &v2[1], 1e-4, &what);
        for (i, (p, q)) in g1.iter().zip(&g2).enumerate() {
            close(p, q, 1e-4, &format!("{what}, gradient {i}"));
        }
    }
    set_own_gemm(true);
}

/// A small GPT through the primitive (every dense layer and the tied head) and through
/// MLX ops: the same loss and gradients.
fn model_matches_mlx_ops() {
    let c = GptConfig { block_size: 16, vocab_size: 37, n_layer: 2, n_head: 2, n_embd: 48, ..GptConfig::baby(37) };
    let x = random::randint::<_, i32>(0, 37, &[3, 16], &random::key(11).unwrap()).unwrap();
    let y = random::randint::<_, i32>(0, 37, &[3, 16], &random::key(12).unwrap()).unwrap();
    let run = |on: bool| {
        set_enabled(on);
        assert_eq!(model_uses_it(), on);
        let mut m = Gpt::new(c.clone(), 3).unwrap();
        let loss_fn = |m: &mut Gpt, (x, y): (&Array, &Array)| -> Result<Array, Exception> { m.loss(x, y) };
        let (loss, grads) = mlx_rs::nn::value_and_grad(loss_fn)(&mut m, (&x, &y)).unwrap();
        assert_eq!(grads.len(), m.parameters().flatten().len());
        (loss, grads)
    };
    let (loss_on, grads_on) = run(true);
    let (loss_off, grads_off) = run(false);
    set_enabled(true);
    close(&loss_on, &loss_off, 1e-5, "loss");
    for (name, g) in &grads_off {
        close(&grads_on[name], g, 1e-4, name);
    }
}

/// Hugging Face transformers' logits and loss for the committed tiny GPT-2 (as in
/// tests/hf_parity.rs), with the model's layers on the primitive.
fn transformers_logits_hold() {
    assert!(model_uses_it());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gpt2_tiny_hf");
    let mut model = hf::load_pretrained(&dir).unwrap();
    let (logits, loss) = check_against(&mut model, &expected(&dir));
    assert!(logits < 1e-4, "max |logit diff| {logits}");
    assert!(loss < 1e-4, "loss diff {loss}");
}

#[test]
fn blas_fallback_model_wiring_and_parity() {
    blas_fallback_matches_mlx_ops();
    // What the training step's streams do; with another BLAS than OpenBLAS, or without
    // AVX-512, the model keeps MLX's matmul and there is no wiring to test.
    if !mlx_gpt_model::runtime::set_blas_threads(1) || !own_gemm_active() {
        eprintln!("the model's layers stay on MLX's matmul here (no OpenBLAS or no AVX-512): wiring not tested");
        return;
    }
    model_matches_mlx_ops();
    transformers_logits_hold();
}
