//! Cross-entropy as plain MLX ops, so it fuses under `compile` and works in any dtype.

use mlx_gpt_ops::Kernels;
use mlx_rs::error::Exception;
use mlx_rs::{Array, Dtype};

/// Targets equal to this are left out of the loss (PyTorch's `ignore_index` default).
pub const IGNORE_INDEX: i32 = -1;

/// Mean cross-entropy of `logits` (..., V) against integer `targets` (...), computed in
/// float32, skipping positions whose target is [`IGNORE_INDEX`]. Returns a scalar; NaN
/// when every target is ignored, as PyTorch does.
pub fn cross_entropy(k: &Kernels, logits: &Array, targets: &Array) -> Result<Array, Exception> {
    let v = *logits.shape().last().expect("logits have a vocabulary axis");
    let logits = logits.reshape(&[-1, v])?.as_dtype(Dtype::Float32)?; // (N, V)
    let targets = targets.reshape(&[-1])?.as_dtype(Dtype::Int32)?; // (N,)
    let keep = targets.ne(Array::from_int(IGNORE_INDEX))?; // (N,)
                                                           // An ignored target is replaced by 0 only to make the gather valid; it is masked below.
    let safe = mlx_rs::ops::select(&keep, &targets, Array::from_int(0))?;
    let keep = keep.as_dtype(Dtype::Float32)?;
    let nll = nll_of(k, &logits, &safe)?.multiply(&keep)?;
    nll.sum(None)?.divide(keep.sum(None)?)
}

/// The cross-entropy of each position, float32: logits (..., V), targets (...) → (N,)
/// with N the number of positions. For evaluations that sum over a whole split.
pub fn token_nll(k: &Kernels, logits: &Array, targets: &Array) -> Result<Array, Exception> {
    let v = *logits.shape().last().expect("logits have a vocabulary axis");
    let logits = logits.reshape(&[-1, v])?.as_dtype(Dtype::Float32)?;
    nll_of(k, &logits, &targets.reshape(&[-1])?.as_dtype(Dtype::Int32)?)
}

/// −log softmax(logits)[target] per row: logits (N, V) float32, targets (N,) valid ids.
fn nll_of(k: &Kernels, logits: &Array, targets: &Array) -> Result<Array, Exception> {
    let lse = mlx_gpt_ops::logsumexp_last(k, logits)?; // (N,)
    let picked = logits.take_along_axis(targets.reshape(&[-1, 1])?, -1)?.reshape(&[-1])?; // (N,)
    lse.subtract(&picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_hand_computation() {
        let logits = Array::from_slice(&[1.0f32, 2.0, 3.0, 0.5, 0.5, 0.5], &[2, 3]);
        let targets = Array::from_slice(&[2i32, 0], &[2]);
        let l0 = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln() - 3.0;
        let l1 = 3f64.ln();
        let got = cross_entropy(&Kernels::mlx(), &logits, &targets).unwrap().item_exact::<f32>() as f64;
        assert!((got - (l0 + l1) / 2.0).abs() < 1e-6, "{got}");
        let targets = Array::from_slice(&[2i32, IGNORE_INDEX], &[2]);
        let got = cross_entropy(&Kernels::mlx(), &logits, &targets).unwrap().item_exact::<f32>() as f64;
        assert!((got - l0).abs() < 1e-6, "{got}");
        let per = token_nll(&Kernels::mlx(), &logits, &Array::from_slice(&[2i32, 0], &[2])).unwrap();
        let per: Vec<f32> = per.as_slice::<f32>().to_vec();
        assert!((per[0] as f64 - l0).abs() < 1e-6 && (per[1] as f64 - l1).abs() < 1e-6, "{per:?}");
    }
}
