//! E4M3 / E5M2 conversions (DeepSeek-V3 §3.3), all through the [`float8`] crate.
//!
//! `float8` casts with round-to-nearest-even and saturates finite overflow to the largest
//! finite code (±448 for E4M3, ±57344 for E5M2); NaN stays NaN. The tests in
//! `tests/convert.rs` pin the behaviours this crate relies on.

use float8::F8E4M3;

/// Saturating cast used by the quantisers: finite `x` rounds to nearest-even E4M3, magnitudes
/// beyond 448 clamp to ±448 (never NaN). Callers reject non-finite input beforehand.
///
/// The same code as `F8E4M3::from_f32(x.clamp(-448, 448))` (pinned against it on every f32 in
/// tests), computed on the bits: normals round to 3 fraction bits with the carry-propagating
/// round-to-nearest-even add; magnitudes below 2⁻⁶ round to a multiple of 2⁻⁹, whose count
/// 0..=8 is the code itself (8 = 2⁻⁶, the smallest normal).
#[inline]
pub fn e4m3_saturating(x: f32) -> F8E4M3 {
    let x = x.clamp(-crate::E4M3_MAX, crate::E4M3_MAX);
    if x.is_nan() {
        return F8E4M3::from_f32(x);
    }
    let bits = x.to_bits();
    let sign = ((bits >> 24) & 0x80) as u8;
    let mag = bits & 0x7FFF_FFFF;
    let code = if f32::from_bits(mag) < 0.015625 {
        (f32::from_bits(mag) * 512.0).round_ties_even() as u8
    } else {
        // Round to nearest even at bit 20 (3 fraction bits kept); a carry bumps the exponent.
        let r = (mag + 0x7_FFFF + ((mag >> 20) & 1)) & !0xF_FFFF;
        ((((r >> 23) - 120) << 3) | ((r >> 20) & 7)) as u8
    };
    F8E4M3::from_bits(sign | code)
}

/// The f32 value of every E4M3 code, indexed by its bits (a decode table for the GEMM).
pub fn e4m3_table() -> [f32; 256] {
    std::array::from_fn(|b| F8E4M3::from_bits(b as u8).to_f32())
}
