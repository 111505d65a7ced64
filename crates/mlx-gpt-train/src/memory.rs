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
//!
//! In a container the limit is usually the control group's, not the machine's: Docker and
//! Kubernetes set `memory.max` (cgroup v2) or `memory.limit_in_bytes` (v1), `/proc/meminfo`
//! still shows the host, and the kernel kills at the group's limit. So a snapshot takes the
//! smaller of the two: the group's limit as the total and what the group may still use as
//! the available memory ([`CgroupMemory`]).

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

/// What `/proc/meminfo` and `/proc/self/statm` say, in bytes, within this process's
/// control group's memory limit where it has one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemorySnapshot {
    /// `MemTotal`, or the control group's limit when lower.
    pub total: u64,
    /// `MemAvailable`: what the system can still give without swapping; within a control
    /// group's limit, the smaller of that and what the group may still use.
    pub available: u64,
    /// This process's resident memory.
    pub resident: u64,
}

impl MemorySnapshot {
    /// Now; `None` where the system does not say (not Linux, or `/proc` not mounted).
    pub fn now() -> Option<MemorySnapshot> {
        MemorySnapshot::now_in(Cgroup::of_this_process().as_ref())
    }

    /// Now, within `cgroup`'s limit where it has one (located once by a caller that
    /// snapshots often: the guard).
    pub fn now_in(cgroup: Option<&Cgroup>) -> Option<MemorySnapshot> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let field = |name: &str| -> Option<u64> {
            let kib: u64 = meminfo.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        };
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
        let machine =
            MemorySnapshot { total: field("MemTotal:")?, available: field("MemAvailable:")?, resident: pages * page };
        Some(machine.within(cgroup.and_then(Cgroup::memory)))
    }

    /// This snapshot within a control group's limit (none: unchanged).
    pub fn within(self, cgroup: Option<CgroupMemory>) -> MemorySnapshot {
        match cgroup {
            Some(g) if g.limit < self.total => {
                MemorySnapshot { total: g.limit, available: self.available.min(g.limit.saturating_sub(g.used)), ..self }
            }
            _ => self,
        }
    }
}

/// A control group's memory limit and what counts against it, in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CgroupMemory {
    /// The smallest limit on the way from this process's group to the root.
    pub limit: u64,
    /// The group's usage less its inactive file cache, which the kernel reclaims before it
    /// kills (the figure `docker stats` shows).
    pub used: u64,
}

impl CgroupMemory {
    /// The memory of the group `/proc/self/cgroup` (`proc_cgroup`) names under the cgroup
    /// mount `root` ([`Cgroup::locate`]), now; `None` where it has no limit.
    pub fn read(proc_cgroup: &str, root: &std::path::Path) -> Option<CgroupMemory> {
        Cgroup::locate(proc_cgroup, root)?.memory()
    }
}

/// A file holding one number, as the cgroup files do.
fn read_number(path: &std::path::Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A control group with a memory limit, located: where its usage is read, and the limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Cgroup {
    dir: std::path::PathBuf,
    usage_file: &'static str,
    inactive_key: &'static str,
    limit: u64,
}

impl Cgroup {
    /// This process's group (`/proc/self/cgroup` under `/sys/fs/cgroup`), if it has a limit.
    pub fn of_this_process() -> Option<Cgroup> {
        let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        Cgroup::locate(&text, std::path::Path::new("/sys/fs/cgroup"))
    }

    /// The group `/proc/self/cgroup` (`proc_cgroup`) names, under the cgroup mount `root`
    /// (`/sys/fs/cgroup`): cgroup v2's `memory.max` and `memory.current`, or v1's
    /// `memory.limit_in_bytes` and `memory.usage_in_bytes` in the `memory` hierarchy.
    /// `None` where there is no limit or nothing readable. The limit is read here, once.
    pub fn locate(proc_cgroup: &str, root: &std::path::Path) -> Option<Cgroup> {
        // v1: "N:memory:/path" (possibly "N:memory,other:/path"); v2: "0::/path".
        let v1 = proc_cgroup.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            controllers.split(',').any(|c| c == "memory").then(|| path.to_string())
        });
        let (base, path, limit_file, usage_file, inactive_key) = match v1 {
            Some(path) => {
                (root.join("memory"), path, "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
            }
            None => {
                let path = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?.to_string();
                (root.to_path_buf(), path, "memory.max", "memory.current", "inactive_file")
            }
        };
        // The group's own folder where it is visible; in a container with its own cgroup
        // namespace the mount's root is the container's group.
        let mut dir = base.join(path.trim_start_matches('/'));
        if !dir.join(usage_file).is_file() {
            dir = base.clone();
        }
        // Every ancestor's limit applies too ("max" and v1's huge "unlimited" parse as none).
        let mut limit: Option<u64> = None;
        let mut at = Some(dir.as_path());
        while let Some(d) = at.filter(|d| d.starts_with(&base)) {
            if let Some(l) = read_number(&d.join(limit_file)).filter(|&l| l < 1 << 60) {
                limit = Some(limit.map_or(l, |m: u64| m.min(l)));
            }
            at = d.parent();
        }
        read_number(&dir.join(usage_file))?;
        Some(Cgroup { dir, usage_file, inactive_key, limit: limit? })
    }

    /// The limit and what counts against it now.
    pub fn memory(&self) -> Option<CgroupMemory> {
        let usage = read_number(&self.dir.join(self.usage_file))?;
        let inactive = std::fs::read_to_string(self.dir.join("memory.stat"))
            .ok()
            .and_then(|stat| {
                stat.lines()
                    .find_map(|l| l.strip_prefix(self.inactive_key)?.strip_prefix(' ')?.trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        Some(CgroupMemory { limit: self.limit, used: usage.saturating_sub(inactive) })
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
        // Where the group's usage is, found once: the loop reads only what changes.
        let cgroup = Cgroup::of_this_process();
        MemorySnapshot::now_in(cgroup.as_ref())?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("memory-guard".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    if let Some(why) = MemorySnapshot::now_in(cgroup.as_ref()).and_then(|s| floor.breached(&s)) {
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

    /// cgroup v2 and v1 layouts written out under a temporary root: the group's limit (or
    /// an ancestor's, the smaller) becomes the total, and what it may still use, less the
    /// reclaimable inactive cache, the available memory; no limit changes nothing.
    #[test]
    fn a_control_groups_limit_bounds_the_snapshot() {
        let root = std::env::temp_dir().join(format!("mlx-gpt-cgroup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let write = |rel: &str, text: &str| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        };
        // v2: a 4 GiB group inside an 8 GiB parent, 3 GiB used of which 1 GiB inactive cache.
        write("v2/memory.max", "max\n");
        write("v2/kubepods/memory.max", "8589934592\n");
        write("v2/kubepods/pod/memory.max", "4294967296\n");
        write("v2/kubepods/pod/memory.current", "3221225472\n");
        write("v2/kubepods/pod/memory.stat", "anon 1\nfile 5\ninactive_file 1073741824\nactive_file 2\n");
        let g = CgroupMemory::read("0::/kubepods/pod\n", &root.join("v2")).unwrap();
        assert_eq!(g, CgroupMemory { limit: 4 * GIB, used: 2 * GIB });
        // The same group seen from inside its own namespace ("0::/") at the mount's root.
        write("v2ns/memory.max", "4294967296\n");
        write("v2ns/memory.current", "1073741824\n");
        assert_eq!(CgroupMemory::read("0::/\n", &root.join("v2ns")).unwrap().limit, 4 * GIB);
        // v1, with the memory controller beside others on its line.
        write("v1/memory/docker/abc/memory.limit_in_bytes", "2147483648\n");
        write("v1/memory/docker/abc/memory.usage_in_bytes", "1073741824\n");
        write("v1/memory/docker/abc/memory.stat", "inactive_file 7\ntotal_inactive_file 536870912\n");
        let text = "12:pids:/docker/abc\n4:memory,hugetlb:/docker/abc\n0::/\n";
        assert_eq!(CgroupMemory::read(text, &root.join("v1")).unwrap(), CgroupMemory { limit: 2 * GIB, used: GIB / 2 });
        // No limit (v1's "unlimited" is a huge number; v2's is "max"): none.
        write("v1u/memory/memory.limit_in_bytes", "9223372036854771712\n");
        write("v1u/memory/memory.usage_in_bytes", "1073741824\n");
        assert_eq!(CgroupMemory::read("4:memory:/\n", &root.join("v1u")), None);
        assert_eq!(CgroupMemory::read("0::/\n", &root.join("nothing-here")), None);

        let machine = MemorySnapshot { total: 24 * GIB, available: 20 * GIB, resident: GIB };
        let s = machine.within(Some(g));
        assert_eq!((s.total, s.available, s.resident), (4 * GIB, 2 * GIB, GIB));
        // The guard's floor then follows the group: 100 MiB left of 4 GiB, this run holding
        // most of it, stops the run, though the machine has 20 GiB free.
        let tight = machine.within(Some(CgroupMemory { limit: 4 * GIB, used: 4 * GIB - (100 << 20) }));
        assert!(MemoryFloor::for_machine(tight.total)
            .breached(&MemorySnapshot { resident: 3 * GIB, ..tight })
            .is_some());
        assert_eq!(machine.within(None), machine);
        let _ = std::fs::remove_dir_all(&root);
    }

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
