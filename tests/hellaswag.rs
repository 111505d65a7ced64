//! HellaSwag scoring against an independent scorer: `tests/fixtures/hellaswag_tiny` holds
//! a small random GPT-2 with GPT-2's vocabulary, eight made-up examples in HellaSwag's
//! format, and what Hugging Face transformers computes for them
//! (`scripts/make_hellaswag_fixture.py`): each ending's summed log-likelihood given the
//! context, and both predictions. Also the errors a user can meet.

mod common;

use mlx_gpt_data::hellaswag;
use mlx_gpt_data::tokenizer::{CharTokenizer, Tokenizer};
use mlx_gpt_model::hf;
use serde_json::Value;

#[test]
fn hellaswag_scores_match_transformers() {
    let Some(shared) = common::shared() else { return };
    let fix = common::root().join("tests/fixtures/hellaswag_tiny");
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(fix.join("expected.json")).unwrap()).unwrap();
    let expected = expected["examples"].as_array().unwrap();
    let examples = hellaswag::load(&fix.join("examples.jsonl"), None).unwrap();
    assert_eq!(examples.len(), expected.len());
    let tok = Tokenizer::gpt2_from(&shared.join("tokenizers/gpt2")).unwrap();
    let mut model = hf::load_pretrained(&fix.join("model")).unwrap();
    // Three examples a batch: rows of different lengths padded together, and a short last batch.
    let mut calls = vec![];
    let score =
        mlx_gpt_train::hellaswag::score(&mut model, &tok, &examples, 3, &mut |d, n| calls.push((d, n))).unwrap();
    assert_eq!(calls, vec![(3, 8), (6, 8), (8, 8)]);
    let mut worst = 0.0f64;
    for (i, (got, want)) in score.examples.iter().zip(expected).enumerate() {
        let tokens: Vec<usize> = serde_json::from_value(want["tokens"].clone()).unwrap();
        assert_eq!(got.tokens.to_vec(), tokens, "example {i}");
        for (e, w) in want["log_likelihood"].as_array().unwrap().iter().enumerate() {
            let w = w.as_f64().unwrap();
            let rel = (got.log_likelihood[e] - w).abs() / w.abs();
            worst = worst.max(rel);
            assert!(rel < 1e-4, "example {i} ending {e}: {} vs transformers {w}", got.log_likelihood[e]);
        }
        assert_eq!(got.pred, want["pred"].as_u64().unwrap() as usize, "example {i}");
        assert_eq!(got.pred_norm, want["pred_norm"].as_u64().unwrap() as usize, "example {i}");
        assert_eq!(got.label, want["label"].as_u64().unwrap() as usize, "example {i}");
    }
    let acc = expected.iter().filter(|e| e["pred"] == e["label"]).count() as f64 / 8.0;
    let acc_norm = expected.iter().filter(|e| e["pred_norm"] == e["label"]).count() as f64 / 8.0;
    assert_eq!((score.n, score.acc, score.acc_norm), (8, acc, acc_norm));
    eprintln!("HellaSwag fixture: largest relative difference from transformers {worst:.1e}");

    // A model whose vocabulary cannot spell the examples: named, with the fix.
    let chars = Tokenizer::Char(CharTokenizer::from_corpus("abc "));
    let e = mlx_gpt_train::hellaswag::score(&mut model, &chars, &examples, 3, &mut |_, _| {}).unwrap_err().to_string();
    assert!(e.contains("HellaSwag example 0") && e.contains("GPT-2's BPE"), "{e}");
}

fn mlx_gpt(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mlx-gpt")).args(args).output().expect("run mlx-gpt")
}

/// `mlx-gpt eval --eval_tasks hellaswag` on a Hugging Face folder, without a prepared
/// dataset, as a user scores GPT-2; then what goes wrong, named.
#[test]
fn eval_scores_hellaswag_from_the_command_line() {
    let Some(shared) = common::shared() else { return };
    let fix = common::root().join("tests/fixtures/hellaswag_tiny");
    let data = common::Scratch::new("hellaswag-cli");
    let bpe = shared.join("tokenizers/gpt2");
    let model = fix.join("model");
    let run = |extra: &[&str]| {
        let d = data.path().display().to_string();
        let (m, b) = (model.display().to_string(), bpe.display().to_string());
        let mut a = vec!["eval", "eval_gpt2", "--init_from", &m, "--data_dir", &d, "--tokenizer", &b];
        a.extend(["--block_size", "64", "--out_dir", &d]);
        a.extend(extra);
        mlx_gpt(&a)
    };
    // No HellaSwag file yet: named, with the command that gets it.
    let out = run(&["--eval_tasks", "hellaswag"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cargo xtask fetch-data hellaswag"), "{err}");
    // An unknown task: named, with the known ones.
    let err = String::from_utf8_lossy(&run(&["--eval_tasks", "winogrande"]).stderr).into_owned();
    assert!(err.contains("unknown task 'winogrande'") && err.contains("hellaswag"), "{err}");

    std::fs::create_dir_all(data.path().join("hellaswag")).unwrap();
    std::fs::copy(fix.join("examples.jsonl"), hellaswag::path_in(data.path())).unwrap();
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(fix.join("expected.json")).unwrap()).unwrap();
    let ex = expected["examples"].as_array().unwrap();
    let share = |key: &str, n: usize| ex[..n].iter().filter(|e| e[key] == e["label"]).count() as f64 / n as f64;
    for (extra, n) in
        [(&["--eval_tasks", "hellaswag"][..], 8), (&["--eval_tasks", "[\"hellaswag\"]", "--eval_limit", "3"][..], 3)]
    {
        let out = run(extra);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        let line =
            format!("hellaswag: acc {:.4}, acc_norm {:.4} over {n} examples", share("pred", n), share("pred_norm", n));
        assert!(stdout.contains(&line), "{line}\n{stdout}");
    }
}

/// A download that is not the published file (cut short, or changed) is refused by its
/// git blob id, named, and not kept.
#[test]
fn a_hellaswag_download_that_is_not_the_published_file_is_refused() {
    let server = common::http::Server::start();
    let fix = common::root().join("tests/fixtures/hellaswag_tiny/examples.jsonl");
    server.add("/rowanz/hellaswag/master/data/hellaswag_val.jsonl", std::fs::read(&fix).unwrap());
    let data = common::Scratch::new("hellaswag-fetch");
    let downloader = mlx_gpt_data::download::Downloader::new().quiet(true).with_mirror(Some(server.base.clone()));
    let e = hellaswag::fetch(data.path(), &downloader, None).unwrap_err().to_string();
    assert!(e.contains("is not HellaSwag's validation set") && e.contains(hellaswag::GIT_BLOB_SHA1), "{e}");
    assert!(!hellaswag::path_in(data.path()).exists());
    assert_eq!(server.gets("/rowanz/hellaswag/master/data/hellaswag_val.jsonl").len(), 1);
}
