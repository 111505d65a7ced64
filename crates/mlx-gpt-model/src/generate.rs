//! Autoregressive sampling with a per-layer KV cache.
//!
//! Each step feeds only the newest token: its query attends to the keys and values the
//! cache already holds, so a token costs O(T) instead of a forward pass over the whole
//! context. GPT-2's position embedding is absolute, so once the context would exceed
//! `block_size` the window slides and every token's position changes: the cached keys and
//! values are then stale, and the cache is rebuilt from the last `block_size` tokens at
//! each step — exactly what nanoGPT's uncached `generate` computes. Sampling happens on
//! the host with a seeded generator, so the same seed gives the same tokens with or
//! without the cache.

use crate::gpt::Gpt;
use crate::kv_cache::LayerKv;
use crate::ModelError;
use mlx_rs::{Array, Dtype};

/// How to pick each next token.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Divides the logits; 0 means greedy (always the most likely token).
    pub temperature: f32,
    /// Keep only the k most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probabilities sum to ≥ p.
    pub top_p: Option<f32>,
    /// Seed of the sampling generator.
    pub seed: u64,
    /// Stop after emitting this token.
    pub stop_token: Option<u32>,
    /// Use the KV cache (on by default; off reproduces nanoGPT's full recomputation).
    pub use_kv_cache: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 1.0, top_k: None, top_p: None, seed: 1337, stop_token: None, use_kv_cache: true }
    }
}

impl SamplingParams {
    fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Sampling(m));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!("temperature must be ≥ 0, got {}", self.temperature));
        }
        if self.top_k == Some(0) {
            return bad("top_k must be at least 1".into());
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad(format!("top_p must be in (0, 1], got {p}"));
            }
        }
        Ok(())
    }
}

/// SplitMix64: small, fast, and identical on every platform.
#[derive(Debug, Clone)]
pub struct SampleRng(u64);

impl SampleRng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        SampleRng(seed)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Pick a token from one position's logits (V,).
///
/// Only the candidates that survive top-k are exponentiated and summed (in index order,
/// so the result is the same as over all V with zeros for the others): with GPT-2's
/// 50,257 logits and top-k 200 this is about a tenth of the work of the full pass.
pub fn sample(logits: &[f32], params: &SamplingParams, rng: &mut SampleRng) -> u32 {
    if params.temperature == 0.0 {
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let scaled = |i: usize| logits[i] as f64 / params.temperature as f64;
    // (index, scaled logit) of every candidate, in index order.
    let mut kept: Vec<(usize, f64)> = match params.top_k.filter(|&k| k < logits.len()) {
        // As nanoGPT: everything below the k-th largest logit is removed (ties kept).
        Some(k) => {
            let kth = kth_largest((0..logits.len()).map(scaled), k);
            // Everything not below kth, not `l >= kth`: a NaN logit stays, as in nanoGPT's
            // masking (which removes only what compares below).
            let kept = |l: f64| l.partial_cmp(&kth) != Some(std::cmp::Ordering::Less);
            (0..logits.len()).map(|i| (i, scaled(i))).filter(|&(_, l)| kept(l)).collect()
        }
        None => (0..logits.len()).map(|i| (i, scaled(i))).collect(),
    };
    let max = kept.iter().map(|&(_, l)| l).fold(f64::NEG_INFINITY, f64::max);
    kept.iter_mut().for_each(|(_, l)| *l = (*l - max).exp()); // now unnormalised probabilities
    let total: f64 = kept.iter().map(|&(_, p)| p).sum();
    kept.iter_mut().for_each(|(_, p)| *p /= total);
    if let Some(top_p) = params.top_p.filter(|&p| p < 1.0) {
        let mut order: Vec<usize> = (0..kept.len()).collect();
        order.sort_by(|&a, &b| kept[b].1.total_cmp(&kept[a].1).then(kept[a].0.cmp(&kept[b].0)));
        let mut cum = 0.0;
        let mut keep = order.len();
        for (rank, &j) in order.iter().enumerate() {
            cum += kept[j].1;
            if cum >= top_p as f64 {
                keep = rank + 1;
                break;
            }
        }
        for &j in &order[keep..] {
            kept[j].1 = 0.0;
        }
        let total: f64 = kept.iter().map(|&(_, p)| p).sum();
        kept.iter_mut().for_each(|(_, p)| *p /= total);
    }
    let u = rng.next_f64();
    let mut cum = 0.0;
    let mut last_nonzero = 0;
    for &(i, p) in &kept {
        if p > 0.0 {
            cum += p;
            last_nonzero = i;
            if u < cum {
                return i as u32;
            }
        }
    }
    last_nonzero as u32 // rounding left u above the final cumulative sum
}

/// The k-th largest of `values` (k ≥ 1, at most their number) under `f64::total_cmp`,
/// through a min-heap of the k largest so far: most values are compared once with the
/// heap's smallest, where a selection over all of them would move them around.
fn kth_largest(values: impl Iterator<Item = f64>, k: usize) -> f64 {
    use std::cmp::{Ordering, Reverse};
    use std::collections::BinaryHeap;
    #[derive(PartialEq)]
    struct Total(f64);
    impl Eq for Total {}
    impl PartialOrd for Total {
        fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
            Some(self.cmp(other))
        }
    }
    impl Ord for Total {
        fn cmp(&self, other: &Self) -> Ordering {
            self.0.total_cmp(&other.0)
        }
    }
    let mut heap = BinaryHeap::with_capacity(k);
    for v in values {
        if heap.len() < k {
            heap.push(Reverse(Total(v)));
        } else if v.total_cmp(&heap.peek().expect("k ≥ 1").0 .0) == Ordering::Greater {
            heap.pop();
            heap.push(Reverse(Total(v)));
        }
    }
    heap.peek().expect("k ≥ 1").0 .0
}

/// Token ids of equally long rows as one (B, T) array.
fn ids(rows: &[&[u32]]) -> Array {
    let v: Vec<i32> = rows.iter().flat_map(|r| r.iter().map(|&t| t as i32)).collect();
    Array::from_slice(&v, &[rows.len() as i32, rows[0].len() as i32])
}

/// Generate up to `max_new_tokens` tokens after `prompt`, calling `on_token` with each as
/// soon as it is chosen (return `false` to stop). Returns the new tokens. Dropout is
/// switched off.
pub fn generate(
    model: &mut Gpt,
    prompt: &[u32],
    max_new_tokens: usize,
    params: &SamplingParams,
    mut on_token: impl FnMut(u32) -> bool,
) -> Result<Vec<u32>, ModelError> {
    let mut out = decode(model, &[prompt], max_new_tokens, params, |step| on_token(step[0]))?;
    Ok(out.pop().expect("one row"))
}

/// Generate for several prompts at once: each step is one forward pass over the whole
/// batch, so the weights are read once per step for all rows — on a CPU, where decoding
/// is bound by reading the weights, B rows cost little more than one.
///
/// The prompts must be equally long (GPT-2's positions are absolute, so a padded row
/// would need positions of its own). Row `i` samples with the seed `params.seed + i` and
/// gets exactly the tokens `generate` gives its prompt with that seed; a row that emits
/// `stop_token` stops there while the others go on. Returns each row's new tokens.
pub fn generate_batch(
    model: &mut Gpt,
    prompts: &[&[u32]],
    max_new_tokens: usize,
    params: &SamplingParams,
) -> Result<Vec<Vec<u32>>, ModelError> {
    if let Some(p) = prompts.iter().find(|p| p.len() != prompts[0].len()) {
        return Err(ModelError::Sampling(format!(
            "the prompts of a batch must be equally long: {} and {} tokens",
            prompts[0].len(),
            p.len()
        )));
    }
    decode(model, prompts, max_new_tokens, params, |_| true)
}

/// The decoding loop of [`generate`] and [`generate_batch`]: `on_step` sees the tokens
/// chosen at each step, one per row (rows already stopped repeat their stop token), and
/// returns `false` to stop.
fn decode(
    model: &mut Gpt,
    prompts: &[&[u32]],
    max_new_tokens: usize,
    params: &SamplingParams,
    mut on_step: impl FnMut(&[u32]) -> bool,
) -> Result<Vec<Vec<u32>>, ModelError> {
    params.validate()?;
    if prompts.is_empty() || prompts.iter().any(|p| p.is_empty()) {
        return Err(ModelError::Sampling("the prompt must hold at least one token".into()));
    }
    let vocab = model.config.vocab_size as u32;
    if let Some(&bad) = prompts.iter().flat_map(|p| p.iter()).find(|&&t| t >= vocab) {
        return Err(ModelError::Sampling(format!("prompt token {bad} is outside the vocabulary (size {vocab})")));
    }
    model.set_training(false);
    let (block, rows) = (model.config.block_size, prompts.len());
    let mut rngs: Vec<SampleRng> = (0..rows).map(|i| SampleRng::new(params.seed.wrapping_add(i as u64))).collect();
    let mut tokens: Vec<Vec<u32>> = prompts.iter().map(|p| p.to_vec()).collect();
    // Reserved up to a point: a huge max_new_tokens (a stream meant to run until stopped)
    // must not ask for its whole capacity up front.
    let mut out: Vec<Vec<u32>> = vec![Vec::with_capacity(max_new_tokens.min(1 << 16)); rows];
    let mut done = vec![false; rows];
    // How many of each row's tokens the cache holds (a suffix ending before the pending
    // ones); every row has the same length.
    let mut cached = 0usize;
    // Decoding multiplies a few rows by every weight matrix: with the CPU kernels, the
    // decoding product (one read of each weight for all rows).
    let k = model.kernels.for_decoding();
    let cpu = k.set() == mlx_gpt_ops::KernelSet::Cpu;
    // With the CPU kernels the cache, which every new position reads whole, on 2 MiB
    // pages too.
    let empty_cache = || if cpu { LayerKv::on_huge_pages() } else { LayerKv::default() };
    let mut kv: Vec<LayerKv> = vec![empty_cache(); model.config.n_layer];
    // Fresh caches with room for every position the rest of the generation holds (at most
    // a block), taken at once (LayerKv::reserve_all).
    let (c, kv_dtype) = (model.config.n_embd as i32, model.kv_dtype());
    let fresh_caches = |kv: &mut [LayerKv], positions: usize| -> Result<(), mlx_rs::error::Exception> {
        kv.iter_mut().for_each(|l| *l = empty_cache());
        LayerKv::reserve_all(kv, rows as i32, c, kv_dtype, positions.min(block) as i32)
    };
    if cpu {
        // The decoding product reads float32 matrices fastest laid out (out, in) for one or
        // two rows, (in, out) for more, and bfloat16 ones (in, out) (mlx_gpt_ops::layout):
        // a copy when the layout changes.
        // (The matrices' dtype is wte's: set_matrices_dtype converts them together.)
        let float32 = model.dtype() == Dtype::Float32;
        model.lay_out_matrices(rows <= 2 && float32)?;
    }
    let window =
        |tokens: &[Vec<u32>], from: usize| -> Array { ids(&tokens.iter().map(|t| &t[from..]).collect::<Vec<_>>()) };
    for step in 0..max_new_tokens {
        let len = tokens[0].len();
        // One token after the cached ones: on the CPU kernels the whole step as one call,
        // with no graph (Gpt::decode_step), where it applies.
        let stepped = if cpu && params.use_kv_cache && cached > 0 && len == cached + 1 && len <= block {
            let last: Vec<u32> = tokens.iter().map(|t| t[len - 1]).collect();
            model.decode_step(&k, &last, &mut kv)?
        } else {
            None
        };
        let graph_logits;
        let logits: &[f32] = if let Some(logits) = &stepped {
            cached += 1;
            logits
        } else {
            let x = if params.use_kv_cache {
                let pending = len - cached;
                if cached == 0 || cached + pending > block {
                    // (Re)build from the window of the last block_size tokens.
                    // (The last token chosen is never fed back.)
                    fresh_caches(&mut kv, len.saturating_add(max_new_tokens - step - 1))?;
                    let x = model.hidden_with(&k, &window(&tokens, len.saturating_sub(block)), Some(&mut kv))?; // (B, Tw, C)
                    cached = len.min(block);
                    x
                } else {
                    let x = model.hidden_with(&k, &window(&tokens, cached), Some(&mut kv))?; // (B, pending, C)
                    cached += pending;
                    x
                }
            } else {
                model.hidden_with(&k, &window(&tokens, len.saturating_sub(block)), None)?
                // (B, Tw, C)
            };
            let t = x.shape()[1];
            let last = x.take_axis(Array::from_slice(&[t - 1], &[1]), 1)?; // (B, 1, C)
            graph_logits = model.lm_head_with(&k, &last)?.as_dtype(Dtype::Float32)?; // (B, 1, V)
            graph_logits.eval()?;
            graph_logits.as_slice::<f32>()
        };
        let v = model.config.vocab_size;
        let mut step = Vec::with_capacity(rows);
        for r in 0..rows {
            // A stopped row keeps being fed its stop token (the batch moves together);
            // what it yields is not kept.
            let next = if done[r] {
                *tokens[r].last().expect("non-empty")
            } else {
                let next = sample(&logits[r * v..(r + 1) * v], params, &mut rngs[r]);
                out[r].push(next);
                done[r] = params.stop_token == Some(next);
                next
            };
            tokens[r].push(next);
            step.push(next);
        }
        if !on_step(&step) || done.iter().all(|&d| d) {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GptConfig;
    use mlx_gpt_ops::Kernels;

    fn tiny(block: usize) -> Gpt {
        let c =
            GptConfig { block_size: block, vocab_size: 31, n_layer: 2, n_head: 2, n_embd: 16, ..GptConfig::baby(31) };
        Gpt::new(c, 3).unwrap()
    }

    /// The first, straightforward sampler (every logit through exp): the reference.
    fn sample_reference(logits: &[f32], params: &SamplingParams, rng: &mut SampleRng) -> u32 {
        let argmax = || {
            let mut best = 0;
            for (i, &l) in logits.iter().enumerate() {
                if l > logits[best] {
                    best = i;
                }
            }
            best as u32
        };
        if params.temperature == 0.0 {
            return argmax();
        }
        let mut scaled: Vec<f64> = logits.iter().map(|&l| l as f64 / params.temperature as f64).collect();
        if let Some(k) = params.top_k.filter(|&k| k < scaled.len()) {
            // As nanoGPT: everything below the k-th largest logit is removed (ties kept).
            // A selection, not a sort: O(V) per token.
            let mut work = scaled.clone();
            let (_, kth, _) = work.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            let kth = *kth;
            scaled.iter_mut().filter(|l| **l < kth).for_each(|l| *l = f64::NEG_INFINITY);
        }
        let max = scaled.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let mut probs: Vec<f64> = scaled.iter().map(|l| (l - max).exp()).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if let Some(top_p) = params.top_p.filter(|&p| p < 1.0) {
            let mut order: Vec<usize> = (0..probs.len()).collect();
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
            let mut cum = 0.0;
            let mut keep = order.len();
            for (rank, &i) in order.iter().enumerate() {
                cum += probs[i];
                if cum >= top_p as f64 {
                    keep = rank + 1;
                    break;
                }
            }
            for &i in &order[keep..] {
                probs[i] = 0.0;
            }
            let total: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= total);
        }
        let u = rng.next_f64();
        let mut cum = 0.0;
        let mut last_nonzero = 0;
        for (i, &p) in probs.iter().enumerate() {
            if p > 0.0 {
                cum += p;
                last_nonzero = i;
                if u < cum {
                    return i as u32;
                }
            }
        }
        last_nonzero as u32 // rounding left u above the final cumulative sum
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// The sampler picks what the straightforward one picks, for any logits (ties
        /// included), temperature, top-k, top-p and seed.
        #[test]
        fn sample_equals_the_straightforward_sampler(
            logits in proptest::collection::vec(-8i32..9, 1..300),
            temperature in proptest::prop_oneof![proptest::strategy::Just(0.0f32), 0.05f32..3.0],
            top_k in proptest::option::of(1usize..350),
            top_p in proptest::option::of(0.01f32..1.0),
            seed in 0u64..1000,
        ) {
            // Quarter steps: many exact ties; 8 stands for NaN (a broken model's logits).
            let logits: Vec<f32> = logits.iter().map(|&l| if l == 8 { f32::NAN } else { l as f32 * 0.25 }).collect();
            let params = SamplingParams { temperature, top_k, top_p, seed, ..Default::default() };
            let (mut a, mut b) = (SampleRng::new(seed), SampleRng::new(seed));
            for _ in 0..5 {
                proptest::prop_assert_eq!(sample(&logits, &params, &mut a), sample_reference(&logits, &params, &mut b));
            }
        }
    }

    #[test]
    fn greedy_picks_the_argmax_and_top_k_one_is_greedy() {
        let logits = [0.1f32, 2.0, -1.0, 1.9];
        let mut rng = SampleRng::new(0);
        let greedy = SamplingParams { temperature: 0.0, ..Default::default() };
        assert_eq!(sample(&logits, &greedy, &mut rng), 1);
        let k1 = SamplingParams { top_k: Some(1), ..Default::default() };
        for _ in 0..20 {
            assert_eq!(sample(&logits, &k1, &mut rng), 1);
        }
        let p = SamplingParams { top_p: Some(0.5), ..Default::default() };
        for _ in 0..20 {
            assert!([1, 3].contains(&sample(&logits, &p, &mut rng)));
        }
    }

    #[test]
    fn a_whole_step_gives_the_graphs_logits_and_caches_to_the_bit() {
        use mlx_rs::ops::indexing::IndexOp;
        let Ok(cpu) = Kernels::cpu() else { return };
        let k = cpu.for_decoding();
        for (transposed, dtype) in [(true, Dtype::Float32), (false, Dtype::Float32), (false, Dtype::Bfloat16)] {
            let mut m = Gpt { kernels: cpu, ..tiny(16) };
            m.set_matrices_dtype(dtype).unwrap();
            m.lay_out_matrices(transposed).unwrap();
            let (mut graph, mut whole) = (vec![LayerKv::default(); 2], vec![LayerKv::default(); 2]);
            let prompt = ids(&[&[1, 2, 3], &[4, 5, 6]]);
            for kv in [&mut graph, &mut whole] {
                m.hidden_with(&k, &prompt, Some(kv)).unwrap();
            }
            for (step, next) in [[7u32, 8], [9, 10], [11, 12]].into_iter().enumerate() {
                let x = m.hidden_with(&k, &ids(&[&next[..1], &next[1..]]), Some(&mut graph)).unwrap();
                let theirs = m.lm_head_with(&k, &x).unwrap().as_dtype(Dtype::Float32).unwrap();
                theirs.eval().unwrap();
                let before = mlx_gpt_ops::decode_step_count();
                let ours = m.decode_step(&k, &next, &mut whole).unwrap().expect("the whole step applies");
                assert_eq!(mlx_gpt_ops::decode_step_count(), before + 1);
                let what = format!("step {step}, {dtype:?}, transposed {transposed}");
                assert_eq!(ours.len(), 2 * 31, "{what}");
                assert!(ours.iter().zip(theirs.as_slice::<f32>()).all(|(a, b)| a.to_bits() == b.to_bits()), "{what}");
                assert_eq!(whole[0].len(), 4 + step);
                for (g, w) in graph.iter().zip(&whole) {
                    let n = g.len() as i32;
                    let held = |b: &Array| b.index((.., 0..n, ..));
                    let (gk, gv) = g.buffers();
                    let (wk, wv) = w.buffers();
                    assert!(held(gk).eq_values(held(wk)).unwrap() && held(gv).eq_values(held(wv)).unwrap(), "{what}");
                }
            }
            // Not for a cache buffer something else holds (it would be written in place
            // under it), a cache that holds nothing yet, or other kernels.
            let elsewhere = whole[1].k.clone().expect("a buffer");
            let before: Vec<f32> = elsewhere.as_slice::<f32>().to_vec();
            assert!(m.decode_step(&k, &[13, 14], &mut whole).unwrap().is_none());
            assert_eq!(elsewhere.as_slice::<f32>(), &before[..]);
            assert_eq!(whole[0].len(), 6, "declined: the caches as they were");
            drop(elsewhere);
            assert!(m.decode_step(&k, &[13, 14], &mut whole).unwrap().is_some());
            assert!(m.decode_step(&k, &[1, 2], &mut vec![LayerKv::default(); 2]).unwrap().is_none());
            assert!(m.decode_step(&Kernels::mlx(), &[1, 2], &mut whole).unwrap().is_none());
        }
    }

    #[test]
    fn cached_generation_equals_uncached_across_the_window_slide() {
        // block 8, prompt 3, 20 new tokens: the window slides 15 times.
        let mut sets = vec![Kernels::mlx(), Kernels::mlx_fast()];
        sets.extend(Kernels::cpu());
        for k in sets {
            for (temperature, top_k, top_p) in [(0.0, None, None), (1.0, None, None), (0.8, Some(5), Some(0.9))] {
                let params = SamplingParams { temperature, top_k, top_p, seed: 11, ..Default::default() };
                let model = || Gpt { kernels: k, ..tiny(8) };
                let (steps, copies) = (mlx_gpt_ops::decode_step_count(), mlx_gpt_ops::decode_block_copies());
                let cached = generate(&mut model(), &[1, 2, 3], 20, &params, |_| true).unwrap();
                // With the CPU kernels, the cached one-token steps before the window first
                // slides (4 at least) ran as whole steps with no graph, which wrote the
                // cache in place.
                let steps = mlx_gpt_ops::decode_step_count() - steps;
                if k.set() == mlx_gpt_ops::KernelSet::Cpu {
                    assert!(steps >= 4, "{steps} whole steps");
                    assert_eq!(mlx_gpt_ops::decode_block_copies(), copies, "the cache was copied");
                }
                let plain = SamplingParams { use_kv_cache: false, ..params.clone() };
                let uncached = generate(&mut model(), &[1, 2, 3], 20, &plain, |_| true).unwrap();
                assert_eq!(cached, uncached, "{}: temperature {temperature}", k.name());
                assert_eq!(cached.len(), 20);
            }
        }
    }

    /// A modern GPT with grouped-query attention (4 heads, 2 key/value heads) whose
    /// weights are all drawn at random: its zero-initialised output projections would
    /// leave attention out of the result.
    fn tiny_modern(block: usize) -> Gpt {
        use mlx_rs::module::ModuleParameters as _;
        let c = GptConfig {
            block_size: block,
            vocab_size: 31,
            n_layer: 2,
            n_head: 4,
            n_embd: 16,
            n_kv_head: Some(2),
            ..GptConfig::baby(31).modern()
        };
        let mut m = Gpt::new(c, 3).unwrap();
        let mut key = mlx_rs::random::key(9).unwrap();
        let mut params: Vec<_> = m.parameters_mut().flatten().into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0)); // the same weights every time
        for (_, p) in params {
            let (next, sub) = mlx_rs::random::split(&key, 2).unwrap();
            key = next;
            *p = mlx_rs::random::normal::<f32>(p.shape(), None, Some(0.5), &sub).unwrap();
        }
        m
    }

    #[test]
    fn modern_cached_generation_equals_uncached_across_the_window_slide() {
        // Rotary positions: the cached keys were turned at their positions, the new query
        // at its own; after the slide the window restarts at position 0, as uncached.
        let mut sets = vec![Kernels::mlx(), Kernels::mlx_fast()];
        sets.extend(Kernels::cpu());
        for k in sets {
            for (temperature, top_k) in [(0.0, None), (0.9, Some(8))] {
                let params = SamplingParams { temperature, top_k, seed: 4, ..Default::default() };
                let model = || Gpt { kernels: k, ..tiny_modern(8) };
                let cached = generate(&mut model(), &[1, 2, 3], 20, &params, |_| true).unwrap();
                let plain = SamplingParams { use_kv_cache: false, ..params.clone() };
                let uncached = generate(&mut model(), &[1, 2, 3], 20, &plain, |_| true).unwrap();
                assert_eq!(cached, uncached, "{}: temperature {temperature}", k.name());
            }
        }
        // And the logits of a cached step equal those of the whole forward.
        let mut m = tiny_modern(16);
        let tokens = [5i32, 9, 2, 30, 7, 1];
        let whole = m.forward(&Array::from_slice(&tokens, &[1, 6]), None).unwrap().0;
        let mut kv = vec![LayerKv::default(); 2];
        m.hidden(&Array::from_slice(&tokens[..4], &[1, 4]), Some(&mut kv)).unwrap();
        m.hidden(&Array::from_slice(&tokens[4..5], &[1, 1]), Some(&mut kv)).unwrap();
        let x = m.hidden(&Array::from_slice(&tokens[5..], &[1, 1]), Some(&mut kv)).unwrap();
        let step = m.lm_head(&x).unwrap();
        for (p, q) in step.as_slice::<f32>().iter().zip(whole.as_slice::<f32>()) {
            assert!((p - q).abs() < 1e-4, "{p} vs {q}");
        }
    }

    #[test]
    fn cached_generation_equals_uncached_while_the_cache_buffers_grow() {
        // The cache's buffers start at 64 positions and double: 3 + 140 tokens grow them
        // twice (to 128, then 256) without the window sliding (block 200).
        let params = SamplingParams { temperature: 0.9, top_k: Some(7), seed: 5, ..Default::default() };
        let cached = generate(&mut tiny(200), &[4, 5, 6], 140, &params, |_| true).unwrap();
        let plain = SamplingParams { use_kv_cache: false, ..params.clone() };
        let uncached = generate(&mut tiny(200), &[4, 5, 6], 140, &plain, |_| true).unwrap();
        assert_eq!(cached, uncached);
    }

    #[test]
    fn a_batch_gives_each_row_what_generate_gives_it_alone() {
        // block 8, prompts of 3, 12 new tokens: the window slides inside the batch too.
        let prompts: [&[u32]; 3] = [&[1, 2, 3], &[7, 7, 7], &[1, 2, 3]];
        let mut sets = vec![Kernels::mlx()];
        sets.extend(Kernels::cpu());
        for k in sets {
            for (temperature, top_k, cache) in [(0.0, None, true), (0.9, Some(6), true), (0.9, Some(6), false)] {
                let params = SamplingParams { temperature, top_k, seed: 21, use_kv_cache: cache, ..Default::default() };
                let model = || Gpt { kernels: k, ..tiny(8) };
                let batch = generate_batch(&mut model(), &prompts, 12, &params).unwrap();
                for (i, p) in prompts.iter().enumerate() {
                    let alone = SamplingParams { seed: 21 + i as u64, ..params.clone() };
                    let want = generate(&mut model(), p, 12, &alone, |_| true).unwrap();
                    assert_eq!(batch[i], want, "{} row {i}, temperature {temperature}, cache {cache}", k.name());
                }
                if temperature > 0.0 {
                    // Rows 0 and 2 share a prompt, not a seed.
                    assert_ne!(batch[0], batch[2]);
                }
            }
        }
    }

    #[test]
    fn a_batch_row_stops_at_its_stop_token_while_the_others_go_on() {
        let prompts: [&[u32]; 2] = [&[4], &[9]];
        let greedy = SamplingParams { temperature: 0.0, ..Default::default() };
        let free = generate_batch(&mut tiny(16), &prompts, 8, &greedy).unwrap();
        let stop = free[0][1];
        let stopped =
            generate_batch(&mut tiny(16), &prompts, 8, &SamplingParams { stop_token: Some(stop), ..greedy }).unwrap();
        let first = free[0].iter().position(|&t| t == stop).unwrap();
        assert_eq!(stopped[0], free[0][..=first]);
        match free[1].iter().position(|&t| t == stop) {
            Some(j) => assert_eq!(stopped[1], free[1][..=j]),
            None => assert_eq!(stopped[1], free[1]),
        }
        let e = generate_batch(&mut tiny(16), &[&[1, 2], &[3]], 2, &SamplingParams::default()).unwrap_err();
        assert!(e.to_string().contains("equally long: 2 and 1"), "{e}");
    }

    #[test]
    fn bfloat16_matrices_decode_as_their_float32_rounding_does() {
        // The decoding product widens bfloat16 weights exactly, so a model with bfloat16
        // matrices computes what the same model with those values in float32 computes.
        // (Three rows: both lay their matrices out (in, out) and run the same kernels;
        // with one or two, float32 runs (out, in) and sums in another order.)
        let mut sets = vec![Kernels::mlx()];
        sets.extend(Kernels::cpu());
        for k in sets {
            let mut half = Gpt { kernels: k, ..tiny(8) };
            half.set_matrices_dtype(Dtype::Bfloat16).unwrap();
            assert_eq!(half.wte.weight.dtype(), Dtype::Bfloat16);
            assert_eq!(half.h[0].attn.c_attn.weight.dtype(), Dtype::Bfloat16);
            assert_eq!(half.wpe.as_ref().unwrap().weight.dtype(), Dtype::Float32);
            assert_eq!(half.ln_f.as_ref().unwrap().weight.dtype(), Dtype::Float32);
            let mut rounded = half.clone();
            rounded.set_matrices_dtype(Dtype::Float32).unwrap();
            let params = SamplingParams { temperature: 0.8, top_k: Some(9), seed: 3, ..Default::default() };
            let prompts: [&[u32]; 3] = [&[1, 2, 3], &[5, 6, 7], &[2, 4, 6]];
            let a = generate_batch(&mut half, &prompts, 16, &params).unwrap();
            let b = generate_batch(&mut rounded, &prompts, 16, &params).unwrap();
            assert_eq!(a, b, "{}", k.name());
        }
    }

    #[test]
    fn generation_asks_for_its_whole_cache_at_once() {
        // Buffers of 64 positions of 512 float32 are 128 KiB, where the cache goes on 2 MiB
        // pages: 2 + 100 positions, grown as they come, would be two sets of mappings.
        let Ok(k) = Kernels::cpu() else { return };
        let c =
            GptConfig { block_size: 256, vocab_size: 31, n_layer: 2, n_head: 4, n_embd: 512, ..GptConfig::baby(31) };
        let mut m = Gpt { kernels: k, ..Gpt::new(c, 3).unwrap() };
        let greedy = SamplingParams { temperature: 0.0, ..Default::default() };
        generate(&mut m, &[1, 2], 2, &greedy, |_| true).unwrap(); // lays the matrices out
        let before = mlx_gpt_ops::huge_page_mappings();
        let out = generate(&mut m, &[1, 2], 100, &greedy, |_| true).unwrap();
        assert_eq!(out.len(), 100);
        let want = usize::from(mlx_gpt_ops::layout::huge_pages_available());
        assert_eq!(mlx_gpt_ops::huge_page_mappings() - before, want, "one mapping for every layer's keys and values");
        // With bfloat16 matrices too (Gpt::kv_dtype: the keys stay float32).
        m.set_matrices_dtype(Dtype::Bfloat16).unwrap();
        generate(&mut m, &[1, 2], 2, &greedy, |_| true).unwrap();
        let before = mlx_gpt_ops::huge_page_mappings();
        generate(&mut m, &[1, 2], 100, &greedy, |_| true).unwrap();
        assert_eq!(mlx_gpt_ops::huge_page_mappings() - before, want, "bfloat16 matrices");
    }

    #[test]
    fn generation_lays_the_matrices_out_for_its_batch() {
        // The CPU kernels read float32 matrices fastest (out, in) for one or two rows and
        // (in, out) for more or in bfloat16 (mlx_gpt_ops::layout); the layout changes
        // nothing else, not what a file of the weights holds.
        let Ok(k) = Kernels::cpu() else { return };
        let mut m = Gpt { kernels: k, ..tiny(8) };
        let dir = std::env::temp_dir().join(format!("mlx-gpt-layout-test-{}", std::process::id()));
        let file = |m: &Gpt| {
            crate::hf::save_weights(m, &dir.join("w.safetensors")).unwrap();
            std::fs::read(dir.join("w.safetensors")).unwrap()
        };
        std::fs::create_dir_all(&dir).unwrap();
        let before = file(&m);
        let transposed = |m: &Gpt| {
            let all: Vec<bool> =
                m.h.iter()
                    .flat_map(|b| [&b.attn.c_attn, &b.attn.c_proj, &b.mlp.c_fc, &b.mlp.c_proj])
                    .map(|l| mlx_gpt_ops::is_stored_transposed(&l.weight))
                    .collect();
            assert!(all.iter().all(|&t| t == all[0]), "mixed layouts");
            all[0]
        };
        assert!(!transposed(&m));
        // Every matrix a token reads whole (all but the position table) on 2 MiB pages,
        // where the system has them.
        let on_huge_pages = |m: &Gpt| {
            use mlx_rs::module::ModuleParameters as _;
            let params = m.parameters().flatten();
            let read: Vec<_> = params.iter().filter(|(n, p)| p.ndim() == 2 && &***n != "wpe.weight").collect();
            assert_eq!(read.len(), 2 * 4 + 1, "the block matrices and wte");
            read.iter().all(|(_, p)| mlx_gpt_ops::is_on_huge_pages(p))
        };
        assert!(!on_huge_pages(&m));
        let greedy = SamplingParams { temperature: 0.0, ..Default::default() };
        let one = generate(&mut m, &[1, 2], 6, &greedy, |_| true).unwrap();
        assert!(transposed(&m));
        assert_eq!(on_huge_pages(&m), mlx_gpt_ops::layout::huge_pages_available());
        assert!(file(&m) == before, "the weights as a file holds them");
        std::fs::remove_dir_all(&dir).unwrap();
        generate_batch(&mut m, &[&[1, 2], &[3, 4], &[5, 6]], 6, &greedy).unwrap();
        assert!(!transposed(&m));
        assert_eq!(on_huge_pages(&m), mlx_gpt_ops::layout::huge_pages_available());
        // Laid out again for one row, the same tokens.
        assert_eq!(generate(&mut m, &[1, 2], 6, &greedy, |_| true).unwrap(), one);
        m.set_matrices_dtype(Dtype::Bfloat16).unwrap();
        generate(&mut m, &[1, 2], 2, &greedy, |_| true).unwrap();
        assert!(!transposed(&m));
        assert_eq!(on_huge_pages(&m), mlx_gpt_ops::layout::huge_pages_available());
    }

    #[test]
    fn stops_on_stop_token_and_callback() {
        let mut m = tiny(16);
        let params = SamplingParams { temperature: 0.0, ..Default::default() };
        let all = generate(&mut m, &[4], 6, &params, |_| true).unwrap();
        let stop = SamplingParams { stop_token: Some(all[2]), ..params.clone() };
        let first = all.iter().position(|&t| t == all[2]).unwrap();
        assert_eq!(generate(&mut m, &[4], 6, &stop, |_| true).unwrap(), all[..=first]);
        let mut n = 0;
        let two = generate(&mut m, &[4], 6, &params, |_| {
            n += 1;
            n < 2
        })
        .unwrap();
        assert_eq!(two, all[..2]);
    }

    #[test]
    fn bad_arguments_are_named() {
        let mut m = tiny(8);
        let e = generate(&mut m, &[], 3, &SamplingParams::default(), |_| true).unwrap_err();
        assert!(e.to_string().contains("prompt"));
        let e = generate(&mut m, &[99], 3, &SamplingParams::default(), |_| true).unwrap_err();
        assert!(e.to_string().contains("token 99"));
        let p = SamplingParams { top_p: Some(1.5), ..Default::default() };
        assert!(generate(&mut m, &[1], 3, &p, |_| true).unwrap_err().to_string().contains("top_p"));
    }
}
