//! Datasets for mlx-gpt: download, extraction, tokenisation, token files and batches.
//!
//! Crate map (start here): filled in by the data issue — `download`, `extract`,
//! `tokenizer`, `token_file`, `batches`, `datasets`. See docs/data.md once it lands.
