//! The crate's single error type.

use thiserror::Error;

/// Everything that can go wrong while configuring or running a reward.
///
/// Wrong answers are not errors: they score 0 with a reason. Errors are for missing or malformed sample
/// fields, unknown reward names and sandbox set-up failures.
#[derive(Debug, Error)]
pub enum RewardError {
    /// A sample lacks a field the reward needs.
    #[error("reward `{reward}`: sample has no field `{field}`")]
    MissingField { reward: String, field: String },
    /// A sample field has the wrong type or value.
    #[error("reward `{reward}`: field `{field}` is invalid: {detail}")]
    BadField { reward: String, field: String, detail: String },
    /// `--reward NAME` named no known reward.
    #[error("unknown reward `{name}` (known: {known})")]
    UnknownReward { name: String, known: String },
    /// `NAME=WEIGHT` with a weight that is not a finite number.
    #[error("reward spec `{spec}`: weight `{weight}` is not a finite number")]
    BadWeight { spec: String, weight: String },
    /// No isolation is possible on this machine and the caller did not opt in to unisolated runs.
    #[error(
        "sandbox: no isolation possible here ({reason}); refusing to run untrusted code (opt in with \
         `SandboxConfig::allow_unisolated`, reward `code_unisolated`)"
    )]
    NoIsolation { reason: String },
    /// The sandbox's isolation could not be set up (a mount, the new root, the status pipe).
    #[error("sandbox: isolation set-up failed: {detail}")]
    SandboxSetup { detail: String },
    /// The sandbox could not be prepared (temp dir, interpreter start).
    #[error("sandbox: {op} failed on `{path}`: {source}")]
    Sandbox {
        op: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
}
