//! Group-relative advantages: one scalar per completion, broadcast over its tokens.
//!
//! Rewards arrive flat, `group_size` consecutive completions per prompt. A reward of `NaN` marks a
//! completion whose reward is missing: it is left out of every statistic and gets `A = 0` (as TRL).
//! Values are divided by the largest magnitude before any sum so that no finite input overflows
//! into a `NaN`; ε stays in reward units.

use serde::{Deserialize, Serialize};

use crate::error::{Result, invalid};

/// Which standard deviation divides the centred rewards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StdKind {
    /// Bessel-corrected, divides by `n − 1` (torch's default; TRL, verl).
    Unbiased,
    /// Population standard deviation, divides by `n`.
    Biased,
}

/// The advantage estimators of GRPO and its successors.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum AdvantageKind {
    /// GRPO outcome supervision (DeepSeekMath §4.1.2, R1 eq. 3): `A_i = (r_i − mean_g r) / (std_g r + ε)`.
    Grpo { eps: f64, std: StdKind },
    /// Group-centred, scaled by the standard deviation of the whole batch's rewards
    /// (TRL `scale_rewards="batch"`): `A_i = (r_i − mean_g r) / (std_batch r + ε)`.
    BatchStd { eps: f64, std: StdKind },
    /// Dr. GRPO (arXiv 2503.20783 §3.1), no scaling: `A_i = r_i − mean_g r`.
    DrGrpo,
    /// RLOO, the leave-one-out baseline: `A_i = r_i − (Σ_j r_j − r_i) / (G − 1)`.
    Rloo,
    /// REINFORCE++ with baseline (OpenRLHF): `d_i = r_i − mean_g r`, then whitened over the batch,
    /// `A_i = (d_i − mean_batch d) / (std_batch d + ε)`.
    ReinforcePlusPlus { eps: f64, std: StdKind },
}

impl AdvantageKind {
    /// GRPO as TRL computes it: ε = 1e-4, Bessel-corrected group std.
    pub const TRL: AdvantageKind = AdvantageKind::Grpo { eps: 1e-4, std: StdKind::Unbiased };
    /// GRPO as verl computes it: ε = 1e-6, unbiased std.
    pub const VERL: AdvantageKind = AdvantageKind::Grpo { eps: 1e-6, std: StdKind::Unbiased };
    /// GRPO as OpenRLHF computes it: ε = 1e-9.
    pub const OPENRLHF: AdvantageKind = AdvantageKind::Grpo { eps: 1e-9, std: StdKind::Unbiased };

    fn eps(&self) -> Option<f64> {
        match *self {
            AdvantageKind::Grpo { eps, .. }
            | AdvantageKind::BatchStd { eps, .. }
            | AdvantageKind::ReinforcePlusPlus { eps, .. } => Some(eps),
            AdvantageKind::DrGrpo | AdvantageKind::Rloo => None,
        }
    }
}

/// Mean and standard deviation of `vals` (already scaled into [−1, 1]); `(0, 0)` when empty and
/// std 0 for a single value.
fn moments(vals: impl Iterator<Item = f64> + Clone, kind: StdKind) -> (f64, f64) {
    let n = vals.clone().count();
    if n == 0 {
        return (0.0, 0.0);
    }
    let mean = vals.clone().map(|v| v / n as f64).sum::<f64>();
    if n == 1 {
        return (mean, 0.0);
    }
    let ss: f64 = vals.map(|v| (v - mean) * (v - mean)).sum();
    let den = match kind {
        StdKind::Unbiased => (n - 1) as f64,
        StdKind::Biased => n as f64,
    };
    (mean, (ss / den).sqrt())
}

fn max_abs(vals: impl Iterator<Item = f64>) -> f64 {
    vals.filter(|v| !v.is_nan()).fold(0.0, |m, v| m.max(v.abs()))
}

/// Is every present (non-NaN) reward of the group equal? Groups with fewer than two present
/// rewards count as constant: they carry no relative signal.
pub fn is_constant(group: &[f64]) -> bool {
    let mut it = group.iter().filter(|r| !r.is_nan());
    match it.next() {
        None => true,
        Some(first) => {
            let rest: Vec<&f64> = it.collect();
            rest.is_empty() || rest.iter().all(|r| *r == first)
        }
    }
}

fn validate(rewards: &[f64], group_size: usize, kind: &AdvantageKind) -> Result<()> {
    if group_size == 0 {
        return invalid("group_size", group_size, "must be at least 1");
    }
    if !rewards.len().is_multiple_of(group_size) {
        return invalid("rewards.len()", rewards.len(), "must be a multiple of group_size");
    }
    if let Some(r) = rewards.iter().find(|r| r.is_infinite()) {
        return invalid("rewards", r, "must be finite (NaN marks a missing reward)");
    }
    if let Some(eps) = kind.eps()
        && !(eps.is_finite() && eps >= 0.0)
    {
        return invalid("eps", eps, "must be finite and ≥ 0");
    }
    Ok(())
}

/// Advantages for `rewards` laid out as consecutive groups of `group_size` completions.
///
/// Every estimator gives `A = 0` to a missing reward, to every member of a constant group and to a
/// group with fewer than two present rewards (there is no relative signal; verl instead treats a
/// group of one as mean 0, std 1).
pub fn advantages(rewards: &[f64], group_size: usize, kind: &AdvantageKind) -> Result<Vec<f64>> {
    validate(rewards, group_size, kind)?;
    let mut adv = vec![0.0; rewards.len()];
    match *kind {
        AdvantageKind::Grpo { eps, std } => {
            for (g, out) in rewards.chunks(group_size).zip(adv.chunks_mut(group_size)) {
                if is_constant(g) {
                    continue;
                }
                let m = max_abs(g.iter().copied());
                let u = g.iter().map(|r| r / m);
                let (mean, sd) = moments(u.clone().filter(|v| !v.is_nan()), std);
                let den = sd + eps / m;
                for (a, v) in out.iter_mut().zip(u) {
                    if !v.is_nan() && den > 0.0 {
                        *a = (v - mean) / den;
                    }
                }
            }
        }
        AdvantageKind::DrGrpo | AdvantageKind::Rloo => {
            for (g, out) in rewards.chunks(group_size).zip(adv.chunks_mut(group_size)) {
                if is_constant(g) {
                    continue;
                }
                let m = max_abs(g.iter().copied());
                let u = g.iter().map(|r| r / m);
                let n = u.clone().filter(|v| !v.is_nan()).count() as f64;
                let (mean, _) = moments(u.clone().filter(|v| !v.is_nan()), StdKind::Biased);
                // RLOO: r_i − (Σ r − r_i)/(n − 1) = n/(n − 1) · (r_i − mean).
                let k = if matches!(kind, AdvantageKind::Rloo) { n / (n - 1.0) } else { 1.0 };
                for (a, v) in out.iter_mut().zip(u) {
                    if !v.is_nan() {
                        *a = (v - mean) * k * m;
                    }
                }
            }
        }
        AdvantageKind::BatchStd { eps, std } => {
            let m = max_abs(rewards.iter().copied());
            if m == 0.0 {
                return Ok(adv);
            }
            let (_, sd) = moments(rewards.iter().map(|r| r / m).filter(|v| !v.is_nan()), std);
            let den = sd + eps / m;
            for (g, out) in rewards.chunks(group_size).zip(adv.chunks_mut(group_size)) {
                if is_constant(g) || den <= 0.0 {
                    continue;
                }
                let u = g.iter().map(|r| r / m);
                let (mean, _) = moments(u.clone().filter(|v| !v.is_nan()), std);
                for (a, v) in out.iter_mut().zip(u) {
                    if !v.is_nan() {
                        *a = (v - mean) / den;
                    }
                }
            }
        }
        AdvantageKind::ReinforcePlusPlus { eps, std } => {
            let m = max_abs(rewards.iter().copied());
            if m == 0.0 {
                return Ok(adv);
            }
            // d = r − mean_g r in units of m; missing rewards stay NaN.
            let mut d = vec![f64::NAN; rewards.len()];
            for (g, out) in rewards.chunks(group_size).zip(d.chunks_mut(group_size)) {
                let constant = is_constant(g);
                let u = g.iter().map(|r| r / m);
                let (mean, _) = moments(u.clone().filter(|v| !v.is_nan()), std);
                for (o, v) in out.iter_mut().zip(u) {
                    if !v.is_nan() {
                        *o = if constant { 0.0 } else { v - mean };
                    }
                }
            }
            let (mean, sd) = moments(d.iter().copied().filter(|v| !v.is_nan()), std);
            let den = sd + eps / m;
            if den > 0.0 {
                // Constant groups keep A = 0: mathematically mean_batch d = 0, so whitening only
                // rescales; forcing the zero removes the rounding residue of the mean.
                for ((g, out), dg) in
                    rewards.chunks(group_size).zip(adv.chunks_mut(group_size)).zip(d.chunks(group_size))
                {
                    if is_constant(g) {
                        continue;
                    }
                    for (a, v) in out.iter_mut().zip(dg) {
                        if !v.is_nan() {
                            *a = (v - mean) / den;
                        }
                    }
                }
            }
        }
    }
    Ok(adv)
}

/// Weighted sum of several reward functions per completion (`scores[i][k]` for completion `i`,
/// function `k`). Missing scores are skipped (TRL's `nansum`); a completion with every score missing
/// gets `NaN`, which [`advantages`] turns into `A = 0`.
pub fn combine_rewards(scores: &[Vec<Option<f64>>], weights: &[f64]) -> Result<Vec<f64>> {
    if let Some(w) = weights.iter().find(|w| !w.is_finite()) {
        return invalid("weights", w, "must be finite");
    }
    scores
        .iter()
        .map(|s| {
            crate::error::check_len("scores[i]", s.len(), weights.len())?;
            let present: Vec<f64> = s.iter().zip(weights).filter_map(|(x, w)| x.map(|x| x * w)).collect();
            if let Some(x) = s.iter().flatten().find(|x| !x.is_finite()) {
                return invalid("scores", x, "must be finite or None");
            }
            Ok(if present.is_empty() { f64::NAN } else { present.iter().sum() })
        })
        .collect()
}
