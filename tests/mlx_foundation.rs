//! MLX itself on this platform: the project's mlx-sys build, mlx-rs on top of it, and the
//! BLAS wired in, checked against plain Rust references on random inputs.

use mlx_gpt_model::generate::SampleRng;
use mlx_rs::error::Exception;
use mlx_rs::module::{Module, ModuleParameters};
use mlx_rs::optimizers::{AdamW, Optimizer};
use mlx_rs::{nn, ops, transforms, Array, Dtype};
use std::collections::HashMap;

/// A small deterministic generator (mlx-gpt's SplitMix64 sampler RNG), so the references
/// need no MLX.
struct Rng(SampleRng);
impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(SampleRng::new(seed))
    }
    /// Uniform in [-1, 1): the top 24 bits, exact in an f32.
    fn next_f32(&mut self) -> f32 {
        (self.0.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next_f32() * scale).collect()
    }
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: got {g}, want {w}");
    }
}

#[test]
fn matmul_matches_reference() {
    let (m, k, n) = (37usize, 129usize, 61usize);
    let mut rng = Rng::new(1);
    let (a, b) = (rng.vec(m * k, 1.0), rng.vec(k * n, 1.0));
    let mut want = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f64;
            for p in 0..k {
                acc += a[i * k + p] as f64 * b[p * n + j] as f64;
            }
            want[i * n + j] = acc as f32;
        }
    }
    let c = Array::from_slice(&a, &[m as i32, k as i32]).matmul(Array::from_slice(&b, &[k as i32, n as i32])).unwrap();
    assert_eq!(c.shape(), &[m as i32, n as i32]);
    assert_close(c.as_slice::<f32>(), &want, 1e-4, "matmul");
}

#[test]
fn large_matmul_goes_through_blas_correctly() {
    // Large enough that MLX hands it to BLAS with several threads.
    let n = 256usize;
    let mut rng = Rng::new(2);
    let (a, b) = (rng.vec(n * n, 1.0), rng.vec(n * n, 1.0));
    let c = Array::from_slice(&a, &[n as i32, n as i32]).matmul(Array::from_slice(&b, &[n as i32, n as i32])).unwrap();
    let c = c.as_slice::<f32>();
    for &(i, j) in &[(0, 0), (17, 201), (255, 255), (128, 3)] {
        let want: f64 = (0..n).map(|p| a[i * n + p] as f64 * b[p * n + j] as f64).sum();
        assert!((c[i * n + j] as f64 - want).abs() < 1e-3 * (1.0 + want.abs()), "c[{i},{j}]");
    }
}

#[test]
fn softmax_matches_reference() {
    let (rows, cols) = (7usize, 33usize);
    let x = Rng::new(3).vec(rows * cols, 8.0);
    let mut want = vec![0f32; rows * cols];
    for r in 0..rows {
        let row = &x[r * cols..(r + 1) * cols];
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = row.iter().map(|v| ((v - max) as f64).exp()).sum();
        for c in 0..cols {
            want[r * cols + c] = (((row[c] - max) as f64).exp() / sum) as f32;
        }
    }
    let got = ops::softmax_axis(Array::from_slice(&x, &[rows as i32, cols as i32]), -1, None).unwrap();
    assert_close(got.as_slice::<f32>(), &want, 1e-5, "softmax");
}

#[test]
fn reductions_match_reference() {
    let (rows, cols) = (9usize, 40usize);
    let x = Rng::new(4).vec(rows * cols, 3.0);
    let arr = Array::from_slice(&x, &[rows as i32, cols as i32]);
    let sums: Vec<f32> = (0..cols).map(|c| (0..rows).map(|r| x[r * cols + c]).sum()).collect();
    let maxes: Vec<f32> =
        (0..rows).map(|r| x[r * cols..(r + 1) * cols].iter().cloned().fold(f32::NEG_INFINITY, f32::max)).collect();
    let total: f64 = x.iter().map(|&v| v as f64).sum();
    assert_close(arr.sum_axis(0, None).unwrap().as_slice::<f32>(), &sums, 1e-5, "sum over rows");
    assert_close(arr.max_axis(1, None).unwrap().as_slice::<f32>(), &maxes, 0.0, "max over columns");
    let mean = arr.mean(None).unwrap().item_exact::<f32>();
    assert!((mean as f64 - total / x.len() as f64).abs() < 1e-5, "mean {mean}");
}

#[test]
fn value_and_grad_matches_finite_difference() {
    // f(w) = sum(tanh(x @ w)^2): a nonlinear function of every entry of w.
    let mut rng = Rng::new(5);
    let x = Array::from_slice(&rng.vec(6 * 4, 1.0), &[6, 4]);
    let w0 = rng.vec(4 * 3, 0.5);
    let f = |inputs: &[Array]| -> Result<Vec<Array>, Exception> {
        let y = ops::tanh(x.matmul(&inputs[0])?)?;
        Ok(vec![ops::square(&y)?.sum(None)?])
    };
    let mut vg = transforms::value_and_grad(f);
    let (value, grad) = vg(&[Array::from_slice(&w0, &[4, 3])]).unwrap();
    let grad = grad[0].as_slice::<f32>().to_vec();
    let eval = |w: &[f32]| -> f64 {
        let y = ops::tanh(x.matmul(Array::from_slice(w, &[4, 3])).unwrap()).unwrap();
        ops::square(&y).unwrap().sum(None).unwrap().item_exact::<f32>() as f64
    };
    assert!((value[0].item_exact::<f32>() as f64 - eval(&w0)).abs() < 1e-5);
    let h = 1e-2f32;
    for i in 0..w0.len() {
        let (mut plus, mut minus) = (w0.clone(), w0.clone());
        plus[i] += h;
        minus[i] -= h;
        let numeric = (eval(&plus) - eval(&minus)) / (2.0 * h as f64);
        assert!(
            (grad[i] as f64 - numeric).abs() < 2e-3 * (1.0 + numeric.abs()),
            "d/dw[{i}]: autodiff {} vs finite difference {numeric}",
            grad[i]
        );
    }
}

#[test]
fn linear_and_adamw_lower_a_loss() {
    mlx_rs::random::seed(7).unwrap();
    let mut rng = Rng::new(6);
    let x = Array::from_slice(&rng.vec(64 * 8, 1.0), &[64, 8]);
    let w_true = Array::from_slice(&rng.vec(8 * 2, 1.0), &[8, 2]);
    let y = x.matmul(&w_true).unwrap();
    let mut model = nn::Linear::new(8, 2).unwrap();
    let loss_fn = |m: &mut nn::Linear, (x, y): (&Array, &Array)| -> Result<Array, Exception> {
        let pred = m.forward(x)?;
        ops::square(pred - y)?.mean(None)
    };
    let mut vg = nn::value_and_grad(loss_fn);
    let mut opt = AdamW::new(0.05);
    let mut losses = Vec::new();
    for _ in 0..50 {
        let (loss, grads) = vg(&mut model, (&x, &y)).unwrap();
        opt.update(&mut model, grads).unwrap();
        transforms::eval_params(model.parameters()).unwrap();
        losses.push(loss.item_exact::<f32>());
    }
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(losses[49] < 0.2 * losses[0], "loss {} -> {}", losses[0], losses[49]);
}

#[test]
fn safetensors_round_trip_keeps_values_and_dtypes() {
    let dir = std::env::temp_dir().join(format!("mlx-gpt-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("arrays.safetensors");
    let values = Rng::new(8).vec(2 * 3 * 5, 4.0);
    let base = Array::from_slice(&values, &[2, 3, 5]);
    let arrays: HashMap<String, Array> = [
        ("f32".to_string(), base.clone()),
        ("bf16".to_string(), base.as_dtype(Dtype::Bfloat16).unwrap()),
        ("f16".to_string(), base.as_dtype(Dtype::Float16).unwrap()),
    ]
    .into_iter()
    .collect();
    Array::save_safetensors(&arrays, None, &path).unwrap();
    let loaded = Array::load_safetensors(&path).unwrap();
    assert_eq!(loaded.len(), 3);
    for (name, dtype, tol) in
        [("f32", Dtype::Float32, 0.0), ("bf16", Dtype::Bfloat16, 1e-2), ("f16", Dtype::Float16, 1e-3)]
    {
        let a = &loaded[name];
        assert_eq!(a.dtype(), dtype, "{name}");
        assert_eq!(a.shape(), &[2, 3, 5], "{name}");
        // Bit-exact against what was saved, and close to the f32 source.
        let saved = arrays[name].as_dtype(Dtype::Float32).unwrap();
        let got = a.as_dtype(Dtype::Float32).unwrap();
        assert_eq!(got.as_slice::<f32>(), saved.as_slice::<f32>(), "{name} round trip");
        assert_close(got.as_slice::<f32>(), &values, tol, name);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
