//! glibc malloc's thresholds, set once at start-up by the program.

/// Keep freed memory in the process instead of returning it to the system at once
/// (glibc's malloc on Linux; nothing elsewhere). Returns whether both thresholds were set
/// (glibc 2.36 takes both; `mlx-gpt info` reports the result).
///
/// MLX's CPU allocator calls `malloc` and `free` for every array. Blocks above glibc's
/// mmap threshold (which only grows up to 32 MiB) are mapped and unmapped each time, and
/// freed heap tops are trimmed; a training step allocates the same large buffers (the
/// attention weights, the optimizer's outputs) step after step, so it paid fresh page
/// faults for them every step. This raises the mmap threshold to 256 MiB and turns the
/// trimming of the heap's top off, as `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=…:glibc.malloc.trim_threshold=…`
/// would. Measured on the baby GPT's step: 1–2 ms of about 33 (docs/performance-history.md).
/// A finite trim threshold is not enough: once the free top of the heap passes it, glibc
/// hands all of it back, not the excess; with the 1 GiB used before, a one-stream
/// train_shakespeare_char step freed its 2.6 GB of activations at its end and faulted them
/// in again in the next step (650 thousand page faults, a quarter of the step) whenever
/// nothing small happened to be allocated above them. The cost is memory that stays with
/// the process after a peak (until [`release_free_memory`]); `mlx-gpt
/// --no-malloc-tuning` skips it. Call it early, before large allocations (the CLI does at
/// start-up).
pub fn keep_freed_memory() -> bool {
    let kept = set_malloc_thresholds();
    FREED_MEMORY_KEPT.store(kept, std::sync::atomic::Ordering::Relaxed);
    kept
}

static FREED_MEMORY_KEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether [`keep_freed_memory`] was called in this process and took effect.
pub fn freed_memory_kept() -> bool {
    FREED_MEMORY_KEPT.load(std::sync::atomic::Ordering::Relaxed)
}

fn set_malloc_thresholds() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes the allocator's thresholds. Both are tried: a glibc
        // that refuses one threshold (some cap the mmap threshold) still takes the other.
        let mmap = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20) } == 1;
        // -1: never trim (mallopt(3)).
        let trim = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, -1) } == 1;
        mmap && trim
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Hand the free memory inside glibc's heap back to the system (`malloc_trim`; nothing
/// elsewhere), for after a large set of buffers was freed at once and will not be
/// allocated again soon: a model's weights replaced by copies laid out for decoding
/// (`Gpt::lay_out_matrices`), which would otherwise stay resident beside the copies, as
/// [`keep_freed_memory`]'s thresholds keep them. A few milliseconds for a heap of a few
/// hundred MB.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of glibc's arenas to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}
