//! Export of a modern GPT (`arch = "modern"`) as mlx-lm's `nanochat` model
//! (`mlx_lm/models/nanochat.py`), so that mlx-lm (`mlx_lm.utils.load_model`, and with a
//! tokenizer beside it `mlx_lm.load` / `mlx_lm.generate`) runs it.
//!
//! mlx-lm's nanochat is the same network where ours has ReLU², no biases, RMSNorm's ε at
//! 1e-5 and the logit soft-cap at 15 (mlx-lm fixes all four); [`check`] refuses the rest.
//! It turns queries and keys before normalising them, where we normalise first: a rotation
//! keeps a vector's length, so the two orders agree up to float rounding. The layout
//! differs: separate `c_q`, `c_k`, `c_v` where we have one `c_attn`, every dense weight as
//! `nn.Linear` stores it, (out, in), where ours is (in, out), and the `transformer.`
//! prefix (`lm_head.weight` without it).

use crate::config::{Activation, Arch, GptConfig};
use crate::gpt::Gpt;
use crate::hf::{self, LoadError};
use mlx_rs::module::ModuleParameters;
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::Array;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

/// Why `config` cannot be exported as mlx-lm's nanochat, if it cannot.
pub fn check(config: &GptConfig) -> Result<(), String> {
    let why = if config.arch != Arch::Modern {
        "only arch = \"modern\" models match mlx-lm's nanochat (GPT-2 checkpoints load in mlx-lm as gpt2 already)"
    } else if config.activation != Activation::ReluSquared {
        "mlx-lm's nanochat uses ReLU² (activation relu2)"
    } else if config.bias {
        "mlx-lm's nanochat has no biases"
    } else if config.logit_softcap != 15.0 {
        "mlx-lm's nanochat soft-caps logits at 15"
    } else if config.layer_norm_epsilon != 1e-5 {
        "mlx-lm's nanochat normalises with ε = 1e-5"
    } else {
        return Ok(());
    };
    Err(why.to_string())
}

/// mlx-lm's `config.json` for `config`.
pub fn config_json(config: &GptConfig) -> serde_json::Value {
    json!({
        "model_type": "nanochat",
        "hidden_size": config.n_embd,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.kv_heads(),
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.block_size,
        "intermediate_size": 4 * config.n_embd,
        "rope_theta": config.rope_base,
    })
}

/// The tensors by mlx-lm's names, in the model's dtype.
pub fn tensors(model: &Gpt) -> Result<BTreeMap<String, Array>, LoadError> {
    let c = &model.config;
    let (width, kv_width) = (c.n_embd as i32, (c.kv_heads() * c.head_size()) as i32);
    let params = model.parameters().flatten();
    let get = |name: &str| params.get(name).map(|a| (*a).clone()).expect("a modern GPT has it");
    let mut out = BTreeMap::new();
    out.insert("transformer.wte.weight".to_string(), get("wte.weight"));
    out.insert("lm_head.weight".to_string(), get("lm_head.weight"));
    for i in 0..c.n_layer {
        let (ours, theirs) = (format!("h.{i}."), format!("transformer.h.{i}."));
        let c_attn = get(&format!("{ours}attn.c_attn.weight")); // (C, C + 2·kv_width)
        let columns =
            [("c_q", 0, width), ("c_k", width, width + kv_width), ("c_v", width + kv_width, width + 2 * kv_width)];
        for (name, from, to) in columns {
            out.insert(format!("{theirs}attn.{name}.weight"), c_attn.index((.., from..to)).t());
        }
        for name in ["attn.c_proj", "mlp.c_fc", "mlp.c_proj"] {
            out.insert(format!("{theirs}{name}.weight"), get(&format!("{ours}{name}.weight")).t());
        }
    }
    // Dense and row-major, as the file stores them.
    let out: BTreeMap<String, Array> =
        out.into_iter().map(|(k, a)| Ok((k, a.contiguous()?))).collect::<Result<_, LoadError>>()?;
    mlx_rs::transforms::eval(out.values())?;
    Ok(out)
}

/// Write `model` as an mlx-lm nanochat directory (`config.json`, `model.safetensors`),
/// each file under a temporary name first, then renamed. Refused, saying why, where mlx-lm's
/// model would compute something else ([`check`]).
pub fn save(model: &Gpt, dir: &Path) -> Result<(), LoadError> {
    check(&model.config).map_err(|why| LoadError::NotExportable { layout: "mlx-lm's nanochat", why })?;
    std::fs::create_dir_all(dir).map_err(|source| LoadError::Io { path: dir.into(), source })?;
    hf::write_tensors(&tensors(model)?, &dir.join(hf::WEIGHTS_FILE))?;
    let text = serde_json::to_string_pretty(&config_json(&model.config)).expect("JSON values serialize");
    let path = dir.join(hf::CONFIG_FILE);
    mlx_gpt_runtime::fs::write_atomic(&path, text.as_bytes()).map_err(|source| LoadError::Io { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exported matrices are ours, split and transposed: mlx-lm's `x @ Wᵀ` per
    /// projection gives our `x @ W` columns.
    #[test]
    fn exported_weights_are_ours_split_and_transposed() {
        let c = GptConfig { n_kv_head: Some(2), ..GptConfig::baby(30).modern() };
        let model = Gpt::new(c.clone(), 1).unwrap();
        let t = tensors(&model).unwrap();
        assert_eq!(t.len(), 2 + 6 * c.n_layer);
        let x = mlx_rs::random::normal::<f32>(&[3, 128], None, None, &mlx_rs::random::key(2).unwrap()).unwrap();
        let ours = x.matmul(&model.h[1].attn.c_attn.weight).unwrap(); // (3, 128 + 2·64)
        let theirs = mlx_rs::ops::concatenate(
            &["c_q", "c_k", "c_v"].map(|n| x.matmul(t[&format!("transformer.h.1.attn.{n}.weight")].t()).unwrap()),
            -1,
        )
        .unwrap();
        assert_eq!(ours.shape(), theirs.shape());
        for (a, b) in ours.as_slice::<f32>().iter().zip(theirs.as_slice::<f32>()) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}"); // products of other shapes: rounding only
        }
        assert_eq!(t["transformer.h.0.mlp.c_fc.weight"].shape(), &[512, 128]);
        assert_eq!(config_json(&c)["num_key_value_heads"], 2);
        // What mlx-lm would compute differently is refused, naming it.
        for other in [
            GptConfig::baby(30),
            GptConfig { logit_softcap: 30.0, ..c.clone() },
            GptConfig { activation: Activation::Gelu, ..c.clone() },
        ] {
            let err = save(&Gpt::new(other, 1).unwrap(), Path::new("/nonexistent")).unwrap_err().to_string();
            assert!(err.starts_with("cannot export as mlx-lm's nanochat"), "{err}");
        }
    }
}
