//! Behaviours of the E4M3 / E5M2 conversions this crate relies on (DeepSeek-V3 §3.3).

use fp8::convert::{e4m3_saturating, e4m3_table};
use fp8::{F8E4M3, F8E5M2};
use proptest::prelude::*;

/// Independent decoder of an E4M3 (fn) code: bias 7, 3 fraction bits, S.1111.111 is NaN, no inf.
fn decode_e4m3(b: u8) -> f64 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let (e, m) = (((b >> 3) & 0xF) as i32, (b & 0x7) as f64);
    if e == 0 { sign * m / 8.0 * 2f64.powi(-6) } else { sign * (1.0 + m / 8.0) * 2f64.powi(e - 7) }
}

/// Independent decoder of an E5M2 code: bias 15, 2 fraction bits, IEEE-style inf / NaN.
fn decode_e5m2(b: u8) -> f64 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let (e, m) = (((b >> 2) & 0x1F) as i32, (b & 0x3) as f64);
    match e {
        0 => sign * m / 4.0 * 2f64.powi(-14),
        31 if m == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        _ => sign * (1.0 + m / 4.0) * 2f64.powi(e - 15),
    }
}

#[test]
fn all_256_e4m3_codes_decode_exactly_and_round_trip() {
    let table = e4m3_table();
    for b in 0..=255u8 {
        let v = F8E4M3::from_bits(b).to_f32();
        assert_eq!(v.to_bits(), table[b as usize].to_bits(), "table entry {b:#04x}");
        if b & 0x7F == 0x7F {
            assert!(v.is_nan(), "code {b:#04x} must be NaN, got {v}");
            assert!(F8E4M3::from_f32(v).is_nan());
            continue;
        }
        let want = decode_e4m3(b);
        assert_eq!(v as f64, want, "code {b:#04x}");
        assert_eq!(v.is_sign_negative(), b & 0x80 != 0, "sign of code {b:#04x}");
        assert_eq!(F8E4M3::from_f32(v).to_bits(), b, "round trip of code {b:#04x} ({v})");
    }
    assert_eq!(F8E4M3::from_bits(0x7E).to_f32(), 448.0);
}

#[test]
fn all_256_e5m2_codes_decode_exactly_and_round_trip() {
    for b in 0..=255u8 {
        let v = F8E5M2::from_bits(b).to_f32();
        let want = decode_e5m2(b);
        if want.is_nan() {
            assert!(v.is_nan(), "code {b:#04x} must be NaN, got {v}");
            continue;
        }
        assert_eq!(v as f64, want, "code {b:#04x}");
        if want.is_finite() {
            assert_eq!(F8E5M2::from_f32(v).to_bits(), b, "round trip of code {b:#04x} ({v})");
        } else {
            // The cast saturates: +-inf maps to the largest finite code.
            assert_eq!(F8E5M2::from_f32(v).to_f32(), 57344.0f32.copysign(v), "inf code {b:#04x}");
        }
    }
}

#[test]
fn e4m3_saturates_to_448_never_nan() {
    for x in [448.0f32, 449.0, 463.9, 464.0, 465.0, 1e6, f32::MAX] {
        assert_eq!(e4m3_saturating(x).to_f32(), 448.0, "x = {x}");
        assert_eq!(e4m3_saturating(-x).to_f32(), -448.0, "x = {}", -x);
        assert_eq!(F8E4M3::from_f32(x).to_f32(), 448.0, "float8 cast of {x}");
    }
    assert_eq!(F8E4M3::from_f32(f32::INFINITY).to_f32(), 448.0);
    // Top binade spacing is 32: the tie 432 (416 | 448) goes to the even code 448 = 0x7E,
    // the tie 400 (384 | 416) to the even code 384 = 0x7C.
    assert_eq!(F8E4M3::from_f32(432.0).to_bits(), 0x7E);
    assert_eq!(F8E4M3::from_f32(400.0).to_bits(), 0x7C);
    assert_eq!(F8E4M3::from_f32(431.0).to_f32(), 416.0);
}

#[test]
fn e4m3_subnormals_and_ties() {
    let p = |e: i32| 2f32.powi(e);
    assert_eq!(F8E4M3::from_f32(p(-9)).to_bits(), 0x01, "smallest subnormal");
    assert_eq!(F8E4M3::from_f32(7.0 * p(-9)).to_bits(), 0x07, "largest subnormal");
    assert_eq!(F8E4M3::from_f32(p(-6)).to_bits(), 0x08, "smallest normal");
    assert_eq!(F8E4M3::from_f32(p(-10)).to_bits(), 0x00, "tie between 0 and 2^-9 goes to even 0");
    assert_eq!(F8E4M3::from_f32(p(-10) * 1.001).to_bits(), 0x01, "just above the tie");
    assert_eq!(F8E4M3::from_f32(3.0 * p(-10)).to_bits(), 0x02, "tie between codes 1 and 2 goes to 2");
    assert_eq!(F8E4M3::from_f32(-3.0 * p(-10)).to_bits(), 0x82, "negative tie");
    assert_eq!(F8E4M3::from_f32(1.0625).to_bits(), 0x38, "tie 1 | 1.125 goes to 1.0");
    assert_eq!(F8E4M3::from_f32(1.1875).to_bits(), 0x3A, "tie 1.125 | 1.25 goes to 1.25");
    assert_eq!(F8E4M3::from_f32(-1.1875).to_bits(), 0xBA);
    assert_eq!(F8E4M3::from_f32(p(-12)).to_f32(), 0.0, "underflow to zero");
}

proptest! {
    /// For any finite f32 the E4M3 cast returns a nearest finite code (by brute force over all
    /// 254 finite codes, in exact f64 arithmetic); on a tie it returns the code with an even
    /// mantissa; magnitudes above 448 give ±448.
    #[test]
    fn e4m3_cast_is_round_to_nearest_even(mag in -14i32..10, frac in -1.0f64..1.0) {
        let x = (frac * 2f64.powi(mag)) as f32;
        let got = F8E4M3::from_f32(x);
        let xd = x as f64;
        if xd.abs() > 448.0 {
            prop_assert_eq!(got.to_f32() as f64, 448f64.copysign(xd));
        } else {
            let best = (0..=255u8)
                .filter(|b| b & 0x7F != 0x7F)
                .map(|b| (xd - decode_e4m3(b)).abs())
                .fold(f64::INFINITY, f64::min);
            let err = (xd - got.to_f32() as f64).abs();
            prop_assert_eq!(err, best, "x = {}, got {}", x, got.to_f32());
            let ties = (0..=255u8)
                .filter(|b| b & 0x7F != 0x7F && (xd - decode_e4m3(*b)).abs() == best && decode_e4m3(*b) != 0.0)
                .count();
            if ties > 1 {
                prop_assert_eq!(got.to_bits() & 1, 0, "tie at x = {} must pick the even code", x);
            }
        }
    }
}

/// The bit-level saturating cast equals the `float8` cast (after the clamp) on every f32 of
/// magnitude up to 2⁹ (both signs, every bit pattern with a stride of 7, plus every exact E4M3
/// value and every midpoint between neighbouring codes ± one f32 ulp).
#[test]
fn e4m3_saturating_matches_float8_cast() {
    let reference = |x: f32| F8E4M3::from_f32(x.clamp(-448.0, 448.0)).to_bits();
    let check = |x: f32| assert_eq!(e4m3_saturating(x).to_bits(), reference(x), "x = {x:e} ({:#x})", x.to_bits());
    for bits in (0..=512f32.to_bits()).step_by(7) {
        check(f32::from_bits(bits));
        check(-f32::from_bits(bits));
    }
    let mut codes: Vec<f64> = (0..=0x7Eu8).map(decode_e4m3).collect();
    codes.push(decode_e4m3(0x7E) + 32.0);
    for w in codes.windows(2) {
        for v in [w[0], (w[0] + w[1]) / 2.0] {
            let x = v as f32;
            for y in [x, f32::from_bits(x.to_bits() + 1), f32::from_bits(x.to_bits().saturating_sub(1))] {
                check(y);
                check(-y);
            }
        }
    }
    for x in [0.0f32, -0.0, 1e-30, -1e-30, 448.0, 464.0, 465.0, 1e30, -1e30, f32::MIN_POSITIVE] {
        check(x);
    }
}
