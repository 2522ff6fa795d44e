//! The policy loss: clipped surrogate (token- or sequence-level ratio), KL to the reference,
//! aggregation over tokens with GLOBAL normalisers, and its gradient with respect to each token's
//! log-probability, `d loss / d logp_{i,t}`, which the policy back-propagates.
//!
//! Layout: `B` sequences of `T` positions, row-major (`[B·T]`), a mask `m_{i,t}` marks completion
//! tokens, and one advantage per sequence. Padding positions (mask `false`) are never read.

use serde::{Deserialize, Serialize};

use crate::error::{Result, check_len, invalid};

/// Where the importance ratio lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RatioLevel {
    /// One ratio per token, `ρ_{i,t} = π_θ / π_old` (PPO, DeepSeekMath GRPO eq. 3).
    Token,
    /// GSPO (arXiv 2507.18071 eq. 7): one ratio per sequence,
    /// `s_i = exp((1/|o_i|) Σ_t m·(logp − logp_old))`, clipped the same way.
    Sequence,
}

/// The clipped surrogate `l = −min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A)` and its guards.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyLoss {
    /// Lower clip range ε_low.
    pub eps_low: f64,
    /// Upper clip range ε_high; `ε_high > ε_low` is DAPO's clip-higher (arXiv 2503.14476 §3.1).
    pub eps_high: f64,
    /// Dual-clip constant `c > 1` (Ye et al. 2020; verl, OpenRLHF): for `A < 0`, `l = min(−A·c, l)`.
    pub dual_clip: Option<f64>,
    /// Clamp of the log-ratio before `exp` (verl: ±20); the gradient is zero beyond it.
    pub log_ratio_clamp: Option<f64>,
    /// Token-level ratio (GRPO) or GSPO's sequence-level ratio.
    pub level: RatioLevel,
}

impl Default for PolicyLoss {
    /// TRL's default: ε = 0.2 both sides, log-ratio clamped at ±20, token-level.
    fn default() -> Self {
        PolicyLoss {
            eps_low: 0.2,
            eps_high: 0.2,
            dual_clip: None,
            log_ratio_clamp: Some(20.0),
            level: RatioLevel::Token,
        }
    }
}

impl PolicyLoss {
    /// DAPO's clip-higher: ε_low = 0.2, ε_high = 0.28.
    pub fn dapo() -> Self {
        PolicyLoss { eps_high: 0.28, ..Default::default() }
    }

    /// GSPO with the paper's clip ranges (3e-4, 4e-4).
    pub fn gspo() -> Self {
        PolicyLoss { eps_low: 3e-4, eps_high: 4e-4, level: RatioLevel::Sequence, ..Default::default() }
    }

    fn validate(&self) -> Result<()> {
        if !(self.eps_low.is_finite() && (0.0..1.0).contains(&self.eps_low)) {
            return invalid("eps_low", self.eps_low, "must lie in [0, 1)");
        }
        if !(self.eps_high.is_finite() && self.eps_high >= 0.0) {
            return invalid("eps_high", self.eps_high, "must be finite and ≥ 0");
        }
        if let Some(c) = self.dual_clip
            && !(c.is_finite() && c > 1.0)
        {
            return invalid("dual_clip", c, "must be finite and > 1");
        }
        if let Some(c) = self.log_ratio_clamp
            && (c.is_nan() || c <= 0.0)
        {
            return invalid("log_ratio_clamp", c, "must be > 0");
        }
        Ok(())
    }
}

/// Which clipping branch one ratio took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClipFlags {
    /// `ρ < 1 − ε_low` with `A < 0`: the gradient is cut.
    pub low: bool,
    /// `ρ > 1 + ε_high` with `A > 0`: the gradient is cut.
    pub high: bool,
    /// The dual-clip cap `−A·c` was taken.
    pub dual: bool,
}

/// The surrogate for one log-ratio and advantage: `(l, dl/d log ρ, flags)`.
pub fn surrogate(log_ratio: f64, adv: f64, p: &PolicyLoss) -> (f64, f64, ClipFlags) {
    let (lr, dclamp) = clamp(log_ratio, p.log_ratio_clamp);
    let rho = lr.exp();
    let (lo, hi) = (1.0 - p.eps_low, 1.0 + p.eps_high);
    let unclipped = rho * adv;
    let clipped = rho.clamp(lo, hi) * adv;
    let mut flags = ClipFlags { low: rho < lo && adv < 0.0, high: rho > hi && adv > 0.0, dual: false };
    let (mut l, mut d) = if unclipped <= clipped { (-unclipped, -unclipped * dclamp) } else { (-clipped, 0.0) };
    if let Some(c) = p.dual_clip
        && adv < 0.0
        && l > -adv * c
    {
        (l, d) = (-adv * c, 0.0);
        flags.dual = true;
    }
    (l, d, flags)
}

fn clamp(x: f64, c: Option<f64>) -> (f64, f64) {
    match c {
        Some(c) if x.abs() >= c => (x.clamp(-c, c), 0.0),
        _ => (x, 1.0),
    }
}

/// Estimators of KL(π_θ ‖ π_ref) from samples of π_θ (Schulman, "Approximating KL divergence").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KlEstimator {
    /// `k1 = logp − logp_ref`.
    K1,
    /// `k2 = ½ (logp − logp_ref)²`.
    K2,
    /// `k3 = exp(logp_ref − logp) − (logp_ref − logp) − 1` (verl "low_var_kl"; DeepSeekMath eq. 4, R1).
    K3,
}

/// The KL term `β · k(logp, logp_ref)` added to every token's loss.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct KlPenalty {
    /// β (R1: 0.001; DeepSeekMath: 0.04).
    pub beta: f64,
    pub estimator: KlEstimator,
    /// Clamp of `logp − logp_ref` (verl: ±20); zero gradient beyond.
    pub log_ratio_clamp: Option<f64>,
    /// Clamp of the estimate to `[−c, c]` (verl: 10 for k3); zero gradient beyond.
    pub value_clamp: Option<f64>,
}

impl KlPenalty {
    /// k3 with verl's clamps (±20 on the log difference, [−10, 10] on the value).
    pub fn k3(beta: f64) -> Self {
        KlPenalty { beta, estimator: KlEstimator::K3, log_ratio_clamp: Some(20.0), value_clamp: Some(10.0) }
    }

    /// The estimate and its derivative with respect to `logp`.
    pub fn estimate(&self, logp: f64, ref_logp: f64) -> (f64, f64) {
        let (x, dx) = clamp(logp - ref_logp, self.log_ratio_clamp);
        let (k, dk) = match self.estimator {
            KlEstimator::K1 => (x, 1.0),
            KlEstimator::K2 => (0.5 * x * x, x),
            KlEstimator::K3 => ((-x).exp() + x - 1.0, 1.0 - (-x).exp()),
        };
        let (k, dkc) = clamp(k, self.value_clamp);
        (k, dk * dkc * dx)
    }

    fn validate(&self) -> Result<()> {
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return invalid("beta", self.beta, "must be finite and ≥ 0");
        }
        for (field, c) in [("kl.log_ratio_clamp", self.log_ratio_clamp), ("kl.value_clamp", self.value_clamp)] {
            if let Some(c) = c
                && (c.is_nan() || c <= 0.0)
            {
                return invalid(field, c, "must be > 0");
            }
        }
        Ok(())
    }
}

/// How token losses become the batch loss. The sequence count includes sequences whose mask is
/// empty (masked truncated completions), as TRL's `mean` over the batch does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Aggregation {
    /// `Σ l·m / Σ m` over the whole batch (DAPO eq. 8; TRL `loss_type="dapo"`).
    TokenMean,
    /// `mean_i (Σ_t l·m / Σ_t m)`: the original GRPO (DeepSeekMath eq. 3; TRL `"grpo"`).
    SeqMeanTokenMean,
    /// `mean_i Σ_t l·m`.
    SeqMeanTokenSum,
    /// `Σ l·m / (num_sequences · max_completion_length)`: Dr. GRPO (arXiv 2503.20783 eq. 5).
    SeqMeanTokenSumNorm,
}

/// The global denominators of one optimizer step's loss: counted over ALL micro-batches and ALL
/// data-parallel ranks before the micro-batch loop (verl #5625, #7321), so that gradient
/// accumulation leaves the loss unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Normalizer {
    /// Σ m over the global batch.
    pub tokens: u64,
    /// Number of sequences in the global batch.
    pub sequences: u64,
}

impl Normalizer {
    /// The counts of one (micro-)batch's mask, `[B·T]` with `T = seq_len`.
    pub fn of(mask: &[bool], seq_len: usize) -> Result<Self> {
        if seq_len == 0 || !mask.len().is_multiple_of(seq_len) {
            return invalid("seq_len", seq_len, "must be ≥ 1 and divide mask.len()");
        }
        Ok(Normalizer { tokens: mask.iter().filter(|m| **m).count() as u64, sequences: (mask.len() / seq_len) as u64 })
    }

    /// Counts of two disjoint parts: micro-batches, or data-parallel ranks (all-reduce both
    /// counts with a sum before the micro-batch loop, then pass the result to every rank).
    pub fn merge(self, other: Normalizer) -> Self {
        Normalizer { tokens: self.tokens + other.tokens, sequences: self.sequences + other.sequences }
    }
}

/// Everything the loss needs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossConfig {
    pub policy: PolicyLoss,
    /// `None` (or β = 0) adds no KL term and needs no reference log-probabilities.
    pub kl: Option<KlPenalty>,
    pub aggregation: Aggregation,
    /// `L_max` of [`Aggregation::SeqMeanTokenSumNorm`].
    pub max_completion_len: usize,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig {
            policy: PolicyLoss::default(),
            kl: None,
            aggregation: Aggregation::TokenMean,
            max_completion_len: 0,
        }
    }
}

impl LossConfig {
    /// The KL penalty if it contributes (β > 0).
    pub fn active_kl(&self) -> Option<&KlPenalty> {
        self.kl.as_ref().filter(|k| k.beta > 0.0)
    }

    /// Check every field.
    pub fn validate(&self) -> Result<()> {
        self.policy.validate()?;
        if let Some(k) = &self.kl {
            k.validate()?;
        }
        if self.aggregation == Aggregation::SeqMeanTokenSumNorm && self.max_completion_len == 0 {
            return invalid("max_completion_len", 0, "must be ≥ 1 for seq-mean-token-sum-norm");
        }
        Ok(())
    }
}

/// One micro-batch, `[B·T]` arrays and `[B]` advantages.
#[derive(Clone, Copy, Debug)]
pub struct LossInputs<'a> {
    /// `T`, positions per sequence.
    pub seq_len: usize,
    /// log π_θ of each token (the values being differentiated).
    pub logp: &'a [f64],
    /// log π_old, the policy that produced the data (no gradient).
    pub old_logp: &'a [f64],
    /// log π_ref; required when the KL term is active.
    pub ref_logp: Option<&'a [f64]>,
    /// Completion tokens that count.
    pub mask: &'a [bool],
    /// One advantage per sequence.
    pub advantages: &'a [f64],
    /// Per-token weights multiplying the policy term (truncated importance sampling, see
    /// [`crate::batch::truncated_is`]); `None` means 1.
    pub is_weights: Option<&'a [f64]>,
}

/// Sums over a (micro-)batch that merge across micro-batches and ranks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LossStats {
    /// Masked tokens seen.
    pub tokens: u64,
    /// The policy term's share of the loss.
    pub pg_loss: f64,
    /// The β-weighted KL term's share of the loss.
    pub kl_loss: f64,
    /// Σ m·k (unweighted estimate) for the mean KL per token.
    pub kl_sum: f64,
    pub clip_low: u64,
    pub clip_high: u64,
    pub dual_clip: u64,
    /// Σ m·ρ (token level) or the sequence ratio repeated over its tokens.
    pub ratio_sum: f64,
}

impl LossStats {
    /// Add another part's sums.
    pub fn merge(&mut self, o: &LossStats) {
        self.tokens += o.tokens;
        self.pg_loss += o.pg_loss;
        self.kl_loss += o.kl_loss;
        self.kl_sum += o.kl_sum;
        self.clip_low += o.clip_low;
        self.clip_high += o.clip_high;
        self.dual_clip += o.dual_clip;
        self.ratio_sum += o.ratio_sum;
    }

    fn per_token(&self, x: f64) -> f64 {
        if self.tokens == 0 { 0.0 } else { x / self.tokens as f64 }
    }

    /// Mean KL estimate per token.
    pub fn kl_mean(&self) -> f64 {
        self.per_token(self.kl_sum)
    }
    /// Fraction of tokens clipped below (`ρ < 1 − ε_low`, `A < 0`).
    pub fn clip_low_frac(&self) -> f64 {
        self.per_token(self.clip_low as f64)
    }
    /// Fraction of tokens clipped above (`ρ > 1 + ε_high`, `A > 0`).
    pub fn clip_high_frac(&self) -> f64 {
        self.per_token(self.clip_high as f64)
    }
    /// Fraction of tokens capped by dual-clip.
    pub fn dual_clip_frac(&self) -> f64 {
        self.per_token(self.dual_clip as f64)
    }
    /// Mean importance ratio per token.
    pub fn ratio_mean(&self) -> f64 {
        self.per_token(self.ratio_sum)
    }
}

/// The loss of one micro-batch (its share of the global batch loss), `d loss / d logp` for each of
/// its `[B·T]` positions (0 on padding) and its statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct LossOutput {
    pub loss: f64,
    pub grad: Vec<f64>,
    pub stats: LossStats,
}

fn validate_inputs(x: &LossInputs, cfg: &LossConfig) -> Result<usize> {
    if x.seq_len == 0 || !x.logp.len().is_multiple_of(x.seq_len) {
        return invalid("seq_len", x.seq_len, "must be ≥ 1 and divide logp.len()");
    }
    let n = x.logp.len();
    let b = n / x.seq_len;
    check_len("old_logp", x.old_logp.len(), n)?;
    check_len("mask", x.mask.len(), n)?;
    check_len("advantages", x.advantages.len(), b)?;
    if let Some(w) = x.is_weights {
        check_len("is_weights", w.len(), n)?;
    }
    if cfg.active_kl().is_some() {
        match x.ref_logp {
            Some(r) => check_len("ref_logp", r.len(), n)?,
            None => return invalid("ref_logp", "None", "required when the KL term is active (β > 0)"),
        }
    }
    if let Some(a) = x.advantages.iter().find(|a| !a.is_finite()) {
        return invalid("advantages", a, "must be finite");
    }
    for (j, _) in x.mask.iter().enumerate().filter(|(_, m)| **m) {
        let vals = [
            ("logp", x.logp[j]),
            ("old_logp", x.old_logp[j]),
            ("ref_logp", x.ref_logp.map_or(0.0, |r| r[j])),
            ("is_weights", x.is_weights.map_or(1.0, |w| w[j])),
        ];
        if let Some((field, v)) = vals.iter().find(|(_, v)| !v.is_finite()) {
            return invalid(field, v, "must be finite on masked tokens");
        }
    }
    Ok(b)
}

/// The micro-batch's loss and `d loss / d logp`, normalised by the global counts `norm`.
///
/// `loss = Σ_{i,t} c_{i,t}·m_{i,t}·(w_{i,t}·l_{i,t} + β·k_{i,t})` with the aggregation weight
/// `c_{i,t}` (`1/N_tok`, `1/(|o_i|·N_seq)`, `1/N_seq` or `1/(N_seq·L_max)`). Summing the outputs of
/// any partition of the global batch into micro-batches gives the full-batch loss and gradient.
pub fn policy_loss(x: &LossInputs, cfg: &LossConfig, norm: &Normalizer) -> Result<LossOutput> {
    cfg.validate()?;
    let b = validate_inputs(x, cfg)?;
    let t_len = x.seq_len;
    let n_seq = norm.sequences.max(1) as f64;
    let mut out = LossOutput { loss: 0.0, grad: vec![0.0; x.logp.len()], stats: LossStats::default() };
    let kl = cfg.active_kl();
    for i in 0..b {
        let row = i * t_len..(i + 1) * t_len;
        let n_i = x.mask[row.clone()].iter().filter(|m| **m).count();
        if n_i == 0 {
            continue;
        }
        let c = match cfg.aggregation {
            Aggregation::TokenMean => 1.0 / norm.tokens.max(1) as f64,
            Aggregation::SeqMeanTokenMean => 1.0 / (n_i as f64 * n_seq),
            Aggregation::SeqMeanTokenSum => 1.0 / n_seq,
            Aggregation::SeqMeanTokenSumNorm => 1.0 / (n_seq * cfg.max_completion_len as f64),
        };
        let adv = x.advantages[i];
        let w = |j: usize| x.is_weights.map_or(1.0, |w| w[j]);
        let seq = match cfg.policy.level {
            RatioLevel::Token => None,
            RatioLevel::Sequence => {
                let lr =
                    row.clone().filter(|&j| x.mask[j]).map(|j| x.logp[j] - x.old_logp[j]).sum::<f64>() / n_i as f64;
                let (l, d, f) = surrogate(lr, adv, &cfg.policy);
                let ratio = clamp(lr, cfg.policy.log_ratio_clamp).0.exp();
                // W_i = Σ_t c·w·m: the sequence term's total weight; d s_i / d logp_t = s_i·m_t/|o_i|.
                let weight: f64 = row.clone().filter(|&j| x.mask[j]).map(|j| c * w(j)).sum();
                Some((l, weight * d / n_i as f64, f, ratio))
            }
        };
        for j in row.filter(|&j| x.mask[j]) {
            let (l, g, f, ratio) = match seq {
                Some(s) => s,
                None => {
                    let lr = x.logp[j] - x.old_logp[j];
                    let (l, d, f) = surrogate(lr, adv, &cfg.policy);
                    (l, c * w(j) * d, f, clamp(lr, cfg.policy.log_ratio_clamp).0.exp())
                }
            };
            let pg = c * w(j) * l;
            out.loss += pg;
            out.grad[j] += g;
            let s = &mut out.stats;
            s.pg_loss += pg;
            s.tokens += 1;
            s.ratio_sum += ratio;
            s.clip_low += f.low as u64;
            s.clip_high += f.high as u64;
            s.dual_clip += f.dual as u64;
            if let (Some(k), Some(r)) = (kl, x.ref_logp) {
                let (v, dv) = k.estimate(x.logp[j], r[j]);
                out.loss += c * k.beta * v;
                out.grad[j] += c * k.beta * dv;
                s.kl_loss += c * k.beta * v;
                s.kl_sum += v;
            }
        }
    }
    Ok(out)
}
