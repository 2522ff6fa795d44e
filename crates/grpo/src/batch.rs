//! Batch shaping before the loss: DAPO dynamic sampling (zero-variance group filtering with refill),
//! masking of truncated completions, DAPO's soft overlong punishment, and truncated importance
//! sampling for the mismatch between the sampler's and the trainer's log-probabilities.

use serde::{Deserialize, Serialize};

use crate::advantage::is_constant;
use crate::error::{Result, check_len, invalid};

/// Which groups carry a learning signal: DAPO dynamic sampling (arXiv 2503.14476 eq. 11,
/// `0 < |{o_i correct}| < G`) keeps a group only when its rewards are not all equal.
pub fn informative_groups(rewards: &[f64], group_size: usize) -> Result<Vec<bool>> {
    if group_size == 0 || !rewards.len().is_multiple_of(group_size) {
        return invalid("group_size", group_size, "must be ≥ 1 and divide rewards.len()");
    }
    Ok(rewards.chunks(group_size).map(|g| !is_constant(g)).collect())
}

/// Collects informative groups over several sampling rounds until `target` are kept (DAPO's refill:
/// "over-sample and filter out prompts with accuracy 0 or 1 until the batch is full").
#[derive(Clone, Debug)]
pub struct Refill<T> {
    target: usize,
    kept: Vec<T>,
    /// Groups offered so far.
    pub offered: usize,
    /// Groups dropped for zero reward variance.
    pub dropped: usize,
}

impl<T> Refill<T> {
    /// A refill that wants `target` groups.
    pub fn new(target: usize) -> Self {
        Refill { target, kept: Vec::new(), offered: 0, dropped: 0 }
    }

    /// Offer one group with its rewards; returns whether it was kept. Groups beyond the target are
    /// not kept.
    pub fn offer(&mut self, group: T, rewards: &[f64]) -> bool {
        self.offered += 1;
        if is_constant(rewards) {
            self.dropped += 1;
            return false;
        }
        if self.is_full() {
            return false;
        }
        self.kept.push(group);
        true
    }

    /// Groups still missing.
    pub fn needed(&self) -> usize {
        self.target.saturating_sub(self.kept.len())
    }

    /// Has the target been reached?
    pub fn is_full(&self) -> bool {
        self.needed() == 0
    }

    /// Fraction of offered groups that had zero reward variance.
    pub fn zero_std_fraction(&self) -> f64 {
        if self.offered == 0 { 0.0 } else { self.dropped as f64 / self.offered as f64 }
    }

    /// The kept groups (at most `target`).
    pub fn into_kept(self) -> Vec<T> {
        self.kept
    }
}

/// Remove truncated completions from the loss (TRL `mask_truncated_completions`): every position of
/// row `i` becomes `false` when `truncated[i]`. Returns how many rows were masked.
pub fn mask_truncated(mask: &mut [bool], seq_len: usize, truncated: &[bool]) -> Result<usize> {
    if seq_len == 0 || !mask.len().is_multiple_of(seq_len) {
        return invalid("seq_len", seq_len, "must be ≥ 1 and divide mask.len()");
    }
    check_len("truncated", truncated.len(), mask.len() / seq_len)?;
    let mut n = 0;
    for (row, &t) in mask.chunks_mut(seq_len).zip(truncated) {
        if t {
            row.fill(false);
            n += 1;
        }
    }
    Ok(n)
}

/// DAPO's soft overlong punishment (arXiv 2503.14476 eq. 13), added to the reward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlongPunishment {
    /// `L_max`, the generation limit.
    pub max_len: usize,
    /// `L_cache`, the length of the linear penalty ramp before `L_max`.
    pub cache: usize,
}

impl OverlongPunishment {
    /// `0` if `L ≤ L_max − L_cache`; `(L_max − L_cache − L)/L_cache` up to `L_max`; `−1` beyond.
    pub fn penalty(&self, len: usize) -> Result<f64> {
        if self.cache == 0 || self.cache > self.max_len {
            return invalid("cache", self.cache, "must lie in [1, max_len]");
        }
        let start = self.max_len - self.cache;
        Ok(if len <= start {
            0.0
        } else if len <= self.max_len {
            (start as f64 - len as f64) / self.cache as f64
        } else {
            -1.0
        })
    }
}

/// The distribution of `exp(logp_train − logp_sample)` over masked tokens, and how truncation acted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct IsStats {
    pub tokens: u64,
    pub ratio_mean: f64,
    pub ratio_min: f64,
    pub ratio_max: f64,
    /// Fraction of tokens whose weight was capped at `C`.
    pub capped_frac: f64,
    /// `mean(logp_sample − logp_train)`: the k1 estimate of KL(π_sample ‖ π_train) on the sampler's tokens.
    pub mismatch_kl: f64,
}

/// Truncated importance sampling (TIS, Yao et al. 2025; TRL `vllm_importance_sampling_correction`):
/// weights `min(exp(logp_old_train − logp_sample), C)` that multiply each token's policy loss, and
/// the statistics of the ratio. Positions outside `mask` get weight 1 and are not counted.
pub fn truncated_is(train_logp: &[f64], sample_logp: &[f64], mask: &[bool], cap: f64) -> Result<(Vec<f64>, IsStats)> {
    if !(cap.is_finite() && cap > 0.0) {
        return invalid("cap", cap, "must be finite and > 0");
    }
    check_len("sample_logp", sample_logp.len(), train_logp.len())?;
    check_len("mask", mask.len(), train_logp.len())?;
    let mut w = vec![1.0; train_logp.len()];
    let mut s = IsStats { ratio_min: f64::INFINITY, ratio_max: 0.0, ..Default::default() };
    let (mut sum, mut capped, mut lsum) = (0.0, 0u64, 0.0);
    for j in (0..mask.len()).filter(|&j| mask[j]) {
        let d = train_logp[j] - sample_logp[j];
        if !d.is_finite() {
            return invalid("train_logp − sample_logp", d, "must be finite on masked tokens");
        }
        let r = d.exp();
        w[j] = r.min(cap);
        capped += (r > cap) as u64;
        sum += r;
        lsum -= d;
        s.ratio_min = s.ratio_min.min(r);
        s.ratio_max = s.ratio_max.max(r);
        s.tokens += 1;
    }
    if s.tokens == 0 {
        return Ok((w, IsStats::default()));
    }
    let n = s.tokens as f64;
    s.ratio_mean = sum / n;
    s.capped_frac = capped as f64 / n;
    s.mismatch_kl = lsum / n;
    Ok((w, s))
}
