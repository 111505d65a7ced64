//! Ctrl-C, SIGTERM and SIGHUP for `train` and `launch`: the first asks for a clean stop;
//! a repeat aborts, unless it is the same event arriving again.
//!
//! One stop request often arrives as several signals: systemd and Slurm send SIGTERM to
//! every process of a job, and a rank under `launch` then also gets launch's SIGINT; a
//! closing terminal can send SIGHUP twice. Counting those as "interrupt again: abort"
//! threw the checkpoint away, so a repeat within [`REPEAT_WINDOW`] of the first is
//! ignored, and a rank started by `launch` (`MLX_GPT_LAUNCHED=1`) ignores every repeat:
//! launch itself escalates. A SIGHUP that was ignored when the program started (`nohup`)
//! stays ignored.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Repeats closer than this to the first signal are the same request.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(2);

/// Set by `launch` in its ranks' environment.
pub const LAUNCHED_VAR: &str = "MLX_GPT_LAUNCHED";

/// Call `first` on the first Ctrl-C, SIGTERM or SIGHUP, and `again` on a later one that
/// is a new request (see the module's note).
pub fn on_interrupt(first: impl Fn() + Send + 'static, again: impl Fn() + Send + 'static) -> anyhow::Result<()> {
    let hup_ignored = signal_ignored(libc::SIGHUP);
    let launched = std::env::var(LAUNCHED_VAR).is_ok_and(|v| v == "1");
    // Milliseconds since the epoch of the first signal; 0 before it.
    static FIRST: AtomicU64 = AtomicU64::new(0);
    let now_ms = || SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_millis().max(1) as u64);
    ctrlc::set_handler(move || {
        let now = now_ms();
        match FIRST.compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => first(),
            Err(at) if !launched && now.saturating_sub(at) > REPEAT_WINDOW.as_millis() as u64 => again(),
            Err(_) => {}
        }
    })
    .map_err(|e| anyhow::anyhow!("installing the handler of Ctrl-C, SIGTERM and SIGHUP: {e}"))?;
    if hup_ignored {
        // SAFETY: restores the disposition the program started with.
        unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    }
    Ok(())
}

/// Whether `sig` is ignored now (inherited from a parent such as `nohup`).
fn signal_ignored(sig: libc::c_int) -> bool {
    // SAFETY: sigaction with a null new action only reads the current one.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}
