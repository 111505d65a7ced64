//! Weights in Hugging Face GPT-2 layout: `model.safetensors` + `config.json`.
//!
//! Every checkpoint quirk lives in this file:
//! - names: HF keys are ours with an optional `transformer.` prefix (`GPT2LMHeadModel`
//!   saves it, OpenAI's original conversion does not); we write it;
//! - Conv1D: GPT-2 stores `c_attn`, `attn.c_proj`, `c_fc` and `mlp.c_proj` weights as
//!   (in, out), the transpose of `nn.Linear`. nanoGPT transposes these four on load; our
//!   [`crate::linear::Linear`] keeps (in, out), so they load as they are;
//! - buffers: old checkpoints carry `h.N.attn.bias` (the causal mask) and
//!   `h.N.attn.masked_bias`; they are not weights and are skipped;
//! - the head: `lm_head.weight` is tied to `wte.weight`; if present it is checked for
//!   shape and not loaded separately, and it is not written. The modern GPT's head is its
//!   own: `lm_head.weight` (V, C), loaded and written as a parameter, without the prefix
//!   (as Hugging Face writes untied heads);
//! - bias-free models (nanoGPT's `bias=False`): HF GPT-2 has no such variant, so they are
//!   written with zero biases (the same function) and `"bias": false` in config.json; on
//!   load those biases must be zero.
//!
//! Loading is strict: missing, unexpected and wrongly shaped tensors are all listed in one
//! error. The file is memory-mapped, so loading holds one copy of the weights (MLX's);
//! the model skeleton's zero arrays are lazy and never materialised.

use crate::config::{ConfigError, GptConfig};
use crate::gpt::Gpt;
use crate::ModelError;
use mlx_rs::module::ModuleParameters;
use mlx_rs::{Array, Dtype};
use safetensors::tensor::{Dtype as StDtype, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// File names inside a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// See [`WEIGHTS_FILE`].
pub const CONFIG_FILE: &str = "config.json";
const PREFIX: &str = "transformer.";

/// Why a checkpoint could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// config.json is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Not a readable safetensors file (truncated, corrupt header, bad offsets).
    #[error("{path}: not a valid safetensors file ({reason}); re-download or re-save it")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser reported.
        reason: String,
    },
    /// The tensors do not match the model.
    #[error("{path}: weights do not match the model{}{}{}", list("missing", .missing), list("unexpected", .unexpected), list("wrong shape", .wrong_shape))]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// Tensors the model needs that the file lacks.
        missing: Vec<String>,
        /// Tensors in the file the model has no place for.
        unexpected: Vec<String>,
        /// `name: file shape vs model shape`.
        wrong_shape: Vec<String>,
    },
    /// A bias-free model's checkpoint has a non-zero bias.
    #[error("{path}: config.json says bias=false but {name} is not zero")]
    NonZeroBias {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
    },
    /// A tensor type the model cannot hold.
    #[error("{path}: tensor {name} has dtype {dtype:?}; expected F32, BF16 or F16")]
    Dtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Its dtype.
        dtype: StDtype,
    },
    /// Building the model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The model cannot be written in the layout asked for (crate::mlx_lm).
    #[error("cannot export as {layout}: {why}")]
    NotExportable {
        /// The layout.
        layout: &'static str,
        /// What differs.
        why: String,
    },
}

fn list(what: &str, names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!("; {what} ({}): {}", names.len(), names.join(", "))
    }
}

impl From<mlx_rs::error::Exception> for LoadError {
    fn from(e: mlx_rs::error::Exception) -> Self {
        LoadError::Model(ModelError::Mlx(e))
    }
}

/// What a key of a GPT-2 checkpoint means for us.
enum Key<'a> {
    /// One of our parameters, by our name.
    Param(&'a str),
    /// The tied head.
    LmHead,
    /// A non-weight buffer.
    Buffer,
}

fn classify(key: &str, tied: bool) -> Key<'_> {
    if key == "lm_head.weight" {
        return if tied { Key::LmHead } else { Key::Param(key) };
    }
    let name = key.strip_prefix(PREFIX).unwrap_or(key);
    if name.starts_with("h.") && (name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias")) {
        // `h.N.attn.bias` is the mask buffer; our attention biases are `attn.c_attn.bias` etc.
        return Key::Buffer;
    }
    Key::Param(name)
}

fn to_mlx_dtype(d: StDtype) -> Option<Dtype> {
    match d {
        StDtype::F32 => Some(Dtype::Float32),
        StDtype::BF16 => Some(Dtype::Bfloat16),
        StDtype::F16 => Some(Dtype::Float16),
        _ => None,
    }
}

fn to_st_dtype(d: Dtype) -> StDtype {
    match d {
        Dtype::Bfloat16 => StDtype::BF16,
        Dtype::Float16 => StDtype::F16,
        _ => StDtype::F32,
    }
}

/// Load a Hugging Face GPT-2 directory (`config.json` + `model.safetensors`): gpt2 …
/// gpt2-xl, or one saved by [`save_pretrained`]. Parameters keep the file's dtype.
pub fn load_pretrained(dir: &Path) -> Result<Gpt, LoadError> {
    let config = GptConfig::read_hf(&dir.join(CONFIG_FILE))?;
    let mut model = Gpt::zeros(config)?;
    load_weights(&mut model, &dir.join(WEIGHTS_FILE))?;
    Ok(model)
}

/// Replace every parameter of `model` with the tensors of a safetensors file, strictly.
pub fn load_weights(model: &mut Gpt, path: &Path) -> Result<(), LoadError> {
    let io = |source| LoadError::Io { path: path.into(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the map is read-only and dropped before this function returns; a file
    // truncated underneath us could fault, as with any mmap reader.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    let st = safetensors::SafeTensors::deserialize(&map)
        .map_err(|e| LoadError::Corrupt { path: path.into(), reason: e.to_string() })?;

    let bias_free = !model.config.bias;
    let tied = model.tied_head();
    let mut params = model.parameters_mut().flatten();
    let expected: BTreeMap<String, Vec<i32>> =
        params.iter().map(|(k, v)| (k.to_string(), v.shape().to_vec())).collect();
    let (mut missing, mut unexpected, mut wrong_shape) = (Vec::new(), Vec::new(), Vec::new());
    let mut seen = HashMap::new();
    let wte_shape = expected.get("wte.weight").cloned().unwrap_or_default();

    let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    names.sort();
    for key in &names {
        let view = st.tensor(key).map_err(|e| LoadError::Corrupt { path: path.into(), reason: e.to_string() })?;
        let shape: Vec<i32> = view.shape().iter().map(|&d| d as i32).collect();
        let name = match classify(key, tied) {
            Key::Buffer => continue,
            Key::LmHead => {
                if shape != wte_shape {
                    wrong_shape.push(format!("{key}: {shape:?} vs tied wte {wte_shape:?}"));
                }
                continue;
            }
            Key::Param(name) => name,
        };
        let dtype = to_mlx_dtype(view.dtype()).ok_or_else(|| LoadError::Dtype {
            path: path.into(),
            name: key.clone(),
            dtype: view.dtype(),
        })?;
        // SAFETY: the view's bytes hold product(shape) elements of `dtype` (checked by the
        // safetensors parser); MLX copies them.
        let make = || unsafe { Array::from_raw_data(view.data().as_ptr().cast(), &shape, dtype) };
        match expected.get(name) {
            Some(want) => {
                if seen.insert(name.to_string(), key.clone()).is_some() {
                    unexpected.push(format!("{key} (duplicate of {name})"));
                } else if *want != shape {
                    wrong_shape.push(format!("{key}: {shape:?} vs model {want:?}"));
                } else {
                    // Parameters take the file's dtype; `Gpt::set_dtype` converts afterwards.
                    **params.get_mut(name).expect("expected comes from params") = make();
                }
            }
            None if bias_free && name.ends_with(".bias") => {
                let a = make();
                if a.abs()?.max(None)?.item_cast::<f32>() != 0.0 {
                    return Err(LoadError::NonZeroBias { path: path.into(), name: key.clone() });
                }
            }
            None => unexpected.push(key.clone()),
        }
    }
    for name in expected.keys() {
        if !seen.contains_key(name) {
            missing.push(name.clone());
        }
    }
    if !(missing.is_empty() && unexpected.is_empty() && wrong_shape.is_empty()) {
        return Err(LoadError::Mismatch { path: path.into(), missing, unexpected, wrong_shape });
    }
    drop(params);
    mlx_rs::transforms::eval_params(model.parameters())?;
    Ok(())
}

/// The tensors written for `model`, by Hugging Face name, in the model's dtype.
fn hf_tensors(model: &Gpt) -> Result<BTreeMap<String, Array>, LoadError> {
    let mut out = BTreeMap::new();
    let params = model.parameters().flatten();
    for (name, a) in &params {
        let key = if &**name == "lm_head.weight" { name.to_string() } else { format!("{PREFIX}{name}") };
        // Row-major, as the file stores it (decoding lays matrices out transposed).
        out.insert(key, mlx_gpt_ops::row_major(a)?);
    }
    // Only GPT-2's layout needs them: Hugging Face's GPT-2 always has biases.
    if !model.config.bias && model.tied_head() {
        // Zero biases for every layer that has a weight but no bias (not the embeddings).
        for (name, w) in &params {
            if let Some(layer) = name.strip_suffix(".weight") {
                if layer != "wte" && layer != "wpe" && !params.contains_key(format!("{layer}.bias").as_str()) {
                    let n = *w.shape().last().expect("weights have a last axis");
                    out.insert(format!("{PREFIX}{layer}.bias"), mlx_rs::ops::zeros_dtype(&[n], w.dtype())?);
                }
            }
        }
    }
    let arrays: Vec<&Array> = out.values().collect();
    mlx_rs::transforms::eval(arrays)?;
    Ok(out)
}

/// The bytes of an evaluated, contiguous float32 / bfloat16 / float16 array, as a
/// safetensors file stores them (little-endian on every platform MLX runs on).
pub fn bytes_of(a: &Array) -> &[u8] {
    let n = a.size() * a.item_size();
    // SAFETY: `a` is evaluated and contiguous (fresh parameters or zeros), holding
    // `size` elements of `item_size` bytes; the slice lives as long as `a`.
    unsafe {
        let ptr = match a.dtype() {
            Dtype::Float32 => a.as_slice::<f32>().as_ptr().cast::<u8>(),
            Dtype::Bfloat16 => a.as_slice::<half::bf16>().as_ptr().cast::<u8>(),
            _ => a.as_slice::<half::f16>().as_ptr().cast::<u8>(),
        };
        std::slice::from_raw_parts(ptr, n)
    }
}

/// Write `model` as a Hugging Face GPT-2 directory (`config.json`, `model.safetensors`),
/// each file under a temporary name first, then renamed.
pub fn save_pretrained(model: &Gpt, dir: &Path) -> Result<(), LoadError> {
    std::fs::create_dir_all(dir).map_err(|source| LoadError::Io { path: dir.into(), source })?;
    save_weights(model, &dir.join(WEIGHTS_FILE))?;
    model.config.write_hf(&dir.join(CONFIG_FILE))?;
    Ok(())
}

/// Write the weights alone, in Hugging Face GPT-2 layout, atomically.
pub fn save_weights(model: &Gpt, path: &Path) -> Result<(), LoadError> {
    write_tensors(&hf_tensors(model)?, path)
}

/// Write evaluated, contiguous `tensors` as a safetensors file (metadata `format: pt`),
/// atomically.
pub fn write_tensors(tensors: &BTreeMap<String, Array>, path: &Path) -> Result<(), LoadError> {
    let mut views = Vec::with_capacity(tensors.len());
    for (name, a) in tensors {
        let shape: Vec<usize> = a.shape().iter().map(|&d| d as usize).collect();
        let view = TensorView::new(to_st_dtype(a.dtype()), shape, bytes_of(a))
            .map_err(|e| LoadError::Corrupt { path: path.into(), reason: e.to_string() })?;
        views.push((name.clone(), view));
    }
    // transformers refuses safetensors files whose metadata lacks a known format.
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let bytes = safetensors::serialize(views, metadata)
        .map_err(|e| LoadError::Corrupt { path: path.into(), reason: e.to_string() })?;
    mlx_gpt_runtime::fs::write_atomic(path, &bytes).map_err(|source| LoadError::Io { path: path.into(), source })
}
