//! # fp8 — fine-grained FP8 (DeepSeek-V3 §3.3)
//!
//! ```text
//! activation tile  1×128 (per token, per 128 channels)   s = max(amax, 1e-4)/448   q = x/s  (E4M3)
//! weight block   128×128 (edge blocks partial)           scale_inv [ceil(out/128), ceil(in/128)]
//! dequantised = fp8 · scale_inv            ue8m0 option: s = 2^ceil(log2 s)
//! GEMM: per 128-wide K block   acc_fp32 += dot(q_a, q_b) · s_a · s_b   (promotion, N_C = 128)
//! ```
//! Conversions go through the [`float8`] crate ([`F8E4M3`], [`F8E5M2`]); [`convert`] adds the
//! saturating quantiser cast and a 256-entry decode table. [`quant`] holds the block quantisers
//! and dequantisers, [`gemm`](mod@gemm) the CPU reference block-scaled GEMM with an emulated
//! limited-precision accumulator (the promotion experiment) plus a faster equivalent
//! ([`gemm_promoted`]), and [`linear`] the tensor-level pieces: checkpoint weight
//! dequantisation, an FP8 linear layer with a straight-through backward, and FP8 training of a
//! model's linear layers ([`LinearPrecision`], [`linear_with`]: Fprop, Dgrad and Wgrad on E4M3).
//! With the `cuda` feature, the `cuda` module runs the block-scaled GEMM on the GPU through
//! cuBLASLt's 1×128 / 128×128 scaling modes, and through the crate's own Hopper kernel
//! (`cuda::Sm90Gemm`: TMA, wgmma, fp32 promotion per 128-wide K block).
//!
//! ```
//! use fp8::{Accumulation, ScaleFormat, gemm, quantize_act, quantize_weight};
//! let (m, n, k) = (4, 200, 300);
//! let x: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
//! let w: Vec<f32> = (0..n * k).map(|i| ((i % 5) as f32 - 2.0) * 0.01).collect();
//! let qx = quantize_act("x", &x, m, k, ScaleFormat::Fp32)?; // 1×128 tiles
//! let qw = quantize_weight("w", &w, n, k, ScaleFormat::Fp32)?; // 128×128 blocks
//! assert_eq!(qw.scale_shape(), [2, 3]); // [ceil(200/128), ceil(300/128)]
//! let y = gemm(&qx, &qw, Accumulation::Fp32)?; // [m, n] = x · wᵀ
//! assert_eq!(y.len(), m * n);
//! # Ok::<(), fp8::Fp8Error>(())
//! ```

pub mod convert;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod gemm;
pub mod linear;
pub mod quant;

pub use float8::{F8E4M3, F8E5M2};
pub use gemm::{Accumulation, PromotionReport, gemm, gemm_promoted, promotion_experiment};
pub use linear::{
    Fp8LinearSaved, LinearPrecision, LinearSaved, dequantize_weight, fp8_linear, fp8_linear_backward, fp8_linear_bwd,
    fp8_linear_fwd, linear_with, linear_with_backward,
};
pub use quant::{BlockQuant, ScaleFormat, quantize_act, quantize_blocks, quantize_weight};

/// Largest finite E4M3 magnitude (DeepSeek-V3 §3.3 uses E4M3 for every GEMM operand).
pub const E4M3_MAX: f32 = 448.0;
/// Floor on a tile's max-abs before the scale is taken (keeps all-zero tiles finite).
pub const AMAX_FLOOR: f32 = 1e-4;
/// Tile / block edge (1×128 activations, 128×128 weights, 128-wide K blocks).
pub const BLOCK: usize = 128;

/// Errors of the fp8 crate; every message names the field and the offending value.
#[derive(Debug, thiserror::Error)]
pub enum Fp8Error {
    /// A buffer does not hold the number of elements its shape asks for.
    #[error("{field}: {got} elements for shape {shape:?} ({expected} expected)")]
    Len { field: String, shape: Vec<usize>, expected: usize, got: usize },
    /// A tensor has the wrong shape.
    #[error("{field}: shape {got:?}, expected {expected:?}")]
    Shape { field: String, expected: Vec<usize>, got: Vec<usize> },
    /// A NaN or infinity where a finite value is needed.
    #[error("{field}: non-finite value {value} at index {index}")]
    NonFinite { field: String, index: usize, value: f32 },
    /// A bad argument value.
    #[error("{field}: invalid value {value} ({detail})")]
    Arg { field: String, value: String, detail: String },
    /// A GPU (CUDA driver / cuBLASLt) failure, naming the operation and the shapes.
    #[error("{op} ({shape}): {detail}")]
    Gpu { op: String, shape: String, detail: String },
    /// An error from the tensor engine.
    #[error(transparent)]
    Tensor(#[from] tensor::TensorError),
}

/// Shorthand result type.
pub type Result<T> = std::result::Result<T, Fp8Error>;
