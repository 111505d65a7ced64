//! HellaSwag, zero-shot, scored as llm.c and Karpathy's build-nanogpt do: each of the four
//! endings is appended to the context (`ctx + " " + ending`, tokenized as one ending after
//! the context's tokens), and the model's cross-entropy on the ending's tokens alone is
//! summed. `acc` picks the ending with the smallest sum (the most likely one), `acc_norm`
//! the one with the smallest mean per token (length-normalised). Dropout off.
//!
//! A row longer than the model's context keeps its last `block_size` tokens (the start of
//! the context is dropped), so every ending is scored whole.

use mlx_gpt_data::hellaswag::Example;
use mlx_gpt_data::tokenizer::Tokenizer;
use mlx_gpt_model::Gpt;

/// One example's scores.
#[derive(Debug, Clone, PartialEq)]
pub struct ExampleScore {
    /// Summed log-likelihood (natural log, ≤ 0) of each ending's tokens given the context.
    pub log_likelihood: [f64; 4],
    /// Tokens in each ending.
    pub tokens: [usize; 4],
    /// Argmax of the summed log-likelihood.
    pub pred: usize,
    /// Argmax of the mean log-likelihood per token.
    pub pred_norm: usize,
    /// The right ending.
    pub label: usize,
}

/// The task's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// Examples scored.
    pub n: usize,
    /// Share with `pred == label`.
    pub acc: f64,
    /// Share with `pred_norm == label`.
    pub acc_norm: f64,
    /// Per example, in order.
    pub examples: Vec<ExampleScore>,
}

/// The rows of one example: tokens of context + ending, and how many of the last are
/// the ending's.
fn rows(
    tok: &Tokenizer,
    ex: &Example,
    index: usize,
    block: usize,
) -> Result<Vec<(Vec<u32>, usize)>, crate::TrainError> {
    let cannot = |e: mlx_gpt_data::DataError| {
        crate::TrainError::Config(crate::config::ConfigError::Inconsistent(format!(
            "HellaSwag example {index}: the model's tokenizer cannot encode it ({e}); HellaSwag needs a model \
             with GPT-2's BPE (e.g. --init_from gpt2, or a run on a BPE dataset)"
        )))
    };
    let ctx = tok.encode(&ex.ctx).map_err(cannot)?;
    ex.endings
        .iter()
        .map(|end| {
            let end = tok.encode(&format!(" {end}")).map_err(cannot)?;
            let n = end.len();
            let mut row = [ctx.as_slice(), end.as_slice()].concat();
            // One more than the context: the first token is input only.
            if row.len() > block + 1 {
                row.drain(..row.len() - (block + 1));
            }
            Ok((row, n.min(block)))
        })
        .collect()
}

/// Whether `tok` can spell example `ex` (number `index`, for the message).
pub fn encodable(tok: &Tokenizer, ex: &Example, index: usize) -> Result<(), crate::TrainError> {
    rows(tok, ex, index, usize::MAX - 1).map(|_| ())
}

/// Score `examples` with `model` and its tokenizer, `batch` examples (4 rows each) per
/// forward pass; `progress(done, total)` after each.
pub fn score(
    model: &mut Gpt,
    tok: &Tokenizer,
    examples: &[Example],
    batch: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Score, crate::TrainError> {
    model.set_training(false);
    let block = model.config.block_size;
    let mut out = Vec::with_capacity(examples.len());
    for (chunk_index, chunk) in examples.chunks(batch.max(1)).enumerate() {
        let first = chunk_index * batch.max(1);
        let mut all = Vec::with_capacity(chunk.len() * 4);
        for (i, ex) in chunk.iter().enumerate() {
            all.extend(rows(tok, ex, first + i, block)?);
        }
        // Inputs are a row without its last token, targets without its first; padded
        // positions (and the context's) carry no weight.
        let len = all.iter().map(|(r, _)| r.len() - 1).max().unwrap_or(1).max(1);
        let (mut x, mut y, mut w) =
            (vec![0i32; all.len() * len], vec![0i32; all.len() * len], vec![0f32; all.len() * len]);
        for (i, (row, n_end)) in all.iter().enumerate() {
            let t = row.len() - 1;
            for j in 0..t {
                x[i * len + j] = row[j] as i32;
                y[i * len + j] = row[j + 1] as i32;
                w[i * len + j] = if j >= t.saturating_sub(*n_end) { 1.0 } else { 0.0 };
            }
        }
        let shape = [all.len() as i32, len as i32];
        let hidden = model.hidden(&mlx_rs::Array::from_slice(&x, &shape), None)?;
        let logits = model.lm_head(&hidden)?;
        let nll = mlx_gpt_model::loss::token_nll(&model.kernels, &logits, &mlx_rs::Array::from_slice(&y, &shape))?;
        nll.eval()?;
        let nll = nll.as_slice::<f32>();
        for (i, ex) in chunk.iter().enumerate() {
            let mut ll = [0f64; 4];
            let mut tokens = [0usize; 4];
            for e in 0..4 {
                let r = i * 4 + e;
                let s: f64 = (0..len).map(|j| nll[r * len + j] as f64 * w[r * len + j] as f64).sum();
                ll[e] = -s;
                tokens[e] = w[r * len..(r + 1) * len].iter().filter(|&&v| v > 0.0).count();
            }
            let argmax = |v: [f64; 4]| (0..4).fold(0, |b, k| if v[k] > v[b] { k } else { b });
            let mean = std::array::from_fn(|e| ll[e] / tokens[e].max(1) as f64);
            out.push(ExampleScore {
                log_likelihood: ll,
                tokens,
                pred: argmax(ll),
                pred_norm: argmax(mean),
                label: ex.label,
            });
        }
        progress(out.len(), examples.len());
    }
    let n = out.len();
    let share = |f: &dyn Fn(&ExampleScore) -> bool| out.iter().filter(|s| f(s)).count() as f64 / n.max(1) as f64;
    Ok(Score { n, acc: share(&|s| s.pred == s.label), acc_norm: share(&|s| s.pred_norm == s.label), examples: out })
}
