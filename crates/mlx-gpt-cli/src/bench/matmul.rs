//! `mlx-gpt bench matmul`: MLX's f32 matmul next to a direct `cblas_sgemm`.

use super::median;
use crate::DeviceArgs;
use anyhow::{bail, Context};
use mlx_gpt_runtime::blas as runtime;
use mlx_rs::Array;
use std::ffi::CString;
use std::time::Instant;

#[derive(clap::Args)]
pub struct MatmulArgs {
    /// Square sizes n (an n×n by n×n product is 2n³ FLOPs).
    #[arg(long, value_delimiter = ',', default_values_t = [1024, 2048])]
    sizes: Vec<i32>,
    /// Products MxNxK ((M×K)·(K×N), 2·M·N·K FLOPs) timed after the squares. The default
    /// is the largest products of a training step: the baby GPT's half-batch (384 rows:
    /// c_attn, c_fc and its gradient's shape, the head) and the shakespeare_char preset's
    /// half-batch (8192 rows); `--shapes none` skips them.
    #[arg(long, value_delimiter = ',', default_values_t = [
        "384x384x128".to_string(), "384x512x128".to_string(), "384x128x512".to_string(), "384x65x128".to_string(),
        "8192x1152x384".to_string(), "8192x1536x384".to_string(), "8192x384x1536".to_string(),
    ])]
    shapes: Vec<String>,
    /// Timed repetitions per size and implementation (after 2 warm-up runs).
    #[arg(long, default_value_t = 10)]
    reps: usize,
    /// Shared library to call `cblas_sgemm` from directly, as the reference.
    #[arg(long, default_value = "libopenblas.so.0")]
    reference_lib: String,
    #[command(flatten)]
    device: DeviceArgs,
}

/// `cblas_sgemm(order, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`.
type Sgemm =
    unsafe extern "C" fn(i32, i32, i32, i32, i32, i32, f32, *const f32, i32, *const f32, i32, f32, *mut f32, i32);
const CBLAS_ROW_MAJOR: i32 = 101;
const CBLAS_NO_TRANS: i32 = 111;

fn load_sgemm(lib: &str) -> anyhow::Result<Sgemm> {
    let name = CString::new(lib)?;
    // SAFETY: dlopen/dlsym with valid C strings; the handle is kept for the process's life.
    unsafe {
        let handle = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if handle.is_null() {
            bail!("--reference-lib {lib}: cannot load it (install OpenBLAS or name another BLAS)");
        }
        let sym = libc::dlsym(handle, c"cblas_sgemm".as_ptr());
        if sym.is_null() {
            bail!("--reference-lib {lib}: has no cblas_sgemm");
        }
        Ok(std::mem::transmute::<*mut libc::c_void, Sgemm>(sym))
    }
}

pub fn matmul(args: MatmulArgs) -> anyhow::Result<()> {
    let (device, _) = args.device.select()?;
    if args.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let blas = runtime::blas();
    let sgemm = load_sgemm(&args.reference_lib)?;
    let ceiling = mlx_gpt_train::peak::peak_for(device, 0.0, mlx_gpt_train::peak::default_threads())?;
    println!(
        "f32 matmul, {} timed runs each, MLX on {device} with {} vs direct cblas_sgemm from {}",
        args.reps,
        blas.name(),
        args.reference_lib
    );
    println!("BLAS kernel: {}", mlx_gpt_runtime::blas_kernel::status().describe());
    println!("ceiling: {}", ceiling.describe());
    let mut shapes = Vec::new();
    for &n in &args.sizes {
        if n <= 0 {
            bail!("--sizes: {n} is not a positive size");
        }
        shapes.push((n, n, n));
    }
    for s in args.shapes.iter().filter(|s| s.as_str() != "none") {
        shapes.push(parse_shape(s)?);
    }
    println!(
        "{:>16} {:>12} {:>10} {:>12} {:>8} {:>10}",
        "M x N x K", "MLX GFLOP/s", "MLX best", "sgemm GFLOP/s", "ratio", "% ceiling"
    );
    let key = mlx_rs::random::key(0)?;
    for (m, n, k) in shapes {
        let a = mlx_rs::random::normal::<f32>(&[m, k][..], None, None, &key)?;
        let b = mlx_rs::random::normal::<f32>(&[k, n][..], None, None, &key)?;
        mlx_rs::transforms::eval([&a, &b])?;
        let (ha, hb) = (a.as_slice::<f32>().to_vec(), b.as_slice::<f32>().to_vec());
        let mut hc = vec![0f32; (m * n) as usize];
        let flops = 2.0 * m as f64 * n as f64 * k as f64;
        let run_mlx = || -> anyhow::Result<f64> {
            let t = Instant::now();
            let c: Array = a.matmul(&b)?;
            c.eval().context("MLX matmul")?;
            Ok(t.elapsed().as_secs_f64())
        };
        let mut run_sgemm = || {
            let t = Instant::now();
            // SAFETY: the buffers hold m×k, k×n and m×n floats, row-major.
            unsafe {
                sgemm(
                    CBLAS_ROW_MAJOR,
                    CBLAS_NO_TRANS,
                    CBLAS_NO_TRANS,
                    m,
                    n,
                    k,
                    1.0,
                    ha.as_ptr(),
                    k,
                    hb.as_ptr(),
                    n,
                    0.0,
                    hc.as_mut_ptr(),
                    n,
                )
            };
            t.elapsed().as_secs_f64()
        };
        for _ in 0..2 {
            run_mlx()?;
            run_sgemm();
        }
        // Interleaved, so a disturbance of the machine hits both sides alike.
        let (mut tm, mut ts) = (Vec::new(), Vec::new());
        for _ in 0..args.reps {
            tm.push(run_mlx()?);
            ts.push(run_sgemm());
        }
        let best = tm.iter().cloned().fold(f64::INFINITY, f64::min);
        let (gm, gs) = (flops / median(&mut tm) / 1e9, flops / median(&mut ts) / 1e9);
        println!(
            "{:>16} {gm:>12.1} {:>10.1} {gs:>12.1} {:>8.2} {:>9.1}%",
            format!("{m}x{n}x{k}"),
            flops / best / 1e9,
            gm / gs,
            gm * 1e9 / ceiling.flops * 100.0
        );
    }
    Ok(())
}

/// `MxNxK` as three positive sizes.
fn parse_shape(s: &str) -> anyhow::Result<(i32, i32, i32)> {
    let dims: Vec<i32> = s
        .split('x')
        .map(|d| d.trim().parse::<i32>())
        .collect::<Result<_, _>>()
        .ok()
        .filter(|d: &Vec<i32>| d.len() == 3 && d.iter().all(|&x| x > 0))
        .with_context(|| format!("--shapes: '{s}' is not MxNxK with three positive sizes (e.g. 384x512x128)"))?;
    Ok((dims[0], dims[1], dims[2]))
}
