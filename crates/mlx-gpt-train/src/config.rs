//! `TrainConfig`: every knob of nanoGPT's `train.py`, with its defaults and names, read
//! from TOML presets (`config/*.toml`) and `--key value` overrides.

use mlx_gpt_model::config::Arch;
use mlx_gpt_ops::KernelChoice;
use mlx_gpt_runtime::DeviceKind;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// An enum written as one of a fixed set of names in configurations: `FromStr` whose
/// error names the key and lists the valid values, `Display` giving the name back.
macro_rules! choice {
    ($(#[$doc:meta])* $name:ident, $key:literal, { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub enum $name {
            #[default]
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, as written in configurations.
            pub const NAMES: &'static [&'static str] = &[$($text),+];
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(match self { $($name::$variant => $text),+ })
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!("{} must be one of {}, got '{other}'", $key, Self::NAMES.join(", "))),
                }
            }
        }
    };
}

choice!(
    /// `device`: where MLX computes.
    Device, "device", {
        /// The GPU when MLX has one, else the CPU.
        Auto = "auto",
        /// The CPU.
        Cpu = "cpu",
        /// The GPU (Metal on a Mac, CUDA with MLX's CUDA build).
        Gpu = "gpu",
    }
);

impl Device {
    /// The device asked for, `None` for the best available.
    pub fn requested(self) -> Option<DeviceKind> {
        match self {
            Device::Auto => None,
            Device::Cpu => Some(DeviceKind::Cpu),
            Device::Gpu => Some(DeviceKind::Gpu),
        }
    }
}

choice!(
    /// `dtype`: the parameters' and activations' type (the optimizer's moments stay
    /// float32).
    DtypeChoice, "dtype", {
        /// 32-bit floats.
        Float32 = "float32",
        /// bfloat16.
        Bfloat16 = "bfloat16",
        /// IEEE half precision.
        Float16 = "float16",
    }
);

impl DtypeChoice {
    /// MLX's dtype.
    pub fn to_mlx(self) -> mlx_rs::Dtype {
        match self {
            DtypeChoice::Float32 => mlx_rs::Dtype::Float32,
            DtypeChoice::Bfloat16 => mlx_rs::Dtype::Bfloat16,
            DtypeChoice::Float16 => mlx_rs::Dtype::Float16,
        }
    }
}

choice!(
    /// `backend`: how the processes of a distributed run talk.
    Backend, "backend", {
        /// `ring` when MLX_HOSTFILE is set, `mpi` under mpirun, else a single process.
        Auto = "auto",
        /// MLX's TCP ring over the hosts in MLX_HOSTFILE.
        Ring = "ring",
        /// MPI (under mpirun).
        Mpi = "mpi",
        /// A single process.
        None = "none",
    }
);

/// Where the initial weights come from (`init_from`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum InitFrom {
    /// nanoGPT's initialisation.
    #[default]
    Scratch,
    /// The latest checkpoint in `out_dir`.
    Resume,
    /// OpenAI's GPT-2 (`gpt2`, `gpt2-medium`, `gpt2-large`, `gpt2-xl`) from `models/<name>`.
    Gpt2(String),
    /// A Hugging Face GPT-2 directory.
    Dir(PathBuf),
}

impl std::str::FromStr for InitFrom {
    type Err = String;
    /// nanoGPT's `init_from` value; anything else is a directory.
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "scratch" => InitFrom::Scratch,
            "resume" => InitFrom::Resume,
            "" => return Err("init_from must not be empty".into()),
            name if mlx_gpt_data::pretrained::GPT2_MODELS.contains(&name) => InitFrom::Gpt2(name.to_string()),
            path => InitFrom::Dir(PathBuf::from(path)),
        })
    }
}

impl std::fmt::Display for InitFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InitFrom::Scratch => f.write_str("scratch"),
            InitFrom::Resume => f.write_str("resume"),
            InitFrom::Gpt2(name) => f.write_str(name),
            InitFrom::Dir(d) => write!(f, "{}", d.display()),
        }
    }
}

/// Serde through `FromStr` and `Display`: the typed values are written as their names.
mod as_str {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<T: std::fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }
    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// nanoGPT's training configuration. Defaults are `train.py`'s (GPT-2 124M on
/// OpenWebText), except `dtype` (float32: MLX's CPU backend has no fast half matmul).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    // I/O
    /// Run directory: checkpoints, metrics, plot, resolved config.
    pub out_dir: PathBuf,
    /// Evaluate (and maybe checkpoint) every this many iterations.
    pub eval_interval: usize,
    /// Log every this many iterations.
    pub log_interval: usize,
    /// Batches per split in each evaluation.
    pub eval_iters: usize,
    /// Evaluate once and exit.
    pub eval_only: bool,
    /// Checkpoint at every evaluation, not only when val loss improves.
    pub always_save_checkpoint: bool,
    /// `scratch`, `resume`, `gpt2`…`gpt2-xl`, or a Hugging Face GPT-2 directory.
    #[serde(with = "as_str")]
    pub init_from: InitFrom,
    /// Checkpoints kept in `out_dir/checkpoints` (oldest removed first).
    pub keep_last: usize,
    // data
    /// Dataset folder name under `data_dir`.
    pub dataset: String,
    /// Where datasets live.
    pub data_dir: PathBuf,
    /// Micro-batches per optimizer step.
    pub gradient_accumulation_steps: usize,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Sequence length.
    pub block_size: usize,
    // model
    /// Transformer blocks.
    pub n_layer: usize,
    /// Attention heads.
    pub n_head: usize,
    /// Width.
    pub n_embd: usize,
    /// Dropout (0 for pretraining, 0.1+ for finetuning).
    pub dropout: f32,
    /// Biases in Linear and LayerNorm layers.
    pub bias: bool,
    /// `gpt2` (nanoGPT's) or `modern` (rotary, RMSNorm, QK-norm, ReLU², untied
    /// soft-capped head, zero-initialised projections; docs/model.md). A modern model has
    /// no biases and uses ReLU²: `bias` is ignored for it.
    #[serde(with = "as_str")]
    pub arch: Arch,
    /// Key/value heads of a modern model (grouped-query attention); 0: `n_head`.
    pub n_kv_head: usize,
    /// Rotary base θ of a modern model.
    pub rope_base: f64,
    /// Logit soft-cap of a modern model (0: off).
    pub logit_softcap: f64,
    // AdamW
    /// Maximum learning rate.
    pub learning_rate: f64,
    /// Total optimizer steps.
    pub max_iters: usize,
    /// Decoupled weight decay, on ≥ 2-D parameters only.
    pub weight_decay: f64,
    /// Adam β1.
    pub beta1: f64,
    /// Adam β2.
    pub beta2: f64,
    /// Clip gradients to this global norm (0 disables).
    pub grad_clip: f64,
    /// `adamw` (nanoGPT's, for every parameter) or `muon` (Muon for the blocks' weight
    /// matrices at `muon_lr`, AdamW for the rest; mlx_gpt_train::muon).
    pub optimizer: String,
    /// Muon's peak learning rate (its schedule follows `learning_rate`'s shape).
    pub muon_lr: f64,
    /// Muon's momentum.
    pub muon_momentum: f64,
    /// Peak learning rate of the token embedding (`wte`, and GPT-2's `wpe`) under AdamW;
    /// 0: `learning_rate`. Follows `learning_rate`'s schedule shape.
    pub embedding_lr: f64,
    /// Peak learning rate of an untied head (`lm_head`, modern models) under AdamW; 0:
    /// `learning_rate`.
    pub head_lr: f64,
    // learning rate schedule
    /// Cosine decay after warmup (else constant).
    pub decay_lr: bool,
    /// Linear warmup steps.
    pub warmup_iters: usize,
    /// Steps to reach `min_lr` (≈ max_iters per Chinchilla).
    pub lr_decay_iters: usize,
    /// Final learning rate (≈ learning_rate / 10).
    pub min_lr: f64,
    // system
    /// `cpu`, `gpu`, or `auto` (the best available).
    #[serde(with = "as_str")]
    pub device: Device,
    /// `float32`, `bfloat16` or `float16`.
    #[serde(with = "as_str")]
    pub dtype: DtypeChoice,
    /// Which formulation of each operation runs: `auto` (mlx-gpt's CPU kernels on the CPU
    /// where built, MLX's primitives on a GPU), `cpu`, `mlx` (plain MLX ops) or `mlx-fast`
    /// (MLX's dedicated primitives); see mlx_gpt_ops::Kernels.
    #[serde(with = "as_str")]
    pub kernels: KernelChoice,
    /// Compile the training step with MLX.
    pub compile: bool,
    /// Distributed backend: `auto` (ring when MLX_HOSTFILE is set, MPI under mpirun, else a
    /// single process), `ring`, `mpi`, or `none`.
    #[serde(with = "as_str")]
    pub backend: Backend,
    /// Seconds without a finished step after which a distributed rank gives up (a peer
    /// died or cannot connect) instead of hanging.
    pub dist_timeout: f64,
    /// CPU streams the batch is split across, each driven by its own thread on its own
    /// core; 1 disables, 0 (the default) picks 2 on a CPU with 2–4 cores in a
    /// single-process run with an even batch.
    pub streams: usize,
    /// Each stream's threads on a physical core of their own (Linux; a single-process
    /// run), so that the scheduler cannot queue one part behind the other.
    pub pin_streams: bool,
    /// Seed of initialisation, batches and dropout.
    pub seed: u64,
    /// Peak FLOP/s of one machine for MFU; 0 uses the CPU's measured FMA ceiling on all
    /// its cores (mlx_gpt_train::peak).
    pub peak_flops: f64,
    /// GPT-2 BPE files for sampling BPE datasets (default: models/gpt2).
    pub tokenizer: Option<PathBuf>,
    /// Refuse to start when the memory estimate exceeds the memory available now, and stop
    /// with a message when the run is about to exhaust the machine's memory
    /// (mlx_gpt_train::memory). False: neither.
    pub memory_check: bool,
    /// At the end of training and in `eval`: the exact loss over every window of the val
    /// split, and its bits per byte (eval::exact_split_loss), beside the estimate.
    pub eval_full: bool,
    /// Zero-shot tasks scored at the end of training and in `eval`: `["hellaswag"]` (or
    /// `--eval_tasks hellaswag`); empty: none.
    #[serde(deserialize_with = "one_or_many")]
    pub eval_tasks: Vec<String>,
    /// Score only the first N examples of each task (0: all).
    pub eval_limit: usize,
}

/// A list, or a single string for a list of one (`--eval_tasks hellaswag`).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) if s.is_empty() => vec![],
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// The tasks `eval_tasks` may name.
pub const TASKS: [&str; 1] = ["hellaswag"];

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            out_dir: "out".into(),
            eval_interval: 2000,
            log_interval: 1,
            eval_iters: 200,
            eval_only: false,
            always_save_checkpoint: true,
            init_from: InitFrom::Scratch,
            keep_last: 2,
            dataset: "openwebtext".into(),
            data_dir: "datasets".into(),
            gradient_accumulation_steps: 5 * 8, // used to simulate larger batch sizes
            batch_size: 12,
            block_size: 1024,
            n_layer: 12,
            n_head: 12,
            n_embd: 768,
            dropout: 0.0,
            bias: false, // nanoGPT: no biases inside LayerNorm and Linear layers
            arch: Arch::Gpt2,
            n_kv_head: 0,
            rope_base: 10_000.0,
            logit_softcap: 15.0,
            learning_rate: 6e-4,
            max_iters: 600_000,
            weight_decay: 1e-1,
            beta1: 0.9,
            beta2: 0.95,
            optimizer: "adamw".into(),
            muon_lr: 0.02,
            muon_momentum: 0.95,
            embedding_lr: 0.0,
            head_lr: 0.0,
            grad_clip: 1.0,
            decay_lr: true,
            warmup_iters: 2000,
            lr_decay_iters: 600_000,
            min_lr: 6e-5,
            device: Device::Auto,
            dtype: DtypeChoice::Float32,
            kernels: KernelChoice::Auto,
            compile: true,
            backend: Backend::Auto,
            dist_timeout: 600.0,
            streams: 0,
            pin_streams: true,
            seed: 1337,
            peak_flops: 0.0,
            tokenizer: None,
            memory_check: true,
            eval_full: true,
            eval_tasks: vec![],
            eval_limit: 0,
        }
    }
}

/// A configuration problem, naming the key or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Unknown key, wrong type, bad syntax (TOML's message names the key).
    #[error("{origin}: {message}\nvalid keys: {}", valid_keys().join(", "))]
    Parse {
        /// The file or `command line`.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// Values that do not fit together.
    #[error("invalid configuration: {0}")]
    Inconsistent(String),
    /// No preset by that name.
    #[error("unknown config '{0}': not a file, and not a preset ({presets})", presets = PRESETS.iter().map(|p| p.0).collect::<Vec<_>>().join(", "))]
    UnknownPreset(String),
}

/// Every key a config accepts.
pub fn valid_keys() -> Vec<String> {
    match toml::Value::try_from(TrainConfig::default()) {
        Ok(toml::Value::Table(t)) => {
            let mut keys: Vec<String> = t.keys().cloned().collect();
            keys.push("tokenizer".into()); // optional, absent from the default table
            keys.sort();
            keys
        }
        _ => vec![],
    }
}

/// The presets shipped in `config/`, compiled in so they work from any directory.
pub const PRESETS: &[(&str, &str)] = &[
    ("train_shakespeare_char", include_str!("../../../config/train_shakespeare_char.toml")),
    ("baby_shakespeare_char", include_str!("../../../config/baby_shakespeare_char.toml")),
    ("modern_shakespeare_char", include_str!("../../../config/modern_shakespeare_char.toml")),
    ("baby_modern_shakespeare_char", include_str!("../../../config/baby_modern_shakespeare_char.toml")),
    ("train_gpt2", include_str!("../../../config/train_gpt2.toml")),
    ("finetune_shakespeare", include_str!("../../../config/finetune_shakespeare.toml")),
    ("eval_gpt2", include_str!("../../../config/eval_gpt2.toml")),
    ("eval_gpt2_medium", include_str!("../../../config/eval_gpt2_medium.toml")),
    ("eval_gpt2_large", include_str!("../../../config/eval_gpt2_large.toml")),
    ("eval_gpt2_xl", include_str!("../../../config/eval_gpt2_xl.toml")),
];

/// Parse a `--key value` value as TOML when it is a TOML literal (number, bool, quoted
/// string, array), else as a bare string.
fn override_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").expect("parsed key"),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

impl TrainConfig {
    /// Build a configuration: defaults, then the preset or file `base` (if any), then the
    /// `(key, value)` overrides, then validation.
    pub fn resolve(base: Option<&str>, overrides: &[(String, String)]) -> Result<TrainConfig, ConfigError> {
        let mut table = toml::Table::new();
        let mut origin = "defaults".to_string();
        if let Some(base) = base {
            let (text, from) = if Path::new(base).is_file() {
                let text =
                    std::fs::read_to_string(base).map_err(|source| ConfigError::Io { path: base.into(), source })?;
                (text, base.to_string())
            } else if let Some((_, text)) = PRESETS.iter().find(|(n, _)| *n == base) {
                (text.to_string(), format!("preset {base}"))
            } else {
                return Err(ConfigError::UnknownPreset(base.to_string()));
            };
            table = text
                .parse::<toml::Table>()
                .map_err(|e| ConfigError::Parse { origin: from.clone(), message: e.to_string() })?;
            // Check the file on its own first, so errors name it.
            Self::from_table(table.clone(), &from)?;
            origin = from;
        }
        for (key, value) in overrides {
            let key = key.trim_start_matches("--").replace('-', "_");
            table.insert(key, override_value(value));
        }
        if !overrides.is_empty() {
            origin = format!("{origin} + command line");
        }
        let config = Self::from_table(table, &origin)?;
        config.validate()?;
        Ok(config)
    }

    fn from_table(table: toml::Table, origin: &str) -> Result<TrainConfig, ConfigError> {
        toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| ConfigError::Parse {
            origin: origin.to_string(),
            message: e.message().to_string(),
        })
    }

    /// Check values that must fit together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Inconsistent(m));
        if self.n_head == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            return bad(format!("n_embd ({}) must be divisible by n_head ({})", self.n_embd, self.n_head));
        }
        if let Some(t) = self.eval_tasks.iter().find(|t| !TASKS.contains(&t.as_str())) {
            return bad(format!("eval_tasks: unknown task '{t}' (known: {})", TASKS.join(", ")));
        }
        for (k, v) in [
            ("batch_size", self.batch_size),
            ("block_size", self.block_size),
            ("gradient_accumulation_steps", self.gradient_accumulation_steps),
            ("n_layer", self.n_layer),
            ("n_embd", self.n_embd),
            ("eval_interval", self.eval_interval),
            ("log_interval", self.log_interval),
            ("eval_iters", self.eval_iters),
        ] {
            if v == 0 {
                return bad(format!("{k} must be at least 1"));
            }
        }
        // Numbers a run cannot train with: NaN or inf would train to NaN, a negative decay
        // or clip would turn the update around. Each with the range it must be in.
        for (k, v, ok, range) in [
            ("learning_rate", self.learning_rate, self.learning_rate >= 0.0, "≥ 0"),
            ("min_lr", self.min_lr, self.min_lr >= 0.0, "≥ 0"),
            ("weight_decay", self.weight_decay, self.weight_decay >= 0.0, "≥ 0"),
            ("beta1", self.beta1, (0.0..1.0).contains(&self.beta1), "in [0, 1)"),
            ("beta2", self.beta2, (0.0..1.0).contains(&self.beta2), "in [0, 1)"),
            ("grad_clip", self.grad_clip, self.grad_clip >= 0.0, "≥ 0 (0 turns clipping off)"),
            ("muon_lr", self.muon_lr, self.muon_lr >= 0.0, "≥ 0"),
            ("muon_momentum", self.muon_momentum, (0.0..1.0).contains(&self.muon_momentum), "in [0, 1)"),
            ("embedding_lr", self.embedding_lr, self.embedding_lr >= 0.0, "≥ 0 (0: learning_rate)"),
            ("head_lr", self.head_lr, self.head_lr >= 0.0, "≥ 0 (0: learning_rate)"),
            ("dist_timeout", self.dist_timeout, self.dist_timeout > 0.0, "> 0 seconds"),
            ("peak_flops", self.peak_flops, self.peak_flops >= 0.0, "≥ 0 (0 measures it)"),
        ] {
            if !v.is_finite() || !ok {
                return bad(format!("{k} must be a finite number {range}, got {v}"));
            }
        }
        self.model_config(1).validate().map_err(|e| ConfigError::Inconsistent(e.to_string()))?;
        if !["adamw", "muon"].contains(&self.optimizer.as_str()) {
            return bad(format!("optimizer must be adamw or muon, got {:?}", self.optimizer));
        }
        mlx_gpt_data::datasets::check_name(&self.dataset).map_err(|e| ConfigError::Inconsistent(e.to_string()))?;
        if self.out_dir.as_os_str().is_empty() {
            return bad("out_dir must not be empty (it is the run's folder: checkpoints, metrics, config)".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if self.decay_lr && self.min_lr > self.learning_rate {
            return bad(format!("min_lr ({}) must not exceed learning_rate ({})", self.min_lr, self.learning_rate));
        }
        if self.decay_lr && self.lr_decay_iters <= self.warmup_iters {
            return bad(format!(
                "lr_decay_iters ({}) must exceed warmup_iters ({})",
                self.lr_decay_iters, self.warmup_iters
            ));
        }
        if let InitFrom::Dir(d) = &self.init_from {
            if !d.join("config.json").is_file() {
                return bad(format!(
                    "init_from '{}' is not scratch, resume, gpt2…gpt2-xl, or a Hugging Face GPT-2 directory (no config.json there)",
                    d.display()
                ));
            }
        }
        Ok(())
    }

    /// The model this configuration describes, for a vocabulary of `vocab_size`.
    /// (A GPT-2 with `n_kv_head` other than `n_head` fails the model's validation.)
    pub fn model_config(&self, vocab_size: usize) -> mlx_gpt_model::GptConfig {
        let gpt2 = mlx_gpt_model::GptConfig {
            block_size: self.block_size,
            vocab_size,
            n_layer: self.n_layer,
            n_head: self.n_head,
            n_embd: self.n_embd,
            dropout: self.dropout,
            bias: self.bias,
            ..mlx_gpt_model::GptConfig::baby(vocab_size)
        };
        let n_kv_head = (self.n_kv_head != 0).then_some(self.n_kv_head);
        let config = match self.arch {
            Arch::Modern => mlx_gpt_model::GptConfig {
                rope_base: self.rope_base as f32,
                logit_softcap: self.logit_softcap as f32,
                ..gpt2.modern()
            },
            Arch::Gpt2 => gpt2,
        };
        mlx_gpt_model::GptConfig { n_kv_head, ..config }.normalized()
    }

    /// Tokens per optimizer step.
    pub fn tokens_per_iter(&self) -> usize {
        self.gradient_accumulation_steps * self.batch_size * self.block_size
    }

    /// The resolved configuration as TOML, for the log and the run directory.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// The modern presets have their GPT-2 twin's shape, batch and dropout, and about its
    /// parameter count (no position table, an untied head); a wrong arch is named.
    #[test]
    fn modern_presets_are_twins_of_the_gpt2_ones() {
        use mlx_gpt_model::Gpt;
        for (gpt2, modern) in [
            ("baby_shakespeare_char", "baby_modern_shakespeare_char"),
            ("train_shakespeare_char", "modern_shakespeare_char"),
        ] {
            let (a, b) =
                (TrainConfig::resolve(Some(gpt2), &[]).unwrap(), TrainConfig::resolve(Some(modern), &[]).unwrap());
            assert_eq!((a.arch, b.arch), (Arch::Gpt2, Arch::Modern));
            let shape = |c: &TrainConfig| (c.n_layer, c.n_head, c.n_embd, c.block_size, c.batch_size, c.dropout);
            assert_eq!(shape(&a), shape(&b), "{modern}");
            let params = |c: &TrainConfig| Gpt::zeros(c.model_config(65)).unwrap().num_params(false) as f64;
            let ratio = params(&b) / params(&a);
            assert!((0.98..1.02).contains(&ratio), "{modern}: {ratio}");
        }
        // n_kv_head equal to n_head is ordinary attention: one spelling, as config.json reads back.
        let c = TrainConfig::resolve(None, &kv(&[("arch", "modern"), ("n_kv_head", "12")])).unwrap();
        assert_eq!(c.model_config(65).n_kv_head, None);
        let e = TrainConfig::resolve(None, &kv(&[("arch", "llama")])).unwrap_err().to_string();
        assert!(e.contains("arch must be gpt2 or modern"), "{e}");
        let e = TrainConfig::resolve(None, &kv(&[("n_kv_head", "4")])).unwrap_err().to_string();
        assert!(e.contains("needs arch = \"modern\""), "{e}");
        let e = TrainConfig::resolve(None, &kv(&[("arch", "modern"), ("n_kv_head", "5")])).unwrap_err().to_string();
        assert!(e.contains("n_kv_head (5) must divide n_head (12)"), "{e}");
    }

    #[test]
    fn presets_load_and_flags_override() {
        for (name, _) in PRESETS {
            TrainConfig::resolve(Some(name), &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let c = TrainConfig::resolve(
            Some("baby_shakespeare_char"),
            &kv(&[("--max_iters", "10"), ("dropout", "0.1"), ("--out-dir", "x")]),
        )
        .unwrap();
        assert_eq!((c.n_layer, c.block_size, c.max_iters, c.dropout), (4, 64, 10, 0.1));
        assert_eq!(c.out_dir, PathBuf::from("x"));
        assert_eq!(c.beta2, 0.99);
        let d = TrainConfig::resolve(None, &[]).unwrap();
        assert_eq!(d, TrainConfig::default());
        // The resolved config round-trips through its TOML.
        let back: TrainConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn numbers_that_cannot_train_are_refused() {
        for (k, v) in [
            ("learning_rate", "nan"),
            ("learning_rate", "inf"),
            ("learning_rate", "-1"),
            ("min_lr", "nan"),
            ("beta1", "2"),
            ("beta2", "nan"),
            ("weight_decay", "-10"),
            ("grad_clip", "-1"),
            ("grad_clip", "nan"),
            ("dist_timeout", "-1"),
            ("dist_timeout", "nan"),
            ("peak_flops", "-1"),
            ("eval_iters", "0"),
        ] {
            let e = TrainConfig::resolve(None, &kv(&[(k, v)])).unwrap_err().to_string();
            assert!(e.contains(k), "{k}={v}: {e}");
        }
        let e = TrainConfig::resolve(None, &kv(&[("dataset", "../x")])).unwrap_err().to_string();
        assert!(e.contains("'../x' is not a plain name"), "{e}");
        let e = TrainConfig::resolve(None, &kv(&[("out_dir", "")])).unwrap_err().to_string();
        assert!(e.contains("out_dir must not be empty"), "{e}");
        // The edges that are allowed.
        TrainConfig::resolve(None, &kv(&[("grad_clip", "0"), ("beta1", "0"), ("weight_decay", "0")])).unwrap();
    }

    #[test]
    fn errors_name_the_key() {
        let e = TrainConfig::resolve(None, &kv(&[("learning_rat", "1")])).unwrap_err().to_string();
        assert!(e.contains("learning_rat") && e.contains("valid keys") && e.contains("learning_rate"), "{e}");
        let e = TrainConfig::resolve(None, &kv(&[("max_iters", "many")])).unwrap_err().to_string();
        assert!(e.contains("max_iters"), "{e}");
        let e = TrainConfig::resolve(None, &kv(&[("n_head", "5")])).unwrap_err().to_string();
        assert!(e.contains("n_embd (768) must be divisible by n_head (5)"), "{e}");
        let e = TrainConfig::resolve(Some("no_such_preset"), &[]).unwrap_err().to_string();
        assert!(e.contains("no_such_preset") && e.contains("baby_shakespeare_char"), "{e}");
        let e = TrainConfig::resolve(None, &kv(&[("init_from", "/nonexistent/model")])).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/model"), "{e}");
        // The typed values: an unknown one is named with the valid ones.
        for (key, value, valid) in [
            ("device", "tpu", "auto, cpu, gpu"),
            ("dtype", "float8", "float32, bfloat16, float16"),
            ("backend", "nccl", "auto, ring, mpi, none"),
            ("kernels", "fast", "auto, cpu, mlx, mlx-fast"),
        ] {
            let e = TrainConfig::resolve(None, &kv(&[(key, value)])).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(&format!("'{value}'")) && e.contains(valid), "{key}: {e}");
        }
        let c =
            TrainConfig::resolve(None, &kv(&[("device", "cpu"), ("dtype", "bfloat16"), ("kernels", "mlx")])).unwrap();
        assert_eq!((c.device, c.dtype, c.kernels), (Device::Cpu, DtypeChoice::Bfloat16, KernelChoice::Mlx));
        assert_eq!("gpt2-xl".parse::<InitFrom>(), Ok(InitFrom::Gpt2("gpt2-xl".into())));
    }
}
