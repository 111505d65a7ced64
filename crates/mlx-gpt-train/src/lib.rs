//! Training GPTs with MLX the way nanoGPT's `train.py` does.
//!
//! Crate map (start here): filled in by the training issue — `config`, `schedule`,
//! `optimizer`, `step`, `eval`, `checkpoint`, `train`. See docs/training.md once it lands.
