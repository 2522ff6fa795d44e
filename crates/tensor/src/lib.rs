//! # tensor — r1's tensor engine
//!
//! A [`Tensor`] over a [`Device`] (CPU, CUDA), f32 / bf16 / f64, and the op set the DeepSeek-V3
//! model needs, each op with its backward beside it ([`ops`]). Model code calls these ops only,
//! never a backend, so one model runs on every device. [`gradcheck`] proves backward passes by
//! finite differences in f64 and is reused by every crate.
//!
//! ```
//! use tensor::{Device, DType, Tensor, ops};
//! let x = Tensor::randn(&[4, 8], 1.0, 0, DType::F32, &Device::Cpu)?;
//! let w = Tensor::randn(&[16, 8], 0.1, 1, DType::F32, &Device::Cpu)?;
//! let y = ops::matmul::linear(&x, &w)?; // x·Wᵀ → [4, 16]
//! let (dx, dw) = ops::matmul::linear_backward(&x, &w, &y)?;
//! assert_eq!(dx.shape(), x.shape());
//! assert_eq!(dw.shape(), w.shape());
//! # Ok::<(), tensor::TensorError>(())
//! ```

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dtype;
pub mod error;
pub mod gradcheck;
pub mod ops;
pub mod tensor;

pub use dtype::{DType, Element, Float};
pub use error::{Result, TensorError};
pub use tensor::{CpuStorage, Device, Shape, Tensor, numel};
