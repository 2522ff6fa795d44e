//! Double-double arithmetic (≈ 31 significant digits): closed forms built from + − × ÷, integer powers and
//! rational roots of rationals, π and e are evaluated in it, so near-coincidences and cancellations that f64
//! gets wrong (`√(10²⁰+1) − 10¹⁰` is not 0) are decided correctly.

use num_rational::BigRational;
use num_traits::{ToPrimitive, Zero};

/// hi + lo with |lo| ≤ ulp(hi)/2.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DD {
    pub hi: f64,
    pub lo: f64,
}

fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    let bb = s - a;
    (s, (a - (s - bb)) + (b - bb))
}

fn quick_two_sum(a: f64, b: f64) -> (f64, f64) {
    let s = a + b;
    (s, b - (s - a))
}

fn two_prod(a: f64, b: f64) -> (f64, f64) {
    let p = a * b;
    (p, a.mul_add(b, -p))
}

impl DD {
    /// π to double-double precision.
    pub const PI: DD = DD { hi: std::f64::consts::PI, lo: 1.224_646_799_147_353_2e-16 };
    /// e to double-double precision.
    pub const E: DD = DD { hi: std::f64::consts::E, lo: 1.445_646_891_729_250_2e-16 };
    /// Not a number.
    pub const NAN: DD = DD { hi: f64::NAN, lo: 0.0 };

    /// An exact f64.
    pub fn from_f64(x: f64) -> DD {
        DD { hi: x, lo: 0.0 }
    }

    /// The nearest double-double to a rational; NaN when it overflows or underflows f64's range.
    pub fn from_rational(r: &BigRational) -> DD {
        // Fast path: numerator and denominator exact in f64.
        const EXACT: i64 = 1 << 53;
        if let (Some(n), Some(d)) = (r.numer().to_i64(), r.denom().to_i64())
            && n.abs() <= EXACT
            && d <= EXACT
        {
            let n = DD::from_f64(n as f64);
            return if d == 1 { n } else { n.div(DD::from_f64(d as f64)) };
        }
        let Some(hi) = r.to_f64() else { return DD::NAN };
        if !hi.is_finite() || (hi == 0.0 && !r.is_zero()) {
            return DD::NAN;
        }
        let lo = BigRational::from_float(hi).map_or(0.0, |h| (r - h).to_f64().unwrap_or(0.0));
        let (hi, lo) = quick_two_sum(hi, lo);
        DD { hi, lo }
    }

    /// The value as f64.
    pub fn f(self) -> f64 {
        if self.hi.is_finite() { self.hi + self.lo } else { self.hi }
    }

    fn norm(hi: f64, lo: f64) -> DD {
        if !hi.is_finite() {
            return DD { hi, lo: 0.0 };
        }
        let (hi, lo) = quick_two_sum(hi, lo);
        DD { hi, lo }
    }

    /// −x.
    pub fn neg(self) -> DD {
        DD { hi: -self.hi, lo: -self.lo }
    }

    /// |x|.
    pub fn abs(self) -> DD {
        if self.hi < 0.0 { self.neg() } else { self }
    }

    /// x + y.
    pub fn add(self, y: DD) -> DD {
        let (s, e) = two_sum(self.hi, y.hi);
        let (t, f) = two_sum(self.lo, y.lo);
        let (s, e) = quick_two_sum(s, e + t);
        DD::norm(s, e + f)
    }

    /// x − y.
    pub fn sub(self, y: DD) -> DD {
        self.add(y.neg())
    }

    /// x · y.
    pub fn mul(self, y: DD) -> DD {
        let (p, e) = two_prod(self.hi, y.hi);
        DD::norm(p, e + (self.hi * y.lo + self.lo * y.hi))
    }

    /// x / y.
    pub fn div(self, y: DD) -> DD {
        let q1 = self.hi / y.hi;
        if !q1.is_finite() {
            return DD::from_f64(q1);
        }
        let r = self.sub(y.mul(DD::from_f64(q1)));
        let q2 = r.hi / y.hi;
        let r = r.sub(y.mul(DD::from_f64(q2)));
        let q3 = r.hi / y.hi;
        let (q1, q2) = quick_two_sum(q1, q2);
        DD { hi: q1, lo: q2 }.add(DD::from_f64(q3))
    }

    /// √x (NaN for x < 0).
    pub fn sqrt(self) -> DD {
        if self.hi <= 0.0 {
            return if self.hi == 0.0 { DD::from_f64(0.0) } else { DD::NAN };
        }
        let x = 1.0 / self.hi.sqrt();
        let ax = DD::from_f64(self.hi * x);
        let diff = self.sub(ax.mul(ax));
        ax.add(DD::from_f64(diff.hi * x * 0.5))
    }

    /// xᵏ by binary exponentiation.
    pub fn powi(self, k: i64) -> DD {
        let mut base = self;
        let mut e = k.unsigned_abs();
        let mut acc = DD::from_f64(1.0);
        while e > 0 {
            if e & 1 == 1 {
                acc = acc.mul(base);
            }
            base = base.mul(base);
            e >>= 1;
        }
        if k < 0 { DD::from_f64(1.0).div(acc) } else { acc }
    }

    /// The real n-th root (negative x only for odd n), by Newton steps from the f64 root.
    pub fn root(self, n: u32) -> DD {
        if n == 0 {
            return DD::NAN;
        }
        if n == 2 {
            return self.sqrt();
        }
        if self.hi < 0.0 {
            return if n % 2 == 1 { self.neg().root(n).neg() } else { DD::NAN };
        }
        if self.hi == 0.0 {
            return DD::from_f64(0.0);
        }
        let mut x = DD::from_f64(self.hi.powf(1.0 / n as f64));
        for _ in 0..3 {
            let xn1 = x.powi(n as i64 - 1);
            let fx = xn1.mul(x).sub(self);
            x = x.sub(fx.div(xn1.mul(DD::from_f64(n as f64))));
        }
        x
    }

    /// |x − y| ≤ rel·max(|x|, |y|), or both below `abs`.
    pub fn close(self, y: DD, rel: f64, abs: f64) -> bool {
        let d = self.sub(y).abs().hi;
        d <= rel * self.hi.abs().max(y.hi.abs()) || d <= abs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqrt2_squared_is_two_to_31_digits() {
        let s = DD::from_f64(2.0).sqrt();
        let back = s.mul(s).sub(DD::from_f64(2.0)).abs().hi;
        assert!(back < 1e-30, "{back}");
        // f64 alone leaves an error of ~4e-16.
        assert!((std::f64::consts::SQRT_2 * std::f64::consts::SQRT_2 - 2.0).abs() > 1e-16);
    }

    #[test]
    fn cancellation_f64_misses() {
        // √(10²⁰ + 1) − 10¹⁰ = 1/(√(10²⁰+1) + 10¹⁰) ≈ 5·10⁻¹¹; f64 says 0.
        let big = DD::from_f64(1e20).add(DD::from_f64(1.0)).sqrt().sub(DD::from_f64(1e10));
        assert!((big.hi - 5e-11).abs() < 1e-20, "{big:?}");
        assert_eq!((1e20f64 + 1.0).sqrt() - 1e10, 0.0);
    }

    #[test]
    fn roots_and_division() {
        let c = DD::from_f64(27.0).root(3);
        assert!(c.close(DD::from_f64(3.0), 1e-30, 0.0), "{c:?}");
        let m = DD::from_f64(-8.0).root(3);
        assert!(m.close(DD::from_f64(-2.0), 1e-30, 0.0), "{m:?}");
        let third = DD::from_f64(1.0).div(DD::from_f64(3.0));
        assert!(third.mul(DD::from_f64(3.0)).close(DD::from_f64(1.0), 1e-31, 0.0));
        assert!(DD::from_f64(-1.0).sqrt().hi.is_nan());
    }
}
