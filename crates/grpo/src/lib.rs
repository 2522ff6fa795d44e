//! GRPO, the reinforcement-learning engine of DeepSeek-R1 (R1 §2.2.1; DeepSeekMath §4): no critic,
//! advantages relative to a group of completions of the same prompt, rule rewards.
//!
//! - [`advantage`]: GRPO, batch-scaled, Dr. GRPO, RLOO and REINFORCE++ advantages.
//! - [`loss`]: clipped surrogate (clip-higher, dual-clip, GSPO's sequence ratio), KL estimators,
//!   aggregation with global normalisers, and `d loss / d logp`.
//! - [`batch`]: dynamic sampling, truncation masking, overlong punishment, truncated IS.
//! - [`trainer`]: the [`trainer::Policy`] trait and the GRPO loop with JSONL metrics.
//! - [`templates`]: the R1-Zero prompt template and chat templates, as data.
//!
//! No model crate is needed: a policy only has to produce and differentiate log-probabilities.

pub mod advantage;
pub mod batch;
mod error;
pub mod loss;
pub mod templates;
pub mod trainer;

pub use advantage::{AdvantageKind, StdKind, advantages};
pub use error::{GrpoError, Result};
pub use loss::{Aggregation, KlEstimator, KlPenalty, LossConfig, Normalizer, PolicyLoss, RatioLevel, policy_loss};
pub use trainer::{GrpoConfig, Policy, Trainer};
