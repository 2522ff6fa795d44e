//! The crate's one error type.

/// Everything that can go wrong in `grpo`; each message names the field and the offending value.
#[derive(Debug, thiserror::Error)]
pub enum GrpoError {
    /// A configuration value or argument outside its domain.
    #[error("{field} = {value}: {reason}")]
    Invalid { field: &'static str, value: String, reason: &'static str },
    /// Two inputs whose lengths must agree do not.
    #[error("{field} has length {got}, expected {expected}")]
    Length { field: &'static str, got: usize, expected: usize },
    /// The policy implementation reported a failure.
    #[error("policy: {0}")]
    Policy(String),
    /// A non-finite loss, `d loss / d logp` or gradient norm with `on_nonfinite = "stop"`.
    #[error("step {step}: {what} is {value} (non-finite); the run stops (on_nonfinite = \"stop\")")]
    NonFinite { step: usize, what: &'static str, value: f64 },
    /// Writing the metrics JSONL failed.
    #[error("metrics: {0}")]
    Io(#[from] std::io::Error),
    /// Serialising metrics or parsing a template file failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// `Result` with [`GrpoError`].
pub type Result<T> = std::result::Result<T, GrpoError>;

pub(crate) fn invalid<T>(field: &'static str, value: impl std::fmt::Display, reason: &'static str) -> Result<T> {
    Err(GrpoError::Invalid { field, value: value.to_string(), reason })
}

pub(crate) fn check_len(field: &'static str, got: usize, expected: usize) -> Result<()> {
    if got == expected { Ok(()) } else { Err(GrpoError::Length { field, got, expected }) }
}
