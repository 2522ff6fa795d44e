//! Branch-free elementwise math that the compiler vectorises, and a runtime dispatch that compiles
//! the hot loops for AVX2 + FMA when the CPU has them (through `pulp`, the SIMD layer the `gemm`
//! crate already uses), so a portable binary still runs 8 lanes wide.

/// `f(...)` compiled for the widest instruction set this CPU supports (detected once, cached).
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// `eˣ` in f32 without branches or table lookups, so loops over it vectorise: Cody–Waite
/// reduction `x = n·ln2 + r` (|r| ≤ ln2/2, `n` rounded to nearest by the 1.5·2²³ shift), a
/// degree-7 Taylor polynomial for `eʳ` (truncation ≤ 7e-9 relative) and `2ⁿ` built in the
/// exponent bits. Relative error ≤ 3 ulp for x ∈ [−87.3, 88]; `0` below −87.3 (so a masked
/// `−∞` gives an exact zero), `+∞` above 88 (true overflow is at 88.72), NaN stays NaN.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LO: f32 = -87.3;
    const HI: f32 = 88.0;
    const LN2_HI: f32 = 0.693_145_75; // 0x3f31_7200: n·LN2_HI is exact for |n| < 2⁹
    const LN2_LO: f32 = 1.428_606_8e-6; // ln 2 − LN2_HI
    const SHIFT: f32 = 12_582_912.0; // 1.5·2²³
    let xc = x.clamp(LO, HI);
    let n = (xc * std::f32::consts::LOG2_E + SHIFT) - SHIFT;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let y = p * f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        y
    }
}

/// Eight lanes folded pairwise: `((l0 + l4) + (l1 + l5)) + ((l2 + l6) + (l3 + l7))`.
#[inline(always)]
fn fold8<T: crate::Float>(l: [T; 8]) -> T {
    ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]))
}

/// `Σ a[i]·b[i]` in eight interleaved partial sums (element `i` into lane `i mod 8`, so the loop
/// vectorises), then [`fold8`].
#[inline(always)]
pub(crate) fn dot<T: crate::Float>(a: &[T], b: &[T]) -> T {
    debug_assert_eq!(a.len(), b.len(), "dot: lengths differ");
    let mut acc = [T::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    for (l, (&x, &y)) in ra.iter().zip(rb).enumerate() {
        acc[l] += x * y;
    }
    fold8(acc)
}

/// `Σ a[i]` in the lane order of [`dot`].
#[inline(always)]
pub(crate) fn sum<T: crate::Float>(a: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let c = a.chunks_exact(8);
    let r = c.remainder();
    for x in c {
        for l in 0..8 {
            acc[l] += x[l];
        }
    }
    for (l, &x) in r.iter().enumerate() {
        acc[l] += x;
    }
    fold8(acc)
}

/// The largest element (−∞ for an empty slice; NaN is ignored as by `f32::max`), eight lanes
/// at a time.
#[inline(always)]
pub(crate) fn max<T: crate::Float>(a: &[T]) -> T {
    let mut acc = [T::neg_infinity(); 8];
    let c = a.chunks_exact(8);
    let r = c.remainder();
    for x in c {
        for l in 0..8 {
            acc[l] = acc[l].max(x[l]);
        }
    }
    for (l, &x) in r.iter().enumerate() {
        acc[l] = acc[l].max(x);
    }
    acc.iter().fold(T::neg_infinity(), |m, &x| m.max(x))
}

#[cfg(test)]
mod tests {
    use super::{dot, exp_f32, max, sum};

    /// The lane-split reductions at every length 0..40 (ragged tails included): sums and dot
    /// products within f32 rounding of the f64 results (|Δ| ≤ 1e-6 · Σ|terms|), the maximum
    /// exact, −∞ for an empty slice.
    #[test]
    fn lane_reductions_match_f64() {
        for n in 0..40usize {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.37).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 13 % 7) as f32 - 3.0) * 1.9).collect();
            let (sa, sab) = (a.iter().map(|&x| x as f64), a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64));
            let (want_s, want_d) = (sa.clone().sum::<f64>(), sab.clone().sum::<f64>());
            let (mag_s, mag_d) = (sa.map(f64::abs).sum::<f64>(), sab.map(f64::abs).sum::<f64>());
            assert!((sum(&a) as f64 - want_s).abs() <= 1e-6 * mag_s.max(1e-30), "sum, n = {n}");
            assert!((dot(&a, &b) as f64 - want_d).abs() <= 1e-6 * mag_d.max(1e-30), "dot, n = {n}");
            assert_eq!(max(&a), a.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)), "max, n = {n}");
        }
    }

    /// Property: against f64 `exp` rounded to f32, the result is at most 3 representable f32
    /// values away (distance of the bit patterns) over the range, with exact 0 / ∞ / NaN at the
    /// edges.
    #[test]
    fn exp_f32_within_3_ulp() {
        let mut worst = 0i64;
        let mut x = -87.3f32;
        while x <= 88.0 {
            for dx in [0.0f32, 1.3e-3, 7.1e-5] {
                let v = x + dx;
                if v > 88.0 {
                    continue;
                }
                let want = (v as f64).exp() as f32;
                worst = worst.max((i64::from(exp_f32(v).to_bits()) - i64::from(want.to_bits())).abs());
            }
            x += 0.0137;
        }
        assert!(worst <= 3, "worst error {worst} ulp");
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
    }
}
