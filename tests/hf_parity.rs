//! mlx-gpt's GPT against Hugging Face transformers, both ways, on committed fixtures made by
//! `scripts/make_gpt2_fixtures.py` (transformers + torch); and the strict loader's errors.
//!
//! Regenerate: `MLX_GPT_WRITE_FIXTURES=1 cargo test -p mlx-gpt-model --test hf_parity`
//! (writes tests/fixtures/gpt2_tiny_mlx/), then `python3 scripts/make_gpt2_fixtures.py`.

use mlx_gpt_model::hf::{self, LoadError};
use mlx_gpt_model::{Activation, Gpt, GptConfig};
use mlx_rs::{Array, Dtype};
use safetensors::tensor::TensorView;
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};

#[path = "common/hf_fixture.rs"]
mod hf_fixture;
use hf_fixture::{check_against, expected};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mlx-gpt-hf-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn transformers_model_loads_with_the_same_logits() {
    let dir = fixtures().join("gpt2_tiny_hf");
    let mut model = hf::load_pretrained(&dir).unwrap();
    assert_eq!(model.config.activation, Activation::GeluNew);
    assert!(model.config.bias);
    let (logits, loss) = check_against(&mut model, &expected(&dir));
    assert!(logits < 1e-4, "max |logit diff| {logits}");
    assert!(loss < 1e-4, "loss diff {loss}");
}

/// The model mlx-gpt writes for the reverse direction: bias-free, exact GELU (nanoGPT's).
fn mlx_fixture_model() -> Gpt {
    let config = GptConfig {
        block_size: 32,
        vocab_size: 80,
        n_layer: 2,
        n_head: 2,
        n_embd: 24,
        dropout: 0.0,
        bias: false,
        activation: Activation::Gelu,
        ..GptConfig::baby(80)
    };
    let mut m = Gpt::new(config, 42).unwrap();
    // nanoGPT's init leaves LayerNorm gains at 1; perturb them so the fixture covers them.
    for b in &mut m.h {
        let w = &mut b.ln_2.as_mut().expect("GPT-2 has LayerNorms").weight;
        **w = w.multiply(Array::from_f32(1.25)).unwrap();
    }
    m
}

#[test]
fn saved_model_loads_in_transformers_with_the_same_logits() {
    let dir = fixtures().join("gpt2_tiny_mlx");
    let mut model = mlx_fixture_model();
    if std::env::var_os("MLX_GPT_WRITE_FIXTURES").is_some() {
        hf::save_pretrained(&model, &dir).unwrap();
        eprintln!("wrote {}; now run scripts/make_gpt2_fixtures.py", dir.display());
        return;
    }
    // What this code saves today is what transformers loaded when the fixture was made...
    let out = scratch("save");
    hf::save_pretrained(&model, &out).unwrap();
    let ours = std::fs::read(out.join("model.safetensors")).unwrap();
    let theirs = std::fs::read(dir.join("model.safetensors")).unwrap();
    assert!(ours == theirs, "saved weights differ from tests/fixtures/gpt2_tiny_mlx; regenerate the fixture");
    // ...and transformers computed these logits from it.
    let (logits, loss) = check_against(&mut model, &expected(&dir));
    assert!(logits < 1e-4, "max |logit diff| {logits}");
    assert!(loss < 1e-4, "loss diff {loss}");
    // Loading it back gives the same model, bias-free (the zero biases are dropped).
    let mut back = hf::load_pretrained(&out).unwrap();
    assert!(!back.config.bias);
    assert_eq!(back.num_params(false), model.num_params(false));
    assert_eq!(check_against(&mut back, &expected(&dir)).0, logits);
    std::fs::remove_dir_all(out).unwrap();
}

#[test]
fn half_precision_round_trip() {
    let mut model = hf::load_pretrained(&fixtures().join("gpt2_tiny_hf")).unwrap();
    model.set_dtype(Dtype::Bfloat16).unwrap();
    let out = scratch("bf16");
    hf::save_pretrained(&model, &out).unwrap();
    let mut back = hf::load_pretrained(&out).unwrap();
    assert_eq!(back.dtype(), Dtype::Bfloat16);
    let e = expected(&fixtures().join("gpt2_tiny_hf"));
    let (a, _) = model.forward(&e.idx, None).unwrap();
    let (b, _) = back.forward(&e.idx, None).unwrap();
    assert_eq!(
        a.as_dtype(Dtype::Float32).unwrap().as_slice::<f32>(),
        b.as_dtype(Dtype::Float32).unwrap().as_slice::<f32>()
    );
    std::fs::remove_dir_all(out).unwrap();
}

/// Rewrite the HF fixture's tensors through `edit` into a new directory.
fn variant(name: &str, edit: impl FnOnce(&mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>)) -> PathBuf {
    let src = fixtures().join("gpt2_tiny_hf");
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> =
        st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    edit(&mut tensors);
    let dir = scratch(name);
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    let views: Vec<_> =
        tensors.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    dir
}

fn f32_tensor(name: &str, shape: &[usize], value: f32) -> (String, safetensors::Dtype, Vec<usize>, Vec<u8>) {
    let n: usize = shape.iter().product();
    let data = std::iter::repeat_n(value.to_le_bytes(), n).flatten().collect();
    (name.to_string(), safetensors::Dtype::F32, shape.to_vec(), data)
}

#[test]
fn checkpoint_quirks_are_handled() {
    // OpenAI-style: no `transformer.` prefix, mask buffers present, an explicit lm_head.
    let dir = variant("quirks", |t| {
        let wte = t.iter().find(|x| x.0.ends_with("wte.weight")).unwrap().clone();
        for x in t.iter_mut() {
            x.0 = x.0.trim_start_matches("transformer.").to_string();
        }
        t.push(f32_tensor("h.0.attn.bias", &[1, 1, 32, 32], 1.0));
        t.push(f32_tensor("h.1.attn.masked_bias", &[], -1e4));
        t.push(("lm_head.weight".into(), wte.1, wte.2, wte.3));
    });
    let mut model = hf::load_pretrained(&dir).unwrap();
    let (logits, _) = check_against(&mut model, &expected(&fixtures().join("gpt2_tiny_hf")));
    assert!(logits < 1e-4);
    std::fs::remove_dir_all(dir).unwrap();
}

fn load_err(dir: &Path) -> String {
    let err = hf::load_pretrained(dir).expect_err("load must fail");
    std::fs::remove_dir_all(dir).unwrap();
    err.to_string()
}

#[test]
fn strict_loader_names_missing_unexpected_and_misshapen_tensors() {
    let msg = load_err(&variant("strict", |t| {
        t.retain(|x| x.0 != "transformer.h.1.mlp.c_fc.bias");
        t.push(f32_tensor("transformer.h.0.mlp.gate.weight", &[4], 0.0));
        let ln = t.iter_mut().find(|x| x.0 == "transformer.ln_f.weight").unwrap();
        *ln = f32_tensor("transformer.ln_f.weight", &[31], 1.0);
    }));
    assert!(msg.contains("missing (1): h.1.mlp.c_fc.bias"), "{msg}");
    assert!(msg.contains("unexpected (1): transformer.h.0.mlp.gate.weight"), "{msg}");
    assert!(msg.contains("wrong shape (1): transformer.ln_f.weight: [31] vs model [32]"), "{msg}");
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn damaged_files_are_clear_errors() {
    let src = fixtures().join("gpt2_tiny_hf");
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    for (name, content) in [
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("garbage", b"not a checkpoint at all".to_vec()),
        ("empty", vec![]),
    ] {
        let dir = scratch(name);
        std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
        std::fs::write(dir.join("model.safetensors"), content).unwrap();
        let msg = load_err(&dir);
        assert!(msg.contains("not a valid safetensors file"), "{name}: {msg}");
    }
    let dir = scratch("nofile");
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    assert!(load_err(&dir).contains("model.safetensors"));
    let dir = scratch("noconfig");
    assert!(load_err(&dir).contains("config.json"));
}

#[test]
fn bias_free_checkpoints_must_have_zero_biases() {
    let out = scratch("nonzero");
    hf::save_pretrained(&mlx_fixture_model(), &out).unwrap();
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> =
        st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    let bias = tensors.iter_mut().find(|t| t.0 == "transformer.h.0.mlp.c_fc.bias").unwrap();
    *bias = f32_tensor("transformer.h.0.mlp.c_fc.bias", &[96], 0.5);
    let views: Vec<_> =
        tensors.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, &out.join("model.safetensors")).unwrap();
    let err = hf::load_pretrained(&out).err().unwrap();
    assert!(matches!(err, LoadError::NonZeroBias { .. }), "{err}");
    assert!(err.to_string().contains("transformer.h.0.mlp.c_fc.bias"));
    std::fs::remove_dir_all(out).unwrap();
}
