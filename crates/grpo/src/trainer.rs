//! The GRPO loop (DeepSeekMath Algorithm 1, R1 §2.2.1) over a [`Policy`]: sample `G` completions
//! per prompt, score them with rule rewards, compute group advantages, then `μ` inner iterations
//! over mini-batches of the clipped-surrogate + β·KL loss, back-propagated through `d loss / d logp`.
//! One JSON line of [`StepMetrics`] per step.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::advantage::{AdvantageKind, advantages, combine_rewards};
use crate::batch::{IsStats, OverlongPunishment, Refill, truncated_is};
use crate::error::{GrpoError, Result, check_len, invalid};
use crate::loss::{KlPenalty, LossConfig, LossInputs, LossStats, Normalizer, policy_loss};

/// A sampled completion.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub tokens: Vec<u32>,
    /// The sampler's log-probability of each token (kept for the rollout/trainer mismatch).
    pub logprobs: Vec<f64>,
    /// Generation stopped at the length limit rather than at end-of-sequence.
    pub truncated: bool,
}

/// One sequence to score or differentiate: its prompt and completion tokens.
#[derive(Debug)]
pub struct Sample<'a, P> {
    pub prompt: &'a P,
    pub completion: &'a [u32],
}

impl<P> Clone for Sample<'_, P> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<P> Copy for Sample<'_, P> {}

/// Log-probabilities of completion tokens, and optionally the policy's entropy at each position.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scored {
    pub logprobs: Vec<f64>,
    pub entropy: Option<Vec<f64>>,
}

/// Anything that scores completions: the policy, and the frozen reference.
pub trait Scorer<P> {
    /// `log π(o_t | q, o_<t)` for every completion token of every sample.
    fn logprobs(&mut self, batch: &[Sample<'_, P>]) -> Result<Vec<Scored>>;
}

/// What an optimizer step reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepInfo {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
    /// The policy did not apply the gradient (its norm was non-finite) and dropped it.
    #[serde(default)]
    pub skipped: bool,
}

/// What a non-finite loss, `d loss / d logp` or gradient norm does (checked before every
/// optimizer step).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnNonFinite {
    /// Drop the mini-batch's gradient, leave the policy as it was, count it in
    /// [`StepMetrics::skipped_updates`].
    #[default]
    Skip,
    /// Stop with [`crate::GrpoError::NonFinite`] naming the step.
    Stop,
}

/// The policy interface the trainer drives. The model implements it in the `r1` crate; the tests
/// implement it for a tabular softmax policy.
pub trait Policy<P>: Scorer<P> {
    /// A frozen copy that scores like the policy did when it was taken.
    type Reference: Scorer<P>;
    /// `n` completions for each prompt (outer `Vec` in prompt order), with the sampler's logprobs.
    fn sample(&mut self, prompts: &[&P], n: usize) -> Result<Vec<Vec<Completion>>>;
    /// Accumulate the gradient of the loss given `d loss / d logp` for each completion token.
    fn backward(&mut self, batch: &[Sample<'_, P>], dlogp: &[Vec<f64>]) -> Result<()>;
    /// Apply and clear the accumulated gradient (clipping, schedule and optimizer are the
    /// policy's). A non-finite gradient norm must not be applied: drop the gradient and report
    /// [`StepInfo::skipped`].
    fn step(&mut self) -> Result<StepInfo>;
    /// Drop the accumulated gradient without an update (the trainer's non-finite guard).
    fn discard(&mut self) -> Result<()>;
    /// Snapshot the current parameters as the reference.
    fn reference(&self) -> Result<Self::Reference>;
}

/// A rule reward's scoring function: `None` when it does not apply to the completion.
pub type ScoreFn<P> = Box<dyn Fn(&P, &Completion) -> Option<f64>>;

/// A named rule reward; the batch reward is the weighted sum of the present scores.
pub struct RewardFn<P> {
    pub name: String,
    pub weight: f64,
    /// Counted as the step's accuracy (mean of its score).
    pub accuracy: bool,
    pub score: ScoreFn<P>,
}

impl<P> RewardFn<P> {
    pub fn new(name: &str, weight: f64, score: impl Fn(&P, &Completion) -> Option<f64> + 'static) -> Self {
        RewardFn { name: name.into(), weight, accuracy: false, score: Box::new(score) }
    }

    /// Mark as the accuracy reward.
    pub fn accuracy(mut self) -> Self {
        self.accuracy = true;
        self
    }
}

/// The trainer's configuration. Defaults follow R1-Zero (R1 §2.2, supplementary: G = 16,
/// 32 prompts, β = 0.001 with k3, reference reset every 400 steps).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GrpoConfig {
    /// `G`, completions per prompt.
    pub group_size: usize,
    /// Prompts (groups) per step.
    pub prompts_per_step: usize,
    /// `μ`, passes over the step's batch.
    pub inner_iterations: usize,
    /// Optimizer steps per pass: the batch is split into this many mini-batches.
    pub mini_batches: usize,
    /// Sequences per policy call (gradient accumulation inside a mini-batch).
    pub micro_batch: usize,
    pub advantage: AdvantageKind,
    pub loss: LossConfig,
    /// Reset the reference to the current policy every N steps (R1: 400).
    pub ref_reset_every: Option<usize>,
    /// DAPO dynamic sampling: at most this many sampling rounds to fill the batch with groups of
    /// non-zero reward variance. `None` keeps every group.
    pub dynamic_sampling: Option<usize>,
    /// Give truncated completions no loss (TRL `mask_truncated_completions`).
    pub mask_truncated: bool,
    /// DAPO's soft overlong punishment, added to the reward.
    pub overlong: Option<OverlongPunishment>,
    /// Truncated importance sampling cap `C` for the sampler/trainer mismatch.
    pub tis_cap: Option<f64>,
    /// Seed of the mini-batch shuffle.
    pub seed: u64,
    /// The non-finite guard's action.
    #[serde(default)]
    pub on_nonfinite: OnNonFinite,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            group_size: 16,
            prompts_per_step: 32,
            inner_iterations: 1,
            mini_batches: 1,
            micro_batch: 8,
            advantage: AdvantageKind::Grpo { eps: 1e-4, std: crate::StdKind::Unbiased },
            loss: LossConfig { kl: Some(KlPenalty::k3(0.001)), ..Default::default() },
            ref_reset_every: Some(400),
            dynamic_sampling: None,
            mask_truncated: false,
            overlong: None,
            tis_cap: None,
            seed: 0,
            on_nonfinite: OnNonFinite::Skip,
        }
    }
}

impl GrpoConfig {
    /// Check every field.
    pub fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("group_size", self.group_size),
            ("prompts_per_step", self.prompts_per_step),
            ("inner_iterations", self.inner_iterations),
            ("mini_batches", self.mini_batches),
            ("micro_batch", self.micro_batch),
        ] {
            if v == 0 {
                return invalid(field, v, "must be ≥ 1");
            }
        }
        if self.mini_batches > self.group_size * self.prompts_per_step {
            return invalid("mini_batches", self.mini_batches, "exceeds the sequences per step");
        }
        if self.ref_reset_every == Some(0) {
            return invalid("ref_reset_every", 0, "must be ≥ 1 (or None)");
        }
        if self.dynamic_sampling == Some(0) {
            return invalid("dynamic_sampling", 0, "must allow ≥ 1 round (or None)");
        }
        if let Some(o) = &self.overlong {
            o.penalty(0)?;
        }
        if let Some(c) = self.tis_cap
            && !(c.is_finite() && c > 0.0)
        {
            return invalid("tis_cap", c, "must be finite and > 0");
        }
        self.loss.validate()?;
        // Validate ε of the advantage with an empty batch.
        advantages(&[], self.group_size, &self.advantage)?;
        Ok(())
    }
}

/// Mean and standard deviation of one reward function over the step's completions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MeanStd {
    pub mean: f64,
    pub std: f64,
}

impl MeanStd {
    fn of(xs: &[f64]) -> Self {
        if xs.is_empty() {
            return MeanStd::default();
        }
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        MeanStd { mean, std: (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt() }
    }
}

/// One step's metrics (the list of grpo-reference.md), one JSON line each.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: usize,
    /// Combined reward over every sampled completion (all refill rounds).
    pub reward: MeanStd,
    /// Per reward function, over the completions it scored.
    pub rewards: BTreeMap<String, MeanStd>,
    pub accuracy: Option<f64>,
    /// Fraction of sampled groups with zero reward variance.
    pub zero_std_frac: f64,
    pub groups_kept: usize,
    pub sampling_rounds: usize,
    /// The batch loss, summed over optimizer steps and divided by their number.
    pub loss: f64,
    pub pg_loss: f64,
    /// Mean k-estimate of KL(π_θ ‖ π_ref) per token (when β > 0).
    pub kl: Option<f64>,
    pub clip_low_frac: f64,
    pub clip_high_frac: f64,
    pub dual_clip_frac: f64,
    pub ratio_mean: f64,
    pub entropy: Option<f64>,
    pub completion_len_mean: f64,
    pub completion_len_max: usize,
    pub truncated_frac: f64,
    /// Mean over the step's optimizer steps.
    pub grad_norm: Option<f64>,
    pub lr: Option<f64>,
    pub optimizer_steps: usize,
    /// Mini-batches the non-finite guard dropped (no update).
    pub skipped_updates: usize,
    /// `exp(logp_train − logp_sample)` over the batch: the trainer's old-policy log-probabilities
    /// against the sampler's.
    pub rollout_is: Option<IsStats>,
    /// Completion tokens sampled per second of step time.
    pub tokens_per_s: f64,
    pub time_generation_s: f64,
    pub time_scoring_s: f64,
    pub time_training_s: f64,
}

struct Group<P> {
    prompt: P,
    completions: Vec<Completion>,
    rewards: Vec<f64>,
}

/// One sequence of the training batch.
struct Row {
    group: usize,
    member: usize,
    adv: f64,
    counted: bool,
    old: Option<Vec<f64>>,
    reference: Option<Vec<f64>>,
    is_weights: Option<Vec<f64>>,
}

/// SplitMix64, for the seeded mini-batch shuffle.
fn next_u64(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The GRPO trainer: holds the rewards, the reference and the metrics sink.
pub struct Trainer<P, Pol: Policy<P>> {
    pub config: GrpoConfig,
    rewards: Vec<RewardFn<P>>,
    reference: Option<Pol::Reference>,
    step: usize,
    rng: u64,
    metrics: Option<Box<dyn Write>>,
}

impl<P, Pol: Policy<P>> Trainer<P, Pol> {
    /// A trainer whose reference is a snapshot of `policy` (none when β = 0, as TRL).
    pub fn new(config: GrpoConfig, rewards: Vec<RewardFn<P>>, policy: &Pol) -> Result<Self> {
        config.validate()?;
        if rewards.is_empty() {
            return invalid("rewards", 0, "at least one reward function is needed");
        }
        let reference = match config.loss.active_kl() {
            Some(_) => Some(policy.reference()?),
            None => None,
        };
        let rng = config.seed;
        Ok(Trainer { config, rewards, reference, step: 0, rng, metrics: None })
    }

    /// Write one JSON line of [`StepMetrics`] per step to `w`.
    pub fn with_metrics(mut self, w: Box<dyn Write>) -> Self {
        self.metrics = Some(w);
        self
    }

    /// Steps taken.
    pub fn steps(&self) -> usize {
        self.step
    }

    /// One GRPO step on prompts drawn from `prompts`.
    pub fn step(&mut self, policy: &mut Pol, prompts: &mut dyn Iterator<Item = P>) -> Result<StepMetrics> {
        let cfg = self.config.clone();
        let g = cfg.group_size;
        let t_step = Instant::now();
        let mut m = StepMetrics { step: self.step, ..Default::default() };
        let (mut t_gen, mut t_score) = (0.0, 0.0);

        // 1. Generation and scoring, with DAPO's refill when dynamic sampling is on.
        let mut refill = Refill::new(cfg.prompts_per_step);
        let mut kept: Vec<Group<P>> = Vec::new();
        let (mut all_rewards, mut lens, mut n_trunc) = (Vec::new(), Vec::new(), 0usize);
        let mut per_fn: Vec<Vec<f64>> = vec![Vec::new(); self.rewards.len()];
        loop {
            m.sampling_rounds += 1;
            let want = if cfg.dynamic_sampling.is_some() { refill.needed() } else { cfg.prompts_per_step };
            let batch: Vec<P> = (&mut *prompts).take(want).collect();
            if batch.len() < want {
                return invalid("prompts", batch.len(), "the prompt iterator ran out");
            }
            let t0 = Instant::now();
            let refs: Vec<&P> = batch.iter().collect();
            let sampled = policy.sample(&refs, g)?;
            t_gen += t0.elapsed().as_secs_f64();
            check_len("sample() groups", sampled.len(), batch.len())?;
            let t0 = Instant::now();
            for (prompt, completions) in batch.into_iter().zip(sampled) {
                check_len("sample() completions", completions.len(), g)?;
                let mut scores = Vec::with_capacity(g);
                for c in &completions {
                    check_len("completion.logprobs", c.logprobs.len(), c.tokens.len())?;
                    let s: Vec<Option<f64>> = self.rewards.iter().map(|r| (r.score)(&prompt, c)).collect();
                    for (k, x) in s.iter().enumerate() {
                        per_fn[k].extend(*x);
                    }
                    scores.push(s);
                    lens.push(c.tokens.len());
                    n_trunc += c.truncated as usize;
                }
                let weights: Vec<f64> = self.rewards.iter().map(|r| r.weight).collect();
                let mut rewards = combine_rewards(&scores, &weights)?;
                if let Some(o) = &cfg.overlong {
                    for (r, c) in rewards.iter_mut().zip(&completions) {
                        *r += o.penalty(c.tokens.len())?;
                    }
                }
                all_rewards.extend(rewards.iter().copied().filter(|r| !r.is_nan()));
                // The refill counts zero-variance groups; it decides what is kept only when
                // dynamic sampling is on.
                let taken = refill.offer((), &rewards);
                if taken || cfg.dynamic_sampling.is_none() {
                    kept.push(Group { prompt, completions, rewards });
                }
            }
            t_score += t0.elapsed().as_secs_f64();
            match cfg.dynamic_sampling {
                Some(max) if !refill.is_full() && m.sampling_rounds < max => continue,
                _ => break,
            }
        }
        m.reward = MeanStd::of(&all_rewards);
        for (r, xs) in self.rewards.iter().zip(&per_fn) {
            m.rewards.insert(r.name.clone(), MeanStd::of(xs));
            if r.accuracy {
                m.accuracy = Some(MeanStd::of(xs).mean);
            }
        }
        m.zero_std_frac = refill.zero_std_fraction();
        m.groups_kept = kept.len();
        m.completion_len_mean = lens.iter().sum::<usize>() as f64 / lens.len().max(1) as f64;
        m.completion_len_max = lens.iter().copied().max().unwrap_or(0);
        m.truncated_frac = n_trunc as f64 / lens.len().max(1) as f64;
        let n_tokens: usize = lens.iter().sum();

        // 2. Advantages, one per completion.
        let t_train = Instant::now();
        let flat: Vec<f64> = kept.iter().flat_map(|k| k.rewards.iter().copied()).collect();
        let adv = advantages(&flat, g, &cfg.advantage)?;
        let mut rows: Vec<Row> = Vec::with_capacity(adv.len());
        for (gi, k) in kept.iter().enumerate() {
            for (ci, c) in k.completions.iter().enumerate() {
                rows.push(Row {
                    group: gi,
                    member: ci,
                    adv: adv[gi * g + ci],
                    counted: !(cfg.mask_truncated && c.truncated),
                    old: None,
                    reference: None,
                    is_weights: None,
                });
            }
        }

        // 3. Old-policy and reference log-probabilities. With one pass and one mini-batch the old
        // policy is the current one (ρ = 1), so it is not recomputed unless TIS needs it.
        let recompute_old = cfg.inner_iterations > 1 || cfg.mini_batches > 1 || cfg.tis_cap.is_some();
        let mut is_stats: Vec<IsStats> = Vec::new();
        for chunk in (0..rows.len()).collect::<Vec<_>>().chunks(cfg.micro_batch) {
            let samples: Vec<Sample<P>> = chunk.iter().map(|&r| sample_of(&kept, &rows[r])).collect();
            let old = if recompute_old { Some(score(policy, &samples)?) } else { None };
            let reference = match (&mut self.reference, cfg.loss.active_kl()) {
                (Some(rf), Some(_)) => Some(score(rf, &samples)?),
                _ => None,
            };
            for (k, &r) in chunk.iter().enumerate() {
                let row = &mut rows[r];
                let c = &kept[row.group].completions[row.member];
                if let Some(old) = &old {
                    let mask = vec![row.counted; c.tokens.len()];
                    let (w, s) = truncated_is(&old[k].logprobs, &c.logprobs, &mask, cfg.tis_cap.unwrap_or(f64::MAX))?;
                    if cfg.tis_cap.is_some() {
                        row.is_weights = Some(w);
                    }
                    is_stats.push(s);
                    row.old = Some(old[k].logprobs.clone());
                }
                row.reference = reference.as_ref().map(|v| v[k].logprobs.clone());
            }
        }

        // 4. μ passes over shuffled mini-batches, gradient accumulation over micro-batches.
        let mut stats = LossStats::default();
        let (mut ent_sum, mut ent_n, mut has_ent) = (0.0, 0usize, false);
        let (mut gn_sum, mut loss_sum) = (0.0, 0.0);
        for _ in 0..cfg.inner_iterations {
            let mut order: Vec<usize> = (0..rows.len()).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, (next_u64(&mut self.rng) % (i as u64 + 1)) as usize);
            }
            let per = order.len().div_ceil(cfg.mini_batches).max(1);
            for mini in order.chunks(per) {
                // The global normaliser of this optimizer step, before its micro-batch loop.
                let mut norm = Normalizer::default();
                for &r in mini {
                    let len = kept[rows[r].group].completions[rows[r].member].tokens.len();
                    let tokens = if rows[r].counted { len as u64 } else { 0 };
                    norm = norm.merge(Normalizer { tokens, sequences: 1 });
                }
                // The non-finite guard: the first non-finite loss or d loss / d logp of the
                // mini-batch, which then gets no backward and no update.
                let mut bad: Option<(&'static str, f64)> = None;
                let (mut mini_stats, mut mini_loss) = (LossStats::default(), 0.0);
                for micro in mini.chunks(cfg.micro_batch) {
                    if bad.is_some() {
                        break;
                    }
                    let samples: Vec<Sample<P>> = micro.iter().map(|&r| sample_of(&kept, &rows[r])).collect();
                    let scored = score(policy, &samples)?;
                    if !recompute_old {
                        // The training forward is the old policy here: measure the mismatch on it.
                        for (s, &r) in scored.iter().zip(micro) {
                            let c = &kept[rows[r].group].completions[rows[r].member];
                            let mask = vec![rows[r].counted; c.tokens.len()];
                            is_stats.push(truncated_is(&s.logprobs, &c.logprobs, &mask, f64::MAX)?.1);
                        }
                    }
                    for s in &scored {
                        if let Some(e) = &s.entropy {
                            has_ent = true;
                            ent_sum += e.iter().sum::<f64>();
                            ent_n += e.len();
                        }
                    }
                    let out = micro_loss(&rows, micro, &scored, &cfg.loss, &norm)?;
                    if !out.loss.is_finite() {
                        bad = Some(("loss", out.loss));
                        continue;
                    }
                    if let Some(&g) = out.grad.iter().find(|g| !g.is_finite()) {
                        bad = Some(("d loss / d logp", g));
                        continue;
                    }
                    mini_stats.merge(&out.stats);
                    mini_loss += out.loss;
                    let t = scored.iter().map(|s| s.logprobs.len()).max().unwrap_or(0).max(1);
                    let dlogp: Vec<Vec<f64>> = scored
                        .iter()
                        .enumerate()
                        .map(|(k, s)| out.grad[k * t..k * t + s.logprobs.len()].to_vec())
                        .collect();
                    policy.backward(&samples, &dlogp)?;
                }
                if bad.is_none() {
                    let info = policy.step()?;
                    if info.skipped || !info.grad_norm.is_finite() {
                        bad = Some(("grad_norm", info.grad_norm));
                    } else {
                        gn_sum += info.grad_norm;
                        stats.merge(&mini_stats);
                        loss_sum += mini_loss;
                        m.lr = Some(info.lr);
                        m.optimizer_steps += 1;
                    }
                } else {
                    policy.discard()?;
                }
                if let Some((what, value)) = bad {
                    if cfg.on_nonfinite == OnNonFinite::Stop {
                        return Err(GrpoError::NonFinite { step: self.step + 1, what, value });
                    }
                    m.skipped_updates += 1;
                }
            }
        }
        m.rollout_is = merge_is(&is_stats);
        if m.optimizer_steps > 0 {
            let n = m.optimizer_steps as f64;
            m.grad_norm = Some(gn_sum / n);
            m.loss = loss_sum / n;
            m.pg_loss = stats.pg_loss / n;
        }
        m.kl = self.reference.as_ref().and(cfg.loss.active_kl()).map(|_| stats.kl_mean());
        m.clip_low_frac = stats.clip_low_frac();
        m.clip_high_frac = stats.clip_high_frac();
        m.dual_clip_frac = stats.dual_clip_frac();
        m.ratio_mean = stats.ratio_mean();
        m.entropy = has_ent.then(|| ent_sum / ent_n.max(1) as f64);
        m.time_generation_s = t_gen;
        m.time_scoring_s = t_score;
        m.time_training_s = t_train.elapsed().as_secs_f64();
        m.tokens_per_s = n_tokens as f64 / t_step.elapsed().as_secs_f64().max(1e-9);

        // 5. Reference reset (R1: every 400 steps).
        self.step += 1;
        if let (Some(n), Some(_)) = (cfg.ref_reset_every, &self.reference)
            && self.step.is_multiple_of(n)
        {
            self.reference = Some(policy.reference()?);
        }
        if let Some(w) = &mut self.metrics {
            serde_json::to_writer(&mut *w, &m)?;
            w.write_all(b"\n")?;
            w.flush()?;
        }
        Ok(m)
    }
}

fn sample_of<'a, P>(kept: &'a [Group<P>], row: &Row) -> Sample<'a, P> {
    let k = &kept[row.group];
    Sample { prompt: &k.prompt, completion: &k.completions[row.member].tokens }
}

fn score<P>(s: &mut impl Scorer<P>, samples: &[Sample<P>]) -> Result<Vec<Scored>> {
    let out = s.logprobs(samples)?;
    check_len("logprobs() results", out.len(), samples.len())?;
    for (o, x) in out.iter().zip(samples) {
        check_len("scored.logprobs", o.logprobs.len(), x.completion.len())?;
    }
    Ok(out)
}

/// Pack one micro-batch into the `[B·T]` layout of [`policy_loss`] and evaluate it.
fn micro_loss(
    rows: &[Row],
    micro: &[usize],
    scored: &[Scored],
    cfg: &LossConfig,
    norm: &Normalizer,
) -> Result<crate::loss::LossOutput> {
    let t = scored.iter().map(|s| s.logprobs.len()).max().unwrap_or(0).max(1);
    let n = micro.len() * t;
    let (mut logp, mut old, mut mask) = (vec![0.0; n], vec![0.0; n], vec![false; n]);
    let mut reference = cfg.active_kl().map(|_| vec![0.0; n]);
    let mut weights = rows[micro[0]].is_weights.as_ref().map(|_| vec![1.0; n]);
    let mut adv = Vec::with_capacity(micro.len());
    for (k, (&r, s)) in micro.iter().zip(scored).enumerate() {
        let row = &rows[r];
        adv.push(row.adv);
        for (j, &lp) in s.logprobs.iter().enumerate() {
            let p = k * t + j;
            logp[p] = lp;
            old[p] = row.old.as_ref().map_or(lp, |o| o[j]);
            mask[p] = row.counted;
            if let (Some(dst), Some(src)) = (reference.as_mut(), row.reference.as_ref()) {
                dst[p] = src[j];
            }
            if let (Some(dst), Some(src)) = (weights.as_mut(), row.is_weights.as_ref()) {
                dst[p] = src[j];
            }
        }
    }
    if reference.is_some() && micro.iter().any(|&r| rows[r].reference.is_none()) {
        return Err(GrpoError::Policy("reference log-probabilities are missing".into()));
    }
    let x = LossInputs {
        seq_len: t,
        logp: &logp,
        old_logp: &old,
        ref_logp: reference.as_deref(),
        mask: &mask,
        advantages: &adv,
        is_weights: weights.as_deref(),
    };
    policy_loss(&x, cfg, norm)
}

fn merge_is(parts: &[IsStats]) -> Option<IsStats> {
    let tokens: u64 = parts.iter().map(|s| s.tokens).sum();
    if parts.is_empty() {
        return None;
    }
    if tokens == 0 {
        return Some(IsStats::default());
    }
    let n = tokens as f64;
    let wsum = |f: fn(&IsStats) -> f64| parts.iter().map(|s| f(s) * s.tokens as f64).sum::<f64>() / n;
    let live = parts.iter().filter(|s| s.tokens > 0);
    Some(IsStats {
        tokens,
        ratio_mean: wsum(|s| s.ratio_mean),
        ratio_min: live.clone().map(|s| s.ratio_min).fold(f64::INFINITY, f64::min),
        ratio_max: live.map(|s| s.ratio_max).fold(0.0, f64::max),
        capped_frac: wsum(|s| s.capped_frac),
        mismatch_kl: wsum(|s| s.mismatch_kl),
    })
}
