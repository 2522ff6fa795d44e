//! # optim — what every trainer in r1 steps with
//!
//! [`Params`] and [`Grads`]: ordered, named tensors (names are the HF checkpoint names, so
//! loading, saving and optimizer state are a walk over one list). [`AdamW`] (decoupled weight
//! decay, bias correction; a fused kernel on CUDA), [`clip_grad_norm`], [`Schedule`] (warmup +
//! cosine), and atomic save/load of optimizer state.
//!
//! ```
//! use optim::{AdamW, AdamWConfig, Grads, Params};
//! use tensor::{DType, Device, Tensor};
//! let mut params = Params::default();
//! params.insert("w", Tensor::full(&[2], 1.0, DType::F32, &Device::Cpu)?)?;
//! let mut grads = Grads::default();
//! grads.accumulate("w", &Tensor::full(&[2], 0.5, DType::F32, &Device::Cpu)?)?;
//! let mut opt = AdamW::new(AdamWConfig::default());
//! opt.step(&mut params, &grads, 1e-2)?;
//! assert!(params.get("w").unwrap().to_vec::<f32>()?[0] < 1.0);
//! # Ok::<(), optim::OptimError>(())
//! ```

mod adamw;
mod io;
mod params;
mod schedule;

pub use adamw::{AdamW, AdamWConfig};
pub use io::atomic_write;
pub use params::{Grads, Params, clip_grad_norm};
pub use schedule::Schedule;

/// Errors from parameter containers, the optimizer and state files.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error(transparent)]
    Tensor(#[from] tensor::TensorError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Format { path: String, detail: String },
    #[error("parameter {name:?}: {detail}")]
    Param { name: String, detail: String },
}

/// Shorthand result type.
pub type Result<T> = std::result::Result<T, OptimError>;
