//! How far evaluation runs ahead of the kernels: MLX's process-wide cap on pending tasks,
//! and mlx-gpt's per-stream bound that lets a caller lift it (csrc/run_ahead.h,
//! csrc/scheduler.cpp).
//!
//! MLX's `eval` waits once the process has more than ten tasks pending, until the count
//! falls below what it was when it began to wait. Two threads evaluating at once (the
//! training step's two streams, `mlx_gpt_train::step::StreamSplit`) share that count, and
//! the wait is unfair between them: one thread's worker can run dry for long stretches.
//! With the CPU kernels, each of mlx-gpt's primitives waits instead while its own stream
//! holds [`run_ahead_limit`] of them queued and not yet begun, which bounds the memory in flight
//! per stream; under that bound a caller may lift MLX's cap ([`PendingCapLift`]).

/// How many of mlx-gpt's primitives a stream may hold queued and not yet begun before the
/// next one waits (csrc/run_ahead.h's `kRunAhead`; 0 without the CPU kernels).
pub fn run_ahead_limit() -> u64 {
    #[cfg(cpu_kernels)]
    {
        // SAFETY: reads a constant.
        unsafe { crate::cpu::ffi::mlx_gpt_run_ahead_limit() }
    }
    #[cfg(not(cpu_kernels))]
    {
        0
    }
}

/// Lowers MLX's count of pending tasks by `tasks` while it lives, so that MLX's wait for
/// pending tasks does not apply to up to that many more; raises it back when dropped.
/// Does nothing without the CPU kernels, where no per-stream bound would take its place.
///
/// For evaluations whose graphs are made of mlx-gpt's primitives (the CPU kernel set),
/// whose run-ahead is bounded per stream. The count is process-wide: lift it only for
/// the duration of such evaluations.
#[must_use = "the cap is restored when the guard is dropped"]
#[derive(Debug)]
pub struct PendingCapLift {
    #[cfg_attr(not(cpu_kernels), allow(dead_code))]
    tasks: i32,
}

impl PendingCapLift {
    /// Lift MLX's cap by `tasks` (each about 20 ns to lift and again to restore).
    pub fn new(tasks: u16) -> Self {
        let tasks = i32::from(tasks);
        #[cfg(cpu_kernels)]
        // SAFETY: adjusts MLX's pending-task count through its scheduler's notifications.
        unsafe {
            crate::cpu::ffi::mlx_gpt_scheduler_lift(tasks)
        };
        PendingCapLift { tasks }
    }
}

impl Drop for PendingCapLift {
    fn drop(&mut self) {
        #[cfg(cpu_kernels)]
        // SAFETY: as in `new`, the other way.
        unsafe {
            crate::cpu::ffi::mlx_gpt_scheduler_lift(-self.tasks)
        };
    }
}

/// MLX's process-wide count of pending tasks (0 without the CPU kernels): for tests.
pub fn pending_tasks() -> i32 {
    #[cfg(cpu_kernels)]
    {
        // SAFETY: reads MLX's count.
        unsafe { crate::cpu::ffi::mlx_gpt_scheduler_pending() }
    }
    #[cfg(not(cpu_kernels))]
    {
        0
    }
}

/// The most of mlx-gpt's primitives one stream has held queued and not yet begun when
/// another was admitted, since the process started (0 without the CPU kernels): for tests.
pub fn run_ahead_peak() -> u64 {
    #[cfg(cpu_kernels)]
    {
        // SAFETY: reads a counter.
        unsafe { crate::cpu::ffi::mlx_gpt_run_ahead_peak() }
    }
    #[cfg(not(cpu_kernels))]
    {
        0
    }
}
