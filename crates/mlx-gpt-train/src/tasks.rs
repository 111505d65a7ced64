//! The zero-shot tasks `eval_tasks` names, run at the end of training or by `eval`:
//! finding their files and the model's tokenizer (checked before a run starts), scoring
//! with a progress bar, and logging the result.

use crate::config::{InitFrom, TrainConfig};
use crate::TrainError;
use mlx_gpt_data::tokenizer::{Tokenizer, TokenizerSpec};
use mlx_gpt_model::Gpt;
use std::path::{Path, PathBuf};

/// A task's result.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskScore {
    /// Its name.
    pub task: String,
    /// Examples scored, accuracy by summed and by mean log-likelihood.
    pub score: crate::hellaswag::Score,
}

fn config_error(m: String) -> TrainError {
    TrainError::Config(crate::config::ConfigError::Inconsistent(m))
}

/// GPT-2's BPE files for a model: `tokenizer` when set, else the model's own folder when
/// it holds them, else `models/gpt2`.
fn bpe_dir(c: &TrainConfig, model_dir: Option<&Path>) -> PathBuf {
    let has_files = |d: &Path| ["tokenizer.json", "vocab.json", "encoder.json"].iter().any(|f| d.join(f).is_file());
    c.tokenizer
        .clone()
        .or_else(|| model_dir.filter(|d| has_files(d)).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("models/gpt2"))
}

/// The tokenizer of a model whose data used `spec`: GPT-2's files (see `bpe_dir`), or a
/// trained tokenizer's, which the spec carries (a checkpoint's) or `dir` holds (the
/// dataset's folder).
pub fn tokenizer_for(c: &TrainConfig, spec: &TokenizerSpec, dir: Option<&Path>) -> Result<Tokenizer, TrainError> {
    let files = match spec {
        TokenizerSpec::Trained { .. } => dir.map(Path::to_path_buf),
        _ => Some(bpe_dir(c, dir)),
    };
    Ok(Tokenizer::from_spec(spec, files.as_deref())?)
}

/// Check, before anything runs, that every task's file is there and readable.
pub fn check(c: &TrainConfig) -> Result<(), TrainError> {
    for task in &c.eval_tasks {
        if task == "hellaswag" {
            mlx_gpt_data::hellaswag::load(&mlx_gpt_data::hellaswag::path_in(&c.data_dir), Some(1))?;
        }
    }
    Ok(())
}

/// Check, before anything runs, that the model's tokenizer can spell the tasks' examples
/// (the first of each; a character-level vocabulary cannot).
pub fn check_tokenizer(c: &TrainConfig, tok: &Tokenizer) -> Result<(), TrainError> {
    for task in &c.eval_tasks {
        if task == "hellaswag" {
            let first = mlx_gpt_data::hellaswag::load(&mlx_gpt_data::hellaswag::path_in(&c.data_dir), Some(1))?;
            crate::hellaswag::encodable(tok, &first[0], 0)?;
        }
    }
    Ok(())
}

/// Score `model` (its tokenizer `tok`) on every task of `c.eval_tasks`.
pub fn run(c: &TrainConfig, model: &mut Gpt, tok: &Tokenizer, progress: bool) -> Result<Vec<TaskScore>, TrainError> {
    let mut out = Vec::new();
    for task in &c.eval_tasks {
        let limit = (c.eval_limit > 0).then_some(c.eval_limit);
        let path = mlx_gpt_data::hellaswag::path_in(&c.data_dir);
        let examples = mlx_gpt_data::hellaswag::load(&path, limit)?;
        let bar = mlx_gpt_data::progress::counter(
            examples.len() as u64,
            "{msg} {bar:40} {pos}/{len} examples, ETA {eta}",
            progress,
        );
        bar.set_message(task.clone());
        // 8 examples (32 rows) a forward pass: enough to keep the matmuls large.
        let score = crate::hellaswag::score(model, tok, &examples, 8, &mut |d, _| bar.set_position(d as u64))?;
        bar.finish_and_clear();
        tracing::info!(
            task = task.as_str(),
            n = score.n,
            acc = score.acc,
            acc_norm = score.acc_norm,
            "{task}: acc {:.4}, acc_norm {:.4} over {} examples",
            score.acc,
            score.acc_norm,
            score.n
        );
        out.push(TaskScore { task: task.clone(), score });
    }
    Ok(out)
}

/// `eval` without a prepared dataset: the model `init_from` names (a run's checkpoint, a
/// GPT-2 from `models/`, or a Hugging Face folder) on the tasks alone.
pub fn run_without_dataset(c: &TrainConfig, progress: bool) -> Result<Vec<TaskScore>, TrainError> {
    check(c)?;
    let (mut model, tok) =
        match c.init_from.clone() {
            InitFrom::Scratch => return Err(config_error(
                "eval_tasks: an untrained model has nothing to score; give --init_from resume, gpt2… or a model folder"
                    .into(),
            )),
            InitFrom::Resume => {
                // Weights only: the optimizer that comes back is not used.
                let adamw = crate::optimizer::AdamWConfig::from(c);
                let (dir, loaded, _) = crate::checkpoint::load_latest_valid(&c.out_dir, adamw, false)?;
                let tok = tokenizer_for(c, &loaded.state.tokenizer, Some(&dir))?;
                (loaded.model, tok)
            }
            InitFrom::Gpt2(name) => {
                let dir = Path::new("models").join(&name);
                (crate::train::load_gpt2(&name)?, tokenizer_for(c, &TokenizerSpec::Gpt2, Some(&dir))?)
            }
            InitFrom::Dir(d) => {
                (mlx_gpt_model::hf::load_pretrained(&d)?, tokenizer_for(c, &TokenizerSpec::Gpt2, Some(&d))?)
            }
        };
    check_tokenizer(c, &tok)?;
    let device = crate::train::select_device(c.device)?;
    model.kernels = crate::train::kernels_for(c, device, 1)?;
    model.set_dtype(c.dtype.to_mlx())?;
    run(c, &mut model, &tok, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dataset with its own trained tokenizer: found in the dataset's folder, even with
    /// GPT-2's files named by `tokenizer` (they are for GPT-2 datasets).
    #[test]
    fn a_trained_tokenizer_is_found_in_the_dataset_folder() {
        let dir = std::env::temp_dir().join(format!("mlx-gpt-tasks-tok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let docs = ["To be, or not to be, that is the question.\n"; 8];
        let trained = mlx_gpt_data::bpe_train::train_bpe(docs.iter(), 300, false).unwrap();
        let json = trained.to_string(false).unwrap();
        std::fs::write(dir.join(mlx_gpt_data::tokenizer::TRAINED_FILE), &json).unwrap();
        let spec = Tokenizer::trained_from_json(json, None, "test").unwrap().spec();
        let c = TrainConfig { tokenizer: Some(PathBuf::from("models/gpt2")), ..TrainConfig::default() };
        let tok = tokenizer_for(&c, &spec, Some(&dir)).unwrap();
        assert_eq!(tok.vocab_size(), trained.get_vocab_size(true));
        assert!(tokenizer_for(&c, &spec, None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
