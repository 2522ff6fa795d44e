//! Rule-based rewards for the DeepSeek-R1 recipe.
//!
//! ```
//! use rewards::math::verify;
//! assert!(verify("\\frac{1}{2}", "so the answer is $\\boxed{0.5}$").correct);
//! ```
//!
//! A [`Reward`] maps a completion plus the sample's fields to a [`Score`] (a number and a short reason).
//! [`WeightedRewards`] combines several with weights, scores batches in parallel (rayon) and summarises
//! them per reward ([`RewardStats`]). The math verifier lives in [`math`], shaping rewards in [`shaping`],
//! the sandboxed code reward in [`code`].

pub mod code;
mod error;
pub mod math;
pub mod shaping;

pub use error::RewardError;

use rayon::prelude::*;
use serde::Serialize;

/// The fields of one sample (one JSONL line): `answer`, `tests`, `language`, …
pub type Sample = serde_json::Map<String, serde_json::Value>;

/// A reward value with a short human-readable reason.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Score {
    /// The reward.
    pub value: f64,
    /// Why, in a few words.
    pub reason: String,
}

impl Score {
    /// A score with its reason.
    pub fn new(value: f64, reason: impl Into<String>) -> Self {
        Self { value, reason: reason.into() }
    }
}

/// A rule-based reward.
pub trait Reward: Send + Sync {
    /// The name used on the command line and in output (`accuracy`, `format`, …).
    fn name(&self) -> &str;
    /// Score one completion. Errors only for missing/malformed sample fields, never for a wrong answer.
    fn score(&self, completion: &str, sample: &Sample) -> Result<Score, RewardError>;
}

/// Read a string field of a sample, or fail naming the reward and field.
pub fn str_field<'a>(reward: &str, sample: &'a Sample, field: &str) -> Result<&'a str, RewardError> {
    match sample.get(field) {
        None => Err(RewardError::MissingField { reward: reward.into(), field: field.into() }),
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(v) => Err(RewardError::BadField {
            reward: reward.into(),
            field: field.into(),
            detail: format!("expected a string, got {v}"),
        }),
    }
}

/// Scores of every reward for one completion plus their weighted sum.
#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    /// `(name, score)` in the order the rewards were given.
    pub parts: Vec<(String, Score)>,
    /// Σ weight × value.
    pub total: f64,
}

/// A weighted sum of rewards.
pub struct WeightedRewards {
    parts: Vec<(Box<dyn Reward>, f64)>,
}

impl WeightedRewards {
    /// Combine rewards with their weights.
    pub fn new(parts: Vec<(Box<dyn Reward>, f64)>) -> Self {
        Self { parts }
    }

    /// Build from `NAME` or `NAME=WEIGHT` specs (weight 1 when omitted).
    pub fn from_specs<S: AsRef<str>>(specs: &[S]) -> Result<Self, RewardError> {
        let mut parts = Vec::new();
        for spec in specs {
            let spec = spec.as_ref();
            let (name, weight) = match spec.split_once('=') {
                Some((n, w)) => {
                    let weight: f64 = w
                        .trim()
                        .parse()
                        .ok()
                        .filter(|x: &f64| x.is_finite())
                        .ok_or_else(|| RewardError::BadWeight { spec: spec.into(), weight: w.into() })?;
                    (n.trim(), weight)
                }
                None => (spec.trim(), 1.0),
            };
            parts.push((reward_by_name(name)?, weight));
        }
        Ok(Self { parts })
    }

    /// Reward names in order.
    pub fn names(&self) -> Vec<&str> {
        self.parts.iter().map(|(r, _)| r.name()).collect()
    }

    /// Score one completion with every reward.
    pub fn score(&self, completion: &str, sample: &Sample) -> Result<Scored, RewardError> {
        let mut parts = Vec::with_capacity(self.parts.len());
        let mut total = 0.0;
        for (reward, weight) in &self.parts {
            let s = reward.score(completion, sample)?;
            total += weight * s.value;
            parts.push((reward.name().to_string(), s));
        }
        Ok(Scored { parts, total })
    }

    /// Score a batch in parallel (rayon); results keep the input order.
    pub fn score_batch(&self, batch: &[(String, Sample)]) -> Vec<Result<Scored, RewardError>> {
        batch.par_iter().map(|(c, s)| self.score(c, s)).collect()
    }
}

/// Summary of one reward over a batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RewardStats {
    /// Reward name.
    pub name: String,
    /// Scored samples.
    pub count: usize,
    /// Mean score.
    pub mean: f64,
    /// Population standard deviation.
    pub std: f64,
    /// Smallest score.
    pub min: f64,
    /// Largest score.
    pub max: f64,
}

/// Per-reward statistics over the successfully scored items of a batch.
pub fn stats(results: &[Result<Scored, RewardError>]) -> Vec<RewardStats> {
    let mut out: Vec<(String, Vec<f64>)> = Vec::new();
    for r in results.iter().flatten() {
        for (i, (name, s)) in r.parts.iter().enumerate() {
            if out.len() <= i {
                out.push((name.clone(), Vec::new()));
            }
            out[i].1.push(s.value);
        }
    }
    out.into_iter()
        .map(|(name, v)| {
            let n = v.len() as f64;
            let mean = v.iter().sum::<f64>() / n;
            let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
            RewardStats {
                name,
                count: v.len(),
                mean,
                std: var.sqrt(),
                min: v.iter().copied().fold(f64::INFINITY, f64::min),
                max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            }
        })
        .collect()
}

/// Names [`reward_by_name`] accepts.
pub const REWARD_NAMES: &[&str] = &[
    "accuracy",
    "format",
    "tag_count",
    "reasoning_steps",
    "language",
    "cosine",
    "repetition",
    "overlong",
    "code",
    "code_unisolated",
];

/// The default set for `r1 rewards score`: R1's accuracy + format, equal weight.
pub const DEFAULT_REWARDS: &[&str] = &["accuracy", "format"];

/// A reward with its default settings, by name.
pub fn reward_by_name(name: &str) -> Result<Box<dyn Reward>, RewardError> {
    Ok(match name {
        "accuracy" => Box::new(math::MathAccuracy),
        "format" => Box::new(shaping::Format),
        "tag_count" => Box::new(shaping::TagCount),
        "reasoning_steps" => Box::new(shaping::ReasoningSteps),
        "language" => Box::new(shaping::LanguageConsistency),
        "cosine" => Box::new(shaping::CosineLength::default()),
        "repetition" => Box::new(shaping::RepetitionPenalty::default()),
        "overlong" => Box::new(shaping::OverlongPunishment::default()),
        "code" => Box::new(code::CodeReward::default()),
        // Opting in to running untrusted code without isolation where the machine allows none; the name
        // shows in the pipeline's config and every score's reason says UNISOLATED.
        "code_unisolated" => Box::new(code::CodeReward {
            config: code::SandboxConfig { allow_unisolated: true, ..code::SandboxConfig::default() },
        }),
        _ => {
            return Err(RewardError::UnknownReward { name: name.into(), known: REWARD_NAMES.join(", ") });
        }
    })
}
