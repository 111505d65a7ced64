//! The expected outputs of the committed Hugging Face fixtures (`expected.json`, written by
//! scripts/make_gpt2_fixtures.py), and the check of a model against them. Shared by
//! tests/hf_parity.rs and tests/kernels_choice.rs.

use mlx_gpt_model::Gpt;
use mlx_rs::{Array, Dtype};
use serde_json::Value;
use std::path::Path;

pub struct Expected {
    pub idx: Array,
    pub targets: Array,
    pub logits: Vec<f32>,
    pub shape: Vec<i32>,
    pub loss: f32,
}

pub fn expected(dir: &Path) -> Expected {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let grid = |key: &str| {
        let rows = v[key].as_array().unwrap();
        let flat: Vec<i32> =
            rows.iter().flat_map(|r| r.as_array().unwrap().iter().map(|x| x.as_i64().unwrap() as i32)).collect();
        Array::from_slice(&flat, &[rows.len() as i32, (flat.len() / rows.len()) as i32])
    };
    Expected {
        idx: grid("idx"),
        targets: grid("targets"),
        logits: v["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect(),
        shape: v["logits_shape"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap() as i32).collect(),
        loss: v["loss"].as_f64().unwrap() as f32,
    }
}

/// Largest absolute difference between our logits and the reference, and the loss's.
pub fn check_against(model: &mut Gpt, e: &Expected) -> (f32, f32) {
    let (logits, loss) = model.forward(&e.idx, Some(&e.targets)).unwrap();
    assert_eq!(logits.shape(), &e.shape[..]);
    let got = logits.as_dtype(Dtype::Float32).unwrap();
    let max = got.as_slice::<f32>().iter().zip(&e.logits).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    (max, (loss.unwrap().item_exact::<f32>() - e.loss).abs())
}
