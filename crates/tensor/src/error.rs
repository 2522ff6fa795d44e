//! The engine's error type: every message names the op and the offending shapes or values.

use crate::{DType, Shape};

/// Errors raised by tensor construction and ops.
#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    /// Operand shapes do not fit the op.
    #[error("{op}: shape mismatch: {detail} (shapes {shapes:?})")]
    Shape { op: &'static str, detail: String, shapes: Vec<Shape> },
    /// An operand has a dtype the op does not accept.
    #[error("{op}: dtype {got:?} not supported ({detail})")]
    DType { op: &'static str, got: DType, detail: String },
    /// Operands live on different devices.
    #[error("{op}: operands on different devices ({a} vs {b})")]
    Device { op: &'static str, a: String, b: String },
    /// An index is outside the indexed dimension.
    #[error("{op}: index {index} out of range for dimension of size {size}")]
    Index { op: &'static str, index: usize, size: usize },
    /// A bad argument value (not a shape problem).
    #[error("{op}: invalid argument: {detail}")]
    Arg { op: &'static str, detail: String },
    /// A CUDA driver, NVRTC or cuBLAS failure.
    #[error("cuda: {0}")]
    Cuda(String),
}

/// Shorthand result type.
pub type Result<T> = std::result::Result<T, TensorError>;

/// Build a [`TensorError::Shape`].
pub(crate) fn shape_err(op: &'static str, detail: impl Into<String>, shapes: &[&Shape]) -> TensorError {
    TensorError::Shape { op, detail: detail.into(), shapes: shapes.iter().map(|s| (*s).clone()).collect() }
}
