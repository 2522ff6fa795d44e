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
//!
//! ```
//! use grpo::loss::LossInputs;
//! use grpo::{AdvantageKind, LossConfig, Normalizer, advantages, policy_loss};
//!
//! let adv = advantages(&[1.0, 0.0, 0.0, 1.0], 4, &AdvantageKind::TRL)?; // one group, G = 4
//! let (logp, mask) = (vec![-0.5; 4], vec![true; 4]); // 4 sequences × 1 token
//! let x = LossInputs {
//!     seq_len: 1,
//!     logp: &logp,
//!     old_logp: &logp,
//!     ref_logp: None,
//!     mask: &mask,
//!     advantages: &adv,
//!     is_weights: None,
//! };
//! let out = policy_loss(&x, &LossConfig::default(), &Normalizer::of(&mask, 1)?)?;
//! // ρ = 1: the loss is −mean(A) = 0 while its gradient −A/4 is not.
//! assert!(out.loss.abs() < 1e-12);
//! assert!((out.grad[0] + adv[0] / 4.0).abs() < 1e-12);
//! # Ok::<(), grpo::GrpoError>(())
//! ```

pub mod advantage;
pub mod batch;
mod error;
pub mod loss;
pub mod templates;
pub mod trainer;

pub use advantage::{AdvantageKind, StdKind, advantages};
pub use error::{GrpoError, Result};
pub use loss::{Aggregation, KlEstimator, KlPenalty, LossConfig, Normalizer, PolicyLoss, RatioLevel, policy_loss};
pub use trainer::{GrpoConfig, OnNonFinite, Policy, Trainer};
