//! What a run records besides checkpoints: `metrics.jsonl` (one JSON object per log line
//! and per evaluation) and `loss.svg` (train and val loss against iteration), refreshed at
//! each evaluation.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// A training step's log line.
    Train {
        /// Iteration.
        iter: usize,
        /// Mean loss over the step's micro-batches.
        loss: f64,
        /// Learning rate used.
        lr: f64,
        /// Wall time of the step.
        ms: f64,
        /// Tokens per second.
        tok_per_s: f64,
        /// Model FLOPs utilisation.
        mfu: f64,
        /// Gradient norm before clipping.
        grad_norm: f64,
    },
    /// An evaluation.
    Eval {
        /// Iteration.
        iter: usize,
        /// Mean train loss over eval_iters batches.
        train_loss: f64,
        /// Mean val loss over eval_iters batches.
        val_loss: f64,
    },
}

impl Record {
    /// The iteration it belongs to.
    pub fn iter(&self) -> usize {
        match self {
            Record::Train { iter, .. } | Record::Eval { iter, .. } => *iter,
        }
    }
}

/// Read `metrics.jsonl` (missing file: none).
pub fn read(path: &Path) -> Vec<Record> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Append one record.
pub fn append(path: &Path, r: &Record) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(f, "{}", serde_json::to_string(r).expect("record serializes"))
}

/// Keep only the records before iteration `iter`: a run resumed there evaluates and logs
/// from `iter` on again.
pub fn truncate_after(path: &Path, iter: usize) -> std::io::Result<()> {
    let kept: Vec<Record> = read(path).into_iter().filter(|r| r.iter() < iter).collect();
    let text: String = kept.iter().map(|r| serde_json::to_string(r).expect("serializes") + "\n").collect();
    mlx_gpt_model::write_atomic(path, text.as_bytes())
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
    let xs = steps.iter().map(|p| p.0).chain(evals.iter().map(|p| p.0));
    let ys = steps.iter().map(|p| p.1).chain(evals.iter().flat_map(|p| [p.1, p.2])).filter(|v| v.is_finite());
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
    svg += &format!("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">iteration</text>\n", w / 2.0, h - 15.0);
    svg += &format!("<text x=\"{pad}\" y=\"30\">loss — <tspan fill=\"#9ecae1\">train step</tspan>, <tspan fill=\"#08519c\">train (eval)</tspan>, <tspan fill=\"#e6550d\">val (eval)</tspan></text>\n");
    svg + "</svg>\n"
}
