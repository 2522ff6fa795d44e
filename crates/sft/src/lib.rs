//! # sft — causal-LM training of any [`model::CausalLm`] (DeepSeek-V3 by default)
//!
//! One trainer for pretraining and supervised fine-tuning: both minimise next-token
//! cross-entropy over packed rows; SFT only masks the prompt tokens out of the targets.
//! A step is forward → LM loss (+ the architecture's own losses: for V3 λ·MTP, §2.2, and the
//! sequence-wise balance loss, eq. 17) → backward into the parameters' gradient slots → clip →
//! non-finite guard → AdamW in place → the auxiliary-loss-free bias update (§2.1.2).
//! Checkpoints are directories written atomically (temp dir + rename) holding the model in the
//! Hugging Face layout, the optimizer state and the trainer state, so a killed run resumes.

pub mod checkpoint;
pub mod init;
pub mod trainer;

pub use checkpoint::{latest_checkpoint, save_checkpoint};
pub use init::init_scaled;
pub use trainer::{LmBatch, LmTrainer, OnNonFinite, StepStats, TrainConfig};

/// Errors of the sft crate.
#[derive(Debug, thiserror::Error)]
pub enum SftError {
    #[error(transparent)]
    Model(#[from] model::ModelError),
    #[error(transparent)]
    Tensor(#[from] tensor::TensorError),
    #[error(transparent)]
    Optim(#[from] optim::OptimError),
    #[error(transparent)]
    Moe(#[from] moe_router::MoeError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    State { path: String, detail: String },
    #[error("batch: field {field}: {detail}")]
    Batch { field: &'static str, detail: String },
    #[error("train config: field {field}: {detail}")]
    Config { field: &'static str, detail: String },
    #[error("step {step}: {what} is {value} (non-finite); the run stops (on_nonfinite = \"stop\")")]
    NonFinite { step: usize, what: &'static str, value: f64 },
    #[error("{path}: parameter {name:?} holds a non-finite value; no checkpoint is written")]
    NonFiniteParam { path: String, name: String },
}

/// Shorthand result type.
pub type Result<T> = std::result::Result<T, SftError>;

pub(crate) fn io(path: &std::path::Path) -> impl Fn(std::io::Error) -> SftError + '_ {
    move |source| SftError::Io { path: path.display().to_string(), source }
}
