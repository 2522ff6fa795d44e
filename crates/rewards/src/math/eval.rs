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

/// Largest integer whose factorial is computed exactly (larger ones also exceed [`MAX_BITS`]).
const MAX_FACT: u32 = 5000;
/// Largest exact value, in bits (numerator plus denominator). An operation whose operands together could
/// exceed it is done in floating point instead.
pub const MAX_BITS: u64 = 1 << 16;
/// Node visits allowed per verification (all evaluations of one gold/completion pair together).
pub const MAX_STEPS: u32 = 50_000;
/// Big-integer work allowed per verification, in limb-operation units: an exact operation on operands of n
/// 64-bit limbs in all is charged n for an integer sum, n² for an integer product or a power, and 128·n² when
/// a rational result is reduced by a gcd. The count is a deterministic function of the operands' sizes, so
/// a verdict never depends on machine speed.
pub const MAX_WORK: u64 = 60_000_000;

/// A bound of the verifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bound {
    /// An answer longer than `MAX_ANSWER_CHARS` (compared as text).
    Length,
    /// Too many tokens or nesting deeper than the parser allows (compared as text).
    Depth,
    /// More node visits than [`MAX_STEPS`] (the evaluation gives up).
    Steps,
    /// An exact value would exceed [`MAX_BITS`] (that operation is done in floating point).
    Bits,
    /// The big-integer work budget [`MAX_WORK`] is spent (further exact operations go to floating point).
    Work,
}

/// The work meter shared by every evaluation within one verification, and the bounds it reached.
#[derive(Debug, Clone, Default)]
pub struct Budget {
    steps: u32,
    work: u64,
    hits: u8,
}

/// Work units per squared limb count of a gcd reduction (see [`Budget::binop`]).
const GCD_FACTOR: u64 = 128;

/// The kind of an exact binary operation (for its cost).
#[derive(Clone, Copy)]
enum Op {
    Add,
    Mul,
    Div,
}

fn limbs(bits: u64) -> u64 {
    bits / 64 + 1
}

fn bits(r: &BigRational) -> u64 {
    r.numer().bits() + r.denom().bits()
}

impl Budget {
    /// Record that a bound was reached.
    pub fn hit(&mut self, b: Bound) {
        self.hits |= 1 << b as u8;
    }

    /// Whether a bound was reached.
    pub fn reached(&self, b: Bound) -> bool {
        self.hits & (1 << b as u8) != 0
    }

    /// Node visits so far.
    pub fn steps(&self) -> u32 {
        self.steps
    }

    /// Work units spent so far.
    pub fn work(&self) -> u64 {
        self.work
    }

    fn step(&mut self) -> bool {
        if self.steps >= MAX_STEPS {
            self.hit(Bound::Steps);
            return false;
        }
        self.steps += 1;
        true
    }

    /// Pay `units` of big-integer work; `false` (nothing paid, [`Bound::Work`] recorded) when the budget
    /// cannot cover it. An operation on operands of n limbs in all is charged n² (schoolbook products and
    /// the gcd that reduces every rational result are quadratic).
    pub fn charge(&mut self, units: u64) -> bool {
        match self.work.checked_add(units) {
            Some(w) if w <= MAX_WORK => {
                self.work = w;
                true
            }
            _ => {
                self.hit(Bound::Work);
                false
            }
        }
    }

    /// Check the size of an exact binary operation and pay for it: n operand limbs in all cost n for an
    /// integer sum, n² for an integer product, and 128·n² when a rational result must be reduced (binary gcd:
    /// about one n-limb pass per bit, twice).
    fn binop(&mut self, a: &BigRational, b: &BigRational, op: Op) -> bool {
        let (x, y) = (bits(a), bits(b));
        if x + y > MAX_BITS {
            self.hit(Bound::Bits);
            return false;
        }
        let n = limbs(x) + limbs(y);
        let ints = a.is_integer() && b.is_integer();
        let units = match op {
            Op::Add if ints => n,
            Op::Mul if ints => n * n,
            _ => GCD_FACTOR * n * n,
        };
        self.charge(units)
    }

    /// A value as double-double (out-of-range exact values are NaN, not ±∞ or 0), paying for the conversion
    /// of a large rational (NaN when unpaid).
    pub fn dd(&mut self, v: &Val) -> DD {
        match v {
            Val::Exact(r) => self.rat_dd(r),
            Val::Float(x, _) => *x,
        }
    }

    fn rat_dd(&mut self, r: &BigRational) -> DD {
        let b = bits(r);
        if b > 128 {
            let n = limbs(b);
            if !self.charge(GCD_FACTOR * n * n) {
                return DD::NAN;
            }
        }
        DD::from_rational(r)
    }

    /// A value as f64 (see [`Budget::dd`]).
    pub fn f(&mut self, v: &Val) -> f64 {
        self.dd(v).f()
    }

    /// Exact equality of two values (reduced rationals: equal parts), paid for.
    pub fn exact_eq(&mut self, a: &BigRational, b: &BigRational) -> bool {
        self.charge(limbs(bits(a)) + limbs(bits(b)));
        a.numer() == b.numer() && a.denom() == b.denom()
    }
}

/// Evaluator with a variable assignment (empty for closed forms) and the verification's work budget.
pub struct Eval<'a, 'b> {
    pub vars: &'a [(String, f64)],
    budget: &'b mut Budget,
    exact: bool,
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

/// log₂ |x| (0 for 0), to within a bit for huge values.
fn log2_abs(x: &BigInt) -> f64 {
    if x.bits() <= 1000 { x.to_f64().map_or(x.bits() as f64, |f| f.abs().max(1.0).log2()) } else { x.bits() as f64 }
}

/// log₂ of k! (for the size check before computing it).
fn log2_fact(k: u64) -> f64 {
    (2..=k).map(|i| (i as f64).log2()).sum()
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

impl<'a, 'b> Eval<'a, 'b> {
    /// An evaluator over the given variable values, charging `budget`.
    pub fn new(vars: &'a [(String, f64)], budget: &'b mut Budget) -> Self {
        Self { vars, budget, exact: true }
    }

    /// An evaluator that skips exact rational arithmetic (for random-point checks, where f64-level
    /// agreement is what is tested and big-integer allocations would dominate).
    pub fn approx(vars: &'a [(String, f64)], budget: &'b mut Budget) -> Self {
        Self { vars, budget, exact: false }
    }

    fn float(&mut self, v: &Val) -> (DD, bool) {
        (self.budget.dd(v), v.hp())
    }

    /// `b^e` exactly, if its size is within [`MAX_BITS`] and the budget pays for it (m² for a result of m
    /// limbs; numerator and denominator are powered separately, so no gcd is needed).
    fn exact_pow(&mut self, b: &BigRational, e: i64) -> Option<BigRational> {
        if b.is_zero() && e < 0 {
            return None;
        }
        let k = e.unsigned_abs();
        let out_bits = (k as f64 * (log2_abs(b.numer()) + log2_abs(b.denom()))).ceil() as u64 + 2;
        if out_bits > MAX_BITS {
            self.hit_bits();
            return None;
        }
        let n = limbs(out_bits);
        if !self.budget.charge(n * n) {
            return None;
        }
        let k = u32::try_from(k).ok()?;
        let (p, q) = (b.numer().pow(k), b.denom().pow(k));
        Some(match (e < 0, p.is_negative()) {
            (false, _) => BigRational::new_raw(p, q),
            (true, false) => BigRational::new_raw(q, p),
            (true, true) => BigRational::new_raw(-q, -p),
        })
    }

    fn hit_bits(&mut self) {
        self.budget.hit(Bound::Bits);
    }

    /// Exact q-th root of a rational, if numerator and denominator are perfect powers (Newton iterations:
    /// charged n² per bit of the root's length).
    fn rat_root(&mut self, x: &BigRational, q: u32) -> Option<BigRational> {
        let n = limbs(bits(x));
        let iters = u64::from(64 - (bits(x) / u64::from(q) + 1).leading_zeros());
        if !self.budget.charge(2 * n * n * (iters + 1) * u64::from(q)) {
            return None;
        }
        Some(BigRational::new(int_root(x.numer(), q)?, int_root(x.denom(), q)?))
    }

    /// Evaluate a scalar node; `None` when it is not a number (a set, an unbound variable, over budget).
    pub fn eval(&mut self, n: &Node) -> Option<Val> {
        if !self.budget.step() {
            return None;
        }
        use Val::{Exact, Float};
        Some(match n {
            Node::Num(r) if self.exact => Exact(r.clone()),
            Node::Num(r) => Float(self.budget.rat_dd(r), true),
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
                    let v = self.eval(x)?;
                    if let Exact(r) = &v
                        && self.budget.binop(&acc, r, if add { Op::Add } else { Op::Mul })
                    {
                        if add {
                            acc += r;
                        } else {
                            acc *= r;
                        }
                        continue;
                    }
                    let (f, h) = self.float(&v);
                    fl = if add { fl.add(f) } else { fl.mul(f) };
                    any_float = true;
                    hp &= h;
                }
                if !any_float {
                    Exact(acc)
                } else {
                    let e = self.budget.rat_dd(&acc);
                    Float(if add { e.add(fl) } else { e.mul(fl) }, hp)
                }
            }
            Node::Div(a, b) => match (self.eval(a)?, self.eval(b)?) {
                (Exact(_), Exact(y)) if y.is_zero() => Float(DD::NAN, true),
                (Exact(x), Exact(y)) if self.budget.binop(&x, &y, Op::Div) => Exact(x / y),
                (x, y) => {
                    let ((a, ha), (b, hb)) = (self.float(&x), self.float(&y));
                    Float(a.div(b), ha && hb)
                }
            },
            Node::Percent(a) => match self.eval(a)? {
                Exact(r) if self.budget.charge(GCD_FACTOR * limbs(bits(&r)).pow(2)) => Exact(r / BigInt::from(100)),
                v => {
                    let (x, hp) = self.float(&v);
                    Float(x.div(DD::from_f64(100.0)), hp)
                }
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
                    Exact(k) if !k.is_zero() && bits(&k) <= 128 => self.pow(xv, Exact(k.recip())),
                    k => {
                        let (x, k) = (self.budget.f(&xv), self.budget.f(&k));
                        lowp(x.powf(1.0 / k))
                    }
                }
            }
            Node::Fact(a) => match self.eval(a)? {
                Exact(r) => match as_small_int(&r) {
                    Some(k) if (0..=i64::from(MAX_FACT)).contains(&k) => {
                        let out_bits = log2_fact(k as u64) as u64 + 1;
                        if out_bits > MAX_BITS {
                            self.budget.hit(Bound::Bits);
                            lowp(gamma(k as f64 + 1.0))
                        } else if !self.budget.charge(k as u64 * limbs(out_bits)) {
                            lowp(gamma(k as f64 + 1.0))
                        } else {
                            let mut p = BigInt::one();
                            for i in 2..=k {
                                p *= i;
                            }
                            Exact(BigRational::from_integer(p))
                        }
                    }
                    Some(k) if k < 0 => Float(DD::NAN, true),
                    _ => {
                        let x = self.budget.rat_dd(&r).f();
                        lowp(gamma(x + 1.0))
                    }
                },
                x => {
                    let x = self.budget.f(&x);
                    lowp(gamma(x + 1.0))
                }
            },
            Node::Binom(a, b) => match (self.eval(a)?, self.eval(b)?) {
                (Exact(n), Exact(k)) if as_small_int(&n).is_some() && as_small_int(&k).is_some() => {
                    let (n, k) = (as_small_int(&n)?, as_small_int(&k)?);
                    if k < 0 || n < 0 || k > n {
                        return Some(Exact(BigRational::zero()));
                    }
                    let k = k.min(n - k);
                    if k > i64::from(MAX_FACT) || n > 1_000_000 {
                        self.budget.hit(Bound::Bits);
                        return None;
                    }
                    // log₂ C(n, k) = Σ log₂((n − i)/(i + 1)).
                    let out_bits = (0..k).map(|i| ((n - i) as f64 / (i + 1) as f64).log2()).sum::<f64>() as u64 + 1;
                    if out_bits > MAX_BITS {
                        self.budget.hit(Bound::Bits);
                        return None;
                    }
                    if !self.budget.charge(k as u64 * limbs(out_bits) * 64) {
                        return None;
                    }
                    let mut c = BigInt::one();
                    for i in 0..k {
                        c = c * (n - i) / (i + 1);
                    }
                    Exact(BigRational::from_integer(c))
                }
                (n, k) => {
                    let (n, k) = (self.budget.f(&n), self.budget.f(&k));
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
                let x = self.budget.f(&x);
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
                let (bf, af) = (self.budget.f(&bv), self.budget.f(&av));
                if let (Exact(b), Exact(a)) = (&bv, &av)
                    && b.is_positive()
                    && a.is_positive()
                    && !b.is_one()
                    && af.is_finite()
                    && bf.is_finite()
                {
                    let k = (af.ln() / bf.ln()).round();
                    if k.abs() <= 256.0
                        && let Some(p) = self.exact_pow(b, k as i64)
                        && self.budget.exact_eq(&p, a)
                    {
                        return Some(Exact(BigRational::from_integer(BigInt::from(k as i64))));
                    }
                }
                lowp(af.ln() / bf.ln())
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
                if let Some(p) = self.exact_pow(b, k) {
                    return Exact(p);
                }
            } else if let (Some(p), Some(q)) = (e.numer().to_i64(), e.denom().to_u32())
                && q <= 64
                && let Some(r) = self.rat_root(b, q)
                && let Some(v) = self.exact_pow(&r, p)
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
            let (base, hp) = self.float(&b);
            let r = if q == 1 { base } else { base.root(q) };
            return Float(r.powi(p), hp);
        }
        let (bf, ef) = (self.budget.f(&b), self.budget.f(&e));
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
