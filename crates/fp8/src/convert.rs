//! E4M3 / E5M2 conversions (DeepSeek-V3 §3.3), all through the [`float8`] crate.
//!
//! `float8` casts with round-to-nearest-even and saturates finite overflow to the largest
//! finite code (±448 for E4M3, ±57344 for E5M2); NaN stays NaN. The tests in
//! `tests/convert.rs` pin the behaviours this crate relies on.

use float8::F8E4M3;

/// Saturating cast used by the quantisers: finite `x` rounds to nearest-even E4M3, magnitudes
/// beyond 448 clamp to ±448 (never NaN). Callers reject non-finite input beforehand.
#[inline]
pub fn e4m3_saturating(x: f32) -> F8E4M3 {
    F8E4M3::from_f32(x.clamp(-crate::E4M3_MAX, crate::E4M3_MAX))
}

/// The f32 value of every E4M3 code, indexed by its bits (a decode table for the GEMM).
pub fn e4m3_table() -> [f32; 256] {
    std::array::from_fn(|b| F8E4M3::from_bits(b as u8).to_f32())
}
