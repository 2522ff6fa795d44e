//! Equivalence of parsed answers (gold first: the relation is deliberately asymmetric for inequalities).

use super::ast::{Const, Node};
use super::eval::{Budget, Eval, Val, has_inf, vars};
use super::lex::RelOp;
use std::borrow::Cow;
use std::collections::HashMap;

/// Relative tolerance for non-exact numeric comparison at f64 precision.
const REL_TOL: f64 = 1e-9;
/// Relative tolerance between two closed forms evaluated in double-double.
const HP_REL_TOL: f64 = 1e-24;
/// Most list/set items compared (bounds the quadratic matching).
const MAX_ITEMS: usize = 64;
/// Most `±` variants expanded.
const MAX_VARIANTS: usize = 16;
/// Most `±` signs in one expression that are expanded (2⁴ = [`MAX_VARIANTS`]); an expression with more is
/// left as it is (it cannot be evaluated, so it only equals an identical tree).
const MAX_PM: usize = 4;

/// A fast, deterministic hasher for the evaluation cache (FxHash's multiply-rotate step).
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FxHasher>>;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= REL_TOL * a.abs().max(b.abs()).max(1e-300) || (a - b).abs() < 1e-12
}

fn is_scalar(n: &Node) -> bool {
    !matches!(
        n,
        Node::Seq { .. }
            | Node::Set(_)
            | Node::List(_)
            | Node::Union(_)
            | Node::Rel(..)
            | Node::In(..)
            | Node::Matrix(_)
    )
}

/// Deterministic evaluation points: positive first (keeps √ and log real), then mixed sign.
fn points(names: &[String]) -> Vec<Vec<(String, f64)>> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..10)
        .map(|k| {
            names
                .iter()
                .enumerate()
                .map(|(j, n)| {
                    let u = next();
                    let m = 0.3 + 2.7 * u;
                    // Positive points keep √ and log real; points 7-8 are negative, point 9 mixes signs.
                    let neg = k == 7 || k == 8 || (k == 9 && j % 2 == 0);
                    (n.clone(), if neg { -m } else { m })
                })
                .collect()
        })
        .collect()
}

/// The state of one verification: the work budget and the evaluations already done, so that a node
/// compared against many others (set and list matching, `±` variants, several candidates) is evaluated once.
#[derive(Default)]
pub struct Ctx {
    /// The work meter and the bounds reached.
    pub budget: Budget,
    closed: FxMap<Node, Option<Val>>,
    /// By variable names, then by node.
    at_points: FxMap<Vec<String>, FxMap<Node, Option<Vec<f64>>>>,
}

impl Ctx {
    /// Evaluate a closed form once per verification.
    fn closed(&mut self, n: &Node) {
        if !self.closed.contains_key(n) {
            let v = Eval::new(&[], &mut self.budget).eval(n);
            self.closed.insert(n.clone(), v);
        }
    }

    /// Values of `n` at the deterministic points for the variable `names` (NaN where not finite); `None`
    /// when some point cannot be evaluated. Computed once per (node, names) per verification.
    fn at_points(&mut self, n: &Node, names: &[String]) -> Option<&[f64]> {
        let known = self.at_points.get(names).is_some_and(|m| m.contains_key(n));
        if !known {
            let mut out = Vec::new();
            let mut ok = true;
            for env in points(names) {
                let mut ev = Eval::approx(&env, &mut self.budget);
                match ev.eval(n) {
                    Some(v) => {
                        let x = self.budget.f(&v);
                        out.push(if x.is_finite() { x } else { f64::NAN });
                    }
                    None => {
                        ok = false;
                        break;
                    }
                }
            }
            self.at_points.entry(names.to_vec()).or_default().insert(n.clone(), ok.then_some(out));
        }
        self.at_points.get(names).and_then(|m| m.get(n)).and_then(|v| v.as_deref())
    }
}

/// Numeric equality of two scalar expressions: exact rationals, else f64 with tolerance, else random points.
pub fn scalar_eq(cx: &mut Ctx, a: &Node, b: &Node) -> bool {
    if a == b {
        return true;
    }
    if let (Node::Num(x), Node::Num(y)) = (a, b) {
        return cx.budget.exact_eq(x, y);
    }
    let mut names = Vec::new();
    vars(a, &mut names);
    vars(b, &mut names);
    if names.is_empty() {
        cx.closed(a);
        cx.closed(b);
        let (Some(Some(x)), Some(Some(y))) = (cx.closed.get(a), cx.closed.get(b)) else {
            return false;
        };
        let budget = &mut cx.budget;
        return match (x, y) {
            (Val::Exact(p), Val::Exact(q)) => budget.exact_eq(p, q),
            _ => {
                let (dx, dy) = (budget.dd(x), budget.dd(y));
                if dx.hi.is_finite() && dy.hi.is_finite() {
                    let one_exact = matches!(x, Val::Exact(_)) || matches!(y, Val::Exact(_));
                    match (x.hp() && y.hp(), one_exact) {
                        // Two closed forms, both in double-double: equal to ~24 digits.
                        (true, false) => dx.close(dy, HP_REL_TOL, 1e-28),
                        // A decimal against a closed form: a 10-digit approximation is accepted, but a
                        // non-zero value is never "about 0".
                        (true, true) => dx.close(dy, REL_TOL, 1e-28),
                        // Transcendental functions went through f64.
                        (false, _) => close(dx.f(), dy.f()),
                    }
                } else {
                    // ∞ only equals ∞ when both sides say ∞ (an overflow is not infinity).
                    let (x, y) = (dx.f(), dy.f());
                    x.is_infinite() && x == y && has_inf(a) && has_inf(b)
                }
            }
        };
    }
    if names.len() > 8 {
        return false;
    }
    let Some(xs) = cx.at_points(a, &names).map(<[f64]>::to_vec) else {
        return false;
    };
    let Some(ys) = cx.at_points(b, &names) else {
        return false;
    };
    let mut agree = 0;
    for (&x, &y) in xs.iter().zip(ys) {
        if x.is_finite() && y.is_finite() {
            if !close(x, y) {
                return false;
            }
            agree += 1;
        }
    }
    agree >= 3
}

/// Whether `d1 = k·d2` for a constant k ≠ 0 (equations `d1 = 0` and `d2 = 0` have the same solutions).
fn proportional(cx: &mut Ctx, d1: &Node, d2: &Node) -> bool {
    let mut names = Vec::new();
    vars(d1, &mut names);
    vars(d2, &mut names);
    if names.is_empty() || names.len() > 8 {
        return false;
    }
    let Some(xs) = cx.at_points(d1, &names).map(<[f64]>::to_vec) else {
        return false;
    };
    let Some(ys) = cx.at_points(d2, &names) else {
        return false;
    };
    let mut ratio: Option<f64> = None;
    let mut agree = 0;
    for (&x, &y) in xs.iter().zip(ys) {
        if !(x.is_finite() && y.is_finite()) {
            continue;
        }
        if y.abs() < 1e-12 || x.abs() < 1e-12 {
            if !(y.abs() < 1e-12 && x.abs() < 1e-12) {
                return false;
            }
            continue;
        }
        let r = x / y;
        match ratio {
            None => ratio = Some(r),
            Some(r0) if close(r0, r) => {}
            Some(_) => return false,
        }
        agree += 1;
    }
    agree >= 3
}

/// Expand `±` into all sign variants.
fn variants(n: &Node) -> Vec<Node> {
    if count_pm(n) == 0 {
        return vec![n.clone()];
    }
    match n {
        Node::PlusMinus(a, b) => {
            let mut out = Vec::new();
            let vb = variants(b);
            for x in variants(a) {
                for y in vb.iter().cloned() {
                    if out.len() >= MAX_VARIANTS {
                        return out;
                    }
                    out.push(Node::Add(vec![x.clone(), y.clone()]));
                    out.push(Node::Add(vec![x.clone(), Node::Neg(Box::new(y))]));
                }
            }
            out
        }
        Node::Add(xs) | Node::Mul(xs) => {
            let mut acc: Vec<Vec<Node>> = vec![vec![]];
            for x in xs {
                let vs = variants(x);
                let mut next = Vec::new();
                for a in &acc {
                    for v in &vs {
                        if next.len() < MAX_VARIANTS {
                            let mut a = a.clone();
                            a.push(v.clone());
                            next.push(a);
                        }
                    }
                }
                acc = next;
            }
            let add = matches!(n, Node::Add(_));
            acc.into_iter().map(|v| if add { Node::Add(v) } else { Node::Mul(v) }).collect()
        }
        Node::Neg(a) => variants(a).into_iter().map(|v| Node::Neg(Box::new(v))).collect(),
        Node::Div(a, b) => {
            let mut out = Vec::new();
            let vb = variants(b);
            for x in variants(a) {
                for y in vb.iter().cloned() {
                    if out.len() < MAX_VARIANTS {
                        out.push(Node::Div(Box::new(x.clone()), Box::new(y)));
                    }
                }
            }
            out
        }
        _ => vec![n.clone()],
    }
}

/// Number of `±` signs that [`variants`] would expand.
fn count_pm(n: &Node) -> usize {
    match n {
        Node::PlusMinus(a, b) => 1 + count_pm(a) + count_pm(b),
        Node::Add(xs) | Node::Mul(xs) => xs.iter().map(count_pm).sum(),
        Node::Neg(a) => count_pm(a),
        Node::Div(a, b) => count_pm(a) + count_pm(b),
        _ => 0,
    }
}

fn expandable(n: &Node) -> bool {
    (1..=MAX_PM).contains(&count_pm(n))
}

/// Canonical form: `a ± b` → the set {a+b, a−b}; ± inside lists flattens into the set.
fn canon(n: &Node) -> Cow<'_, Node> {
    Cow::Owned(match n {
        _ if is_scalar(n) && expandable(n) => Node::Set(variants(n)),
        Node::List(xs) | Node::Set(xs) if xs.len() <= MAX_ITEMS && xs.iter().any(expandable) => {
            Node::Set(xs.iter().flat_map(|x| if expandable(x) { variants(x) } else { vec![x.clone()] }).collect())
        }
        _ => return Cow::Borrowed(n),
    })
}

/// `x = 3` → `3`, `x ∈ S` → `S`, elementwise in lists.
fn strip_assign(n: &Node) -> Node {
    match n {
        Node::Rel(..) | Node::In(..) | Node::List(_) | Node::Set(_) => strip_assign_inner(n),
        _ => n.clone(),
    }
}

fn needs_strip(n: &Node) -> bool {
    match n {
        Node::Rel(..) | Node::In(..) => true,
        Node::List(xs) | Node::Set(xs) => xs.iter().any(needs_strip),
        _ => false,
    }
}

/// The names of a tuple of distinct variables `(x, y, …)`.
fn var_tuple(n: &Node) -> Option<Vec<&str>> {
    let Node::Seq { open: '(', close: ')', items } = n else {
        return None;
    };
    let mut names = Vec::new();
    for i in items {
        match i {
            Node::Var(v) if !names.contains(&v.as_str()) => names.push(v.as_str()),
            _ => return None,
        }
    }
    (names.len() >= 2).then_some(names)
}

/// A tuple written as an assignment, `(x, y) = (1, 2)` (or `(1, 2) = (x, y)`): the names and the values.
fn tuple_assignment(n: &Node) -> Option<(Vec<&str>, &Node)> {
    let Node::Rel(xs, ops) = n else {
        return None;
    };
    let ([l, r], [RelOp::Eq]) = (xs.as_slice(), ops.as_slice()) else {
        return None;
    };
    let tuple_of = |v: &Node, k: usize| matches!(v, Node::Seq { open: '(', close: ')', items } if items.len() == k);
    if let Some(names) = var_tuple(l)
        && tuple_of(r, names.len())
    {
        return Some((names, r));
    }
    if let Some(names) = var_tuple(r)
        && tuple_of(l, names.len())
    {
        return Some((names, l));
    }
    None
}

/// Values by variable name: `(x, y) = (1, 2)`, or a list of single assignments `x = 1, y = 2`.
fn assignments(n: &Node) -> Option<Vec<(&str, &Node)>> {
    if let Some((names, Node::Seq { items, .. })) = tuple_assignment(n) {
        return Some(names.into_iter().zip(items).collect());
    }
    let Node::List(xs) = n else {
        return None;
    };
    let mut out: Vec<(&str, &Node)> = Vec::new();
    for x in xs {
        let Node::Rel(ys, ops) = x else {
            return None;
        };
        let (name, value) = match (ys.as_slice(), ops.as_slice()) {
            ([Node::Var(v), e], [RelOp::Eq]) if !matches!(e, Node::Var(_)) => (v.as_str(), e),
            ([e, Node::Var(v)], [RelOp::Eq]) if !matches!(e, Node::Var(_)) => (v.as_str(), e),
            _ => return None,
        };
        if out.iter().any(|(k, _)| *k == name) {
            return None;
        }
        out.push((name, value));
    }
    (out.len() >= 2).then_some(out)
}

/// Both sides assign values to the same variables: compare the values by name (order-free, unlike a bare
/// tuple). `None` when the two sides are not both assignments of the same names.
fn assignments_eq(cx: &mut Ctx, g: &Node, p: &Node) -> Option<bool> {
    let (ga, pa) = (assignments(g)?, assignments(p)?);
    if ga.len() != pa.len() || !ga.iter().all(|(k, _)| pa.iter().any(|(j, _)| j == k)) {
        return None;
    }
    Some(ga.iter().all(|(k, gv)| pa.iter().find(|(j, _)| j == k).is_some_and(|(_, pv)| direct_eq(cx, gv, pv))))
}

fn strip_assign_inner(n: &Node) -> Node {
    match n {
        Node::Rel(..) if tuple_assignment(n).is_some() => {
            tuple_assignment(n).map_or_else(|| n.clone(), |(_, v)| v.clone())
        }
        Node::Rel(xs, ops) if ops.iter().all(|o| *o == RelOp::Eq) && xs.len() >= 2 => {
            if matches!(xs[0], Node::Var(_)) {
                return xs[xs.len() - 1].clone();
            }
            if matches!(xs[xs.len() - 1], Node::Var(_)) && !matches!(xs[0], Node::Var(_)) {
                return xs[0].clone();
            }
            n.clone()
        }
        Node::In(x, s) if matches!(x.as_ref(), Node::Var(_)) => s.as_ref().clone(),
        Node::List(xs) => Node::List(xs.iter().map(strip_assign).collect()),
        Node::Set(xs) => Node::Set(xs.iter().map(strip_assign).collect()),
        _ => n.clone(),
    }
}

fn strip_percent(n: &Node) -> Option<Node> {
    match n {
        Node::Percent(a) => Some(a.as_ref().clone()),
        _ => None,
    }
}

fn neg_inf() -> Node {
    Node::Neg(Box::new(Node::Const(Const::Inf)))
}

fn interval(open: char, lo: Node, hi: Node, close: char) -> Node {
    Node::Seq { open, close, items: vec![lo, hi] }
}

fn var_free(n: &Node) -> bool {
    let mut v = Vec::new();
    vars(n, &mut v);
    v.is_empty()
}

/// An inequality in one variable as intervals (`x > 3` → `(3, ∞)`; `1 < x ≤ 2` → `(1, 2]`).
fn as_intervals(n: &Node) -> Option<Vec<Node>> {
    match n {
        Node::Rel(xs, ops) => {
            let (xs, ops): (Vec<Node>, Vec<RelOp>) = if xs.len() == 2 && matches!(xs[1], Node::Var(_)) {
                (vec![xs[1].clone(), xs[0].clone()], vec![ops[0].flip()])
            } else {
                (xs.clone(), ops.clone())
            };
            match (xs.as_slice(), ops.as_slice()) {
                ([Node::Var(_), a], [op]) if var_free(a) => Some(match op {
                    RelOp::Gt => vec![interval('(', a.clone(), Node::Const(Const::Inf), ')')],
                    RelOp::Ge => vec![interval('[', a.clone(), Node::Const(Const::Inf), ')')],
                    RelOp::Lt => vec![interval('(', neg_inf(), a.clone(), ')')],
                    RelOp::Le => vec![interval('(', neg_inf(), a.clone(), ']')],
                    RelOp::Ne => vec![
                        interval('(', neg_inf(), a.clone(), ')'),
                        interval('(', a.clone(), Node::Const(Const::Inf), ')'),
                    ],
                    RelOp::Eq => return None,
                }),
                ([a, Node::Var(_), b], [o1, o2]) if var_free(a) && var_free(b) => {
                    let lt = |o: &RelOp| matches!(o, RelOp::Lt | RelOp::Le);
                    let gt = |o: &RelOp| matches!(o, RelOp::Gt | RelOp::Ge);
                    if lt(o1) && lt(o2) {
                        let open = if *o1 == RelOp::Lt { '(' } else { '[' };
                        let close = if *o2 == RelOp::Lt { ')' } else { ']' };
                        Some(vec![interval(open, a.clone(), b.clone(), close)])
                    } else if gt(o1) && gt(o2) {
                        let open = if *o2 == RelOp::Gt { '(' } else { '[' };
                        let close = if *o1 == RelOp::Gt { ')' } else { ']' };
                        Some(vec![interval(open, b.clone(), a.clone(), close)])
                    } else {
                        None
                    }
                }
                _ => None,
            }
        }
        Node::List(xs) if xs.len() <= MAX_ITEMS => {
            let mut out = Vec::new();
            for x in xs {
                out.extend(as_intervals(x)?);
            }
            Some(out)
        }
        _ => None,
    }
}

/// Intervals of an interval-shaped prediction (`(a, b]`, unions).
fn interval_parts(n: &Node) -> Option<Vec<Node>> {
    match n {
        Node::Seq { items, .. } if items.len() == 2 => Some(vec![n.clone()]),
        Node::Union(xs) => {
            let mut out = Vec::new();
            for x in xs {
                out.extend(interval_parts(x)?);
            }
            Some(out)
        }
        _ => None,
    }
}

fn unordered_eq(cx: &mut Ctx, a: &[Node], b: &[Node]) -> bool {
    if a.len() > MAX_ITEMS || b.len() > MAX_ITEMS {
        return false;
    }
    let dedup = |cx: &mut Ctx, xs: &[Node]| {
        let mut out: Vec<Node> = Vec::new();
        for x in xs {
            if !out.iter().any(|y| direct_eq(cx, y, x)) {
                out.push(x.clone());
            }
        }
        out
    };
    let (a, b) = if a.len() <= 1 && b.len() <= 1 { (a.to_vec(), b.to_vec()) } else { (dedup(cx, a), dedup(cx, b)) };
    if a.len() != b.len() {
        return false;
    }
    let mut used = vec![false; b.len()];
    'outer: for x in &a {
        for (j, y) in b.iter().enumerate() {
            if !used[j] && direct_eq(cx, x, y) {
                used[j] = true;
                continue 'outer;
            }
        }
        return false;
    }
    true
}

fn rel_eq(cx: &mut Ctx, gx: &[Node], gops: &[RelOp], px: &[Node], pops: &[RelOp]) -> bool {
    if gops.len() == 1 && pops.len() == 1 && gops[0] == RelOp::Eq && pops[0] == RelOp::Eq {
        let (gl, gr, pl, pr) = (&gx[0], &gx[1], &px[0], &px[1]);
        if let (Node::Var(a), Node::Var(b)) = (gl, pl)
            && a == b
            && direct_eq(cx, gr, pr)
        {
            return true;
        }
        if (direct_eq(cx, gl, pl) && direct_eq(cx, gr, pr)) || (direct_eq(cx, gl, pr) && direct_eq(cx, gr, pl)) {
            return true;
        }
        if [gl, gr, pl, pr].iter().all(|n| is_scalar(n)) {
            let d1 = Node::Add(vec![gl.clone(), Node::Neg(Box::new(gr.clone()))]);
            let d2 = Node::Add(vec![pl.clone(), Node::Neg(Box::new(pr.clone()))]);
            return proportional(cx, &d1, &d2);
        }
        return false;
    }
    let g = Node::Rel(gx.to_vec(), gops.to_vec());
    let p = Node::Rel(px.to_vec(), pops.to_vec());
    if let (Some(a), Some(b)) = (as_intervals(&g), as_intervals(&p)) {
        return unordered_eq(cx, &a, &b);
    }
    if gx.len() != px.len() {
        return false;
    }
    let same = gops == pops && gx.iter().zip(px).all(|(a, b)| direct_eq(cx, a, b));
    let flipped = gops.iter().zip(pops.iter().rev()).all(|(a, b)| a.flip() == *b)
        && gx.iter().zip(px.iter().rev()).all(|(a, b)| direct_eq(cx, a, b));
    same || flipped
}

/// Structural/numeric equality without the gold-side conveniences.
fn direct_eq(cx: &mut Ctx, g: &Node, p: &Node) -> bool {
    match (g, p) {
        (Node::Set(a) | Node::List(a), Node::Set(b) | Node::List(b)) => unordered_eq(cx, a, b),
        (Node::Set(a), x) | (x, Node::Set(a)) if a.len() == 1 && is_scalar(x) => direct_eq(cx, &a[0], x),
        (Node::Seq { open: o1, close: c1, items: a }, Node::Seq { open: o2, close: c2, items: b }) => {
            o1 == o2 && c1 == c2 && a.len() == b.len() && a.iter().zip(b).all(|(x, y)| direct_eq(cx, x, y))
        }
        (Node::Union(a), Node::Union(b)) => unordered_eq(cx, a, b),
        (Node::Matrix(a), Node::Matrix(b)) => {
            a.len() == b.len()
                && a.iter().zip(b).all(|(r, s)| r.len() == s.len() && r.iter().zip(s).all(|(x, y)| direct_eq(cx, x, y)))
        }
        (Node::Matrix(m), Node::Seq { open: '(', items, .. })
        | (Node::Seq { open: '(', items, .. }, Node::Matrix(m))
            if m.len() == 1 || m.iter().all(|r| r.len() == 1) =>
        {
            let flat: Vec<&Node> = m.iter().flatten().collect();
            flat.len() == items.len() && flat.iter().zip(items).all(|(x, y)| direct_eq(cx, x, y))
        }
        (Node::Rel(gx, gops), Node::Rel(px, pops)) => rel_eq(cx, gx, gops, px, pops),
        (Node::In(a, s), Node::In(b, t)) => direct_eq(cx, a, b) && direct_eq(cx, s, t),
        _ if is_scalar(g) && is_scalar(p) => scalar_eq(cx, g, p),
        _ => false,
    }
}

/// Is the prediction `p` an acceptable answer for gold `g`?
pub fn equivalent(cx: &mut Ctx, g: &Node, p: &Node) -> bool {
    let (g, p) = (canon(g), canon(p));
    if direct_eq(cx, &g, &p) {
        return true;
    }
    if let Some(same) = assignments_eq(cx, &g, &p) {
        return same;
    }
    let stripped = needs_strip(&g) || needs_strip(&p);
    let (gs, ps) = if stripped { (Cow::Owned(strip_assign(&g)), Cow::Owned(strip_assign(&p))) } else { (g, p) };
    if stripped && direct_eq(cx, &gs, &ps) {
        return true;
    }
    // An inequality gold accepts the same set written as intervals (not the reverse).
    if let Some(gi) = as_intervals(&gs)
        && let Some(pi) = interval_parts(&ps)
    {
        return unordered_eq(cx, &gi, &pi);
    }
    // 20% ≡ 20 (either side written with %).
    match (strip_percent(&gs), strip_percent(&ps)) {
        (Some(a), Some(b)) => direct_eq(cx, &a, &b),
        (Some(a), None) => direct_eq(cx, &a, &ps),
        (None, Some(b)) => direct_eq(cx, &gs, &b),
        (None, None) => false,
    }
}
