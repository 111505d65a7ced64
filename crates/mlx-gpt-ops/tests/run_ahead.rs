//! The per-stream run-ahead bound and the lift of MLX's pending-task cap
//! (`mlx_gpt_ops::scheduler`), in a process of their own: MLX's count of pending tasks is
//! process-wide, so tests evaluating beside this one would move it.

use mlx_gpt_ops::scheduler::{pending_tasks, run_ahead_limit, run_ahead_peak, PendingCapLift};
use mlx_gpt_ops::{gelu, Kernels};
use mlx_rs::Array;

#[test]
fn a_lifted_cap_leaves_each_stream_bounded_by_its_own_run_ahead() {
    let Ok(kernels) = Kernels::cpu() else {
        // A build without the CPU kernels (test-other-builds): nothing bounds the run-ahead
        // per stream, so the lift leaves MLX's cap as it is.
        let lift = PendingCapLift::new(256);
        assert_eq!((pending_tasks(), run_ahead_limit(), run_ahead_peak()), (0, 0, 0));
        drop(lift);
        return;
    };
    assert_eq!(run_ahead_limit(), 16);

    // The lift lowers MLX's count by exactly its size while it lives, and no more after.
    let before = pending_tasks();
    let lift = PendingCapLift::new(256);
    assert_eq!(pending_tasks(), before - 256);
    drop(lift);
    assert_eq!(pending_tasks(), before);

    // 200 GELUs in a chain, each over 1M elements (about a millisecond of the worker's
    // time, microseconds of the host's): with MLX's cap lifted nothing else holds the host
    // back, so it runs as far ahead as the bound lets it, and no further.
    let x = Array::from_slice(&(0..1 << 20).map(|i| (i % 97) as f32 / 97.0 - 0.5).collect::<Vec<_>>(), &[1 << 20]);
    x.eval().unwrap();
    let mut y = x.clone();
    for _ in 0..200 {
        y = gelu(&kernels, &y, false, false).unwrap();
    }
    let lift = PendingCapLift::new(256);
    y.eval().unwrap();
    drop(lift);
    assert_eq!(pending_tasks(), before, "the evaluation's tasks are all accounted for");
    let peak = run_ahead_peak();
    assert!(peak < run_ahead_limit(), "a stream held {peak} primitives queued, past the bound");
    assert_eq!(peak, run_ahead_limit() - 1, "the host should have run ahead to the bound");

    // The values are those of the same chain in plain MLX ops (the chain ran in order).
    let mut want = x.clone();
    for _ in 0..200 {
        want = gelu(&Kernels::mlx(), &want, false, false).unwrap();
    }
    for (a, b) in y.as_slice::<f32>().iter().zip(want.as_slice::<f32>()).step_by(4099) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
}
