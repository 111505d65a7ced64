//! Training end to end through the `mlx-gpt` binary: Tiny Shakespeare prepared from
//! `../shared`, a small model that must learn, exact resume after SIGKILL, Ctrl-C,
//! damaged checkpoints, configuration errors, sampling and evaluation.

mod common;

use mlx_gpt_train::metrics::{self, Record};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Tiny Shakespeare, character-level, prepared once per test binary.
fn data_dir() -> Option<PathBuf> {
    common::shakespeare_char_data("e2e-data")
}

/// A model small enough for CI: 2 layers, 64 wide, context 32.
fn tiny(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "baby_shakespeare_char",
        "--n_layer",
        "2",
        "--n_head",
        "2",
        "--n_embd",
        "64",
        "--block_size",
        "32",
        "--batch_size",
        "16",
        "--eval_iters",
        "10",
        "--log_interval",
        "1",
        "--learning_rate",
        "3e-3",
        "--min_lr",
        "3e-4",
        "--warmup_iters",
        "20",
        "--peak_flops",
        "1e11",
        // The exact val loss at the end: tested once, below, not paid by every run.
        "--eval_full",
        "false",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(["--data_dir".into(), data.display().to_string(), "--out_dir".into(), out.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn mlx_gpt(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mlx-gpt")).args(args).output().expect("run mlx-gpt")
}

/// `sample` of one text after "ROMEO:" from the run in `out`.
fn sample_args(out: &Path, max_new_tokens: usize, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> =
        ["sample", "--out-dir", &out.display().to_string(), "--start", "ROMEO:", "--num-samples", "1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    a.extend(["--max-new-tokens".to_string(), max_new_tokens.to_string()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn failure(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure:\n{}", String::from_utf8_lossy(&out.stdout));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn train_losses(out: &Path) -> Vec<(usize, f64)> {
    metrics::read(&out.join("metrics.jsonl"))
        .into_iter()
        .filter_map(|r| match r {
            Record::Train { iter, loss, .. } => Some((iter, loss)),
            _ => None,
        })
        .collect()
}

fn eval_losses(out: &Path) -> Vec<(usize, f64, f64)> {
    metrics::read(&out.join("metrics.jsonl"))
        .into_iter()
        .filter_map(|r| match r {
            Record::Eval { iter, train_loss, val_loss } => Some((iter, train_loss, val_loss)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_small_model_learns_and_can_be_sampled_and_evaluated() {
    let Some(data) = data_dir() else { return };
    let run = common::Scratch::new("learn");
    let out = run.path().join("out");
    let cfg = ["--max_iters", "300", "--lr_decay_iters", "300", "--eval_interval", "100", "--eval_full", "true"];
    let stdout = ok(&mlx_gpt(&tiny(&data, &out, &cfg)));
    assert!(stdout.contains("final: iter 300"), "{stdout}");
    // The exact val loss: every one of the split's 111,540 − 1 predictions, in metrics.jsonl
    // too, near the 10-batch estimate; bits per byte is loss / ln 2 (ASCII: a byte a token).
    let exact = metrics::read(&out.join("metrics.jsonl"))
        .into_iter()
        .find_map(|r| match r {
            Record::Exact { iter: 300, loss, bits_per_byte, .. } => Some((loss, bits_per_byte.unwrap())),
            _ => None,
        })
        .expect("an exact record");
    let line = format!("exact val loss {:.4}, {:.4} bits per byte over all 111539 tokens", exact.0, exact.1);
    assert!(stdout.contains(&line), "{stdout}");
    assert!((exact.1 - exact.0 / std::f64::consts::LN_2).abs() < 1e-9, "{exact:?}");
    let evals = eval_losses(&out);
    assert_eq!(evals.iter().map(|e| e.0).collect::<Vec<_>>(), vec![0, 100, 200, 300]);
    // Start: ≈ ln 65 = 4.17 (uniform over the vocabulary). A model that predicts each
    // character from its unigram frequency alone reaches ≈ 3.3; below 2.6 it must be using
    // the preceding characters.
    assert!((evals[0].2 - 65f64.ln()).abs() < 0.15, "{evals:?}");
    assert!(evals[3].2 < 2.6, "val loss after 300 iterations: {evals:?}");
    assert!((exact.0 - evals[3].2).abs() < 0.1, "exact {exact:?}, estimate {evals:?}");
    assert!(out.join("loss.svg").is_file() && out.join("config.toml").is_file());

    // Sampling: deterministic for a seed, starts from the prompt, same with and without the cache.
    let sample = |extra: &[&str]| ok(&mlx_gpt(&sample_args(&out, 60, extra)));
    let first = sample(&["--seed", "7"]);
    assert!(first.starts_with("ROMEO:"), "{first}");
    assert!(first.chars().count() >= 66, "{first}");
    assert_eq!(sample(&["--seed", "7"]), first);
    assert_eq!(sample(&["--seed", "7", "--no-kv-cache"]), first);
    assert_ne!(sample(&["--seed", "8"]), first);
    // bfloat16 matrices for decoding (what they compute is tested in the model crate):
    // the prompt, then as many new characters, the same for a seed.
    let half = sample(&["--seed", "7", "--decode-dtype", "bfloat16"]);
    assert!(half.starts_with("ROMEO:") && half.chars().count() >= 66, "{half}");
    assert_eq!(sample(&["--seed", "7", "--decode-dtype", "bfloat16"]), half);
    let bad = mlx_gpt(&[
        "sample".into(),
        "--out-dir".into(),
        out.display().to_string(),
        "--decode-dtype".into(),
        "float16".into(),
    ]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("float16"));
    // A checkpoint folder given to --init-from samples with the run's own characters.
    let ckpt = out.join("checkpoints/iter-0000300");
    let from_folder = |dir: &Path| {
        mlx_gpt(&[
            "sample".into(),
            "--init-from".into(),
            dir.display().to_string(),
            "--start".into(),
            "ROMEO:".into(),
            "--num-samples".into(),
            "1".into(),
            "--max-new-tokens".into(),
            "60".into(),
            "--seed".into(),
            "7".into(),
        ])
    };
    assert_eq!(ok(&from_folder(&ckpt)), first);
    // A character table shorter than the model's vocabulary: named, not silent gaps.
    let copy = run.path().join("ckpt-copy");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["model.safetensors", "config.json", "state.json"] {
        std::fs::copy(ckpt.join(f), copy.join(f)).unwrap();
    }
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(copy.join("state.json")).unwrap()).unwrap();
    state["tokenizer"]["itos"].as_array_mut().expect("a character table").truncate(10);
    std::fs::write(copy.join("state.json"), state.to_string()).unwrap();
    let err = failure(&from_folder(&copy));
    assert!(err.contains("character table has 10 entries and the model 65"), "{err}");

    // Evaluation of the checkpoint reproduces the final evaluation.
    let eval = ok(&mlx_gpt(&{
        let mut a = tiny(&data, &out, &[&cfg[..], &["--init_from", "resume"]].concat());
        a[0] = "eval".into();
        a
    }));
    assert!(eval.contains(&format!("val loss {:.4}", evals[3].2)), "{eval}\n{evals:?}");
    assert!(eval.contains(&line), "{eval}");
}

/// `metrics.jsonl` with the values that measure time (`ms`, `tok_per_s`, `mfu`) replaced
/// by 0, everything else as written, byte for byte.
fn metrics_without_timing(out: &Path) -> String {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let mut masked = String::new();
    for line in text.lines() {
        let mut line = line.to_string();
        for key in ["\"ms\":", "\"tok_per_s\":", "\"mfu\":"] {
            if let Some(at) = line.find(key) {
                let from = at + key.len();
                let to = from + line[from..].find([',', '}']).unwrap();
                line.replace_range(from..to, "0");
            }
        }
        masked.push_str(&line);
        masked.push('\n');
    }
    masked
}

/// Start run `out` (training or resuming), SIGKILL it once it has logged iteration
/// `past`, and return `metrics.jsonl` as it was left and the newest checkpoint's iteration.
fn kill_past(args: &[String], out: &Path, past: usize) -> (String, usize) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mlx-gpt"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while train_losses(out).last().is_none_or(|l| l.0 < past) {
        assert!(Instant::now() < deadline, "{} made no progress", out.display());
        assert!(child.try_wait().unwrap().is_none(), "{} ended before it was killed", out.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let newest = mlx_gpt_train::checkpoint::list(out).last().expect("a checkpoint before the kill").0;
    (std::fs::read_to_string(out.join("metrics.jsonl")).unwrap(), newest)
}

#[test]
fn resume_after_sigkill_continues_exactly() {
    let Some(data) = data_dir() else { return };
    let run = common::Scratch::new("resume");
    let (a, b) = (run.path().join("a"), run.path().join("b"));
    let cfg = [
        "--max_iters",
        "40",
        "--lr_decay_iters",
        "40",
        "--eval_interval",
        "10",
        "--always_save_checkpoint",
        "true",
        "--dropout",
        "0.1",
    ];
    ok(&mlx_gpt(&tiny(&data, &a, &cfg)));

    // The same run, killed without warning twice: past its checkpoint at 10, and again
    // after resuming, past the one at 30.
    let resume = tiny(&data, &b, &[&cfg[..], &["--init_from", "resume"]].concat());
    let mut kills = vec![kill_past(&tiny(&data, &b, &cfg), &b, 13)];
    kills.push(kill_past(&resume, &b, 33));
    let resumed = ok(&mlx_gpt(&resume));
    assert!(resumed.contains("final: iter 40"), "{resumed}");
    let final_text = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    for (text, newest) in &kills {
        assert!(*newest >= 10, "killed before a checkpoint: {newest}");
        // What was logged before the checkpoint resumed from stays byte for byte.
        let kept: String = text
            .lines()
            .filter(|l| metrics::read_line(l).is_some_and(|r| r.iter() < *newest))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(final_text.starts_with(&kept), "the lines before iteration {newest} changed on resume");
    }
    // Bit for bit: every logged loss, learning rate, gradient norm and evaluation, as
    // written, equals the uninterrupted run's; only the timings differ.
    assert_eq!(metrics_without_timing(&b), metrics_without_timing(&a));
    assert_eq!(train_losses(&a).len(), 40);
    assert_eq!(eval_losses(&a).len(), 5);
}

/// Trains `cfg` to iteration 20 in `a`, and to 10 then resumed to 20 in `b`: the loss falls
/// and both runs log the same, byte for byte.
fn learns_and_resumes_exactly(data: &Path, a: &Path, b: &Path, cfg: &[&str]) {
    let to = |n: &'static str| [cfg, &["--max_iters", n]].concat();
    let whole = ok(&mlx_gpt(&tiny(data, a, &to("20"))));
    assert!(whole.contains("final: iter 20"), "{whole}");
    ok(&mlx_gpt(&tiny(data, b, &to("10"))));
    ok(&mlx_gpt(&tiny(data, b, &[&to("20")[..], &["--init_from", "resume"]].concat())));
    assert_eq!(metrics_without_timing(b), metrics_without_timing(a));
    let losses = train_losses(a);
    assert!(losses[losses.len() - 1].1 < losses[0].1 - 0.5, "{losses:?}");
}

/// `--optimizer muon`: Muon for the blocks' matrices, AdamW for the rest; it learns, and a
/// run stopped at a checkpoint and resumed logs exactly what an uninterrupted one does.
#[test]
fn muon_trains_and_resumes_exactly() {
    let Some(data) = data_dir() else { return };
    let run = common::Scratch::new("muon");
    let (a, b) = (run.path().join("a"), run.path().join("b"));
    let cfg = [
        "--optimizer",
        "muon",
        "--muon_lr",
        "0.02",
        "--warmup_iters",
        "5",
        "--lr_decay_iters",
        "20",
        "--eval_interval",
        "10",
    ];
    learns_and_resumes_exactly(&data, &a, &b, &cfg);
    // Resumed without Muon, the checkpoint's optimizer state is refused, saying why.
    let text = failure(&mlx_gpt(&tiny(&data, &b, &["--max_iters", "30", "--init_from", "resume"])));
    assert!(text.contains("muon"), "{text}");
}

/// `--arch modern` (with grouped-query attention, Muon and the embedding and head at their
/// own learning rates): it learns, resumes exactly, samples from its checkpoint with the
/// KV cache, exports for mlx-lm, and resuming it as a GPT-2 is refused, naming `arch`.
#[test]
fn modern_trains_resumes_exactly_samples_and_exports() {
    let Some(data) = data_dir() else { return };
    let run = common::Scratch::new("modern");
    let (a, b) = (run.path().join("a"), run.path().join("b"));
    let cfg = [
        "--arch",
        "modern",
        "--n_kv_head",
        "1",
        "--optimizer",
        "muon",
        "--embedding_lr",
        "0.3",
        "--head_lr",
        "0.01",
        "--warmup_iters",
        "5",
        "--lr_decay_iters",
        "20",
        "--eval_interval",
        "10",
    ];
    learns_and_resumes_exactly(&data, &a, &b, &cfg);
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(mlx_gpt_train::checkpoint::latest(&a).unwrap().join("config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!((config["model_type"].as_str(), config["n_kv_head"].as_u64()), (Some("mlx_gpt_modern"), Some(1)));

    let sample = ok(&mlx_gpt(&sample_args(&a, 40, &[])));
    assert!(sample.contains("ROMEO:") && sample.len() > 40, "{sample}");
    let exported = run.path().join("mlx-lm");
    ok(&mlx_gpt(&["export", "--out-dir", &a.to_string_lossy(), "--to", &exported.to_string_lossy()].map(String::from)));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(exported.join("config.json")).unwrap()).unwrap();
    assert_eq!((config["model_type"].as_str(), config["num_key_value_heads"].as_u64()), (Some("nanochat"), Some(1)));

    let text =
        failure(&mlx_gpt(&tiny(&data, &b, &["--max_iters", "30", "--init_from", "resume", "--optimizer", "muon"])));
    assert!(text.contains("arch: checkpoint modern, config gpt2"), "{text}");
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_damaged_or_incompatible_ones_are_refused() {
    let Some(data) = data_dir() else { return };
    let run = common::Scratch::new("ctrlc");
    let out = run.path().join("out");
    let child = Command::new(env!("CARGO_BIN_EXE_mlx-gpt"))
        .args(tiny(&data, &out, &["--max_iters", "100000", "--eval_interval", "1000"]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while train_losses(&out).len() < 5 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: sending SIGINT to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let output = child.wait_with_output().unwrap();
    // Interrupted is not finished: 130, as a shell reports a program stopped by Ctrl-C.
    assert_eq!(output.status.code(), Some(130), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("interrupted at iter") && stdout.contains("--init_from resume"), "{stdout}");
    assert!(!stdout.contains("final:"), "{stdout}");
    let ckpts = mlx_gpt_train::checkpoint::list(&out);
    assert_eq!(ckpts.len(), 1);
    let (iter, dir) = ckpts[0].clone();
    assert!(iter >= 5);

    // Evaluation needs the weights only: without the optimizer's file it still runs;
    // resuming training does not, and names the file.
    let opt = dir.join("optimizer.safetensors");
    std::fs::rename(&opt, run.path().join("opt.bak")).unwrap();
    let mut eval = tiny(&data, &out, &["--init_from", "resume"]);
    eval[0] = "eval".into();
    assert!(ok(&mlx_gpt(&eval)).contains("val loss"));
    let err = failure(&mlx_gpt(&tiny(&data, &out, &["--init_from", "resume"])));
    assert!(err.contains("optimizer.safetensors"), "{err}");
    std::fs::rename(run.path().join("opt.bak"), &opt).unwrap();
    // Incompatible configuration: the difference is named.
    let err = failure(&mlx_gpt(&tiny(&data, &out, &["--init_from", "resume", "--n_layer", "3"])));
    assert!(err.contains("n_layer: checkpoint 2, config 3"), "{err}");
    // Damaged weights: refused, naming the file.
    let weights = dir.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 3]).unwrap();
    let err = failure(&mlx_gpt(&tiny(&data, &out, &["--init_from", "resume"])));
    assert!(err.contains("model.safetensors") && err.contains("contents changed after it was written"), "{err}");
    // A checkpoint from before the checksums (DONE holds the iteration only): the
    // safetensors parser names the damage.
    std::fs::write(dir.join("DONE"), iter.to_string()).unwrap();
    let err = failure(&mlx_gpt(&tiny(&data, &out, &["--init_from", "resume"])));
    assert!(err.contains("model.safetensors") && err.contains("not a valid safetensors file"), "{err}");
    // A checkpoint folder without its DONE marker is not a checkpoint.
    std::fs::remove_file(dir.join("DONE")).unwrap();
    let err = failure(&mlx_gpt(&tiny(&data, &out, &["--init_from", "resume"])));
    assert!(err.contains("nothing to resume"), "{err}");
}

#[test]
fn configuration_errors_name_the_problem() {
    let run = common::Scratch::new("config");
    let data = run.path().join("no-data");
    let out = run.path().join("out");
    let err = failure(&mlx_gpt(&tiny(&data, &out, &["--learning_rat", "1"])));
    assert!(err.contains("learning_rat") && err.contains("valid keys") && err.contains("learning_rate"), "{err}");
    let err = failure(&mlx_gpt(&tiny(&data, &out, &["--max_iters", "lots"])));
    assert!(err.contains("max_iters"), "{err}");
    let err = failure(&mlx_gpt(&tiny(&data, &out, &["--n_head", "3"])));
    assert!(err.contains("n_embd (64) must be divisible by n_head (3)"), "{err}");
    let err = failure(&mlx_gpt(&tiny(&data, &out, &[])));
    assert!(err.contains("cargo xtask fetch-data shakespeare_char"), "{err}");
    let err = failure(&mlx_gpt(&["train".into(), "no_such_preset".into()]));
    assert!(err.contains("unknown config 'no_such_preset'"), "{err}");
    let err = failure(&mlx_gpt(&["sample".into(), "--init-from".into(), "gpt2-xl".into()]));
    assert!(err.contains("cargo xtask fetch-gpt2 gpt2-xl"), "{err}");
    // A run far larger than the machine: refused with the numbers, before it starts.
    let data_ok = data_dir();
    if let Some(d) = &data_ok {
        let huge =
            ["--n_layer", "48", "--n_embd", "6400", "--n_head", "50", "--block_size", "1024", "--batch_size", "64"];
        let err = failure(&mlx_gpt(&tiny(d, &out, &huge)));
        assert!(err.contains("this run needs about") && err.contains("MiB are available"), "{err}");
        assert!(err.contains("--memory_check false"), "{err}");
    }
    for cmd in ["train", "sample", "eval", "bench", "info"] {
        assert!(ok(&mlx_gpt(&[cmd.into(), "--help".into()])).contains("Usage"), "{cmd} --help");
    }
}

/// MFU divides by the CPU's FMA ceiling, so it cannot pass 100 % on the real baby GPT
/// (before, it divided by a BLAS matmul and read 186–262 % where OpenBLAS ran a generic
/// kernel); the header names the kernel and the ceiling.
#[test]
fn mfu_of_a_short_run_stays_below_the_ceiling() {
    let Some(data) = data_dir() else { return };
    let run = common::Scratch::new("mfu");
    let out = run.path().join("out");
    let args: Vec<String> = [
        "--log-format",
        "json",
        "train",
        "baby_shakespeare_char",
        "--max_iters",
        "12",
        "--eval_interval",
        "1000",
        "--eval_iters",
        "1",
        "--log_interval",
        "1",
        "--data_dir",
        &data.display().to_string(),
        "--out_dir",
        &out.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // Its own cache folder: the ceiling is measured in this run, not read from the user's.
    let output = Command::new(env!("CARGO_BIN_EXE_mlx-gpt"))
        .args(&args)
        .env("XDG_CACHE_HOME", run.path().join("cache"))
        .output()
        .expect("run mlx-gpt");
    ok(&output);
    assert!(run.path().join("cache/mlx-gpt/peak-flops.json").is_file());
    let log = String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout);
    assert!(log.contains("BLAS kernel: "), "{log}");
    // The training header names the kernels the model runs.
    assert!(log.contains("kernels: "), "{log}");
    // No colour codes; with --log-format json every log line is a JSON object whose
    // fields carry the step's figures.
    assert!(!log.contains('\x1b'), "{log}");
    let json: Vec<serde_json::Value> =
        log.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).expect(l)).collect();
    assert!(json.iter().any(|v| v["fields"]["iter"].is_u64() && v["fields"]["mfu"].is_f64()), "{log}");
    assert!(log.contains("MFU ceiling: ") && log.contains("FMA loop"), "{log}");
    let mfus: Vec<f64> = metrics::read(&out.join("metrics.jsonl"))
        .into_iter()
        .filter_map(|r| match r {
            Record::Train { iter, mfu, .. } if iter > 0 => Some(mfu),
            _ => None,
        })
        .collect();
    assert!(mfus.len() >= 10, "{mfus:?}");
    assert!(mfus.iter().all(|&m| m > 0.0 && m <= 1.0), "MFU outside (0, 100 %]: {mfus:?}");
}

/// A run that diverges stops with a named error and exits non-zero, without saving or
/// pruning anything of the diverged weights; a resume does not re-save the checkpoint it
/// loaded; a damaged newest checkpoint is skipped for the newest one that loads.
#[test]
fn a_diverging_run_keeps_its_finite_checkpoints_and_resume_falls_back_past_damage() {
    let Some(data) = data_dir() else { return };
    let run = common::Scratch::new("diverge");
    let out = run.path().join("out");
    let base = ["--eval_interval", "10", "--always_save_checkpoint", "true", "--keep_last", "2", "--warmup_iters", "5"];
    ok(&mlx_gpt(&tiny(&data, &out, &[&base[..], &["--max_iters", "20", "--lr_decay_iters", "20"]].concat())));
    let iters = |out: &Path| mlx_gpt_train::checkpoint::list(out).into_iter().map(|c| c.0).collect::<Vec<_>>();
    assert_eq!(iters(&out), vec![10, 20]);
    let done20 = out.join("checkpoints/iter-0000020/DONE");
    // Every file of a checkpoint with the same permissions (safetensors made its own 0600).
    let mode = |f: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(out.join("checkpoints/iter-0000020").join(f)).unwrap().permissions().mode()
    };
    assert_eq!(mode("optimizer.safetensors"), mode("model.safetensors"));
    let written = std::fs::metadata(&done20).unwrap().modified().unwrap();

    let diverge = [
        "--init_from",
        "resume",
        "--max_iters",
        "60",
        "--lr_decay_iters",
        "60",
        "--learning_rate",
        "1e6",
        "--min_lr",
        "1e5",
        "--grad_clip",
        "0",
    ];
    let err = failure(&mlx_gpt(&tiny(&data, &out, &[&base[..], &diverge[..]].concat())));
    assert!(err.contains("training diverged at iter") && err.contains("not finite"), "{err}");
    assert!(err.contains("iter-0000020") && err.contains("is intact"), "{err}");
    // Nothing was saved or pruned, and the loaded checkpoint was not written again.
    assert_eq!(iters(&out), vec![10, 20]);
    assert_eq!(std::fs::metadata(&done20).unwrap().modified().unwrap(), written);

    // Non-finite hyper-parameters are refused before anything runs.
    let err = failure(&mlx_gpt(&tiny(&data, &out, &["--learning_rate", "nan"])));
    assert!(err.contains("learning_rate must be a finite number"), "{err}");

    // The newest checkpoint damaged: the resume takes iter 10 and says what it skipped.
    // (No sampler states: that had been an index out of bounds.)
    let state_path = out.join("checkpoints/iter-0000020/state.json");
    let mut state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&state_path).unwrap()).unwrap();
    state["samplers"] = serde_json::json!([]);
    std::fs::write(&state_path, state.to_string()).unwrap();
    // ... with DONE's checksum updated to match, so the state itself is what is judged.
    let done_path = out.join("checkpoints/iter-0000020/DONE");
    let mut done: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&done_path).unwrap()).unwrap();
    done["sha256"]["state.json"] = mlx_gpt_data::token_file::sha256_file(&state_path).unwrap().into();
    std::fs::write(&done_path, done.to_string()).unwrap();
    let resumed = mlx_gpt(&tiny(
        &data,
        &out,
        &[&base[..], &["--init_from", "resume", "--max_iters", "30", "--lr_decay_iters", "30"]].concat(),
    ));
    let stdout = ok(&resumed);
    assert!(stdout.contains("final: iter 30"), "{stdout}");
    // The log (on stdout) names the checkpoint skipped and why.
    assert!(stdout.contains("skipped a damaged checkpoint") && stdout.contains("iter-0000020"), "{stdout}");
    assert!(stdout.contains("0 batch-sampler states for a world size of 1"), "{stdout}");
    // It trained on from iter 10: the evaluation at 20 was made (and recorded) once more
    // after the truncation, and iter-20 was written anew.
    assert_eq!(eval_losses(&out).iter().filter(|e| e.0 == 20).count(), 1);
    assert_ne!(std::fs::metadata(&done20).unwrap().modified().unwrap(), written);

    // One float changed in the newest weights: DONE's checksum catches it. Sampling names
    // the file; a resume passes over it to the checkpoint before.
    assert_eq!(iters(&out), vec![20, 30]);
    let weights = out.join("checkpoints/iter-0000030/model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    std::fs::write(&weights, &bytes).unwrap();
    let sample = mlx_gpt(&[
        "sample".into(),
        "--out-dir".into(),
        out.display().to_string(),
        "--max-new-tokens".into(),
        "3".into(),
    ]);
    let err = failure(&sample);
    assert!(
        err.contains("iter-0000030/model.safetensors") && err.contains("contents changed after it was written"),
        "{err}"
    );
    let resumed = ok(&mlx_gpt(&tiny(
        &data,
        &out,
        &[&base[..], &["--init_from", "resume", "--max_iters", "40", "--lr_decay_iters", "40"]].concat(),
    )));
    assert!(resumed.contains("skipped a damaged checkpoint") && resumed.contains("contents changed"), "{resumed}");
    assert!(resumed.contains("final: iter 40"), "{resumed}");
    // Each damaged checkpoint was moved aside, out of prune's count (it would have had the
    // run's new checkpoints pruned in its place), and kept for inspection.
    for n in [20, 30] {
        assert!(out.join(format!("checkpoints/damaged-iter-00000{n}")).is_dir(), "damaged-iter-{n}");
    }
    assert_eq!(iters(&out), vec![30, 40]);
}

/// One training run per run directory: a second is refused and names the first; SIGTERM
/// (what docker, systemd and Slurm send) finishes the step, saves a checkpoint and exits
/// 130 like Ctrl-C.
#[test]
fn a_second_writer_is_refused_and_sigterm_saves_a_checkpoint() {
    let Some(data) = data_dir() else { return };
    let run = common::Scratch::new("lock");
    let out = run.path().join("out");
    let child = Command::new(env!("CARGO_BIN_EXE_mlx-gpt"))
        .args(tiny(&data, &out, &["--max_iters", "100000", "--eval_interval", "5", "--keep_last", "1"]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while mlx_gpt_train::checkpoint::list(&out).is_empty() || train_losses(&out).len() < 7 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = failure(&mlx_gpt(&tiny(&data, &out, &["--max_iters", "10"])));
    assert!(err.contains("is in use by another training run") && err.contains(&format!("pid {}", child.id())), "{err}");
    // Readers are not locked out: sampling from the running training's checkpoint works.
    let sample = ok(&mlx_gpt(&[
        "sample".into(),
        "--out-dir".into(),
        out.display().to_string(),
        "--max-new-tokens".into(),
        "5".into(),
        "--num-samples".into(),
        "1".into(),
    ]));
    assert!(!sample.is_empty());

    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("interrupted at iter"));
    assert_eq!(mlx_gpt_train::checkpoint::list(&out).len(), 1);
    // The lock went with the process: the run can be resumed.
    let at = mlx_gpt_train::checkpoint::list(&out)[0].0;
    let to = (at + 2).to_string();
    let resumed =
        ok(&mlx_gpt(&tiny(&data, &out, &["--init_from", "resume", "--max_iters", &to, "--lr_decay_iters", "100000"])));
    assert!(resumed.contains(&format!("final: iter {to}")), "{resumed}");
}

/// Issue #20 end to end: a folder of the user's text (.txt and .jsonl) becomes a trained
/// tokenizer, token files in its vocabulary, a trained baby model and samples decoded
/// with that tokenizer, which the checkpoint carries (no flag, no dataset needed).
#[test]
fn your_text_your_tokenizer_from_folder_to_samples() {
    let Some(shared) = common::shared() else { return };
    let run = common::Scratch::new("own-tokenizer");
    let corpus = run.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let text = std::fs::read_to_string(shared.join("datasets/tinyshakespeare/input.txt")).unwrap();
    let part: String = text.chars().take(200_000).collect();
    let (a, b) = part.split_at(part.char_indices().nth(150_000).unwrap().0);
    std::fs::write(corpus.join("plays.txt"), a).unwrap();
    let lines: Vec<String> = b
        .split("\n\n")
        .filter(|s| !s.is_empty())
        .map(|s| serde_json::json!({ "text": s, "source": "shakespeare" }).to_string())
        .collect();
    std::fs::write(corpus.join("scenes.jsonl"), lines.join("\n")).unwrap();
    let data = run.path().join("data");
    let opts = mlx_gpt_data::datasets::PrepareOptions {
        data_dir: data.clone(),
        downloader: mlx_gpt_data::download::Downloader::new().quiet(true),
        tokenizer: Some(shared.join("tokenizers/gpt2")),
        from: vec![corpus.clone()],
        train_tokenizer: Some(600),
    };
    let p = mlx_gpt_data::datasets::prepare("mytext", &opts).unwrap();
    assert_eq!(p.meta.vocab_size, 600);
    // The report, saved beside the token files (a 4,096-token BPE beating GPT-2's on its
    // own text is tests/data_pipeline.rs's; 600 tokens is too few for that).
    let report: mlx_gpt_data::datasets::TokenizerReport =
        serde_json::from_str(&std::fs::read_to_string(p.dir.join(mlx_gpt_data::datasets::REPORT_FILE)).unwrap())
            .unwrap();
    let docs = mlx_gpt_data::corpus::read_documents(&corpus).unwrap();
    assert_eq!(report.vocab_size, 600);
    let bytes = docs.iter().map(|d| d.len() as u64).sum::<u64>();
    assert_eq!((report.bytes, report.documents), (bytes, docs.len() as u64));
    // The corpus is under one part: GPT-2's BPE is compared on all of it.
    let gpt2 = report.gpt2.as_ref().expect("GPT-2's files were given");
    assert!(gpt2.bytes == bytes && gpt2.gpt2_bytes_per_token > 3.0 && gpt2.bytes_per_token > 2.0, "{report:?}");
    assert!(report.train_bytes_per_token > 2.0 && report.val_bytes_per_token > 2.0, "{report:?}");
    let tok_file = p.dir.join(mlx_gpt_data::tokenizer::TRAINED_FILE);
    let sha = mlx_gpt_data::token_file::sha256_file(&tok_file).unwrap();
    assert_eq!(p.meta.tokenizer, mlx_gpt_data::tokenizer::TokenizerSpec::Trained { sha256: sha.clone(), json: None });
    // The token files decode to the documents, each followed by the separator.
    let tok = mlx_gpt_data::datasets::tokenizer_of(&p.meta, Some(&p.dir)).unwrap();
    let ids: Vec<u32> = ["train", "val"]
        .iter()
        .flat_map(|s| {
            let (f, _) = mlx_gpt_data::token_file::TokenFile::open(&p.dir, s).unwrap();
            (0..f.len()).map(move |i| f.get(i).unwrap())
        })
        .collect();
    let joined: String = docs.iter().map(|d| format!("{d}<|endoftext|>")).collect();
    assert_eq!(tok.decode(&ids).unwrap(), joined);
    // A replaced tokenizer.json is named, not silently used.
    let original = std::fs::read(&tok_file).unwrap();
    std::fs::write(&tok_file, b"{}").unwrap();
    let e = mlx_gpt_data::datasets::tokenizer_of(&p.meta, Some(&p.dir)).unwrap_err().to_string();
    assert!(e.contains("tokenizer.json") && e.contains("sha256"), "{e}");
    std::fs::write(&tok_file, original).unwrap();

    // Train a baby model on it, then sample from the checkpoint alone.
    let out = run.path().join("out");
    let cfg = ["--dataset", "mytext", "--max_iters", "40", "--lr_decay_iters", "40", "--eval_interval", "40"];
    let stdout = ok(&mlx_gpt(&tiny(&data, &out, &cfg)));
    assert!(stdout.contains("final: iter 40"), "{stdout}");
    std::fs::remove_dir_all(&data).unwrap();
    let sample = ok(&mlx_gpt(&sample_args(&out, 30, &[])));
    assert!(sample.starts_with("ROMEO:") && sample.len() > "ROMEO:".len() + 10, "{sample}");
    // The checkpoint carries the dataset's tokenizer (its very file), which is what the
    // sample was decoded with.
    let (_, ckpt) = mlx_gpt_train::checkpoint::list(&out).pop().unwrap();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["tokenizer"]["sha256"], serde_json::json!(sha), "{}", state["tokenizer"]);
    assert!(state["tokenizer"]["json"].as_str().is_some_and(|j| j.len() > 1000));
}
