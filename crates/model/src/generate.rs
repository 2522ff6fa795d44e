//! Batched generation over the MLA latent cache: prefill the prompts (naive MLA), then one token
//! per step (absorbed MLA). A generation allocates every layer's cache once for prompt plus new
//! tokens and splits the absorbed weights once ([`DecodeState`]); each step writes its latents in
//! place and attends over the filled prefix. Sampling sampling with temperature, top-k, top-p and a seed; stop tokens and
//! `max_new_tokens` finish each sequence on its own. Returns the new token ids and their
//! log-probabilities under the temperature-scaled distribution (what GRPO's old-policy logprobs
//! are compared with; greedy decoding reports logprobs at temperature 1).

use mla::cache::{AbsorbedWeights, DecodeMode, LatentCache};
use rand::{Rng, RngExt, SeedableRng};
use tensor::Tensor;
use tensor::ops::elementwise::add;
use tensor::ops::index::embedding;
use tensor::ops::matmul::linear;
use tensor::ops::norm::rms_norm;
use tensor::ops::shape::narrow;

use crate::{DeepseekV3, Ffn, ModelError, Result};

/// `(layer, [tokens·k] chosen experts)` of every MoE layer in one decode step.
pub type LayerRouting = Vec<(usize, Vec<u32>)>;

/// What a decode loop keeps between steps: every layer's latent cache, and every layer's
/// absorbed weights prepared once from the current weights (build a new state after the
/// weights change).
#[derive(Clone, Debug)]
pub struct DecodeState {
    pub caches: Vec<LatentCache>,
    pub absorbed: Vec<AbsorbedWeights>,
}

/// Sampling settings (`temperature` 0 = greedy).
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    pub temperature: f64,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set with probability ≥ top_p (1 = off).
    pub top_p: f64,
    pub seed: u64,
    pub max_new_tokens: usize,
    pub stop_tokens: Vec<u32>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 0, max_new_tokens: 16, stop_tokens: vec![] }
    }
}

/// What [`DeepseekV3::generate`] returns, per sequence.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// New tokens (a stop token, when hit, is included last).
    pub tokens: Vec<Vec<u32>>,
    /// Log-probability of each new token.
    pub logprobs: Vec<Vec<f64>>,
    /// Whether the sequence ended on a stop token (else on `max_new_tokens`).
    pub stopped: Vec<bool>,
}

/// Pick a token from `logits` (one row): `(token, logprob)`.
pub fn sample_token(logits: &[f64], sp: &SamplingParams, rng: &mut impl Rng) -> (u32, f64) {
    let t = if sp.temperature > 0.0 { sp.temperature } else { 1.0 };
    let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    // log softmax(logits / t), shifted by the max for stability.
    let lz = logits.iter().map(|&x| ((x - m) / t).exp()).sum::<f64>().ln();
    let logp = |i: usize| (logits[i] - m) / t - lz;
    if sp.temperature <= 0.0 {
        let best = (0..logits.len()).fold(0, |b, i| if logits[i] > logits[b] { i } else { b });
        return (best as u32, logp(best));
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].partial_cmp(&logits[a]).unwrap_or(std::cmp::Ordering::Equal).then(a.cmp(&b)));
    if sp.top_k > 0 {
        order.truncate(sp.top_k);
    }
    let probs: Vec<f64> = order.iter().map(|&i| logp(i).exp()).collect();
    let mut keep = probs.len();
    if sp.top_p < 1.0 {
        let mut acc = 0.0;
        for (j, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= sp.top_p {
                keep = j + 1;
                break;
            }
        }
    }
    let z: f64 = probs[..keep].iter().sum();
    let mut u = rng.random::<f64>() * z;
    for j in 0..keep {
        u -= probs[j];
        if u <= 0.0 {
            return (order[j] as u32, logp(order[j]));
        }
    }
    (order[keep - 1] as u32, logp(order[keep - 1]))
}

impl DeepseekV3 {
    /// Every layer's `W_UK` / `W_UV` split out of `kv_b_proj` now, for absorbed decoding.
    pub fn absorbed_weights(&self) -> Result<Vec<AbsorbedWeights>> {
        self.layers.iter().map(|blk| Ok(blk.self_attn.absorbed_weights()?)).collect()
    }

    /// A decode state for up to `capacity` tokens per sequence: empty caches of that fixed
    /// capacity (allocated at the first step) and the absorbed weights prepared once.
    pub fn decode_state(&self, capacity: usize) -> Result<DecodeState> {
        Ok(DecodeState {
            caches: vec![LatentCache::with_capacity(capacity); self.layers.len()],
            absorbed: self.absorbed_weights()?,
        })
    }

    /// [`DeepseekV3::decode_step_routed`] through a [`DecodeState`]: the absorbed mode uses its
    /// prepared weights instead of splitting them per step.
    pub fn decode_step_with(
        &self,
        ids: &[u32],
        (b, s): (usize, usize),
        positions: &[u32],
        state: &mut DecodeState,
        key_padding: Option<&[bool]>,
        mode: DecodeMode,
    ) -> Result<(Tensor, LayerRouting)> {
        let DecodeState { caches, absorbed } = state;
        self.decode_layers(ids, (b, s), positions, caches, Some(absorbed), key_padding, mode)
    }

    /// Run `ids [B·s]` (shape `(B, s)`, positions per token) through the model, appending every layer's latents
    /// to `caches`; returns the logits of the last position of each row `[B, vocab]`.
    pub fn decode_step(
        &self,
        ids: &[u32],
        (b, s): (usize, usize),
        positions: &[u32],
        caches: &mut [LatentCache],
        key_padding: Option<&[bool]>,
        mode: DecodeMode,
    ) -> Result<Tensor> {
        Ok(self.decode_step_routed(ids, (b, s), positions, caches, key_padding, mode)?.0)
    }

    /// [`DeepseekV3::decode_step`], plus the experts each MoE layer chose for the step's tokens:
    /// `(layer, [B·s·k] expert ids)`.
    pub fn decode_step_routed(
        &self,
        ids: &[u32],
        (b, s): (usize, usize),
        positions: &[u32],
        caches: &mut [LatentCache],
        key_padding: Option<&[bool]>,
        mode: DecodeMode,
    ) -> Result<(Tensor, LayerRouting)> {
        self.decode_layers(ids, (b, s), positions, caches, None, key_padding, mode)
    }

    #[allow(clippy::too_many_arguments)]
    fn decode_layers(
        &self,
        ids: &[u32],
        (b, s): (usize, usize),
        positions: &[u32],
        caches: &mut [LatentCache],
        absorbed: Option<&[AbsorbedWeights]>,
        key_padding: Option<&[bool]>,
        mode: DecodeMode,
    ) -> Result<(Tensor, LayerRouting)> {
        let n = self.layers.len();
        if caches.len() != n || absorbed.is_some_and(|a| a.len() != n) {
            return Err(ModelError::Input(format!(
                "{} caches and {:?} absorbed weights for {n} layers",
                caches.len(),
                absorbed.map(<[_]>::len)
            )));
        }
        let d = self.cfg.hidden_size;
        let mut routed = Vec::new();
        let eps = self.cfg.rms_norm_eps;
        let mut x = embedding(ids, &self.embed_tokens)?.reshape(&[b, s, d])?;
        for (layer, (blk, cache)) in self.layers.iter().zip(caches.iter_mut()).enumerate() {
            let (h, _) = rms_norm(&x, &blk.input_layernorm, eps)?;
            let w = absorbed.map(|a| &a[layer]);
            let a = blk.self_attn.decode_with(&h, positions, cache, key_padding, mode, w)?;
            let x2 = add(&x, &a)?;
            let (h2, _) = rms_norm(&x2, &blk.post_attention_layernorm, eps)?;
            let flat = h2.reshape(&[b * s, d])?;
            let m = match &blk.mlp {
                Ffn::Dense(e) => e.forward(&flat)?.0,
                Ffn::Moe(moe) => {
                    let (m, sv) = moe.forward(&flat, s)?;
                    routed.push((layer, sv.routing.topk_idx));
                    m
                }
            };
            x = add(&x2, &m.reshape(&[b, s, d])?)?;
        }
        let last = narrow(&x, 1, s - 1, 1)?.reshape(&[b, d])?;
        let (hf, _) = rms_norm(&last, &self.norm, eps)?;
        Ok((linear(&hf, &self.lm_head)?, routed))
    }

    /// Generate continuations of `prompts` (any lengths; left-padded internally).
    pub fn generate(&self, prompts: &[Vec<u32>], sp: &SamplingParams) -> Result<Generation> {
        let b = prompts.len();
        let p = prompts.iter().map(Vec::len).max().unwrap_or(0);
        if b == 0 || prompts.iter().any(Vec::is_empty) {
            return Err(ModelError::Input("every prompt needs at least one token".into()));
        }
        if p + sp.max_new_tokens > self.cfg.max_position_embeddings {
            return Err(ModelError::Input(format!(
                "prompt length {p} + max_new_tokens {} exceeds max_position_embeddings {}",
                sp.max_new_tokens, self.cfg.max_position_embeddings
            )));
        }
        let v = self.cfg.vocab_size;
        if let Some(t) = prompts.iter().flatten().find(|&&t| t as usize >= v) {
            return Err(ModelError::Input(format!("token id {t} outside the vocabulary (0..{v})")));
        }
        let pad: Vec<usize> = prompts.iter().map(|q| p - q.len()).collect();
        let mut ids = Vec::with_capacity(b * p);
        let mut positions = Vec::with_capacity(b * p);
        let mut keep = Vec::with_capacity(b * p);
        for (q, &pd) in prompts.iter().zip(&pad) {
            ids.extend(std::iter::repeat_n(0u32, pd).chain(q.iter().copied()));
            positions.extend((0..p).map(|j| j.saturating_sub(pd) as u32));
            keep.extend((0..p).map(|j| j >= pd));
        }
        let mut state = self.decode_state(p + sp.max_new_tokens)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(sp.seed);
        let mut out = Generation { tokens: vec![vec![]; b], logprobs: vec![vec![]; b], stopped: vec![false; b] };
        let mut done = vec![false; b];
        let mut logits = self.decode_step_with(&ids, (b, p), &positions, &mut state, Some(&keep), DecodeMode::Naive)?.0;
        for step in 0..sp.max_new_tokens {
            let lv = logits.to_vec_f64()?;
            let mut next = vec![0u32; b];
            for r in 0..b {
                if done[r] {
                    continue;
                }
                let (tok, lp) = sample_token(&lv[r * v..(r + 1) * v], sp, &mut rng);
                next[r] = tok;
                out.tokens[r].push(tok);
                out.logprobs[r].push(lp);
                if sp.stop_tokens.contains(&tok) {
                    done[r] = true;
                    out.stopped[r] = true;
                }
            }
            if done.iter().all(|&x| x) || step + 1 == sp.max_new_tokens {
                break;
            }
            let pos: Vec<u32> = (0..b).map(|r| (p - pad[r] + step) as u32).collect();
            keep =
                (0..b).flat_map(|r| keep[r * (p + step)..(r + 1) * (p + step)].iter().copied().chain([true])).collect();
            logits = self.decode_step_with(&next, (b, 1), &pos, &mut state, Some(&keep), DecodeMode::Absorbed)?.0;
        }
        Ok(out)
    }
}
