//! `mlx-gpt launch -n N -- train …`: start N local processes that train together through
//! MLX's `ring` backend (the way `torchrun` starts nanoGPT's DDP ranks). Each gets
//! `MLX_RANK` and `MLX_HOSTFILE` (MLX's own convention; for several machines, run
//! `mlx-gpt train` on each with those two variables set: docs/distributed.md). If one rank
//! fails, the others are stopped and the failing rank is named.
//!
//! Signals: each rank runs in a process group of its own, so a terminal's Ctrl-C reaches
//! `launch` only; `launch` passes Ctrl-C, SIGTERM and SIGHUP on to every rank once, as
//! SIGINT (each finishes its step, rank 0 saves a checkpoint, all stop), and exits 130
//! once they have; a second, later interrupt kills the ranks. On Linux a rank whose
//! `launch` dies (even by SIGKILL) gets SIGTERM from the kernel (`PR_SET_PDEATHSIG`) and
//! stops the same way: no orphans that train on.

use anyhow::{bail, Context};
use std::net::TcpListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
#[command(after_help = "Example: mlx-gpt launch -n 2 -- train baby_shakespeare_char --gradient_accumulation_steps 2")]
pub struct Args {
    /// Processes to start on this machine.
    #[arg(short = 'n', long, default_value_t = 2)]
    n: usize,
    /// First TCP port of the ranks' listeners on 127.0.0.1 (consecutive ports); default:
    /// free ports chosen by the system.
    #[arg(long)]
    port: Option<u16>,
    /// The mlx-gpt command every rank runs (after `--`).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

fn ports(n: usize, first: Option<u16>) -> anyhow::Result<Vec<u16>> {
    match first {
        Some(p) => (0..n)
            .map(|i| {
                let port = p.checked_add(i as u16).context("--port: ports past 65535")?;
                // Probe it now, so a busy port is named here rather than deep inside MLX.
                TcpListener::bind(("127.0.0.1", port))
                    .with_context(|| format!("port {port} is in use (from --port {p})"))?;
                Ok(port)
            })
            .collect(),
        None => (0..n).map(|_| Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())).collect(),
    }
}

fn stop_all(children: &mut [(usize, Child)]) {
    for (_, c) in children.iter_mut() {
        // SAFETY: signalling our own child processes.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for (_, c) in children.iter_mut() {
        while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.n == 0 {
        bail!("-n must be at least 1");
    }
    let ports = ports(args.n, args.port)?;
    let hosts: Vec<Vec<String>> = ports.iter().map(|p| vec![format!("127.0.0.1:{p}")]).collect();
    // In the user's temporary folder, not the JIT's kernel cache that TMPDIR now names.
    let hostfile = mlx_gpt_runtime::jit::user_temp_dir().join(format!("mlx-gpt-hosts-{}.json", std::process::id()));
    std::fs::write(&hostfile, serde_json::to_string(&hosts)?).with_context(|| hostfile.display().to_string())?;
    // Ctrl-C, SIGTERM and SIGHUP go to every rank once, as SIGINT: the ranks checkpoint
    // and stop together.
    let pids: Arc<Mutex<Vec<i32>>> = Arc::default();
    let interrupted = Arc::new(AtomicBool::new(false));
    let signal_all = |pids: &Mutex<Vec<i32>>, sig| {
        for &pid in pids.lock().unwrap().iter() {
            // SAFETY: signalling our own child processes.
            unsafe { libc::kill(pid, sig) };
        }
    };
    {
        let (pids, pids2, interrupted) = (pids.clone(), pids.clone(), interrupted.clone());
        crate::signals::on_interrupt(
            move || {
                interrupted.store(true, Ordering::SeqCst);
                eprintln!("launch: interrupted; asking every rank to save a checkpoint and stop");
                signal_all(&pids, libc::SIGINT);
            },
            move || {
                eprintln!("launch: interrupted again; killing the ranks without a checkpoint");
                signal_all(&pids2, libc::SIGKILL);
            },
        )?;
    }
    let exe = std::env::current_exe()?;
    // Ranks share this machine's cores: unless told otherwise, each rank's BLAS gets its share.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let blas_threads = std::env::var("OPENBLAS_NUM_THREADS").unwrap_or_else(|_| (cores / args.n).max(1).to_string());
    let mut children = Vec::new();
    for rank in 0..args.n {
        let mut cmd = Command::new(&exe);
        cmd.args(&args.command)
            .env("OPENBLAS_NUM_THREADS", &blas_threads)
            .env("MLX_RANK", rank.to_string())
            .env("MLX_HOSTFILE", &hostfile)
            .env(crate::signals::LAUNCHED_VAR, "1")
            // Its own process group: the terminal's Ctrl-C reaches launch alone, which
            // passes it on once.
            .process_group(0);
        #[cfg(target_os = "linux")]
        {
            // The death signal is tied to the thread that forks: this is the main thread,
            // which lives as long as launch does.
            let parent = std::process::id() as libc::pid_t;
            // SAFETY: prctl, getppid and _exit are async-signal-safe, as pre_exec requires.
            unsafe {
                cmd.pre_exec(move || {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    // launch died before the flag was set: nobody would stop this rank.
                    if libc::getppid() != parent {
                        libc::_exit(1);
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().with_context(|| format!("starting rank {rank}"))?;
        pids.lock().unwrap().push(child.id() as i32);
        if interrupted.load(Ordering::SeqCst) {
            // Interrupted while it started: it did not get the forwarded signal.
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        }
        children.push((rank, child));
    }
    // The first rank seen to fail is the one named: a peer that loses it fails later.
    // A rank that stopped because it was interrupted (exit 130, or killed by SIGINT or
    // SIGTERM) has not failed: a rank signalled directly stops all of them that way.
    let mut failed = None;
    let mut stopped_by_interrupt = false;
    let result = loop {
        std::thread::sleep(Duration::from_millis(100));
        let mut running = 0;
        for (rank, c) in children.iter_mut() {
            match c.try_wait()? {
                None => running += 1,
                Some(s) if s.success() => {}
                Some(s) if s.code() == Some(130) || matches!(s.signal(), Some(libc::SIGINT | libc::SIGTERM)) => {
                    stopped_by_interrupt = true;
                }
                Some(s) => {
                    failed.get_or_insert((*rank, s));
                }
            }
        }
        if let Some((rank, status)) = failed {
            eprintln!("error: rank {rank} exited with {status}; stopping the other ranks");
            stop_all(&mut children);
            break Err(anyhow::anyhow!("rank {rank} of {} failed ({status})", args.n));
        }
        if running == 0 {
            break Ok(());
        }
    };
    let _ = std::fs::remove_file(&hostfile);
    result?;
    if interrupted.load(Ordering::SeqCst) || stopped_by_interrupt {
        eprintln!("launch: every rank has stopped after an interrupt; resume with --init_from resume");
        std::process::exit(130);
    }
    Ok(())
}
