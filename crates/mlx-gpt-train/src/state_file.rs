//! Optimizer state on disk, for every optimizer: named float32 tensors and the step count
//! (in the metadata) in one safetensors file. The optimizers check names and shapes.

use crate::optimizer::StateError;
use mlx_rs::{Array, Dtype};
use safetensors::tensor::TensorView;
use std::collections::HashMap;
use std::path::Path;

/// Write `arrays` (float32, evaluated here) and `step` to `path`.
pub(crate) fn save(path: &Path, arrays: &[(String, &Array)], step: u64) -> Result<(), String> {
    // Row-major, as the file stores them (evaluated here).
    let dense: Vec<Array> = arrays
        .iter()
        .map(|(_, a)| mlx_gpt_ops::row_major(a))
        .collect::<Result<_, _>>()
        .map_err(|e| e.what().to_string())?;
    let views: Vec<(String, TensorView)> = arrays
        .iter()
        .zip(&dense)
        .map(|((k, _), a)| {
            let shape = a.shape().iter().map(|&d| d as usize).collect();
            let bytes = mlx_gpt_model::hf::bytes_of(a);
            (k.clone(), TensorView::new(safetensors::Dtype::F32, shape, bytes).expect("consistent view"))
        })
        .collect();
    let meta = HashMap::from([("step".to_string(), step.to_string())]);
    safetensors::serialize_to_file(views, Some(meta), path).map_err(|e| e.to_string())
}

/// What [`save`] wrote: the step count and the tensors by name; a tensor that is not
/// float32, or a file without a step count, is an error saying so.
pub(crate) fn load(path: &Path) -> Result<(u64, Vec<(String, Array)>), StateError> {
    let bytes = std::fs::read(path)?;
    let invalid = |e: safetensors::SafeTensorError| StateError::Invalid(e.to_string());
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(invalid)?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(invalid)?;
    let step = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("step"))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| StateError::Invalid("no step count".into()))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(StateError::Invalid(format!("tensor {name} is not float32")));
        }
        let shape: Vec<i32> = view.shape().iter().map(|&d| d as i32).collect();
        // SAFETY: F32 data of `shape`, checked by the parser; MLX copies it.
        let a = unsafe { Array::from_raw_data(view.data().as_ptr().cast(), &shape, Dtype::Float32) };
        out.push((name, a));
    }
    Ok((step, out))
}
