//! Datasets for mlx-gpt: download, extraction, tokenisation, nanoGPT token files, batches.
//!
//! Crate map (start here), in the order data flows:
//! - [`download`]: resumable, checksummed HTTP(S) downloads with retries and a mirror;
//! - [`extract`]: gzip / xz / zip / tar sources;
//! - [`tokenizer`]: character vocabularies and GPT-2's byte-level BPE;
//! - [`bpe_train`]: a byte-level BPE trained on a user's corpus (GPT-4's split pattern);
//! - [`token_file`]: nanoGPT's `train.bin`/`val.bin` (uint16, or uint32 for a vocabulary
//!   that needs it) and the `meta.json` sidecar;
//! - [`manifest`]: a dataset's sources, tokenizer and split, and what preparing it takes
//!   and gives;
//! - [`datasets`]: `prepare` (shakespeare_char, shakespeare, local text files);
//! - [`openwebtext`]: streaming preparation of Hugging Face parquet text datasets;
//! - [`corpus`], [`own_text`]: a user's corpus read as a stream, and prepared with a
//!   tokenizer trained on it (bounded memory, resumable);
//! - [`pretrained`]: OpenAI's GPT-2 checkpoints from the Hugging Face hub;
//! - [`batches`]: the seeded, resumable `(x, y)` batch sampler.
//!
//! docs/data.md describes the datasets, the file formats and working offline.
#![warn(missing_docs)]

pub mod batches;
pub mod bpe_train;
pub mod corpus;
pub mod datasets;
pub mod download;
mod error;
pub mod extract;
pub mod hellaswag;
pub mod manifest;
pub mod openwebtext;
pub mod own_text;
pub mod pretrained;
pub mod progress;
pub mod token_file;
pub mod tokenizer;

pub use error::{error_chain, DataError, Result};
