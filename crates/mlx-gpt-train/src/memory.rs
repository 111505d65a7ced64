//! Memory: the estimate a run is checked against before it starts, and a guard that stops
//! it with a message when the machine is about to run out while it trains.
//!
//! Why a guard and not MLX's memory limit: MLX's CPU allocator
//! (`mlx/backend/no_gpu/allocator.cpp`, MLX 0.32) records its limit but never enforces it,
//! and does not check what `malloc` returns. On Linux, where memory is overcommitted,
//! `malloc` does not fail anyway: the kernel's out-of-memory killer ends the largest
//! process with SIGKILL, and the user sees "Killed" and nothing else. So the guard watches
//! `MemAvailable` and, when this process is the one exhausting it, prints what it saw and
//! what to change, and exits first. Checkpoints are written whole or not at all
//! (`checkpoint`), so exiting at any moment loses no finished one. (With overcommit turned
//! off, or under `ulimit -v`, a failed `malloc` still crashes inside MLX; that needs a fix
//! in MLX.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Rough training memory: weights, gradients and two Adam moments (4 × N × 4 bytes), plus
/// activations kept for the backward pass, ≈ B·T·L·(34·C + 5·nh·T) × 2 bytes in float32
/// (Korthikanti et al., 2022, counted for 16-bit activations, doubled here).
pub fn estimate_bytes(c: &crate::config::TrainConfig, n_params: usize) -> f64 {
    let (b, t, l, ch, nh) =
        (c.batch_size as f64, c.block_size as f64, c.n_layer as f64, c.n_embd as f64, c.n_head as f64);
    16.0 * n_params as f64 + b * t * l * (34.0 * ch + 5.0 * nh * t) * 2.0
}

/// What `/proc/meminfo` and `/proc/self/statm` say, in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemorySnapshot {
    /// `MemTotal`.
    pub total: u64,
    /// `MemAvailable`: what the system can still give without swapping.
    pub available: u64,
    /// This process's resident memory.
    pub resident: u64,
}

impl MemorySnapshot {
    /// Now; `None` where the system does not say (not Linux, or `/proc` not mounted).
    pub fn now() -> Option<MemorySnapshot> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let field = |name: &str| -> Option<u64> {
            let kib: u64 = meminfo.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        };
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
        Some(MemorySnapshot { total: field("MemTotal:")?, available: field("MemAvailable:")?, resident: pages * page })
    }
}

/// Memory the system can give a new program now (`MemAvailable`), where it says.
pub fn available_bytes() -> Option<u64> {
    MemorySnapshot::now().map(|s| s.available)
}

/// When the guard stops a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryFloor {
    /// Stop when `MemAvailable` falls below this many bytes...
    pub min_available: u64,
    /// ...and this process holds at least this share of the memory in use: when another
    /// program is the one using it up, the kernel's killer would pick that one, and
    /// stopping this run would not help.
    pub min_share: f64,
}

impl MemoryFloor {
    /// 1/64 of the machine's memory, at least 128 MiB and at most 1 GiB: at the rates MLX
    /// allocates on a CPU (a few GB/s), more than a few polls of margin; this process
    /// holding half of what is in use.
    pub fn for_machine(total: u64) -> MemoryFloor {
        MemoryFloor { min_available: (total / 64).clamp(128 << 20, 1 << 30), min_share: 0.5 }
    }

    /// Why to stop, given a snapshot; `None` to go on.
    pub fn breached(&self, s: &MemorySnapshot) -> Option<String> {
        let used = s.total.saturating_sub(s.available);
        let share = if used == 0 { 0.0 } else { s.resident as f64 / used as f64 };
        if s.available >= self.min_available || share < self.min_share {
            return None;
        }
        let mib = |b: u64| b >> 20;
        Some(format!(
            "out of memory: {} MiB of {} MiB left, and this run holds {} MiB; stopping it before the \
             kernel's out-of-memory killer does (it would give no message). Lower batch_size or block_size \
             (gradient_accumulation_steps keeps the tokens per step), or the model's size",
            mib(s.available),
            mib(s.total),
            mib(s.resident)
        ))
    }
}

/// A thread that checks memory every `every` and calls `on_breach` once with the reason
/// when the floor is breached. Stopped when dropped.
pub struct MemoryGuard {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MemoryGuard {
    /// Start watching; `None` where the system does not report memory.
    pub fn start(
        floor: MemoryFloor,
        every: Duration,
        on_breach: impl FnOnce(String) + Send + 'static,
    ) -> Option<MemoryGuard> {
        MemorySnapshot::now()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("memory-guard".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    if let Some(why) = MemorySnapshot::now().and_then(|s| floor.breached(&s)) {
                        on_breach(why);
                        return;
                    }
                    std::thread::sleep(every);
                }
            })
            .ok()?;
        Some(MemoryGuard { stop, thread: Some(thread) })
    }

    /// The guard a training run uses: every 20 ms, and on a breach the message on stderr
    /// (as the command's other errors), then the process exits with status 1 at once.
    /// `_exit`, not `exit`: MLX's threads are mid-computation, and running C++
    /// destructors under them can crash.
    pub fn for_training() -> Option<MemoryGuard> {
        let floor = MemoryFloor::for_machine(MemorySnapshot::now()?.total);
        MemoryGuard::start(floor, Duration::from_millis(20), |why| {
            eprintln!("error: {why}");
            // SAFETY: ends the process; no Rust state is used after it.
            unsafe { libc::_exit(1) }
        })
    }
}

impl Drop for MemoryGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn the_floor_is_breached_only_when_this_process_uses_the_memory_up() {
        let floor = MemoryFloor::for_machine(24 * GIB);
        assert_eq!(floor.min_available, 384 << 20);
        assert_eq!(MemoryFloor::for_machine(GIB).min_available, 128 << 20);
        assert_eq!(MemoryFloor::for_machine(512 * GIB).min_available, GIB);
        let snap = |available, resident| MemorySnapshot { total: 24 * GIB, available, resident };
        // Plenty left.
        assert_eq!(floor.breached(&snap(8 * GIB, 14 * GIB)), None);
        // Little left, and this run holds most of what is used: stop, with the numbers.
        let why = floor.breached(&snap(100 << 20, 20 * GIB)).unwrap();
        assert!(why.contains("100 MiB of 24576 MiB left") && why.contains("holds 20480 MiB"), "{why}");
        assert!(why.contains("batch_size"), "{why}");
        // Little left, but another program uses it: the kernel would stop that one.
        assert_eq!(floor.breached(&snap(100 << 20, 2 * GIB)), None);
    }

    #[test]
    fn the_guard_reports_a_breach_from_its_thread_and_stops_when_dropped() {
        let now = MemorySnapshot::now().expect("Linux reports memory");
        assert!(now.total >= now.available && now.resident > 0, "{now:?}");
        // A floor above what is available, at any share: breached at once.
        let (tx, rx) = std::sync::mpsc::channel();
        let floor = MemoryFloor { min_available: u64::MAX, min_share: 0.0 };
        let _guard = MemoryGuard::start(floor, Duration::from_millis(5), move |why| tx.send(why).unwrap()).unwrap();
        let why = rx.recv_timeout(Duration::from_secs(10)).expect("a breach reported");
        assert!(why.starts_with("out of memory:"), "{why}");
        // One that is never breached runs until dropped, and the drop returns.
        let floor = MemoryFloor { min_available: 0, min_share: 2.0 };
        let guard = MemoryGuard::start(floor, Duration::from_millis(5), |_| panic!("no breach")).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        drop(guard);
    }
}
