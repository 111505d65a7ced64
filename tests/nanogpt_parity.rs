//! Training parity with nanoGPT, step for step: `tests/fixtures/nanogpt_parity` holds
//! the initial weights of nanoGPT's own `model.py` (seed 1337; 2 layers, 64 wide, context
//! 32, with biases, so that weight decay on them would show) and what its `train.py` loop did for 200 steps (learning rate, each
//! micro-batch's offsets into Tiny Shakespeare's character-level `train.bin`, mean loss,
//! gradient norm before clipping), written by `scripts/make_nanogpt_parity_fixture.py`.
//! mlx-gpt trains from those weights on exactly those batches, with the same
//! configuration, through the path `train` takes by default on this machine, and must
//! compute the same numbers: the learning rate at every step, the loss and gradient norm
//! within 1e-4 (relative) for 20 steps, the loss within 1e-3 for all of them, and every
//! weight after the last step within 1e-3 of the tensor's largest value.

mod common;

use mlx_gpt_data::token_file::TokenFile;
use mlx_gpt_model::hf;
use mlx_gpt_train::optimizer::{AdamW, AdamWConfig};
use mlx_gpt_train::step::train_step;
use mlx_gpt_train::train::GradEngine;
use mlx_gpt_train::TrainConfig;
use mlx_rs::module::ModuleParameters;
use mlx_rs::Array;
use serde_json::Value;
use std::path::PathBuf;

/// The committed fixture, or another recording of the same script (`MLX_GPT_PARITY_FIXTURE`,
/// e.g. the baby shape over 2000 steps recorded in docs/training.md).
fn fixture() -> PathBuf {
    std::env::var_os("MLX_GPT_PARITY_FIXTURE")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::root().join("tests/fixtures/nanogpt_parity"))
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

#[test]
fn training_matches_nanogpt_step_for_step() {
    let Some(data) = common::shakespeare_char_data("parity-data") else { return };
    let dataset = data.join("shakespeare_char");
    let run: Value = serde_json::from_str(&std::fs::read_to_string(fixture().join("run.json")).unwrap()).unwrap();
    let sha = mlx_gpt_data::token_file::sha256_file(&dataset.join("train.bin")).unwrap();
    assert_eq!(sha, run["train_bin_sha256"].as_str().unwrap(), "the fixture was recorded on another train.bin");

    let f = &run["config"];
    let num = |k: &str| f[k].as_f64().unwrap_or_else(|| panic!("config.{k}"));
    let c = TrainConfig {
        n_layer: num("n_layer") as usize,
        n_head: num("n_head") as usize,
        n_embd: num("n_embd") as usize,
        block_size: num("block_size") as usize,
        batch_size: num("batch_size") as usize,
        gradient_accumulation_steps: num("gradient_accumulation_steps") as usize,
        learning_rate: num("learning_rate"),
        min_lr: num("min_lr"),
        warmup_iters: num("warmup_iters") as usize,
        lr_decay_iters: num("lr_decay_iters") as usize,
        max_iters: num("max_iters") as usize,
        weight_decay: num("weight_decay"),
        beta1: num("beta1"),
        beta2: num("beta2"),
        grad_clip: num("grad_clip"),
        dropout: 0.0,
        bias: f["bias"].as_bool().unwrap(),
        ..TrainConfig::default()
    };
    let mut model = hf::load_pretrained(&fixture()).unwrap();
    assert!(model.config.bias == c.bias && model.config.dropout == 0.0);
    model.set_training(true);
    let mut opt = AdamW::new(AdamWConfig::from(&c));
    // The kernels and streams a training run on this CPU picks.
    let streams = mlx_gpt_train::train::stream_count(&c, mlx_gpt_runtime::DeviceKind::Cpu, 1);
    model.kernels = mlx_gpt_train::train::kernels_for(&c, mlx_gpt_runtime::DeviceKind::Cpu, streams).unwrap();
    let mut engine = GradEngine::new(&c, &model, streams, 1);
    let (file, _) = TokenFile::open(&dataset, "train").unwrap();
    let (b, t) = (c.batch_size, c.block_size);
    let steps = run["steps"].as_array().unwrap();
    assert!(steps.len() >= 20, "{} steps recorded", steps.len());
    let mut worst = (0.0f64, 0.0f64, 0.0f64); // first 20: loss, grad norm; all: loss
    for (iter, s) in steps.iter().enumerate() {
        let lr = mlx_gpt_train::schedule::get_lr(iter, &c);
        let theirs_lr = s["lr"].as_f64().unwrap();
        assert!(rel(lr, theirs_lr) < 1e-12, "iter {iter}: learning rate {lr}, nanoGPT {theirs_lr}");
        let offsets: Vec<Vec<usize>> = serde_json::from_value(s["offsets"].clone()).unwrap();
        let mut micro = offsets.iter();
        let mut next = || {
            let rows = micro.next().expect("one list of offsets per micro-batch");
            let (mut x, mut y) = (vec![0i32; b * t], vec![0i32; b * t]);
            for (r, &o) in rows.iter().enumerate() {
                file.copy_i32(o, &mut x[r * t..(r + 1) * t]).unwrap();
                file.copy_i32(o + 1, &mut y[r * t..(r + 1) * t]).unwrap();
            }
            let shape = [b as i32, t as i32];
            Ok((Array::from_slice(&x, &shape), Array::from_slice(&y, &shape)))
        };
        let stats = train_step(
            &mut model,
            &mut opt,
            &mut next,
            c.gradient_accumulation_steps,
            lr as f32,
            c.grad_clip as f32,
            c.seed,
            iter,
            engine.path(),
            None,
        )
        .unwrap();
        let (loss, norm) = (s["loss"].as_f64().unwrap(), s["grad_norm"].as_f64().unwrap());
        let (dl, dn) = (rel(stats.loss as f64, loss), rel(stats.grad_norm as f64, norm));
        if iter < 20 {
            assert!(dl < 1e-4, "iter {iter}: loss {} vs nanoGPT {loss} ({dl:.1e})", stats.loss);
            assert!(dn < 1e-4, "iter {iter}: grad norm {} vs nanoGPT {norm} ({dn:.1e})", stats.grad_norm);
            worst.0 = worst.0.max(dl);
            worst.1 = worst.1.max(dn);
        }
        assert!(dl < 1e-3, "iter {iter}: loss {} vs nanoGPT {loss} ({dl:.1e})", stats.loss);
        worst.2 = worst.2.max(dl);
    }
    // The weights after the last step, tensor by tensor: a change too small for the loss
    // to show (weight decay on the biases, say) shows here.
    let theirs = hf::load_pretrained(&fixture().join("final")).unwrap();
    let theirs = theirs.parameters().flatten();
    let mut worst_weight = (0.0f64, String::new());
    for (name, ours) in model.parameters().flatten().iter() {
        let (mut a, mut b) = (ours.as_slice::<f32>().to_vec(), theirs[name].as_slice::<f32>().to_vec());
        if name.ends_with("attn.c_attn.bias") {
            // Not the key bias: it adds the same q·b to every score of a row, which softmax
            // ignores, so its gradient is zero but for rounding, and Adam (dividing by the
            // root of that gradient's square, ~eps) turns each implementation's rounding
            // into its own random walk of ~1e-4. The query and value parts are compared.
            let c = a.len() / 3;
            a.drain(c..2 * c);
            b.drain(c..2 * c);
        }
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6) as f64;
        let d = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) as f64 / scale;
        if d > worst_weight.0 {
            worst_weight = (d, name.to_string());
        }
    }
    eprintln!(
        "nanoGPT parity ({}): first 20 steps loss {:.1e}, grad norm {:.1e}; {} steps loss {:.1e}; final weights {:.1e} ({}) (largest relative differences)",
        engine.describe(),
        worst.0,
        worst.1,
        steps.len(),
        worst.2,
        worst_weight.0,
        worst_weight.1
    );
    assert!(
        worst_weight.0 < 1e-3,
        "final weights differ from nanoGPT's: {} by {:.1e} of its largest value",
        worst_weight.1,
        worst_weight.0
    );
}
