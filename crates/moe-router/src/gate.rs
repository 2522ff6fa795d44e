//! The router: scores, expert choice (noaux_tc, greedy, group-limited greedy), combine weights,
//! the sequence-wise balance loss, and the gate's backward.

use rayon::prelude::*;
use tensor::ops::activation::{sigmoid, sigmoid_backward};
use tensor::ops::elementwise::{add, affine, div, div_backward, scale};
use tensor::ops::index::{gather_last, scatter_last};
use tensor::ops::matmul::{linear, linear_backward};
use tensor::ops::reduce::sum_dim;
use tensor::ops::softmax::{softmax, softmax_backward};
use tensor::{DType, Tensor};

use crate::balance::{TokenDocs, sequence_balance_loss};
use crate::{Moe, MoeError, Result};

/// How router logits become affinities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoringFunc {
    /// DeepSeek-V3.
    Sigmoid,
    /// DeepSeek-V2 / V2-Lite.
    Softmax,
}

/// How experts are chosen from the affinities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopkMethod {
    /// DeepSeek-V3: `s + e_score_correction_bias`, groups ranked by the sum of their top-2,
    /// the other groups masked with −inf, then top-k.
    NoauxTc,
    /// Plain top-k of the scores (DeepSeek-V2-Lite).
    Greedy,
    /// Groups ranked by their best score, top-k inside the kept groups (DeepSeek-V2).
    GroupLimitedGreedy,
}

/// The routing decision for a batch of tokens.
#[derive(Clone, Debug)]
pub struct Routing {
    /// Chosen experts, `[T · k]` (row-major `[T, k]`), best first.
    pub topk_idx: Vec<u32>,
    /// Combine weights `[T, k]` (compute dtype: f32, or f64 for f64 inputs).
    pub weights: Tensor,
    /// Affinities `s` `[T, E]`.
    pub scores: Tensor,
    /// Routed rows per expert in this batch.
    pub load: Vec<usize>,
    /// The sequence-wise balance loss (0 when α = 0).
    pub balance_loss: f64,
}

/// What the gate keeps for its backward.
pub struct GateSaved {
    x: Tensor,
    w: Tensor,
    raw: Tensor,
    denom: Option<Tensor>,
    scale: f64,
    docs: TokenDocs,
}

/// Indices of the `k` largest values (ties to the lower index; −inf never beats a number).
fn top_indices(v: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    // A total order (NaN ranks as −inf), so a non-finite score cannot break the sort.
    let key = |i: usize| if v[i].is_nan() { f64::NEG_INFINITY } else { v[i] };
    order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
    order.truncate(k);
    order
}

impl Moe {
    /// Choose `k` experts for one token's affinities `s` (with the bias `b`).
    pub fn choose(&self, s: &[f64], b: &[f64]) -> Vec<u32> {
        let c = &self.cfg;
        let (e, k) = (c.n_routed_experts, c.num_experts_per_tok);
        let per = e / c.n_group;
        let choice: Vec<f64> = match c.topk_method {
            TopkMethod::Greedy => return top_indices(s, k).into_iter().map(|i| i as u32).collect(),
            TopkMethod::NoauxTc => s.iter().zip(b).map(|(x, y)| x + y).collect(),
            TopkMethod::GroupLimitedGreedy => s.to_vec(),
        };
        let group_score = |g: &[f64]| match c.topk_method {
            TopkMethod::NoauxTc => top_indices(g, 2).iter().map(|&i| g[i]).sum(),
            _ => g.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        };
        let groups: Vec<f64> = choice.chunks(per).map(group_score).collect();
        let kept = top_indices(&groups, c.topk_group);
        let masked: Vec<f64> = choice
            .iter()
            .enumerate()
            .map(|(i, &v)| if kept.contains(&(i / per)) { v } else { f64::NEG_INFINITY })
            .collect();
        top_indices(&masked, k).into_iter().map(|i| i as u32).collect()
    }

    /// Route `x [T, hidden]` (tokens of the documents `docs`, for the balance loss and the
    /// loads; padding tokens are routed but counted in neither): affinities, choice, combine
    /// weights, loads, balance loss.
    pub fn route(&self, x: &Tensor, docs: &TokenDocs) -> Result<(Routing, GateSaved)> {
        let c = &self.cfg;
        let (t, e, k) = (x.dim(0), c.n_routed_experts, c.num_experts_per_tok);
        if docs.len() != t {
            return Err(MoeError::Config {
                field: "docs",
                detail: format!("{} document ids for {t} tokens", docs.len()),
            });
        }
        // Router logits in fp32 (f64 when the layer runs in f64, for gradient checks).
        let cdt = if x.dtype() == DType::F64 { DType::F64 } else { DType::F32 };
        let (x32, w32) = (x.to_dtype(cdt)?, self.gate_weight.to_dtype(cdt)?);
        let logits = linear(&x32, &w32)?;
        let scores = match c.scoring_func {
            ScoringFunc::Sigmoid => sigmoid(&logits)?,
            ScoringFunc::Softmax => softmax(&logits)?,
        };
        let sv = scores.to_vec_f64()?;
        let bias = self.e_score_correction_bias.to_vec_f64()?;
        // Tokens are routed independently: in parallel (16k tokens × 11 layers is a second of
        // serial work per gpu-medium step).
        let topk_idx: Vec<u32> = sv.par_chunks(e).flat_map_iter(|row| self.choose(row, &bias)).collect();
        let raw = gather_last(&scores, &topk_idx, k)?;
        let (w, denom) = if c.norm_topk_prob {
            let denom = affine(&sum_dim(&raw, 1)?, 1.0, 1e-20)?.reshape(&[t, 1])?;
            (div(&raw, &denom)?, Some(denom))
        } else {
            (raw.clone(), None)
        };
        // V3 scales after normalising; V2 (softmax) scales only un-normalised weights.
        let s = if c.scoring_func == ScoringFunc::Softmax && c.norm_topk_prob { 1.0 } else { c.routed_scaling_factor };
        let weights = scale(&w, s)?;
        let mut load = vec![0usize; e];
        for (tok, chosen) in topk_idx.chunks(k).enumerate() {
            if !docs.is_pad(tok) {
                chosen.iter().for_each(|&i| load[i as usize] += 1);
            }
        }
        let balance_loss = if c.seq_aux_alpha > 0.0 {
            sequence_balance_loss(&sv, &topk_idx, docs, e, k, c.seq_aux_alpha).0
        } else {
            0.0
        };
        let routing = Routing { topk_idx, weights, scores, load, balance_loss };
        Ok((routing, GateSaved { x: x32, w: w32, raw, denom, scale: s, docs: docs.clone() }))
    }

    /// Backward of the combine weights into the gate: `dw [T, k]` → gradient of the gate
    /// weight (added into [`Moe::gate_weight`]) and the returned `dx` of the router input.
    pub(crate) fn route_backward(&mut self, r: &Routing, g: &GateSaved, dw: &Tensor) -> Result<Tensor> {
        let c = self.cfg.clone();
        let dw = scale(&dw.to_dtype(g.raw.dtype())?, g.scale)?;
        let d_raw = match &g.denom {
            Some(denom) => {
                let (da, dd) = div_backward(&g.raw, denom, &dw)?;
                add(&da, &dd)?
            }
            None => dw,
        };
        let mut d_scores = scatter_last(&d_raw, &r.topk_idx, c.n_routed_experts)?;
        if c.seq_aux_alpha > 0.0 {
            let (e, k) = (c.n_routed_experts, c.num_experts_per_tok);
            let (_, gb) = sequence_balance_loss(&r.scores.to_vec_f64()?, &r.topk_idx, &g.docs, e, k, c.seq_aux_alpha);
            let gb =
                Tensor::from_vec(gb, r.scores.shape())?.to_dtype(d_scores.dtype())?.to_device(d_scores.device())?;
            d_scores = add(&d_scores, &gb)?;
        }
        let d_logits = match c.scoring_func {
            ScoringFunc::Sigmoid => sigmoid_backward(&r.scores, &d_scores)?,
            ScoringFunc::Softmax => softmax_backward(&r.scores, &d_scores)?,
        };
        let (dx, d_gate) = linear_backward(&g.x, &g.w, &d_logits)?;
        let d_gate = d_gate.to_dtype(self.gate_weight.dtype())?;
        self.gate_weight.accumulate_grad(&d_gate)?;
        Ok(dx)
    }
}
