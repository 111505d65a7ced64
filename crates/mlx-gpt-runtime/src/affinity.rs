//! Each stream worker of the training step on a core of its own.
//!
//! A worker (`mlx_gpt_train::step::StreamSplit`) is two threads: the one that builds and walks
//! its part's graph, and the MLX stream thread that runs the kernels (started by the
//! first, so it inherits its CPU mask). Left to the scheduler, a woken thread often
//! queued behind the other worker's thread on one core while the other core idled; the
//! two parts of a step then finished up to 5 ms apart, on a 25 ms step
//! (docs/performance-history.md). Pinned, each worker has its core.
//!
//! Pinning is Linux only; the training configuration's `pin_streams` (on by default)
//! decides whether it is asked for. It needs one physical core per worker among the CPUs
//! this process may use; hyper-threads of a core already chosen are skipped, since two
//! workers on one core would share its vector units.

/// One CPU for each of `n` workers, each on a different physical core, from the CPUs
/// this process may run on; `None` when there are fewer such cores than workers, or the
/// platform has no affinity to set.
pub fn worker_cpus(n: usize) -> Option<Vec<usize>> {
    if n == 0 {
        return None;
    }
    choose(&allowed_cpus()?, n, siblings)
}

/// The first `n` of `allowed` (in order) whose physical cores differ: a CPU is skipped
/// when one of its hyper-thread `siblings` was chosen already.
fn choose(allowed: &[usize], n: usize, siblings: impl Fn(usize) -> Vec<usize>) -> Option<Vec<usize>> {
    let mut chosen: Vec<usize> = Vec::with_capacity(n);
    for &cpu in allowed {
        if chosen.len() == n {
            break;
        }
        if !siblings(cpu).iter().any(|s| *s != cpu && chosen.contains(s)) {
            chosen.push(cpu);
        }
    }
    (chosen.len() == n).then_some(chosen)
}

/// A CPU list as sysfs writes it ("0-3,8,10-11").
fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.trim().parse::<usize>().ok()?..=b.trim().parse::<usize>().ok()?),
            None => cpus.push(part.trim().parse().ok()?),
        }
    }
    Some(cpus)
}

/// The hyper-threads sharing `cpu`'s core (itself included), or just `cpu` when sysfs
/// does not say.
fn siblings(cpu: usize) -> Vec<usize> {
    std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"))
        .ok()
        .and_then(|t| parse_cpu_list(&t))
        .unwrap_or_else(|| vec![cpu])
}

#[cfg(target_os = "linux")]
fn allowed_cpus() -> Option<Vec<usize>> {
    // SAFETY: sched_getaffinity writes at most size_of::<cpu_set_t>() bytes into `set`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        Some((0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect())
    }
}

#[cfg(not(target_os = "linux"))]
fn allowed_cpus() -> Option<Vec<usize>> {
    None
}

/// Restricts the calling thread, and the threads it starts from now on, to `cpu`.
/// Returns whether that took.
#[cfg(target_os = "linux")]
pub fn pin_current_thread(cpu: usize) -> bool {
    if cpu >= libc::CPU_SETSIZE as usize {
        return false;
    }
    // SAFETY: `set` is a zeroed cpu_set_t with one CPU below CPU_SETSIZE set; the call
    // reads size_of::<cpu_set_t>() bytes of it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Restricts the calling thread to `cpu`: not available here, so it never takes.
#[cfg(not(target_os = "linux"))]
pub fn pin_current_thread(_cpu: usize) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sysfs_cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), Some(vec![0, 1, 2, 3, 8, 10, 11]));
        assert_eq!(parse_cpu_list("5"), Some(vec![5]));
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn chooses_one_cpu_per_physical_core() {
        // CPUs 0–3 on two cores, hyper-threads numbered 0/2 and 1/3 (Intel's order) or
        // 0/1 and 2/3 (AMD's).
        let intel = |c: usize| vec![c % 2, c % 2 + 2];
        let amd = |c: usize| vec![c / 2 * 2, c / 2 * 2 + 1];
        assert_eq!(choose(&[0, 1, 2, 3], 2, intel), Some(vec![0, 1]));
        assert_eq!(choose(&[0, 1, 2, 3], 2, amd), Some(vec![0, 2]));
        assert_eq!(choose(&[0, 1, 2, 3], 3, amd), None);
        assert_eq!(choose(&[2, 3], 2, |c| vec![c]), Some(vec![2, 3]));
        assert_eq!(choose(&[7], 2, |c| vec![c]), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_pinned_thread_runs_on_its_cpu_only() {
        let cpus = allowed_cpus().expect("sched_getaffinity works on Linux");
        let cpu = *cpus.last().unwrap();
        let seen = std::thread::spawn(move || {
            assert!(pin_current_thread(cpu));
            // A thread started from a pinned one inherits its mask.
            std::thread::spawn(allowed_cpus).join().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(seen, Some(vec![cpu]));
        // The test's own thread is untouched.
        assert_eq!(allowed_cpus(), Some(cpus));
    }
}
