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
    /// `relu(x)²`, the modern GPT's (Primer; modded-nanogpt and nanochat use it).
    ReluSquared,
}

impl Activation {
    /// The name Hugging Face's `activation_function` uses.
    pub fn hf_name(self) -> &'static str {
        match self {
            Activation::Gelu => "gelu",
            Activation::GeluNew => "gelu_new",
            Activation::ReluSquared => "relu2",
        }
    }
}

/// `model_type` in the config.json of a modern GPT.
pub const MODERN_MODEL_TYPE: &str = "mlx_gpt_modern";

/// Which GPT: OpenAI's GPT-2 as nanoGPT writes it, or the modern one of nanochat and
/// modded-nanogpt (docs/model.md compares them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// Learned position embedding, LayerNorm with gain and bias, tied head.
    #[default]
    Gpt2,
    /// Rotary positions, parameter-free RMSNorm (also right after the token embedding),
    /// QK-norm, an untied head with logit soft-capping, zero-initialised output
    /// projections, optional grouped-query attention.
    Modern,
}

impl Arch {
    /// The configuration name: `gpt2` or `modern`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Gpt2 => "gpt2",
            Arch::Modern => "modern",
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gpt2" => Ok(Arch::Gpt2),
            "modern" => Ok(Arch::Modern),
            other => Err(format!("arch must be gpt2 or modern, got {other:?}")),
        }
    }
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
    /// LayerNorm's ε (1e-5 in nanoGPT and GPT-2); the modern GPT's RMSNorm ε.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f32,
    /// Which GPT.
    #[serde(default)]
    pub arch: Arch,
    /// Key/value heads (modern only): `n_head` for ordinary attention, a divisor of it for
    /// grouped-query attention (each key/value head serves `n_head / n_kv_head` query
    /// heads). `None`: `n_head`.
    #[serde(default)]
    pub n_kv_head: Option<usize>,
    /// Rotary embedding base θ (modern only): position t turns feature pair i by
    /// t·θ^(−2i/hs).
    #[serde(default = "default_rope_base")]
    pub rope_base: f32,
    /// Logit soft-cap (modern only): logits become `cap·tanh(logits/cap)`; 0 turns it off.
    #[serde(default = "default_softcap")]
    pub logit_softcap: f32,
}

fn default_eps() -> f32 {
    1e-5
}
fn default_rope_base() -> f32 {
    10_000.0
}
fn default_softcap() -> f32 {
    15.0
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
    /// A setting the chosen architecture does not have, or out of range.
    #[error("{0}")]
    Arch(String),
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
        let bad = |m: String| Err(ConfigError::Arch(m));
        match self.arch {
            Arch::Gpt2 => {
                if self.n_kv_head.is_some_and(|n| n != self.n_head) {
                    return bad("n_kv_head (grouped-query attention) needs arch = \"modern\"".into());
                }
            }
            Arch::Modern => {
                let kv = self.kv_heads();
                if kv == 0 || !self.n_head.is_multiple_of(kv) {
                    return bad(format!("n_kv_head ({kv}) must divide n_head ({})", self.n_head));
                }
                if !self.head_size().is_multiple_of(2) {
                    return bad(format!(
                        "the rotary embedding turns feature pairs: the head size n_embd / n_head ({}) must be even",
                        self.head_size()
                    ));
                }
                if !(self.rope_base > 1.0 && self.rope_base.is_finite()) {
                    return bad(format!("rope_base must be a finite number > 1, got {}", self.rope_base));
                }
                if !(self.logit_softcap >= 0.0 && self.logit_softcap.is_finite()) {
                    return bad(format!("logit_softcap must be ≥ 0 (0: off), got {}", self.logit_softcap));
                }
            }
        }
        Ok(())
    }

    /// Key/value heads: `n_kv_head`, or `n_head` when not set.
    pub fn kv_heads(&self) -> usize {
        self.n_kv_head.unwrap_or(self.n_head)
    }

    /// The same model with `n_kv_head` unset where it equals `n_head` (ordinary attention),
    /// as `config.json` reads back: one spelling per model, so configurations compare.
    pub fn normalized(self) -> Self {
        let n_kv_head = self.n_kv_head.filter(|&kv| kv != self.n_head);
        GptConfig { n_kv_head, ..self }
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
            arch: Arch::Gpt2,
            n_kv_head: None,
            rope_base: default_rope_base(),
            logit_softcap: default_softcap(),
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
            arch: Arch::Gpt2,
            n_kv_head: None,
            rope_base: default_rope_base(),
            logit_softcap: default_softcap(),
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

    /// The modern GPT of the same shape as `self`: rotary positions, parameter-free
    /// RMSNorm, QK-norm, ReLU², no biases, an untied head soft-capped at 15.
    pub fn modern(self) -> Self {
        GptConfig {
            arch: Arch::Modern,
            bias: false,
            activation: Activation::ReluSquared,
            n_kv_head: None,
            rope_base: default_rope_base(),
            logit_softcap: default_softcap(),
            ..self
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
        let arch = match v.get("model_type").and_then(Value::as_str) {
            None | Some("gpt2") => Arch::Gpt2,
            Some(MODERN_MODEL_TYPE) => Arch::Modern,
            Some(_) => {
                return Err(unsupported(
                    "model_type",
                    &v["model_type"],
                    "supported: gpt2 (Hugging Face GPT-2) and mlx_gpt_modern (mlx-gpt's modern GPT)",
                ))
            }
        };
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
            "relu2" => Activation::ReluSquared,
            _ => {
                return Err(unsupported(
                    "activation_function",
                    &v["activation_function"],
                    "use gelu, gelu_new or relu2",
                ))
            }
        };
        for (key, ok) in [
            ("scale_attn_weights", true),
            ("scale_attn_by_inverse_layer_idx", false),
            ("reorder_and_upcast_attn", false),
            ("tie_word_embeddings", arch == Arch::Gpt2),
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
            // models trained without them (saved with zero biases). The modern GPT has none.
            bias: v.get("bias").and_then(Value::as_bool).unwrap_or(arch == Arch::Gpt2),
            activation,
            layer_norm_epsilon: eps,
            arch,
            n_kv_head: None,
            rope_base: default_rope_base(),
            logit_softcap: default_softcap(),
        };
        let config = match arch {
            Arch::Gpt2 => config,
            Arch::Modern => {
                let float = |key: &'static str| -> Result<f32, ConfigError> {
                    v.get(key).and_then(Value::as_f64).map(|x| x as f32).ok_or(ConfigError::Field {
                        path: path.into(),
                        key,
                        expected: "a number",
                    })
                };
                GptConfig {
                    // `None` stands for n_head, as in configurations written by hand.
                    n_kv_head: Some(uint("n_kv_head")?).filter(|&kv| kv != config.n_head),
                    rope_base: float("rope_theta")?,
                    logit_softcap: float("logit_softcap")?,
                    ..config
                }
            }
        };
        config.validate()?;
        Ok(config)
    }

    /// This configuration as a `config.json` value: Hugging Face GPT-2's layout, with
    /// `model_type` `mlx_gpt_modern` and the modern GPT's keys for that architecture.
    pub fn to_hf_json(&self) -> Value {
        if self.arch == Arch::Modern {
            return json!({
                "architectures": ["MlxGptModern"],
                "model_type": MODERN_MODEL_TYPE,
                "vocab_size": self.vocab_size,
                "n_positions": self.block_size,
                "n_embd": self.n_embd,
                "n_layer": self.n_layer,
                "n_head": self.n_head,
                "n_kv_head": self.kv_heads(),
                "rope_theta": self.rope_base,
                "logit_softcap": self.logit_softcap,
                "activation_function": self.activation.hf_name(),
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "resid_pdrop": self.dropout,
                "embd_pdrop": self.dropout,
                "attn_pdrop": self.dropout,
                "tie_word_embeddings": false,
                "bias": self.bias,
            });
        }
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
            "activation_function": self.activation.hf_name(),
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
    fn each_architecture_refuses_what_it_cannot_build() {
        let gqa = GptConfig { n_kv_head: Some(2), ..GptConfig::baby(65) };
        assert!(gqa.validate().unwrap_err().to_string().contains("needs arch = \"modern\""));
        let m = GptConfig { n_kv_head: Some(3), ..GptConfig::baby(65).modern() };
        assert_eq!(m.validate().unwrap_err().to_string(), "n_kv_head (3) must divide n_head (4)");
        let m = GptConfig { n_embd: 4 * 3, ..GptConfig::baby(65).modern() };
        assert!(m.validate().unwrap_err().to_string().contains("head size n_embd / n_head (3) must be even"));
        let m = GptConfig { logit_softcap: -1.0, ..GptConfig::baby(65).modern() };
        assert!(m.validate().unwrap_err().to_string().contains("logit_softcap"));
        let mut v = GptConfig::baby(65).modern().to_hf_json();
        v.as_object_mut().unwrap().remove("rope_theta");
        assert!(GptConfig::from_hf_json(&v, Path::new("c.json")).unwrap_err().to_string().contains("'rope_theta'"));
        let mut v = GptConfig::baby(65).to_hf_json();
        v["model_type"] = json!("llama");
        assert!(GptConfig::from_hf_json(&v, Path::new("c.json")).unwrap_err().to_string().contains("mlx_gpt_modern"));
    }

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
                ..GptConfig::baby(vocab) };
            let back = GptConfig::from_hf_json(&c.to_hf_json(), Path::new("x")).unwrap();
            prop_assert_eq!(back, c);
        }

        #[test]
        fn modern_config_json_round_trips(n_layer in 1usize..8, kv in 1usize..4, groups in 1usize..4,
                                          half_hs in 1usize..8, vocab in 1usize..60000, block in 1usize..2048,
                                          base in 2.0f32..1e6, cap in 0.0f32..50.0, relu2: bool, set_kv: bool) {
            let n_head = kv * groups;
            let c = GptConfig { block_size: block, vocab_size: vocab, n_layer, n_head, n_embd: n_head * 2 * half_hs,
                ..GptConfig::baby(vocab) }.modern();
            // n_kv_head given even where it equals n_head (groups = 1), or left unset.
            let c = GptConfig { n_kv_head: set_kv.then_some(kv), rope_base: base, logit_softcap: cap,
                activation: if relu2 { Activation::ReluSquared } else { Activation::Gelu }, ..c };
            let mut json = c.to_hf_json();
            prop_assert_eq!(&json["model_type"], MODERN_MODEL_TYPE);
            let back = GptConfig::from_hf_json(&json, Path::new("x")).unwrap();
            prop_assert_eq!(&back, &c.clone().normalized());
            // Written by hand without "bias": the modern GPT has none.
            json.as_object_mut().unwrap().remove("bias");
            prop_assert!(!GptConfig::from_hf_json(&json, Path::new("x")).unwrap().bias);
        }
    }
}
