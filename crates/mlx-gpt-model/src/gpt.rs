//! `Gpt`: token and position embeddings, `n_layer` blocks, a final LayerNorm, and an output
//! head tied to the token embedding — or, with `arch = "modern"`, a token embedding
//! normalised by RMSNorm, rotary positions inside attention, a final RMSNorm and an
//! untied, soft-capped head (docs/model.md, "The modern GPT").
//!
//! Shape legend: B batch, T time (positions), C n_embd, V vocab_size.

use crate::block::Block;
use crate::config::{Arch, GptConfig};
use crate::dropout::Dropout;
use crate::kv_cache::LayerKv;
use crate::layer_norm::LayerNorm;
use crate::loss::cross_entropy;
use crate::ModelError;
use mlx_gpt_ops::Kernels;
use mlx_rs::error::Exception;
use mlx_rs::macros::ModuleParameters;
use mlx_rs::module::{ModuleParameters as _, Param};
use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{nn, ops, random, Array, Dtype};

/// nanoGPT's `GPT`. Parameter names are Hugging Face GPT-2's without the `transformer.`
/// prefix (`wte.weight`, `h.0.attn.c_attn.weight`, ..., `ln_f.bias`); the modern GPT's are
/// the same where it has the layer, and `lm_head.weight` for its head.
#[derive(Debug, Clone, ModuleParameters)]
pub struct Gpt {
    /// Token embedding (V, C); also the output head (tied) in GPT-2.
    #[param]
    pub wte: nn::Embedding,
    /// Position embedding (block_size, C); none in the modern GPT (rotary positions).
    #[param]
    pub wpe: Option<nn::Embedding>,
    /// Dropout on the summed embeddings.
    pub drop: Dropout,
    /// The transformer blocks.
    #[param]
    pub h: Vec<Block>,
    /// Final LayerNorm; none in the modern GPT (RMSNorm without parameters).
    #[param]
    pub ln_f: Option<LayerNorm>,
    /// The modern GPT's own output head (V, C), as `nn.Linear` stores it; none in GPT-2,
    /// whose head is `wte`.
    #[param]
    pub lm_head: Option<LmHead>,
    /// The shape this model was built with.
    pub config: GptConfig,
    /// Which formulation of each operation its forward pass runs (default: plain MLX ops;
    /// programs set the one resolved from their configuration).
    pub kernels: Kernels,
}

/// An untied output head: logits = x·Wᵀ with W (V, C).
#[derive(Debug, Clone, ModuleParameters)]
pub struct LmHead {
    /// (V, C)
    #[param]
    pub weight: Param<Array>,
}

fn embedding(rows: usize, c: usize) -> Result<nn::Embedding, Exception> {
    Ok(nn::Embedding { weight: Param::new(ops::zeros::<f32>(&[rows as i32, c as i32])?) })
}

impl Gpt {
    /// A model initialised reproducibly from `seed`, float32. GPT-2 as nanoGPT does: every
    /// weight N(0, 0.02), each residual projection (`c_proj.weight`) N(0, 0.02/√(2·n_layer)),
    /// biases 0, LayerNorm gains 1. The modern GPT as nanochat does: `wte` N(0, 1) (RMSNorm
    /// follows, so only its direction matters), the head N(0, 0.001), `c_attn` and `c_fc`
    /// uniform with standard deviation 1/√C, output projections zero, biases 0.
    pub fn new(config: GptConfig, seed: u64) -> Result<Gpt, ModelError> {
        let mut model = Gpt::zeros(config)?;
        model.init_weights(seed)?;
        Ok(model)
    }

    /// The first parameter (in name order) holding a NaN or an infinity, if any: weights a
    /// diverged run produced, or a damaged file, which would make every output NaN.
    pub fn first_non_finite_parameter(&self) -> Result<Option<String>, Exception> {
        let params = self.parameters().flatten();
        let mut names: Vec<_> = params.keys().cloned().collect();
        names.sort();
        for name in names {
            if !params[&name].is_finite()?.all(None)?.item_exact::<bool>() {
                return Ok(Some(name.to_string()));
            }
        }
        Ok(None)
    }

    /// The model's structure with every parameter zero (gains one); for loading weights.
    /// Its `config` is `config` normalised ([`GptConfig::normalized`]), as its
    /// `config.json` reads back.
    pub fn zeros(config: GptConfig) -> Result<Gpt, ModelError> {
        config.validate()?;
        let config = config.normalized();
        let c = &config;
        let gpt2 = c.arch == Arch::Gpt2;
        let model = Gpt {
            wte: embedding(c.vocab_size, c.n_embd)?,
            wpe: gpt2.then(|| embedding(c.block_size, c.n_embd)).transpose()?,
            drop: Dropout::new(c.dropout),
            h: (0..c.n_layer).map(|_| Block::new(c)).collect::<Result<_, _>>()?,
            ln_f: gpt2.then(|| LayerNorm::new(c.n_embd, c.bias, c.layer_norm_epsilon)).transpose()?,
            lm_head: (!gpt2)
                .then(|| -> Result<_, Exception> {
                    Ok(LmHead { weight: Param::new(ops::zeros::<f32>(&[c.vocab_size as i32, c.n_embd as i32])?) })
                })
                .transpose()?,
            config,
            kernels: Kernels::default(),
        };
        Ok(model)
    }

    fn init_weights(&mut self, seed: u64) -> Result<(), Exception> {
        let proj_std = 0.02 / (2.0 * self.config.n_layer as f32).sqrt();
        let (arch, n_embd) = (self.config.arch, self.config.n_embd);
        let mut params = self.parameters_mut().flatten();
        let mut names: Vec<_> = params.keys().cloned().collect();
        names.sort(); // a fixed order, so the same seed gives the same weights
        let mut key = random::key(seed)?;
        for name in names {
            let p = params.get_mut(&name).expect("listed above");
            let shape = p.shape().to_vec();
            **p = if name.contains("ln_") {
                if name.ends_with(".weight") {
                    ops::ones::<f32>(&shape)?
                } else {
                    ops::zeros::<f32>(&shape)?
                }
            } else if name.ends_with(".bias") {
                ops::zeros::<f32>(&shape)?
            } else {
                let (next, sub) = random::split(&key, 2)?;
                key = next;
                match arch {
                    Arch::Gpt2 => {
                        let std = if name.ends_with("c_proj.weight") { proj_std } else { 0.02 };
                        random::normal::<f32>(&shape[..], None, std, &sub)?
                    }
                    Arch::Modern => modern_init(&name, &shape, n_embd, &sub)?,
                }
            };
        }
        drop(params);
        mlx_rs::transforms::eval_params(self.parameters())?;
        Ok(())
    }

    /// Whether the output head is `wte` (GPT-2) rather than a matrix of its own.
    pub fn tied_head(&self) -> bool {
        self.lm_head.is_none()
    }

    /// Dropout on (training) or off (evaluation and generation).
    pub fn set_training(&mut self, training: bool) {
        self.drop.training = training;
        for b in &mut self.h {
            b.set_training(training);
        }
    }

    /// Cast every parameter to `dtype` (float32, bfloat16 or float16); activations follow.
    pub fn set_dtype(&mut self, dtype: Dtype) -> Result<(), Exception> {
        for (_, p) in self.parameters_mut().flatten() {
            *p = p.as_dtype(dtype)?;
        }
        mlx_rs::transforms::eval_params(self.parameters())
    }

    /// Cast only the weight matrices (the dense layers' weights, wte, which the tied head
    /// reads, and the untied head) to `dtype`; biases, LayerNorms and the position table
    /// stay as they are.
    ///
    /// For decoding: a token reads every matrix once, so on a CPU its time is the bytes of
    /// the matrices over the memory's read bandwidth, and bfloat16 halves those bytes. With
    /// the CPU kernels the decoding product widens each weight to float32 in registers, so
    /// the activations, products and sums stay float32 and only the weights are rounded
    /// (to 8 bits of mantissa). Not for training: the optimizer expects one dtype.
    pub fn set_matrices_dtype(&mut self, dtype: Dtype) -> Result<(), Exception> {
        for (name, p) in self.parameters_mut().flatten() {
            if p.ndim() == 2 && &*name != "wpe.weight" {
                *p = p.as_dtype(dtype)?;
            }
        }
        mlx_rs::transforms::eval_params(self.parameters())
    }

    /// Lay every block matrix out in memory (out, in) when `transposed`, else (in, out):
    /// the same values, shapes and names either way ([`mlx_gpt_ops::layout`]). The CPU
    /// decoding kernels read (out, in) fastest for one or two rows per step and (in, out)
    /// for more, so generating on them lays the matrices out for its batch; a matrix
    /// already laid out so is left as it is.
    ///
    /// The matrices a token reads whole (every 2-D parameter but the position table, of
    /// which it reads a row) then go onto 2 MiB pages, together, where the system has them
    /// ([`mlx_gpt_ops::onto_huge_pages`]): decoding streams them once per token.
    pub fn lay_out_matrices(&mut self, transposed: bool) -> Result<(), Exception> {
        for (name, p) in self.parameters_mut().flatten() {
            if p.ndim() == 2 && name.starts_with("h.") {
                *p = if transposed { mlx_gpt_ops::store_transposed(p)? } else { mlx_gpt_ops::row_major(p)? };
            }
        }
        let mut params = self.parameters_mut().flatten();
        let mut read: Vec<&mut Array> = params
            .iter_mut()
            .filter(|(name, p)| p.ndim() == 2 && &***name != "wpe.weight")
            .map(|(_, p)| &mut **p)
            .collect();
        if read.iter().all(|p| mlx_gpt_ops::is_on_huge_pages(p)) {
            return Ok(());
        }
        for p in read.iter_mut() {
            if !mlx_gpt_ops::is_stored_transposed(p) {
                **p = mlx_gpt_ops::row_major(p)?; // evaluated and dense, as the copy needs
            }
        }
        let sources: Vec<&Array> = read.iter().map(|p| &**p).collect();
        if let Some(copies) = mlx_gpt_ops::onto_huge_pages(&sources)? {
            for (p, copy) in read.into_iter().zip(copies) {
                *p = copy;
            }
            // The weights they replaced, unless something else holds them.
            mlx_gpt_runtime::malloc::release_free_memory();
        }
        Ok(())
    }

    /// The parameters' dtype.
    pub fn dtype(&self) -> Dtype {
        self.wte.weight.dtype()
    }

    /// The dtype the blocks' keys and values take: the embedding's (GPT-2's sums the token
    /// and position rows, so bfloat16 matrices with a float32 `wpe` give float32).
    pub fn kv_dtype(&self) -> Dtype {
        match &self.wpe {
            Some(wpe) if wpe.weight.dtype() == Dtype::Float32 => Dtype::Float32,
            _ => self.dtype(),
        }
    }

    fn check_len(&self, t: usize, past: usize) -> Result<(), Exception> {
        if past + t > self.config.block_size {
            return Err(Exception::custom(format!(
                "cannot forward a sequence of length {}: block_size is only {}",
                past + t,
                self.config.block_size
            )));
        }
        Ok(())
    }

    /// The final hidden states: idx (B, T) token ids → (B, T, C). `kv`, one entry per layer,
    /// holds the keys and values of earlier positions (generation); positions continue
    /// after them.
    pub fn hidden(&mut self, idx: &Array, kv: Option<&mut [LayerKv]>) -> Result<Array, Exception> {
        let k = self.kernels;
        self.hidden_with(&k, idx, kv)
    }

    /// [`Gpt::hidden`] with the kernels `k` (generation decodes with
    /// [`Kernels::for_decoding`]).
    pub fn hidden_with(
        &mut self,
        k: &Kernels,
        idx: &Array,
        mut kv: Option<&mut [LayerKv]>,
    ) -> Result<Array, Exception> {
        if idx.ndim() != 2 {
            return Err(Exception::custom(format!("idx must be (B, T), got shape {:?}", idx.shape())));
        }
        let t = idx.shape()[1];
        let past = kv.as_ref().and_then(|kv| kv.first()).map_or(0, |l| l.len());
        self.check_len(t as usize, past)?;
        let tok_emb = self.wte.weight.take_axis(idx, 0)?; // (B, T, C)
        let (x, rope) = match &self.wpe {
            Some(wpe) => {
                let pos = ops::arange::<_, i32>(past as i32, past as i32 + t, None)?; // (T,)
                let pos_emb = wpe.weight.take_axis(&pos, 0)?; // (T, C)
                (tok_emb.add(&pos_emb)?, None)
            }
            // Modern: no position table; attention turns queries and keys by position.
            None => {
                let c = &self.config;
                let tables = mlx_gpt_ops::rotary_tables(past, t as usize, c.head_size(), c.rope_base);
                (mlx_gpt_ops::rms_norm(k, &tok_emb, c.layer_norm_epsilon)?, Some(tables))
            }
        };
        let mut x = self.drop.forward(&x)?;
        for (i, block) in self.h.iter_mut().enumerate() {
            let layer_kv = kv.as_mut().map(|kv| &mut kv[i]);
            x = block.forward(k, &x, layer_kv, rope.as_ref())?; // (B, T, C)
        }
        crate::layer_norm::pre_norm(k, self.ln_f.as_ref(), &x, self.config.layer_norm_epsilon)
    }

    /// One decoding step as one call on the CPU kernels for decoding
    /// ([`mlx_gpt_ops::decode_step`]): logits (B·V, row after row) for `ids`, one new token
    /// per sequence, after the positions `kv` holds, each layer's cache then holding the
    /// new one too. The same logits and caches as [`Gpt::hidden_with`] and
    /// [`Gpt::lm_head_with`] on that position, without building MLX's graph (on two
    /// vCPUs its building and hand-offs took about 0.27 ms of a 7–10 ms GPT-2 124M token;
    /// docs/performance-history.md). `None` where it does not apply — the modern GPT,
    /// other kernels, caches not ready to be written in place — with `kv` as it was.
    pub fn decode_step(&mut self, k: &Kernels, ids: &[u32], kv: &mut [LayerKv]) -> Result<Option<Vec<f32>>, Exception> {
        let (Some(wpe), Some(ln_f), None) = (&self.wpe, &self.ln_f, &self.lm_head) else { return Ok(None) };
        let past = kv.first().map_or(0, |l| l.len());
        if self.drop.training || kv.len() != self.h.len() || past == 0 || kv.iter().any(|l| l.len() != past) {
            return Ok(None);
        }
        self.check_len(1, past)?;
        let mut blocks = Vec::with_capacity(self.h.len());
        let mut gelu_tanh = None;
        for block in &self.h {
            match block.decoding_params() {
                Some((params, tanh, eps)) if eps == ln_f.eps && gelu_tanh.is_none_or(|t| t == tanh) => {
                    blocks.push(params);
                    gelu_tanh = Some(tanh);
                }
                _ => return Ok(None),
            }
        }
        // Room for the new position (a grown buffer is evaluated by the step).
        let (batch, c) = (ids.len() as i32, self.config.n_embd as i32);
        for l in kv.iter_mut() {
            l.reserve_rows(batch, c, Dtype::Float32, 1)?;
        }
        let params = mlx_gpt_ops::StepParams {
            wte: &self.wte.weight,
            wpe: &wpe.weight,
            ln_f: (&ln_f.weight, ln_f.bias.value.as_ref()),
            blocks,
            n_head: self.config.n_head,
            eps: ln_f.eps,
            gelu_tanh: gelu_tanh.unwrap_or(true),
        };
        let mut caches: Vec<(Array, Array)> = kv.iter_mut().map(|l| l.take()).collect();
        let logits = mlx_gpt_ops::decode_step(k, ids, past, &mut caches, &params);
        let added = usize::from(matches!(logits, Ok(Some(_))));
        for (l, (kb, vb)) in kv.iter_mut().zip(caches) {
            l.restore(kb, vb, added);
        }
        logits
    }

    /// Logits from hidden states through the head (tied in GPT-2; the modern GPT's own,
    /// soft-capped): x (..., C) → (..., V).
    pub fn lm_head(&self, x: &Array) -> Result<Array, Exception> {
        self.lm_head_with(&self.kernels, x)
    }

    /// [`Gpt::lm_head`] with the kernels `k`.
    pub fn lm_head_with(&self, k: &Kernels, x: &Array) -> Result<Array, Exception> {
        match &self.lm_head {
            None => mlx_gpt_ops::linear_transposed(k, x, &self.wte.weight),
            Some(head) => {
                let logits = mlx_gpt_ops::linear_transposed(k, x, &head.weight)?;
                softcap(&logits, self.config.logit_softcap)
            }
        }
    }

    /// nanoGPT's `forward`: with targets (B, T), logits (B, T, V) and the mean cross-entropy
    /// (targets of −1 ignored); without, logits (B, 1, V) of the last position only.
    pub fn forward(&mut self, idx: &Array, targets: Option<&Array>) -> Result<(Array, Option<Array>), Exception> {
        let x = self.hidden(idx, None)?; // (B, T, C)
        match targets {
            Some(targets) => {
                let logits = self.lm_head(&x)?; // (B, T, V)
                let loss = cross_entropy(&self.kernels, &logits, targets)?;
                Ok((logits, Some(loss)))
            }
            None => {
                let t = x.shape()[1];
                let last = x.take_axis(Array::from_slice(&[t - 1], &[1]), 1)?; // (B, 1, C)
                Ok((self.lm_head(&last)?, None))
            }
        }
    }

    /// The mean cross-entropy alone, for training steps.
    pub fn loss(&mut self, idx: &Array, targets: &Array) -> Result<Array, Exception> {
        Ok(self.forward(idx, Some(targets))?.1.expect("targets given"))
    }

    /// Shrink the context to `block_size` positions (e.g. to finetune GPT-2 on shorter
    /// sequences), keeping the first rows of `wpe`.
    pub fn crop_block_size(&mut self, block_size: usize) -> Result<(), ModelError> {
        if block_size == 0 || block_size > self.config.block_size {
            return Err(ModelError::CropBlockSize { requested: block_size, block_size: self.config.block_size });
        }
        if let Some(wpe) = &mut self.wpe {
            let w = wpe.weight.value.index(..block_size as i32);
            *wpe.weight = w;
        }
        self.config.block_size = block_size;
        Ok(())
    }

    /// Number of parameters. nanoGPT reports it without the position embedding
    /// (`non_embedding = true`): the token embedding counts once, as the tied head. The
    /// same rule for the modern GPT: tables that are only looked up (its `wte`) are left
    /// out, matrices that multiply (its head) counted.
    pub fn num_params(&self, non_embedding: bool) -> usize {
        let total: usize = self.parameters().flatten().values().map(|a| a.size()).sum();
        if !non_embedding {
            return total;
        }
        match (&self.wpe, &self.lm_head) {
            (Some(wpe), _) => total - wpe.weight.size(),
            (None, Some(_)) => total - self.wte.weight.size(),
            (None, None) => total,
        }
    }

    /// Training FLOPs per token (forward + backward), PaLM's estimate as nanoGPT uses it:
    /// `6N + 12·L·H·Q·T` with N the non-embedding parameters, Q the head size and T the
    /// sequence length.
    pub fn flops_per_token(&self, seq_len: usize) -> f64 {
        let c = &self.config;
        6.0 * self.num_params(true) as f64 + 12.0 * (c.n_layer * c.n_head * c.head_size() * seq_len) as f64
    }

    /// Model FLOPs utilisation: achieved training FLOP/s over `peak_flops` (the device's
    /// peak, supplied by the caller).
    pub fn estimate_mfu(&self, tokens_per_second: f64, seq_len: usize, peak_flops: f64) -> f64 {
        self.flops_per_token(seq_len) * tokens_per_second / peak_flops
    }
}

/// The modern GPT's initialisation of the parameter `name` (see [`Gpt::new`]).
fn modern_init(name: &str, shape: &[i32], n_embd: usize, key: &Array) -> Result<Array, Exception> {
    if name == "wte.weight" {
        random::normal::<f32>(shape, None, 1.0, key)
    } else if name == "lm_head.weight" {
        random::normal::<f32>(shape, None, 0.001, key)
    } else if name.ends_with("c_proj.weight") {
        // Each block starts as the identity: its residual branches add nothing yet.
        ops::zeros::<f32>(shape)
    } else {
        // Uniform on ±√3/√C has standard deviation 1/√C, without a normal's outliers.
        let bound = 3.0f32.sqrt() / (n_embd as f32).sqrt();
        random::uniform::<_, f32>(-bound, bound, shape, key)
    }
}

/// `cap·tanh(logits/cap)`: logits smoothly bounded to (−cap, cap), so no logit can grow
/// without limit (Gemma 2, modded-nanogpt); `cap = 0` leaves them as they are.
fn softcap(logits: &Array, cap: f32) -> Result<Array, Exception> {
    if cap == 0.0 {
        return Ok(logits.clone());
    }
    let cap = Array::from_f32(cap).as_dtype(logits.dtype())?;
    ops::tanh(&logits.divide(&cap)?)?.multiply(&cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_parameters_are_named() {
        use mlx_rs::module::ModuleParameters as _;
        let c = GptConfig { block_size: 8, n_layer: 1, n_head: 2, n_embd: 16, ..GptConfig::baby(11) };
        let mut m = Gpt::new(c, 1).unwrap();
        assert_eq!(m.first_non_finite_parameter().unwrap(), None);
        let mut params = m.parameters_mut().flatten();
        let p = params.get_mut("h.0.mlp.c_fc.weight").unwrap();
        let shape = p.shape().to_vec();
        **p = mlx_rs::ops::full::<f32>(&shape, mlx_rs::Array::from_f32(f32::NAN)).unwrap();
        drop(params);
        assert_eq!(m.first_non_finite_parameter().unwrap().as_deref(), Some("h.0.mlp.c_fc.weight"));
    }
    use crate::config::Activation;
    use proptest::prelude::*;

    fn config(n_layer: usize, n_head: usize, hs: usize, vocab: usize, block: usize, bias: bool) -> GptConfig {
        GptConfig {
            block_size: block,
            vocab_size: vocab,
            n_layer,
            n_head,
            n_embd: n_head * hs,
            dropout: 0.0,
            bias,
            activation: Activation::Gelu,
            ..GptConfig::baby(vocab)
        }
    }

    fn ids(v: &[i32], b: i32) -> Array {
        Array::from_slice(v, &[b, v.len() as i32 / b])
    }

    #[test]
    fn init_follows_nanogpt() {
        let c = config(4, 4, 32, 500, 64, true);
        let m = Gpt::new(c.clone(), 0).unwrap();
        let std = |a: &Array| {
            let v = a.as_slice::<f32>();
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
            (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
        };
        let proj = 0.02 / (2.0f64 * 4.0).sqrt();
        assert!((std(&m.h[0].attn.c_proj.weight) - proj).abs() < 0.1 * proj);
        assert!((std(&m.h[3].mlp.c_proj.weight) - proj).abs() < 0.1 * proj);
        assert!((std(&m.h[1].mlp.c_fc.weight) - 0.02).abs() < 0.002);
        assert!((std(&m.wte.weight) - 0.02).abs() < 0.002);
        assert!(m.h[2].attn.c_attn.bias.value.as_ref().unwrap().as_slice::<f32>().iter().all(|&x| x == 0.0));
        assert!(m.ln_f.as_ref().unwrap().weight.as_slice::<f32>().iter().all(|&x| x == 1.0));
        // Seeded: the same seed gives the same weights, another seed others.
        let again = Gpt::new(c.clone(), 0).unwrap();
        assert_eq!(m.wte.weight.as_slice::<f32>(), again.wte.weight.as_slice::<f32>());
        let other = Gpt::new(c, 1).unwrap();
        assert_ne!(m.wte.weight.as_slice::<f32>(), other.wte.weight.as_slice::<f32>());
    }

    /// nanochat's initialisation for the modern GPT: output projections zero, the head
    /// N(0, 0.001), wte N(0, 1), c_attn and c_fc uniform within ±√3/√C (std 1/√C); no
    /// position table, no LayerNorm gains.
    #[test]
    fn modern_init_follows_nanochat() {
        use mlx_rs::module::ModuleParameters as _;
        let c = GptConfig { n_layer: 2, n_embd: 256, n_head: 4, ..GptConfig::baby(500).modern() };
        let m = Gpt::new(c, 0).unwrap();
        let stats = |a: &Array| {
            let v = a.as_slice::<f32>();
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
            let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt();
            (std, v.iter().fold(0.0f32, |a, &x| a.max(x.abs())))
        };
        for b in &m.h {
            assert_eq!(stats(&b.attn.c_proj.weight).1, 0.0);
            assert_eq!(stats(&b.mlp.c_proj.weight).1, 0.0);
            for w in [&b.attn.c_attn.weight, &b.mlp.c_fc.weight] {
                let (std, max) = stats(w);
                assert!((std - 1.0 / 16.0).abs() < 0.05 / 16.0 && max <= 3f32.sqrt() / 16.0, "{std} {max}");
            }
        }
        assert!((stats(&m.wte.weight).0 - 1.0).abs() < 0.05);
        assert!((stats(&m.lm_head.as_ref().unwrap().weight).0 - 0.001).abs() < 0.0001);
        let names: Vec<String> = m.parameters().flatten().keys().map(|k| k.to_string()).collect();
        assert!(!names.iter().any(|n| n.contains("wpe") || n.contains("ln_") || n.ends_with("bias")), "{names:?}");
    }

    #[test]
    fn parameter_count_matches_the_formula() {
        let (l, c, v, t) = (3usize, 48usize, 101usize, 20usize);
        for bias in [true, false] {
            let m = Gpt::new(config(l, 4, 12, v, t, bias), 0).unwrap();
            let per_block = 12 * c * c + if bias { 13 * c } else { 2 * c }; // attn 4C², mlp 8C², LN gains 2C (+ 11C of biases)
            let want = v * c + t * c + l * per_block + if bias { 2 * c } else { c };
            assert_eq!(m.num_params(false), want, "bias={bias}");
            assert_eq!(m.num_params(true), want - t * c);
        }
        let gpt2 = Gpt::zeros(GptConfig::gpt2()).unwrap();
        assert_eq!(gpt2.num_params(true), 123_653_376); // nanoGPT prints "123.65M"
    }

    #[test]
    fn too_long_sequence_names_both_lengths() {
        let mut m = Gpt::new(config(1, 2, 8, 10, 4, false), 0).unwrap();
        let err = m.forward(&ids(&[1, 2, 3, 4, 5], 1), None).unwrap_err();
        assert_eq!(err.what(), "cannot forward a sequence of length 5: block_size is only 4");
    }

    #[test]
    fn crop_shrinks_the_context() {
        let mut m = Gpt::new(config(1, 2, 8, 10, 16, false), 0).unwrap();
        let (before, _) = m.forward(&ids(&[1, 2, 3], 1), None).unwrap();
        m.crop_block_size(8).unwrap();
        assert_eq!(m.wpe.as_ref().unwrap().weight.shape(), &[8, 16]);
        let (after, _) = m.forward(&ids(&[1, 2, 3], 1), None).unwrap();
        assert_eq!(before.as_slice::<f32>(), after.as_slice::<f32>());
        assert!(m.crop_block_size(9).is_err());
    }

    #[test]
    fn dtypes_are_selectable() {
        let mut m = Gpt::new(config(1, 2, 8, 10, 8, true), 0).unwrap();
        let (f32_logits, _) = m.forward(&ids(&[1, 2, 3], 1), Some(&ids(&[2, 3, 4], 1))).unwrap();
        for dtype in [Dtype::Bfloat16, Dtype::Float16] {
            let mut low = m.clone();
            low.set_dtype(dtype).unwrap();
            assert_eq!(low.dtype(), dtype);
            let (logits, loss) = low.forward(&ids(&[1, 2, 3], 1), Some(&ids(&[2, 3, 4], 1))).unwrap();
            assert_eq!(logits.dtype(), dtype);
            assert_eq!(loss.unwrap().dtype(), Dtype::Float32);
            let diff = logits.as_dtype(Dtype::Float32).unwrap().subtract(&f32_logits).unwrap().abs().unwrap();
            let d = diff.max(None).unwrap().item_exact::<f32>();
            let mag = f32_logits.abs().unwrap().max(None).unwrap().item_exact::<f32>();
            assert!(d < 0.05 * mag.max(1.0), "{dtype:?}: max diff {d}, max |logit| {mag}");
        }
        m.set_training(true); // dropout 0: still deterministic
    }

    #[test]
    fn dropout_is_active_only_in_training() {
        let mut c = config(2, 2, 8, 10, 8, true);
        c.dropout = 0.5;
        let mut m = Gpt::new(c, 0).unwrap();
        let x = ids(&[1, 2, 3, 4], 1);
        let eval = |m: &mut Gpt| m.forward(&x, Some(&x)).unwrap().0.as_slice::<f32>().to_vec();
        assert_eq!(eval(&mut m), eval(&mut m));
        m.set_training(true);
        assert_ne!(eval(&mut m), eval(&mut m));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

        #[test]
        fn shapes_and_causality(n_layer in 1usize..3, n_head in 1usize..4, hs in 1usize..6, vocab in 2usize..40,
                                block in 2usize..12, bias: bool, b in 1i32..3, seed in 0u64..100,
                                dropout_path: bool, modern: bool, grouped: bool) {
            let mut c = config(n_layer, n_head, hs, vocab, block, bias);
            if modern {
                // Rotary needs even head sizes; grouped: one key/value head for all.
                c = GptConfig { n_embd: n_head * 2 * hs, ..c.modern() };
                c.n_kv_head = grouped.then_some(1);
            }
            if dropout_path {
                c.dropout = 1e-9; // exercises the explicit softmax path with (almost) no dropout
            }
            let mut m = Gpt::new(c, seed).unwrap();
            m.set_training(dropout_path);
            let t = block as i32;
            let n = (b * t) as usize;
            let tokens: Vec<i32> = (0..n).map(|i| ((i as u64 * 7 + seed) % vocab as u64) as i32).collect();
            let (logits, loss) = m.forward(&ids(&tokens, b), Some(&ids(&tokens, b))).unwrap();
            prop_assert_eq!(logits.shape(), &[b, t, vocab as i32]);
            prop_assert!(loss.unwrap().item_exact::<f32>().is_finite());
            let (last, _) = m.forward(&ids(&tokens, b), None).unwrap();
            prop_assert_eq!(last.shape(), &[b, 1, vocab as i32]);
            // Changing tokens after position `cut` never changes logits at positions ≤ cut.
            let cut = (seed as i32) % t;
            let mut changed = tokens.clone();
            for row in 0..b {
                for pos in (cut + 1)..t {
                    let i = (row * t + pos) as usize;
                    changed[i] = (changed[i] + 1) % vocab as i32;
                }
            }
            let (other, _) = m.forward(&ids(&changed, b), Some(&ids(&changed, b))).unwrap();
            let (a, o) = (logits.as_slice::<f32>(), other.as_slice::<f32>());
            let v = vocab;
            for row in 0..b as usize {
                for pos in 0..=cut as usize {
                    let at = (row * t as usize + pos) * v;
                    for k in 0..v {
                        prop_assert!((a[at + k] - o[at + k]).abs() <= 1e-5, "row {} pos {} changed", row, pos);
                    }
                }
            }
        }
    }
}
