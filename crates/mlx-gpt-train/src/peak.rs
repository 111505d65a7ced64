//! The device's achievable FLOP/s, measured, as MFU's denominator: the best of a few f32
//! 1024³ matmuls on the default device (BLAS on CPU). nanoGPT divides by an A100's
//! 312 TFLOP/s whatever the machine; that says nothing on a laptop.

use mlx_rs::error::Exception;
use std::time::Instant;

/// Best f32 matmul FLOP/s over a few 1024³ products (about 50 ms on a CPU).
pub fn measure_matmul_flops() -> Result<f64, Exception> {
    let n = 1024;
    let key = mlx_rs::random::key(0)?;
    let a = mlx_rs::random::normal::<f32>(&[n, n][..], None, None, &key)?;
    let b = mlx_rs::random::normal::<f32>(&[n, n][..], None, None, &key)?;
    mlx_rs::transforms::eval([&a, &b])?;
    let mut best = f64::INFINITY;
    for _ in 0..6 {
        let t = Instant::now();
        a.matmul(&b)?.eval()?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n as f64).powi(3) / best)
}
