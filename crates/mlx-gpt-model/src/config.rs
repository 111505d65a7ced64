//! `GptConfig`: the model's shape, validated, with GPT-2 and nanoGPT presets, and the one
//! place that reads and writes Hugging Face's GPT-2 `config.json`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The MLP's nonlinearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Exact GELU, `x·Φ(x)` with the error function, as nanoGPT's `nn.GELU()`.
    #[default]
    Gelu,
    /// The tanh approximation OpenAI's GPT-2 was trained with (`gelu_new` in Hugging Face).
    GeluNew,
}

/// The shape of a GPT. Field names are nanoGPT's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GptConfig {
    /// Longest sequence the model sees (`T` ≤ block_size); size of `wpe`.
    pub block_size: usize,
    /// Number of token ids (`V`); size of `wte` and of the logits.
    pub vocab_size: usize,
    /// Number of transformer blocks.
    pub n_layer: usize,
    /// Attention heads per block; `n_embd` must be a multiple of it.
    pub n_head: usize,
    /// Width of the residual stream (`C`).
    pub n_embd: usize,
    /// Dropout probability on embeddings, attention weights and residual branches.
    pub dropout: f32,
    /// Whether Linear and LayerNorm layers have biases (GPT-2: yes; nanoGPT's default: no).
    pub bias: bool,
    /// MLP nonlinearity.
    #[serde(default)]
    pub activation: Activation,
    /// LayerNorm's ε (1e-5 in nanoGPT and GPT-2).
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f32,
}

fn default_eps() -> f32 {
    1e-5
}

/// Why a configuration or a `config.json` was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A size that must be positive is zero.
    #[error("{0} must be greater than 0")]
    Zero(&'static str),
    /// Heads do not divide the width.
    #[error("n_embd ({n_embd}) must be divisible by n_head ({n_head})")]
    HeadsDoNotDivide {
        /// Width.
        n_embd: usize,
        /// Heads.
        n_head: usize,
    },
    /// Dropout outside [0, 1).
    #[error("dropout must be in [0, 1), got {0}")]
    Dropout(f32),
    /// A LayerNorm epsilon that is not a small positive number (a negative one makes
    /// NaN of any input whose variance is below it).
    #[error("layer_norm_epsilon must be a finite number > 0, got {0}")]
    LayerNormEpsilon(f32),
    /// An unknown preset name.
    #[error("unknown model preset '{0}' (known: gpt2, gpt2-medium, gpt2-large, gpt2-xl)")]
    UnknownPreset(String),
    /// A Hugging Face config this implementation cannot represent.
    #[error("{path}: {key} = {value} is not supported by mlx-gpt's GPT-2 ({why})")]
    Unsupported {
        /// The config file.
        path: PathBuf,
        /// The key.
        key: String,
        /// Its value.
        value: String,
        /// What mlx-gpt supports instead.
        why: &'static str,
    },
    /// A required key is missing or has the wrong type.
    #[error("{path}: key '{key}' is missing or not {expected}")]
    Field {
        /// The config file.
        path: PathBuf,
        /// The key.
        key: &'static str,
        /// Expected JSON type.
        expected: &'static str,
    },
    /// The file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid JSON.
    #[error("{path}: not valid JSON: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
}

impl GptConfig {
    /// Check the invariants the model relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, v) in [
            ("block_size", self.block_size),
            ("vocab_size", self.vocab_size),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_embd", self.n_embd),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(ConfigError::HeadsDoNotDivide { n_embd: self.n_embd, n_head: self.n_head });
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ConfigError::Dropout(self.dropout));
        }
        if !(self.layer_norm_epsilon > 0.0 && self.layer_norm_epsilon.is_finite()) {
            return Err(ConfigError::LayerNormEpsilon(self.layer_norm_epsilon));
        }
        Ok(())
    }

    /// Size of one attention head (`hs` = C / nh).
    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }

    fn gpt2_family(n_layer: usize, n_head: usize, n_embd: usize) -> Self {
        GptConfig {
            block_size: 1024,
            vocab_size: 50257, // GPT-2's BPE vocabulary; nanoGPT pads to 50304 only for speed
            n_layer,
            n_head,
            n_embd,
            dropout: 0.0,
            bias: true, // OpenAI's checkpoints have biases everywhere
            activation: Activation::GeluNew,
            layer_norm_epsilon: 1e-5,
        }
    }

    /// GPT-2 (124M): 12 layers, 12 heads, 768 wide.
    pub fn gpt2() -> Self {
        Self::gpt2_family(12, 12, 768)
    }
    /// GPT-2 medium (350M): 24 layers, 16 heads, 1024 wide.
    pub fn gpt2_medium() -> Self {
        Self::gpt2_family(24, 16, 1024)
    }
    /// GPT-2 large (774M): 36 layers, 20 heads, 1280 wide.
    pub fn gpt2_large() -> Self {
        Self::gpt2_family(36, 20, 1280)
    }
    /// GPT-2 XL (1558M): 48 layers, 25 heads, 1600 wide.
    pub fn gpt2_xl() -> Self {
        Self::gpt2_family(48, 25, 1600)
    }

    /// A GPT-2 preset by its Hugging Face name (`gpt2`, `gpt2-medium`, ...).
    pub fn gpt2_preset(name: &str) -> Result<Self, ConfigError> {
        match name {
            "gpt2" => Ok(Self::gpt2()),
            "gpt2-medium" => Ok(Self::gpt2_medium()),
            "gpt2-large" => Ok(Self::gpt2_large()),
            "gpt2-xl" => Ok(Self::gpt2_xl()),
            other => Err(ConfigError::UnknownPreset(other.to_string())),
        }
    }

    /// nanoGPT's `config/train_shakespeare_char.py` model: 6 layers, 6 heads, 384 wide,
    /// block 256, dropout 0.2, no biases.
    pub fn shakespeare_char(vocab_size: usize) -> Self {
        GptConfig {
            block_size: 256,
            vocab_size,
            n_layer: 6,
            n_head: 6,
            n_embd: 384,
            dropout: 0.2,
            bias: false,
            activation: Activation::Gelu,
            layer_norm_epsilon: 1e-5,
        }
    }

    /// The "baby GPT" nanoGPT's README suggests for CPUs: 4 layers, 4 heads, 128 wide,
    /// block 64, no dropout.
    pub fn baby(vocab_size: usize) -> Self {
        GptConfig {
            block_size: 64,
            n_layer: 4,
            n_head: 4,
            n_embd: 128,
            dropout: 0.0,
            ..Self::shakespeare_char(vocab_size)
        }
    }

    /// Read a Hugging Face GPT-2 `config.json`.
    pub fn read_hf(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.into(), source })?;
        let value: Value =
            serde_json::from_str(&text).map_err(|source| ConfigError::Json { path: path.into(), source })?;
        Self::from_hf_json(&value, path)
    }

    /// Interpret a Hugging Face GPT-2 config (`path` only names it in errors).
    pub fn from_hf_json(v: &Value, path: &Path) -> Result<Self, ConfigError> {
        let uint = |key: &'static str| -> Result<usize, ConfigError> {
            v.get(key).and_then(Value::as_u64).map(|n| n as usize).ok_or(ConfigError::Field {
                path: path.into(),
                key,
                expected: "a non-negative integer",
            })
        };
        let unsupported = |key: &str, value: &Value, why: &'static str| ConfigError::Unsupported {
            path: path.into(),
            key: key.to_string(),
            value: value.to_string(),
            why,
        };
        if let Some(t) = v.get("model_type") {
            if t != "gpt2" {
                return Err(unsupported("model_type", t, "only GPT-2 checkpoints are supported"));
            }
        }
        // n_positions is the current name; very old configs only have n_ctx.
        let block_size = uint("n_positions").or_else(|_| uint("n_ctx"))?;
        let n_embd = uint("n_embd")?;
        if let Some(inner) = v.get("n_inner").filter(|x| !x.is_null()) {
            if inner.as_u64() != Some(4 * n_embd as u64) {
                return Err(unsupported("n_inner", inner, "the MLP is 4 × n_embd wide"));
            }
        }
        let activation = match v.get("activation_function").and_then(Value::as_str).unwrap_or("gelu_new") {
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluNew,
            "gelu" => Activation::Gelu,
            _ => return Err(unsupported("activation_function", &v["activation_function"], "use gelu or gelu_new")),
        };
        for (key, ok) in [
            ("scale_attn_weights", true),
            ("scale_attn_by_inverse_layer_idx", false),
            ("reorder_and_upcast_attn", false),
            ("tie_word_embeddings", true),
        ] {
            if let Some(x) = v.get(key) {
                if x.as_bool() != Some(ok) {
                    return Err(unsupported(key, x, "mlx-gpt implements GPT-2's defaults only"));
                }
            }
        }
        let eps = v.get("layer_norm_epsilon").and_then(Value::as_f64).unwrap_or(1e-5) as f32;
        // GPT-2 has three dropout rates; nanoGPT has one. They agree in every released config.
        let dropout = ["resid_pdrop", "embd_pdrop", "attn_pdrop"]
            .iter()
            .filter_map(|k| v.get(*k).and_then(Value::as_f64))
            .fold(0.0f64, f64::max) as f32;
        let config = GptConfig {
            block_size,
            vocab_size: uint("vocab_size")?,
            n_layer: uint("n_layer")?,
            n_head: uint("n_head")?,
            n_embd,
            dropout,
            // Hugging Face's GPT-2 always has biases; mlx-gpt writes this extra key for
            // models trained without them (saved with zero biases).
            bias: v.get("bias").and_then(Value::as_bool).unwrap_or(true),
            activation,
            layer_norm_epsilon: eps,
        };
        config.validate()?;
        Ok(config)
    }

    /// This configuration as a Hugging Face GPT-2 `config.json` value.
    pub fn to_hf_json(&self) -> Value {
        json!({
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_positions": self.block_size,
            "n_ctx": self.block_size,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_inner": null,
            "activation_function": match self.activation { Activation::Gelu => "gelu", Activation::GeluNew => "gelu_new" },
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "resid_pdrop": self.dropout,
            "embd_pdrop": self.dropout,
            "attn_pdrop": self.dropout,
            "initializer_range": 0.02,
            "scale_attn_weights": true,
            "tie_word_embeddings": true,
            // GPT-2's <|endoftext|>; only meaningful with GPT-2's vocabulary.
            "bos_token_id": (self.vocab_size > 50256).then_some(50256),
            "eos_token_id": (self.vocab_size > 50256).then_some(50256),
            "bias": self.bias,
        })
    }

    /// Write `config.json` (Hugging Face layout) atomically: a temporary file, then rename.
    pub fn write_hf(&self, path: &Path) -> Result<(), ConfigError> {
        let text = serde_json::to_string_pretty(&self.to_hf_json()).expect("JSON values serialize");
        mlx_gpt_runtime::fs::write_atomic(path, text.as_bytes())
            .map_err(|source| ConfigError::Io { path: path.into(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_norm_epsilon_must_be_positive() {
        for eps in [-1e-5f32, 0.0, f32::NAN, f32::INFINITY] {
            let c = GptConfig { layer_norm_epsilon: eps, ..GptConfig::baby(65) };
            assert!(matches!(c.validate(), Err(ConfigError::LayerNormEpsilon(_))), "{eps}");
        }
        GptConfig::baby(65).validate().unwrap();
    }
    use proptest::prelude::*;

    #[test]
    fn presets_are_gpt2_sizes() {
        let sizes: Vec<_> =
            [GptConfig::gpt2(), GptConfig::gpt2_medium(), GptConfig::gpt2_large(), GptConfig::gpt2_xl()]
                .iter()
                .map(|c| (c.n_layer, c.n_head, c.n_embd, c.vocab_size, c.block_size, c.bias))
                .collect();
        assert_eq!(
            sizes,
            [
                (12, 12, 768, 50257, 1024, true),
                (24, 16, 1024, 50257, 1024, true),
                (36, 20, 1280, 50257, 1024, true),
                (48, 25, 1600, 50257, 1024, true)
            ]
        );
        assert!(GptConfig::gpt2_preset("gpt3").is_err());
    }

    #[test]
    fn validation_names_the_problem() {
        let mut c = GptConfig::baby(65);
        c.n_head = 3;
        assert_eq!(c.validate().unwrap_err().to_string(), "n_embd (128) must be divisible by n_head (3)");
        c.n_head = 0;
        assert_eq!(c.validate().unwrap_err().to_string(), "n_head must be greater than 0");
        let mut c = GptConfig::baby(65);
        c.dropout = 1.0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn hf_config_rejects_what_it_cannot_represent() {
        let p = Path::new("config.json");
        let mut v = GptConfig::gpt2().to_hf_json();
        v["n_inner"] = json!(1000);
        assert!(GptConfig::from_hf_json(&v, p).unwrap_err().to_string().contains("n_inner = 1000"));
        let mut v = GptConfig::gpt2().to_hf_json();
        v["activation_function"] = json!("relu");
        assert!(GptConfig::from_hf_json(&v, p).unwrap_err().to_string().contains("activation_function"));
        let mut v = GptConfig::gpt2().to_hf_json();
        v.as_object_mut().unwrap().remove("n_embd");
        assert!(GptConfig::from_hf_json(&v, p).unwrap_err().to_string().contains("'n_embd'"));
        // n_ctx alone (old configs) is accepted.
        let mut v = GptConfig::gpt2().to_hf_json();
        v.as_object_mut().unwrap().remove("n_positions");
        assert_eq!(GptConfig::from_hf_json(&v, p).unwrap(), GptConfig::gpt2());
    }

    proptest! {
        #[test]
        fn hf_json_round_trips(n_layer in 1usize..8, n_head in 1usize..6, hs in 1usize..16, vocab in 1usize..60000,
                               block in 1usize..2048, bias: bool, tanh: bool, drop in 0.0f32..0.9) {
            let c = GptConfig { block_size: block, vocab_size: vocab, n_layer, n_head, n_embd: n_head * hs,
                dropout: drop, bias, activation: if tanh { Activation::GeluNew } else { Activation::Gelu },
                layer_norm_epsilon: 1e-5 };
            let back = GptConfig::from_hf_json(&c.to_hf_json(), Path::new("x")).unwrap();
            prop_assert_eq!(back, c);
        }
    }
}
