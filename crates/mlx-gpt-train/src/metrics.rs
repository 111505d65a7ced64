//! What a run records besides checkpoints: `metrics.jsonl` (one JSON object per log line
//! and per evaluation) and `loss.svg` (train and val loss against iteration), refreshed at
//! each evaluation.

use crate::TrainError;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// f64 as a JSON number when finite, else as `"NaN"`, `"inf"` or `"-inf"`; `null` (what
/// older files hold for NaN) reads as NaN.
mod any_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if *v > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Any {
            Num(f64),
            Text(String),
            Null(()),
        }
        match Any::deserialize(d)? {
            Any::Num(v) => Ok(v),
            Any::Null(()) => Ok(f64::NAN),
            Any::Text(t) => match t.as_str() {
                "NaN" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                other => Err(serde::de::Error::custom(format!("not a number: {other:?}"))),
            },
        }
    }
}

/// One line of `metrics.jsonl`.
///
/// Numbers are written so they read back exactly (serde_json's `float_roundtrip`), and a
/// NaN or infinity as the strings `"NaN"`, `"inf"`, `"-inf"` (JSON has no such numbers;
/// serde_json would write `null`, which reads back as nothing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// A training step's log line.
    Train {
        /// Iteration.
        iter: usize,
        /// Mean loss over the step's micro-batches.
        #[serde(with = "any_f64")]
        loss: f64,
        /// Learning rate used.
        #[serde(with = "any_f64")]
        lr: f64,
        /// Wall time of the step.
        #[serde(with = "any_f64")]
        ms: f64,
        /// Tokens per second.
        #[serde(with = "any_f64")]
        tok_per_s: f64,
        /// Model FLOPs utilisation.
        #[serde(with = "any_f64")]
        mfu: f64,
        /// Gradient norm before clipping.
        #[serde(with = "any_f64")]
        grad_norm: f64,
    },
    /// An evaluation.
    Eval {
        /// Iteration.
        iter: usize,
        /// Mean train loss over eval_iters batches.
        #[serde(with = "any_f64")]
        train_loss: f64,
        /// Mean val loss over eval_iters batches.
        #[serde(with = "any_f64")]
        val_loss: f64,
    },
    /// The exact loss of a whole split (`eval_full`), at the end of training.
    Exact {
        /// Iteration.
        iter: usize,
        /// `val` (or `train`).
        split: String,
        /// Mean cross-entropy over every token of the split.
        #[serde(with = "any_f64")]
        loss: f64,
        /// Bits per byte, when the tokenizer was at hand.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bits_per_byte: Option<f64>,
    },
    /// A zero-shot task's score (`eval_tasks`), at the end of training.
    Task {
        /// Iteration.
        iter: usize,
        /// Its name (`hellaswag`).
        task: String,
        /// Examples scored.
        n: usize,
        /// Accuracy by summed log-likelihood.
        #[serde(with = "any_f64")]
        acc: f64,
        /// Accuracy by mean log-likelihood per token.
        #[serde(with = "any_f64")]
        acc_norm: f64,
    },
}

impl Record {
    /// The iteration it belongs to.
    pub fn iter(&self) -> usize {
        match self {
            Record::Train { iter, .. }
            | Record::Eval { iter, .. }
            | Record::Exact { iter, .. }
            | Record::Task { iter, .. } => *iter,
        }
    }
}

/// Read `metrics.jsonl` (missing file: none).
pub fn read(path: &Path) -> Vec<Record> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(read_line).collect()
}

/// One line of `metrics.jsonl`; `None` for one that is not a record (cut short by a kill).
pub fn read_line(line: &str) -> Option<Record> {
    serde_json::from_str(line).ok()
}

/// Append one record.
pub fn append(path: &Path, r: &Record) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(f, "{}", serde_json::to_string(r).expect("record serializes"))
}

/// Keep the records before iteration `iter` (for a resume from a checkpoint at `iter`):
/// those lines stay byte for byte as written; later ones, and lines that are not records
/// (a line cut short by a kill), are dropped. Written atomically.
pub fn truncate_after(path: &Path, iter: usize) -> std::io::Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let kept: String =
        text.lines().filter(|l| read_line(l).is_some_and(|r| r.iter() < iter)).map(|l| format!("{l}\n")).collect();
    if kept == text {
        return Ok(());
    }
    mlx_gpt_model::write_atomic(path, kept.as_bytes())
}

/// Add `n` losses summing to `sum` at iteration `iter` to the last bucket of `width`
/// iterations when `iter` falls in it, else to a new one. Buckets are
/// (first iteration, sum, count), in order.
fn add_to_bucket(buckets: &mut Vec<(usize, f64, usize)>, width: usize, iter: usize, sum: f64, n: usize) {
    let start = iter / width * width;
    match buckets.last_mut() {
        Some(last) if last.0 == start => {
            last.1 += sum;
            last.2 += n;
        }
        _ => buckets.push((start, sum, n)),
    }
}

/// What `loss.svg` draws, kept in memory and bounded: every evaluation, and the training
/// steps averaged in buckets of iterations that double in width whenever more than
/// [`LossSummary::MAX_POINTS`] would be kept. Drawing it costs the same at iteration
/// 2,000 as at 2,000,000 (reading all of `metrics.jsonl` at each evaluation did not).
#[derive(Debug, Clone, Default)]
pub struct LossSummary {
    /// (first iteration of the bucket, sum of losses, count).
    steps: Vec<(usize, f64, usize)>,
    width: usize,
    evals: Vec<Record>,
}

impl LossSummary {
    /// Most training-step points kept.
    pub const MAX_POINTS: usize = 2048;

    /// A summary of the records of an existing file (a resumed run's).
    pub fn from_records(records: &[Record]) -> LossSummary {
        let mut s = LossSummary::default();
        for r in records {
            s.push(r);
        }
        s
    }

    /// Add one record.
    pub fn push(&mut self, r: &Record) {
        match r {
            Record::Train { iter, loss, .. } => {
                let width = self.width.max(1);
                add_to_bucket(&mut self.steps, width, *iter, *loss, 1);
                if self.steps.len() > Self::MAX_POINTS {
                    // Twice as wide: neighbouring buckets merge.
                    self.width = width * 2;
                    let mut merged = Vec::with_capacity(self.steps.len() / 2 + 1);
                    for (start, sum, n) in self.steps.drain(..) {
                        add_to_bucket(&mut merged, self.width, start, sum, n);
                    }
                    self.steps = merged;
                }
            }
            Record::Eval { .. } | Record::Exact { .. } => self.evals.push(r.clone()),
            // Accuracies are not losses: in metrics.jsonl, not on the loss plot.
            Record::Task { .. } => {}
        }
    }

    /// The records to draw: one train record per bucket (mean loss), then the evaluations.
    pub fn records(&self) -> Vec<Record> {
        self.steps
            .iter()
            .map(|&(iter, sum, n)| Record::Train {
                iter,
                loss: sum / n as f64,
                lr: 0.0,
                ms: 0.0,
                tok_per_s: 0.0,
                mfu: 0.0,
                grad_norm: 0.0,
            })
            .chain(self.evals.iter().cloned())
            .collect()
    }

    /// `loss.svg`'s text.
    pub fn svg(&self) -> String {
        plot_svg(&self.records())
    }
}

/// What a run writes as it goes: `metrics.jsonl`, one record per line, and `loss.svg`,
/// redrawn at each evaluation from a bounded summary kept in memory. Only the process
/// that writes the run directory records (rank 0 of a training run, not `eval`); for the
/// others [`Recorder::record`] does nothing.
pub struct Recorder {
    path: PathBuf,
    svg: PathBuf,
    writes: bool,
    summary: LossSummary,
}

impl Recorder {
    /// The recorder of the run in `out_dir`: a resumed run (`resumed_at`) keeps the records
    /// up to its iteration and drops later ones (a run that went further before it
    /// crashed); a new run starts an empty file.
    pub fn open(out_dir: &Path, writes: bool, resumed_at: Option<usize>) -> Result<Recorder, TrainError> {
        let path = out_dir.join("metrics.jsonl");
        let io = |source| TrainError::Io { path: path.clone(), source };
        let mut summary = LossSummary::default();
        if writes {
            match resumed_at {
                Some(iter) => {
                    truncate_after(&path, iter).map_err(io)?;
                    // Read once here, not at every evaluation.
                    summary = LossSummary::from_records(&read(&path));
                }
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(Recorder { svg: out_dir.join("loss.svg"), path, writes, summary })
    }

    /// Append `r`, and redraw the plot after an evaluation.
    pub fn record(&mut self, r: Record) -> Result<(), TrainError> {
        if !self.writes {
            return Ok(());
        }
        append(&self.path, &r).map_err(|source| TrainError::Io { path: self.path.clone(), source })?;
        self.summary.push(&r);
        if matches!(r, Record::Eval { .. } | Record::Exact { .. }) {
            mlx_gpt_model::write_atomic(&self.svg, self.summary.svg().as_bytes())
                .map_err(|source| TrainError::Io { path: self.svg.clone(), source })?;
        }
        Ok(())
    }
}

/// Draw train-step loss (thin), and eval train/val loss (thick) as an SVG line chart.
pub fn plot_svg(records: &[Record]) -> String {
    let (w, h, pad) = (800.0, 480.0, 60.0);
    let steps: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| match r {
            Record::Train { iter, loss, .. } => Some((*iter as f64, *loss)),
            _ => None,
        })
        .collect();
    let evals: Vec<(f64, f64, f64)> = records
        .iter()
        .filter_map(|r| match r {
            Record::Eval { iter, train_loss, val_loss } => Some((*iter as f64, *train_loss, *val_loss)),
            _ => None,
        })
        .collect();
    let exact: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| match r {
            Record::Exact { iter, split, loss, .. } if split == "val" => Some((*iter as f64, *loss)),
            _ => None,
        })
        .collect();
    let xs = steps.iter().map(|p| p.0).chain(evals.iter().map(|p| p.0)).chain(exact.iter().map(|p| p.0));
    let ys = steps
        .iter()
        .map(|p| p.1)
        .chain(evals.iter().flat_map(|p| [p.1, p.2]))
        .chain(exact.iter().map(|p| p.1))
        .filter(|v| v.is_finite());
    let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
    let (y0, y1) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| (a.min(y), b.max(y)));
    let (x0, x1) = if x0.is_finite() { (x0, x1.max(x0 + 1.0)) } else { (0.0, 1.0) };
    let (y0, y1) = if y0.is_finite() { (y0.min(y1 - 0.1), y1) } else { (0.0, 1.0) };
    let sx = |x: f64| pad + (x - x0) / (x1 - x0) * (w - 2.0 * pad);
    let sy = |y: f64| h - pad - (y - y0) / (y1 - y0) * (h - 2.0 * pad);
    let line = |pts: Vec<(f64, f64)>, color: &str, width: f64| {
        let d: Vec<String> =
            pts.iter().filter(|p| p.1.is_finite()).map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y))).collect();
        format!("<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"{width}\" points=\"{}\"/>\n", d.join(" "))
    };
    let mut svg = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n");
    for k in 0..=5 {
        let y = y0 + (y1 - y0) * k as f64 / 5.0;
        svg += &format!("<line x1=\"{pad}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{y:.2}</text>\n", w - pad, sy(y), sy(y), pad - 6.0, sy(y) + 4.0);
        let x = x0 + (x1 - x0) * k as f64 / 5.0;
        svg += &format!("<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{x:.0}</text>\n", sx(x), h - pad + 18.0);
    }
    svg += &line(steps, "#9ecae1", 1.0);
    svg += &line(evals.iter().map(|e| (e.0, e.1)).collect(), "#08519c", 2.5);
    svg += &line(evals.iter().map(|e| (e.0, e.2)).collect(), "#e6550d", 2.5);
    for &(x, y) in exact.iter().filter(|p| p.1.is_finite()) {
        svg += &format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"5\" fill=\"#31a354\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#31a354\">{y:.4}</text>\n",
            sx(x),
            sy(y),
            sx(x) - 8.0,
            sy(y) - 8.0
        );
    }
    svg += &format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">iteration</text>\n", w / 2.0, h - 15.0);
    svg += &format!("<text x=\"{pad}\" y=\"30\">loss — <tspan fill=\"#9ecae1\">train step</tspan>, <tspan fill=\"#08519c\">train (eval)</tspan>, <tspan fill=\"#e6550d\">val (eval)</tspan>, <tspan fill=\"#31a354\">val (exact, every window)</tspan></text>\n");
    svg + "</svg>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_earlier_lines_byte_for_byte_and_non_finite_values_survive() {
        let dir = std::env::temp_dir().join(format!("mlx-gpt-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("metrics.jsonl");
        let odd = 0.1f64 + 0.2; // 0.30000000000000004: needs every digit
        let lines = [
            r#"{"kind":"train","iter":0,"loss":4.1743218,"lr":0.30000000000000004,"ms":1.0,"tok_per_s":2.0,"mfu":0.5,"grad_norm":1.0}"#,
            r#"{"kind":"eval","iter":0,"train_loss":4.2,"val_loss":null}"#,
            r#"{"kind":"train","iter":1,"loss":"NaN","lr":1e-3,"ms":1.0,"tok_per_s":2.0,"mfu":0.5,"grad_norm":"inf"}"#,
            r#"{"kind":"train","iter":2,"loss":3.0,"lr":1e-3,"ms":1.0,"tok_per_s":2.0,"mfu":0.5,"grad_norm":1.0}"#,
            r#"{"kind":"train","iter":3,"lo"#,
        ];
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        truncate_after(&p, 2).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), lines[..3].join("\n") + "\n");
        let r = read(&p);
        assert_eq!(r.len(), 3);
        assert!(matches!(r[0], Record::Train { lr, .. } if lr == odd));
        assert!(matches!(r[1], Record::Eval { val_loss, .. } if val_loss.is_nan()));
        assert!(matches!(r[2], Record::Train { loss, grad_norm, .. } if loss.is_nan() && grad_norm == f64::INFINITY));
        // And written back as they were read.
        let back = serde_json::to_string(&r[2]).unwrap();
        assert!(back.contains(r#""loss":"NaN""#) && back.contains(r#""grad_norm":"inf""#), "{back}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_plot_summary_stays_bounded() {
        let mut s = LossSummary::default();
        let n = 100_000;
        for iter in 0..n {
            s.push(&Record::Train {
                iter,
                loss: 1.0 + (iter % 2) as f64,
                lr: 0.0,
                ms: 0.0,
                tok_per_s: 0.0,
                mfu: 0.0,
                grad_norm: 0.0,
            });
        }
        s.push(&Record::Eval { iter: n, train_loss: 1.5, val_loss: 1.6 });
        let records = s.records();
        assert!(records.len() <= LossSummary::MAX_POINTS + 1, "{}", records.len());
        // Buckets average the steps they hold; the iterations stay in order.
        for r in &records[..records.len() - 1] {
            assert!(matches!(r, Record::Train { loss, .. } if (loss - 1.5).abs() < 1e-3));
        }
        assert!(records.windows(2).all(|w| w[0].iter() < w[1].iter()));
        assert!(s.svg().len() < 200_000);
    }
}
