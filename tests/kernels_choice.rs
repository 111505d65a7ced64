//! Every kernel set, chosen by value: the same model through plain MLX ops, MLX's
//! dedicated primitives and mlx-gpt's CPU kernels (with dense layers on MLX's matmul and
//! on mlx-gpt's GEMM) gives Hugging Face transformers' logits and loss, and the same loss
//! and gradients. Nothing here changes process-wide state, so the sets are compared side
//! by side in one process.

use mlx_gpt_model::{hf, Gpt, GptConfig, Kernels};
use mlx_rs::error::Exception;
use mlx_rs::module::ModuleParameters as _;
use mlx_rs::{random, Array};
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

/// The kernel sets this build offers.
fn sets() -> Vec<Kernels> {
    let mut sets = vec![Kernels::mlx(), Kernels::mlx_fast()];
    if let Ok(cpu) = Kernels::cpu() {
        sets.extend([cpu, cpu.with_gemm_layers(true)]);
    } else {
        eprintln!("note: this build has no CPU kernels; comparing the MLX sets only");
    }
    sets
}

#[test]
fn every_kernel_set_gives_transformers_logits() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gpt2_tiny_hf");
    let want = expected(&dir);
    for k in sets() {
        let mut model = hf::load_pretrained(&dir).unwrap();
        model.kernels = k;
        let (logits, loss) = check_against(&mut model, &want);
        assert!(logits < 1e-4, "{k:?}: max |logit diff| {logits}");
        assert!(loss < 1e-4, "{k:?}: loss diff {loss}");
    }
}

#[test]
fn every_kernel_set_gives_the_same_loss_and_gradients() {
    let c = GptConfig { block_size: 16, vocab_size: 37, n_layer: 2, n_head: 2, n_embd: 48, ..GptConfig::baby(37) };
    let x = random::randint::<_, i32>(0, 37, &[3, 16], &random::key(11).unwrap()).unwrap();
    let y = random::randint::<_, i32>(0, 37, &[3, 16], &random::key(12).unwrap()).unwrap();
    let run = |k: Kernels| {
        let mut m = Gpt::new(c.clone(), 3).unwrap();
        m.kernels = k;
        let loss_fn = |m: &mut Gpt, (x, y): (&Array, &Array)| -> Result<Array, Exception> { m.loss(x, y) };
        let (loss, grads) = mlx_rs::nn::value_and_grad(loss_fn)(&mut m, (&x, &y)).unwrap();
        assert_eq!(grads.len(), m.parameters().flatten().len());
        (loss, grads)
    };
    let (loss_ref, grads_ref) = run(Kernels::mlx());
    for k in sets() {
        let (loss, grads) = run(k);
        close(&loss, &loss_ref, 1e-5, &format!("{k:?} loss"));
        for (name, g) in &grads_ref {
            close(&grads[name], g, 1e-4, &format!("{k:?} {name}"));
        }
    }
}
