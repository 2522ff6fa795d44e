//! Evaluation: exact rationals where possible, double-double otherwise (f64 for transcendental functions),
//! with bounded work.

use super::ast::{Const, Node};
use super::dd::DD;
use super::lex::Func;
use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{One, Signed, ToPrimitive, Zero};

/// A value: exact when every operation so far was exact; otherwise a double-double that is accurate to ~31
/// digits when `hp` (only arithmetic, rational powers, π, e), else only to f64 precision.
#[derive(Debug, Clone)]
pub enum Val {
    Exact(BigRational),
    Float(DD, bool),
}

impl Val {
    /// As f64 (exact values rounded; out-of-range exact values are NaN, not ±∞ or 0).
    pub fn f(&self) -> f64 {
        self.dd().f()
    }

    /// As a double-double.
    pub fn dd(&self) -> DD {
        match self {
            Val::Exact(r) => DD::from_rational(r),
            Val::Float(x, _) => *x,
        }
    }

    /// Whether the value is accurate to double-double precision.
    pub fn hp(&self) -> bool {
        match self {
            Val::Exact(_) => true,
            Val::Float(_, hp) => *hp,
        }
    }
}

fn lowp(x: f64) -> Val {
    Val::Float(DD::from_f64(x), false)
}

/// Largest integer whose factorial is computed exactly.
const MAX_FACT: u32 = 5000;
/// Largest result size (bits) of an exact power.
const MAX_POW_BITS: u64 = 1 << 17;
/// Node visits allowed per evaluation.
const MAX_STEPS: u32 = 20_000;

/// Evaluator with a variable assignment (empty for closed forms) and a work budget.
pub struct Eval<'a> {
    pub vars: &'a [(String, f64)],
    steps: u32,
    exact: bool,
}

fn bits(r: &BigRational) -> u64 {
    r.numer().bits() + r.denom().bits()
}

fn as_small_int(r: &BigRational) -> Option<i64> {
    if r.is_integer() { r.to_integer().to_i64() } else { None }
}

/// Exact q-th root of a non-negative integer, if it is a perfect power.
fn int_root(x: &BigInt, q: u32) -> Option<BigInt> {
    if x.is_negative() {
        return if q % 2 == 1 { int_root(&-x, q).map(|r| -r) } else { None };
    }
    let r = x.nth_root(q);
    (num_traits::pow(r.clone(), q as usize) == *x).then_some(r)
}

fn rat_root(x: &BigRational, q: u32) -> Option<BigRational> {
    Some(BigRational::new(int_root(x.numer(), q)?, int_root(x.denom(), q)?))
}

fn exact_pow(b: &BigRational, e: i64) -> Option<BigRational> {
    if b.is_zero() && e < 0 {
        return None;
    }
    let abs_bits = bits(b).max(1);
    if e.unsigned_abs().saturating_mul(abs_bits) > MAX_POW_BITS {
        return None;
    }
    let p = num_traits::pow(b.clone(), e.unsigned_abs() as usize);
    Some(if e < 0 { p.recip() } else { p })
}

/// Lanczos approximation of Γ(x).
fn gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return std::f64::consts::PI / ((std::f64::consts::PI * x).sin() * gamma(1.0 - x));
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    (2.0 * std::f64::consts::PI).sqrt() * t.powf(x + 0.5) * (-t).exp() * a
}

impl<'a> Eval<'a> {
    /// An evaluator over the given variable values.
    pub fn new(vars: &'a [(String, f64)]) -> Self {
        Self { vars, steps: 0, exact: true }
    }

    /// An evaluator that skips exact rational arithmetic (for random-point checks, where f64-level
    /// agreement is what is tested and big-integer allocations would dominate).
    pub fn approx(vars: &'a [(String, f64)]) -> Self {
        Self { vars, steps: 0, exact: false }
    }

    /// Evaluate a scalar node; `None` when it is not a number (a set, an unbound variable, over budget).
    pub fn eval(&mut self, n: &Node) -> Option<Val> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return None;
        }
        use Val::{Exact, Float};
        Some(match n {
            Node::Num(r) if self.exact => Exact(r.clone()),
            Node::Num(r) => Float(DD::from_rational(r), true),
            Node::Const(Const::Pi) => Float(DD::PI, true),
            Node::Const(Const::E) => Float(DD::E, true),
            Node::Const(Const::Inf) => Float(DD::from_f64(f64::INFINITY), true),
            Node::Var(v) => Float(DD::from_f64(self.vars.iter().find(|(k, _)| k == v)?.1), true),
            Node::Neg(a) => match self.eval(a)? {
                Exact(r) => Exact(-r),
                Float(x, hp) => Float(x.neg(), hp),
            },
            Node::Add(xs) | Node::Mul(xs) => {
                let add = matches!(n, Node::Add(_));
                let mut acc = if add { BigRational::zero() } else { BigRational::one() };
                let mut fl = DD::from_f64(if add { 0.0 } else { 1.0 });
                let mut any_float = false;
                let mut hp = true;
                for x in xs {
                    match self.eval(x)? {
                        Exact(r) if add => acc += r,
                        Exact(r) => {
                            if bits(&acc) + bits(&r) > MAX_POW_BITS {
                                return None;
                            }
                            acc *= r
                        }
                        Float(f, h) => {
                            fl = if add { fl.add(f) } else { fl.mul(f) };
                            any_float = true;
                            hp &= h;
                        }
                    }
                }
                if !any_float {
                    Exact(acc)
                } else {
                    let e = Exact(acc).dd();
                    Float(if add { e.add(fl) } else { e.mul(fl) }, hp)
                }
            }
            Node::Div(a, b) => match (self.eval(a)?, self.eval(b)?) {
                (Exact(x), Exact(y)) if !y.is_zero() => Exact(x / y),
                (Exact(_), Exact(_)) => Float(DD::NAN, true),
                (x, y) => Float(x.dd().div(y.dd()), x.hp() && y.hp()),
            },
            Node::Percent(a) => match self.eval(a)? {
                Exact(r) => Exact(r / BigInt::from(100)),
                Float(x, hp) => Float(x.div(DD::from_f64(100.0)), hp),
            },
            Node::Abs(a) => match self.eval(a)? {
                Exact(r) => Exact(r.abs()),
                Float(x, hp) => Float(x.abs(), hp),
            },
            Node::Pow(b, e) => {
                let (bv, ev) = (self.eval(b)?, self.eval(e)?);
                self.pow(bv, ev)
            }
            Node::Root(k, x) => {
                let (kv, xv) = (self.eval(k)?, self.eval(x)?);
                match kv {
                    Exact(k) if !k.is_zero() => self.pow(xv, Exact(k.recip())),
                    k => lowp(xv.f().powf(1.0 / k.f())),
                }
            }
            Node::Fact(a) => match self.eval(a)? {
                Exact(r) => match as_small_int(&r) {
                    Some(k) if (0..=MAX_FACT as i64).contains(&k) => {
                        let mut p = BigInt::one();
                        for i in 2..=k {
                            p *= i;
                        }
                        Exact(BigRational::from_integer(p))
                    }
                    Some(k) if k < 0 => Float(DD::NAN, true),
                    _ => lowp(gamma(r.to_f64()? + 1.0)),
                },
                x => lowp(gamma(x.f() + 1.0)),
            },
            Node::Binom(a, b) => match (self.eval(a)?, self.eval(b)?) {
                (Exact(n), Exact(k)) => {
                    let (n, k) = (as_small_int(&n)?, as_small_int(&k)?);
                    if k < 0 || n < 0 || k > n {
                        return Some(Exact(BigRational::zero()));
                    }
                    let k = k.min(n - k);
                    if k > MAX_FACT as i64 || n > 1_000_000 {
                        return None;
                    }
                    let mut c = BigInt::one();
                    for i in 0..k {
                        c = c * (n - i) / (i + 1);
                    }
                    Exact(BigRational::from_integer(c))
                }
                (n, k) => {
                    let (n, k) = (n.f(), k.f());
                    lowp(gamma(n + 1.0) / (gamma(k + 1.0) * gamma(n - k + 1.0)))
                }
            },
            Node::Func(f, a) => {
                let x = self.eval(a)?;
                if let (Exact(r), Func::Ln | Func::Log) = (&x, f)
                    && r.is_one()
                {
                    return Some(Exact(BigRational::zero()));
                }
                let x = x.f();
                lowp(match f {
                    Func::Sin => x.sin(),
                    Func::Cos => x.cos(),
                    Func::Tan => x.tan(),
                    Func::Sec => 1.0 / x.cos(),
                    Func::Csc => 1.0 / x.sin(),
                    Func::Cot => 1.0 / x.tan(),
                    Func::Asin => x.asin(),
                    Func::Acos => x.acos(),
                    Func::Atan => x.atan(),
                    Func::Sinh => x.sinh(),
                    Func::Cosh => x.cosh(),
                    Func::Tanh => x.tanh(),
                    // `\log` without a base: natural log (Math-Verify's convention too).
                    Func::Ln | Func::Log => x.ln(),
                    Func::Exp => x.exp(),
                })
            }
            Node::LogB(b, a) => {
                let (bv, av) = (self.eval(b)?, self.eval(a)?);
                if let (Exact(b), Exact(a)) = (&bv, &av)
                    && b.is_positive()
                    && a.is_positive()
                    && !b.is_one()
                {
                    let k = (a.to_f64()?.ln() / b.to_f64()?.ln()).round();
                    if k.abs() <= 256.0
                        && let Some(p) = exact_pow(b, k as i64)
                        && p == *a
                    {
                        return Some(Exact(BigRational::from_integer(BigInt::from(k as i64))));
                    }
                }
                lowp(av.f().ln() / bv.f().ln())
            }
            Node::PlusMinus(..)
            | Node::Seq { .. }
            | Node::Set(_)
            | Node::List(_)
            | Node::Union(_)
            | Node::Rel(..)
            | Node::In(..)
            | Node::Matrix(_) => return None,
        })
    }

    fn pow(&mut self, b: Val, e: Val) -> Val {
        use Val::{Exact, Float};
        if let (Exact(b), Exact(e)) = (&b, &e) {
            if let Some(k) = as_small_int(e) {
                if let Some(p) = exact_pow(b, k) {
                    return Exact(p);
                }
            } else if let (Some(p), Some(q)) = (e.numer().to_i64(), e.denom().to_u32())
                && q <= 64
                && let Some(r) = rat_root(b, q)
                && let Some(v) = exact_pow(&r, p)
            {
                return Exact(v);
            }
        }
        // Rational exponents with small parts stay in double-double: bᵖ/q = (ᵠ√b)ᵖ.
        if let Exact(e) = &e
            && let (Some(p), Some(q)) = (e.numer().to_i64(), e.denom().to_u32())
            && q <= 64
            && p.unsigned_abs() <= 1 << 16
        {
            let base = b.dd();
            let r = if q == 1 { base } else { base.root(q) };
            return Float(r.powi(p), b.hp());
        }
        let (bf, ef) = (b.f(), e.f());
        lowp(bf.powf(ef))
    }
}

/// Variables of a node, sorted and deduplicated.
pub fn vars(n: &Node, out: &mut Vec<String>) {
    match n {
        Node::Var(v) => {
            if !out.contains(v) {
                out.push(v.clone());
            }
        }
        Node::Num(_) | Node::Const(_) => {}
        Node::Neg(a) | Node::Func(_, a) | Node::Fact(a) | Node::Abs(a) | Node::Percent(a) => vars(a, out),
        Node::Div(a, b)
        | Node::Pow(a, b)
        | Node::LogB(a, b)
        | Node::Binom(a, b)
        | Node::Root(a, b)
        | Node::PlusMinus(a, b)
        | Node::In(a, b) => {
            vars(a, out);
            vars(b, out);
        }
        Node::Add(xs) | Node::Mul(xs) | Node::Set(xs) | Node::List(xs) | Node::Union(xs) | Node::Rel(xs, _) => {
            xs.iter().for_each(|x| vars(x, out))
        }
        Node::Seq { items, .. } => items.iter().for_each(|x| vars(x, out)),
        Node::Matrix(rows) => rows.iter().flatten().for_each(|x| vars(x, out)),
    }
}

/// Whether the node mentions ∞.
pub fn has_inf(n: &Node) -> bool {
    match n {
        Node::Const(Const::Inf) => true,
        Node::Neg(a) => has_inf(a),
        Node::Add(xs) | Node::Mul(xs) => xs.iter().any(has_inf),
        _ => false,
    }
}
