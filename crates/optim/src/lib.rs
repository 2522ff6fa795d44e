//! # optim — what every trainer in r1 steps with
//!
//! Trainers step [`tensor::Param`] handles — each layer owns its parameters and their gradient
//! slots — in a fixed order: [`AdamW`] (decoupled weight decay, bias correction; a fused
//! multi-tensor kernel on CUDA) replaces each value in place, [`clip_grad_norm`] scales the
//! slots, [`Schedule`] gives the learning rate (warmup + cosine). Names appear only at I/O:
//! [`Params`] is the name → tensor map of checkpoint files, and the optimizer state is saved
//! under the parameter names given to [`AdamW::new`].
//!
//! ```
//! use optim::{AdamW, AdamWConfig};
//! use tensor::{DType, Device, Param, Tensor};
//! let mut w = Param::new(Tensor::full(&[2], 1.0, DType::F32, &Device::Cpu)?);
//! w.accumulate_grad(&Tensor::full(&[2], 0.5, DType::F32, &Device::Cpu)?)?;
//! let mut opt = AdamW::new(AdamWConfig::default(), &["w"]);
//! opt.step(&mut [&mut w], 1e-2)?;
//! assert!(w.value.to_vec::<f32>()?[0] < 1.0);
//! # Ok::<(), optim::OptimError>(())
//! ```

mod adamw;
mod io;
mod params;
mod schedule;

pub use adamw::{AdamW, AdamWConfig};
pub use io::atomic_write;
pub use params::{Named, Params, clip_grad_norm, grad_norm, zero_grad};
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
