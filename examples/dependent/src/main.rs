//! A tiny GPT's forward pass and a few greedy tokens, from a program outside the mlx-gpt
//! workspace, plus what it runs on. Run: `cargo run --manifest-path examples/dependent/Cargo.toml`,
//! or the built binary directly (no LD_LIBRARY_PATH needed).

use mlx_gpt_model::generate::{generate, SamplingParams};
use mlx_gpt_model::{Gpt, GptConfig, KernelChoice, Kernels};
use mlx_gpt_runtime::{blas_kernel, device};
use mlx_rs::Array;

fn main() -> anyhow::Result<()> {
    let config = GptConfig { block_size: 32, n_layer: 2, n_head: 2, n_embd: 64, ..GptConfig::baby(65) };
    let mut model = Gpt::new(config, 1337)?;
    // The kernels chosen once, here for the CPU: mlx-gpt's CPU kernels where built.
    model.kernels = Kernels::resolve(KernelChoice::Auto, device::select(None)?)?;
    println!("kernels: {}", model.kernels.describe());
    let idx = Array::from_slice(&[1i32, 2, 3, 4, 5, 6, 7, 8], &[2, 4]); // (B, T)
    let (logits, loss) = model.forward(&idx, Some(&idx))?;
    println!("logits {:?}, loss {:.4}", logits.shape(), loss.expect("targets given").item_cast::<f32>());
    let params = SamplingParams { temperature: 0.0, ..Default::default() };
    let mut tokens = Vec::new();
    generate(&mut model, &[1, 2, 3], 8, &params, |t| {
        tokens.push(t);
        true
    })?;
    println!("generated {tokens:?}");
    // The kernel check ran before main, as in the mlx-gpt binary.
    println!("BLAS kernel: {}", blas_kernel::status().describe());
    Ok(())
}
