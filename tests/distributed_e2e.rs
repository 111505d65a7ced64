//! Data-parallel training over MLX's ring backend, two processes on 127.0.0.1: the result
//! equals one process training on both ranks' batches; a killed rank stops the other with
//! a clear error in bounded time and the last checkpoint stays loadable; bad hostfiles and
//! busy ports are named.

mod common;

use mlx_gpt_data::batches::{BatchSampler, Order};
use mlx_gpt_data::token_file::TokenFile;
use mlx_gpt_model::{hf, Gpt, GptConfig};
use mlx_gpt_train::optimizer::{AdamW, AdamWConfig};
use mlx_gpt_train::step::{train_step, GradPath};
use mlx_gpt_train::TrainConfig;
use mlx_rs::module::ModuleParameters;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Tiny Shakespeare, character-level, prepared once per test binary.
fn data_dir() -> Option<PathBuf> {
    common::shakespeare_char_data("dist-data")
}

const TINY: &[&str] = &[
    "--n_layer",
    "2",
    "--n_head",
    "2",
    "--n_embd",
    "32",
    "--block_size",
    "16",
    "--batch_size",
    "4",
    "--eval_iters",
    "2",
    "--log_interval",
    "1",
    "--warmup_iters",
    "2",
    "--peak_flops",
    "1e11",
];

fn args(cmd: &[&str], data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
    a.extend(["train", "baby_shakespeare_char"].map(String::from));
    a.extend(TINY.iter().map(|s| s.to_string()));
    a.extend(["--data_dir".into(), data.display().to_string(), "--out_dir".into(), out.display().to_string()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn mlx_gpt(a: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mlx-gpt")).args(a).output().unwrap()
}

#[test]
fn two_ranks_equal_one_process_on_both_ranks_batches() {
    let Some(data) = data_dir() else { return };
    let run = common::Scratch::new("dist-eq");
    let out = run.path().join("out");
    let steps = 4;
    let extra = [
        "--max_iters",
        "4",
        "--lr_decay_iters",
        "4",
        "--eval_interval",
        "4",
        "--always_save_checkpoint",
        "true",
        "--gradient_accumulation_steps",
        "2",
        "--learning_rate",
        "1e-3",
    ];
    let o = mlx_gpt(&args(&["launch", "-n", "2", "--"], &data, &out, &extra));
    assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(stdout.matches("final: iter 4").count(), 1, "only rank 0 reports: {stdout}");
    let (_, ckpt) = mlx_gpt_train::checkpoint::list(&out).pop().expect("a checkpoint at iteration 4");
    let distributed = hf::load_pretrained(&ckpt).unwrap();

    // One process: the same initial model; each step averages a batch from rank 0's sampler
    // (seed) and one from rank 1's (seed + 1), as two micro-batches.
    let (args_cfg, pairs) = (Some("baby_shakespeare_char"), {
        let mut v: Vec<(String, String)> = TINY.chunks(2).map(|p| (p[0].into(), p[1].into())).collect();
        v.extend(extra.chunks(2).map(|p| (p[0].to_string(), p[1].to_string())));
        v
    });
    let c = TrainConfig::resolve(args_cfg, &pairs).unwrap();
    let meta_vocab = 65;
    let config = GptConfig {
        block_size: c.block_size,
        vocab_size: meta_vocab,
        n_layer: c.n_layer,
        n_head: c.n_head,
        n_embd: c.n_embd,
        dropout: 0.0,
        bias: c.bias,
        ..GptConfig::baby(meta_vocab)
    };
    let dataset = data.join("shakespeare_char");
    // `ranks`: which samplers feed the two micro-batches of each step.
    let single = |ranks: [u64; 2]| -> Gpt {
        let mut model = Gpt::new(config.clone(), c.seed).unwrap();
        let mut opt = AdamW::new(AdamWConfig::from(&c));
        let mut samplers: Vec<BatchSampler> = ranks
            .iter()
            .map(|r| {
                BatchSampler::new(
                    TokenFile::open(&dataset, "train").unwrap().0,
                    c.batch_size,
                    c.block_size,
                    Order::Random,
                    c.seed + r,
                )
                .unwrap()
            })
            .collect();
        let mut turn = 0;
        for iter in 0..steps {
            let lr = mlx_gpt_train::schedule::get_lr(iter, &c) as f32;
            let mut next = || {
                turn += 1;
                Ok(samplers[(turn - 1) % 2].next_batch().unwrap())
            };
            train_step(&mut model, &mut opt, &mut next, 2, lr, c.grad_clip as f32, c.seed, iter, GradPath::Eager, None)
                .unwrap();
        }
        model
    };
    let largest_difference = |m: &Gpt| {
        let theirs = distributed.parameters().flatten();
        m.parameters()
            .flatten()
            .iter()
            .map(|(k, a)| a.subtract(theirs[k]).unwrap().abs().unwrap().max(None).unwrap().item_exact::<f32>())
            .fold(0f32, f32::max)
    };
    let same = largest_difference(&single([0, 1]));
    // Float tolerance: the two runs sum gradients in different orders (and one is
    // compiled); Adam turns such differences into a small fraction of lr = 1e-3 (measured:
    // 0.4–1.1e-5), while rank 0's batches twice instead of both ranks' give ≈ 5e-3.
    assert!(same < 1e-4, "largest weight difference {same}");
    // And the comparison can tell: rank 0's batches twice give other weights.
    let other = largest_difference(&single([0, 0]));
    assert!(other > 1e-3, "rank 1's batches made no difference ({other})");
}

#[test]
fn a_killed_rank_stops_the_other_with_an_error_and_the_checkpoint_survives() {
    let Some(data) = data_dir() else { return };
    let run = common::Scratch::new("dist-kill");
    let out = run.path().join("out");
    let ports: Vec<u16> =
        (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()).collect();
    let hostfile = run.path().join("hosts.json");
    std::fs::write(&hostfile, format!("[[\"127.0.0.1:{}\"], [\"127.0.0.1:{}\"]]", ports[0], ports[1])).unwrap();
    let extra = [
        "--max_iters",
        "100000",
        "--eval_interval",
        "5",
        "--always_save_checkpoint",
        "true",
        "--gradient_accumulation_steps",
        "2",
        "--dist_timeout",
        "30",
    ];
    let spawn = |rank: usize| {
        Command::new(env!("CARGO_BIN_EXE_mlx-gpt"))
            .args(args(&[], &data, &out, &extra))
            .env("MLX_RANK", rank.to_string())
            .env("MLX_HOSTFILE", &hostfile)
            .env("OPENBLAS_NUM_THREADS", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (mut r0, mut r1) = (spawn(0), spawn(1));
    let deadline = Instant::now() + Duration::from_secs(300);
    while mlx_gpt_train::checkpoint::list(&out).is_empty() {
        assert!(Instant::now() < deadline, "no checkpoint appeared");
        for (rank, r) in [(0, &mut r0), (1, &mut r1)] {
            if let Some(status) = r.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(r.stderr.as_mut().unwrap(), &mut err).unwrap();
                panic!("rank {rank} ended early ({status}) before a checkpoint appeared:\n{err}");
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    r1.kill().unwrap(); // SIGKILL: no goodbye to its peer
    let _ = r1.wait();
    let killed = Instant::now();
    let out0 = loop {
        if r0.try_wait().unwrap().is_some() {
            break r0.wait_with_output().unwrap();
        }
        assert!(killed.elapsed() < Duration::from_secs(90), "rank 0 still running 90 s after its peer died");
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = String::from_utf8_lossy(&out0.stderr);
    assert!(!out0.status.success(), "{stderr}");
    assert!(stderr.contains("peer") && !stderr.contains("panicked"), "{stderr}");
    // The newest complete checkpoint loads.
    let (_, ckpt) = mlx_gpt_train::checkpoint::list(&out).pop().unwrap();
    let adamw = AdamWConfig::adamw(0.9, 0.99, 1e-8, 0.1);
    let loaded = mlx_gpt_train::checkpoint::load(&ckpt, adamw).unwrap();
    assert_eq!(loaded.state.world_size, 2);
    assert_eq!(loaded.state.samplers.len(), 2);
}

#[test]
fn bad_hostfiles_busy_ports_and_indivisible_accumulation_are_named() {
    let run = common::Scratch::new("dist-bad");
    let data = run.path().join("data");
    let out = run.path().join("out");
    let hostfile = run.path().join("hosts.json");
    for (content, expect) in [
        ("not json", "not JSON"),
        ("[[\"127.0.0.1\"]]", "is not host:port"),
        ("[]", "lists no rank"),
        ("[[\"127.0.0.1:1\"], [\"127.0.0.1:2\"]]", "MLX_RANK 5"),
        ("[[\"127.0.0.1:0\"], [\"127.0.0.1:2\"]]", "port 0 is no port"),
    ] {
        std::fs::write(&hostfile, content).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_mlx-gpt"))
            .args(args(&[], &data, &out, &[]))
            .env("MLX_RANK", "5")
            .env("MLX_HOSTFILE", &hostfile)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("hostfile") && err.contains(expect), "{content}: {err}");
    }
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let o = mlx_gpt(&args(&["launch", "-n", "2", "--port", &port.to_string(), "--"], &data, &out, &[]));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains(&format!("port {port} is in use")), "{err}");
    let Some(data) = data_dir() else { return };
    let o = mlx_gpt(&args(
        &["launch", "-n", "2", "--"],
        &data,
        &out,
        &["--gradient_accumulation_steps", "3", "--max_iters", "1"],
    ));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("gradient_accumulation_steps (3) must be divisible by the number of processes (2)"),
        "{err}"
    );
    assert!(err.contains("rank") && err.contains("stopping the other ranks"), "{err}");

    // One rank alone, without its peers: the same checks come before waiting for them.
    let two = format!("[[\"127.0.0.1:{}\"], [\"127.0.0.1:{}\"]]", free_port(), free_port());
    std::fs::write(&hostfile, &two).unwrap();
    let alone = |rank: &str, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_mlx-gpt"))
            .args(args(
                &[],
                &data,
                &out,
                &[&["--max_iters", "1", "--gradient_accumulation_steps", "2"][..], extra].concat(),
            ))
            .env("MLX_RANK", rank)
            .env("MLX_HOSTFILE", &hostfile)
            .output()
            .unwrap()
    };
    let t0 = Instant::now();
    let o = alone("0", &["--gradient_accumulation_steps", "3"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("must be divisible by the number of processes (2)"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(30), "it waited for its peer first");
    let o = alone("abc", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("MLX_RANK 'abc' is not a rank"), "{err}");
    // The peer never starts: dist_timeout bounds the wait for it too.
    let t0 = Instant::now();
    let o = alone("0", &["--dist_timeout", "5"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("could not connect to the other ranks within dist_timeout"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    // Its own address held by another program: named with the address.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap();
    std::fs::write(&hostfile, format!("[[\"{addr}\"], [\"127.0.0.1:{}\"]]", free_port())).unwrap();
    let o = alone("0", &["--dist_timeout", "5"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&format!("rank 0's address {addr} is in use")), "{err}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// SIGTERM to `launch` (what a scheduler sends) reaches every rank once: they finish the
/// step, rank 0 saves a checkpoint, all stop, and launch exits 130 leaving no rank behind.
#[test]
fn sigterm_to_launch_stops_every_rank_with_a_checkpoint() {
    let Some(data) = data_dir() else { return };
    let run = common::Scratch::new("dist-term");
    let out = run.path().join("out");
    let extra = ["--max_iters", "100000", "--eval_interval", "100000", "--gradient_accumulation_steps", "2"];
    let launch = Command::new(env!("CARGO_BIN_EXE_mlx-gpt"))
        .args(args(&["launch", "-n", "2", "--"], &data, &out, &extra))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = out.join("metrics.jsonl");
    let deadline = Instant::now() + Duration::from_secs(300);
    while std::fs::read_to_string(&metrics).map_or(0, |t| t.lines().count()) < 3 {
        assert!(Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    // launch's hostfile is in the user's temporary folder (not the JIT's kernel cache).
    let hostfile = std::env::temp_dir().join(format!("mlx-gpt-hosts-{}.json", launch.id()));
    assert!(hostfile.is_file(), "{}", hostfile.display());
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(launch.id() as i32, libc::SIGTERM) };
    let o = launch.wait_with_output().unwrap();
    assert!(!hostfile.exists(), "launch left its hostfile behind");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("every rank has stopped after an interrupt"), "{stderr}");
    assert!(!stderr.contains("failed"), "{stderr}");
    assert_eq!(mlx_gpt_train::checkpoint::list(&out).len(), 1, "{stderr}");
    // No rank trains on: no process still has this run's folder on its command line.
    let needle = out.display().to_string();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&needle))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
