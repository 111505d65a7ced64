//! The modern GPT (`arch = "modern"`) against an independent PyTorch implementation of it
//! (scripts/make_modern_fixture.py → tests/fixtures/modern_tiny: grouped-query attention,
//! QK-norm, rotary, ReLU², soft-capped untied head), with every kernel set; and its
//! checkpoint layout, strictly loaded.

use mlx_gpt_model::config::Arch;
use mlx_gpt_model::hf::{self, LoadError};
use mlx_gpt_model::{Activation, Gpt, GptConfig, Kernels};
use std::path::{Path, PathBuf};

#[path = "common/hf_fixture.rs"]
mod hf_fixture;
use hf_fixture::{check_against, expected};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/modern_tiny")
}

#[test]
fn modern_forward_matches_pytorch_with_every_kernel_set() {
    let dir = fixture();
    let model = hf::load_pretrained(&dir).unwrap();
    let c = &model.config;
    assert_eq!((c.arch, c.n_kv_head, c.activation), (Arch::Modern, Some(2), Activation::ReluSquared));
    assert!(model.wpe.is_none() && model.ln_f.is_none() && model.lm_head.is_some());
    let mut sets = vec![Kernels::mlx(), Kernels::mlx_fast()];
    sets.extend(Kernels::cpu());
    for k in sets {
        let mut m = Gpt { kernels: k, ..model.clone() };
        let (logits, loss) = check_against(&mut m, &expected(&dir));
        assert!(logits < 1e-4, "{}: max |logit diff| {logits}", k.name());
        assert!(loss < 1e-4, "{}: loss diff {loss}", k.name());
    }
}

#[test]
fn modern_checkpoints_round_trip_and_load_strictly() {
    let dir = std::env::temp_dir().join(format!("mlx-gpt-modern-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let c = GptConfig { n_kv_head: Some(2), ..GptConfig::baby(40).modern() };
    let model = Gpt::new(c.clone(), 5).unwrap();
    hf::save_pretrained(&model, &dir).unwrap();
    let back = hf::load_pretrained(&dir).unwrap();
    assert_eq!(back.config, c);
    use mlx_rs::module::ModuleParameters;
    let (a, b) = (model.parameters().flatten(), back.parameters().flatten());
    assert_eq!(a.len(), b.len());
    for (name, p) in &a {
        assert_eq!(p.as_slice::<f32>(), b[name].as_slice::<f32>(), "{name}");
    }
    // The head is stored under Hugging Face's name for an untied head, and no zero biases
    // are added (there is no Hugging Face class this layout must satisfy).
    let bytes = std::fs::read(dir.join(hf::WEIGHTS_FILE)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    assert!(names.contains(&"lm_head.weight".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.ends_with(".bias") || n.contains("wpe") || n.contains("ln_")), "{names:?}");
    // A GPT-2 config over these weights: named as a mismatch, not loaded.
    std::fs::write(dir.join(hf::CONFIG_FILE), serde_json::to_string(&GptConfig::baby(40).to_hf_json()).unwrap())
        .unwrap();
    let err = hf::load_pretrained(&dir).unwrap_err();
    assert!(matches!(err, LoadError::Mismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("missing") && msg.contains("wpe.weight") && msg.contains("c_attn.weight"), "{msg}");
    let _ = std::fs::remove_dir_all(&dir);
}
