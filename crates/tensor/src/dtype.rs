//! Element types: f32 and bf16 for models, f64 for gradient checks.

use half::bf16;

/// The element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F64,
    /// bfloat16; CPU ops compute in f32 and round the result.
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F64 => 8,
            DType::BF16 => 2,
        }
    }
}

/// A host element type that a tensor can hold.
pub trait Element: Copy + Send + Sync + 'static {
    const DTYPE: DType;
    fn to_f64(self) -> f64;
    fn from_f64(x: f64) -> Self;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}

impl Element for f64 {
    const DTYPE: DType = DType::F64;
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(x: f64) -> Self {
        x
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    fn from_f64(x: f64) -> Self {
        bf16::from_f64(x)
    }
}

/// The floating types CPU kernels compute in (f32, f64).
pub trait Float:
    Element
    + num_traits::Float
    + num_traits::FromPrimitive
    + std::iter::Sum
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + Default
    + std::fmt::Debug
{
    /// `x as Self`, for constants.
    fn c(x: f64) -> Self {
        <Self as Element>::from_f64(x)
    }

    /// `eˣ` as the CPU kernels use it: the vectorisable polynomial for f32 (≤ 3 ulp, see
    /// `ops::vmath`), libm's `exp` for f64 (the reference dtype).
    #[inline(always)]
    fn fexp(self) -> Self {
        self.exp()
    }
}
impl Float for f32 {
    #[inline(always)]
    fn fexp(self) -> Self {
        crate::ops::vmath::exp_f32(self)
    }
}
impl Float for f64 {}
