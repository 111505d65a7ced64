//! Dropout construction: off (evaluation mode) until the training loop switches it on.

use mlx_rs::nn::Dropout;

/// A dropout layer with drop probability `p`, in evaluation mode.
pub fn dropout(p: f32) -> Dropout {
    Dropout { one_minus_p: 1.0 - p, training: false }
}
