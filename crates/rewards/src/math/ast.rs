//! The answer AST and its parser. Model text is only ever parsed into this tree, never executed.

use super::lex::{Func, RelOp, Tok};
use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{One, Zero};

/// Named constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Const {
    Pi,
    E,
    Inf,
}

/// A parsed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Num(BigRational),
    Const(Const),
    Var(String),
    Add(Vec<Node>),
    Mul(Vec<Node>),
    Neg(Box<Node>),
    Div(Box<Node>, Box<Node>),
    Pow(Box<Node>, Box<Node>),
    Func(Func, Box<Node>),
    /// `log_b x`: (base, argument).
    LogB(Box<Node>, Box<Node>),
    Fact(Box<Node>),
    Binom(Box<Node>, Box<Node>),
    /// n-th root: (n, radicand).
    Root(Box<Node>, Box<Node>),
    Abs(Box<Node>),
    Percent(Box<Node>),
    /// `a ± b` (`a` is 0 for a leading `±`).
    PlusMinus(Box<Node>, Box<Node>),
    /// A bracketed list: tuple, point or interval, e.g. `(1, 2]`.
    Seq {
        open: char,
        close: char,
        items: Vec<Node>,
    },
    /// `\{…\}`.
    Set(Vec<Node>),
    /// A bare comma list `1, 2` (compared as a set).
    List(Vec<Node>),
    /// `A ∪ B ∪ …`.
    Union(Vec<Node>),
    /// A relation chain `a < b ≤ c`: operands and operators.
    Rel(Vec<Node>, Vec<RelOp>),
    /// `x ∈ S`.
    In(Box<Node>, Box<Node>),
    Matrix(Vec<Vec<Node>>),
}

impl std::hash::Hash for Node {
    /// Structural hash (numbers by numerator and denominator: `Ratio`'s own hash runs a continued-fraction
    /// expansion, too slow for the evaluation cache). Parsed and evaluated numbers are always reduced, so
    /// equal nodes hash equally.
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        std::mem::discriminant(self).hash(h);
        match self {
            Node::Num(r) => {
                r.numer().hash(h);
                r.denom().hash(h);
            }
            Node::Const(c) => c.hash(h),
            Node::Var(v) => v.hash(h),
            Node::Add(xs) | Node::Mul(xs) | Node::Set(xs) | Node::List(xs) | Node::Union(xs) => xs.hash(h),
            Node::Neg(a) | Node::Fact(a) | Node::Abs(a) | Node::Percent(a) => a.hash(h),
            Node::Div(a, b)
            | Node::Pow(a, b)
            | Node::LogB(a, b)
            | Node::Binom(a, b)
            | Node::Root(a, b)
            | Node::PlusMinus(a, b)
            | Node::In(a, b) => {
                a.hash(h);
                b.hash(h);
            }
            Node::Func(f, a) => {
                f.hash(h);
                a.hash(h);
            }
            Node::Seq { open, close, items } => {
                open.hash(h);
                close.hash(h);
                items.hash(h);
            }
            Node::Rel(xs, ops) => {
                xs.hash(h);
                ops.hash(h);
            }
            Node::Matrix(rows) => rows.hash(h),
        }
    }
}

/// Maximum nesting depth the parser accepts.
pub const MAX_DEPTH: usize = 200;

/// Parse tokens into a node; `None` when they are not a well-formed answer.
pub fn parse(toks: Vec<Tok>) -> Option<Node> {
    parse_depth(toks).0
}

/// [`parse`], also saying whether the nesting went deeper than [`MAX_DEPTH`] (which fails the parse).
pub fn parse_depth(toks: Vec<Tok>) -> (Option<Node>, bool) {
    let toks = drop_words(toks);
    if toks.is_empty() || toks.contains(&Tok::Unknown) {
        return (None, false);
    }
    let mut p = Parser { t: toks, i: 0, depth: 0, abs: 0, too_deep: false };
    let n = p.top();
    let n = n.filter(|_| p.i == p.t.len());
    (n, p.too_deep)
}

/// Remove words (units, prose) together with an exponent written on them (`\text{cm}^2`), so that a unit's
/// power never lands on the number before it.
fn drop_words(toks: Vec<Tok>) -> Vec<Tok> {
    let mut out = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        if toks[i] != Tok::Word {
            out.push(toks[i].clone());
            i += 1;
            continue;
        }
        i += 1;
        if toks.get(i) == Some(&Tok::Caret) {
            i += 1;
            if toks.get(i) == Some(&Tok::LBrace) {
                let mut depth = 0usize;
                while i < toks.len() {
                    match toks[i] {
                        Tok::LBrace => depth += 1,
                        Tok::RBrace => {
                            depth -= 1;
                            if depth == 0 {
                                i += 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
            } else {
                i += 1;
            }
        }
    }
    out
}

struct Parser {
    t: Vec<Tok>,
    i: usize,
    depth: usize,
    abs: usize,
    too_deep: bool,
}

fn int(n: i64) -> Node {
    Node::Num(BigRational::from_integer(BigInt::from(n)))
}

/// Parse a decimal string such as `12.50` exactly.
pub fn decimal(s: &str) -> Option<BigRational> {
    let (ip, fp) = s.split_once('.').unwrap_or((s, ""));
    let digits = format!("{ip}{fp}");
    let n: BigInt = if digits.is_empty() { BigInt::zero() } else { digits.parse().ok()? };
    let d = num_traits::pow(BigInt::from(10), fp.len());
    Some(BigRational::new(n, d))
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.t.get(self.i)
    }
    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == Some(t) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, t: &Tok) -> Option<()> {
        self.eat(t).then_some(())
    }
    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            self.too_deep = true;
            return None;
        }
        Some(())
    }

    /// Top level: comma list of relation chains.
    fn top(&mut self) -> Option<Node> {
        let mut items = vec![self.rel()?];
        while self.eat(&Tok::Comma) {
            // `1, 2, and 3` lexes as `1, 2, , 3`.
            while self.eat(&Tok::Comma) {}
            if self.peek().is_none() {
                break;
            }
            items.push(self.rel()?);
        }
        Some(if items.len() == 1 { items.pop()? } else { Node::List(items) })
    }

    fn rel(&mut self) -> Option<Node> {
        let first = self.union()?;
        if self.eat(&Tok::In) {
            let set = self.union()?;
            return Some(Node::In(Box::new(first), Box::new(set)));
        }
        let mut xs = vec![first];
        let mut ops = Vec::new();
        while let Some(Tok::Rel(op)) = self.peek() {
            let op = *op;
            self.i += 1;
            ops.push(op);
            xs.push(self.union()?);
        }
        Some(if ops.is_empty() { xs.pop()? } else { Node::Rel(xs, ops) })
    }

    fn union(&mut self) -> Option<Node> {
        let mut xs = vec![self.expr()?];
        while self.eat(&Tok::Cup) {
            xs.push(self.expr()?);
        }
        Some(if xs.len() == 1 { xs.pop()? } else { Node::Union(xs) })
    }

    fn expr(&mut self) -> Option<Node> {
        self.enter()?;
        let mut terms = Vec::new();
        let mut pm: Option<Node> = None;
        let mut first = true;
        loop {
            let sign = match self.peek() {
                Some(Tok::Plus) => {
                    self.i += 1;
                    1
                }
                Some(Tok::Minus) => {
                    self.i += 1;
                    -1
                }
                Some(Tok::PlusMinus) => {
                    self.i += 1;
                    0
                }
                _ if first => 1,
                _ => break,
            };
            first = false;
            let t = self.term()?;
            match sign {
                1 => terms.push(t),
                -1 => terms.push(Node::Neg(Box::new(t))),
                _ => {
                    let lhs = match terms.len() {
                        0 => int(0),
                        1 => terms.pop()?,
                        _ => Node::Add(std::mem::take(&mut terms)),
                    };
                    let base = match pm.take() {
                        Some(p) => Node::Add(vec![p, lhs]),
                        None => lhs,
                    };
                    pm = Some(Node::PlusMinus(Box::new(base), Box::new(t)));
                }
            }
        }
        self.depth -= 1;
        if let Some(p) = pm {
            if terms.is_empty() {
                return Some(p);
            }
            terms.insert(0, p);
        }
        Some(if terms.len() == 1 { terms.pop()? } else { Node::Add(terms) })
    }

    fn starts_atom(&self) -> bool {
        match self.peek() {
            Some(
                Tok::Num(_)
                | Tok::Ident(_)
                | Tok::Pi
                | Tok::E
                | Tok::Inf
                | Tok::LParen
                | Tok::LBrace
                | Tok::Frac
                | Tok::Sqrt
                | Tok::Binom
                | Tok::Func(_)
                | Tok::BeginMatrix,
            ) => true,
            Some(Tok::Bar) => self.abs == 0,
            _ => false,
        }
    }

    fn term(&mut self) -> Option<Node> {
        let mut fs = vec![self.unary()?];
        loop {
            match self.peek() {
                Some(Tok::Star) => {
                    self.i += 1;
                    fs.push(self.unary()?);
                }
                Some(Tok::Slash) => {
                    self.i += 1;
                    let d = self.unary()?;
                    let n = if fs.len() == 1 { fs.pop()? } else { Node::Mul(std::mem::take(&mut fs)) };
                    fs.push(Node::Div(Box::new(n), Box::new(d)));
                }
                _ if self.starts_atom() => {
                    // Mixed number `2\frac{1}{2}` = 2 + 1/2.
                    let mixed = matches!(fs.last(), Some(Node::Num(n)) if n.is_integer())
                        && fs.len() == 1
                        && self.peek() == Some(&Tok::Frac);
                    let f = self.power()?;
                    if mixed
                        && let Node::Div(a, b) = &f
                        && let (Node::Num(a), Node::Num(b)) = (a.as_ref(), b.as_ref())
                        && a.is_integer()
                        && b.is_integer()
                        && !b.is_zero()
                    {
                        let Some(Node::Num(w)) = fs.pop() else {
                            return None;
                        };
                        fs.push(Node::Num(w + a / b));
                        continue;
                    }
                    fs.push(f);
                }
                _ => break,
            }
        }
        Some(if fs.len() == 1 { fs.pop()? } else { Node::Mul(fs) })
    }

    fn unary(&mut self) -> Option<Node> {
        match self.peek() {
            Some(Tok::Minus) => {
                self.i += 1;
                self.enter()?;
                let u = self.unary()?;
                self.depth -= 1;
                Some(Node::Neg(Box::new(u)))
            }
            Some(Tok::Plus) => {
                self.i += 1;
                self.unary()
            }
            _ => self.power(),
        }
    }

    fn power(&mut self) -> Option<Node> {
        let base = self.postfix()?;
        if self.eat(&Tok::Caret) {
            self.enter()?;
            let e = self.script()?;
            let e = self.postfix_ops(e);
            self.depth -= 1;
            return Some(Node::Pow(Box::new(base), Box::new(e)));
        }
        Some(base)
    }

    /// A superscript/subscript or single-token argument: `{…}`, a single digit, a letter, `-x`, `(…)`.
    fn script(&mut self) -> Option<Node> {
        match self.peek()? {
            Tok::LBrace => {
                self.i += 1;
                let n = self.top()?;
                self.expect(&Tok::RBrace)?;
                Some(n)
            }
            Tok::Num(_) => self.single_digit(),
            Tok::Minus => {
                self.i += 1;
                Some(Node::Neg(Box::new(self.script()?)))
            }
            _ => self.atom(),
        }
    }

    /// Take one digit of a number token (`\frac12`, `x^23` = x²·3).
    fn single_digit(&mut self) -> Option<Node> {
        let Some(Tok::Num(s)) = self.peek() else {
            return None;
        };
        let s = s.clone();
        let mut cs = s.chars();
        let d = cs.next()?;
        if !d.is_ascii_digit() {
            return None;
        }
        let rest: String = cs.collect();
        if rest.is_empty() {
            self.i += 1;
        } else {
            self.t[self.i] = Tok::Num(rest);
        }
        Some(int(d as i64 - '0' as i64))
    }

    fn postfix(&mut self) -> Option<Node> {
        let a = self.atom()?;
        Some(self.postfix_ops(a))
    }

    fn postfix_ops(&mut self, mut a: Node) -> Node {
        loop {
            if self.eat(&Tok::Bang) {
                a = Node::Fact(Box::new(a));
            } else if self.eat(&Tok::Percent) {
                a = Node::Percent(Box::new(a));
            } else {
                return a;
            }
        }
    }

    fn group_arg(&mut self) -> Option<Node> {
        self.enter()?;
        let r = match self.peek()? {
            Tok::LBrace => {
                self.i += 1;
                let n = self.top()?;
                // `{n \choose k}`
                let n = if self.eat(&Tok::Choose) {
                    let k = self.top()?;
                    Node::Binom(Box::new(n), Box::new(k))
                } else {
                    n
                };
                self.expect(&Tok::RBrace)?;
                n
            }
            Tok::Num(_) => self.single_digit()?,
            _ => self.atom()?,
        };
        self.depth -= 1;
        Some(r)
    }

    fn atom(&mut self) -> Option<Node> {
        self.enter()?;
        let tok = self.peek()?.clone();
        self.i += 1;
        let n = match tok {
            Tok::Num(s) => Node::Num(decimal(&s)?),
            Tok::Ident(name) => {
                let mut name = name;
                if self.eat(&Tok::Underscore) {
                    let sub = match self.peek()?.clone() {
                        Tok::Num(s) | Tok::Ident(s) => {
                            self.i += 1;
                            s
                        }
                        Tok::LBrace => {
                            let st = self.i;
                            self.group_arg()?;
                            format!("{:?}", &self.t[st..self.i])
                        }
                        _ => return None,
                    };
                    name = format!("{name}_{sub}");
                }
                Node::Var(name)
            }
            Tok::Pi => Node::Const(Const::Pi),
            Tok::E => Node::Const(Const::E),
            Tok::Inf => Node::Const(Const::Inf),
            Tok::Empty => Node::Set(vec![]),
            Tok::Reals => Node::Seq {
                open: '(',
                close: ')',
                items: vec![Node::Neg(Box::new(Node::Const(Const::Inf))), Node::Const(Const::Inf)],
            },
            Tok::LBrace => {
                let n = self.top()?;
                let n = if self.eat(&Tok::Choose) { Node::Binom(Box::new(n), Box::new(self.top()?)) } else { n };
                self.expect(&Tok::RBrace)?;
                n
            }
            Tok::LParen | Tok::LBrack => {
                let open = if tok == Tok::LParen { '(' } else { '[' };
                let mut items = Vec::new();
                if !matches!(self.peek(), Some(Tok::RParen | Tok::RBrack)) {
                    items.push(self.rel()?);
                    while self.eat(&Tok::Comma) {
                        items.push(self.rel()?);
                    }
                }
                let close = match self.peek()? {
                    Tok::RParen => ')',
                    Tok::RBrack => ']',
                    _ => return None,
                };
                self.i += 1;
                if items.len() == 1 && (open == '(' || close == ']') && (open == '(') == (close == ')') {
                    items.pop()?
                } else {
                    Node::Seq { open, close, items }
                }
            }
            Tok::SetOpen => {
                let mut items = Vec::new();
                if self.peek() != Some(&Tok::SetClose) {
                    items.push(self.rel()?);
                    while self.eat(&Tok::Comma) {
                        items.push(self.rel()?);
                    }
                }
                self.expect(&Tok::SetClose)?;
                Node::Set(items)
            }
            Tok::Bar if self.abs == 0 => {
                self.abs += 1;
                let e = self.expr()?;
                self.abs -= 1;
                self.expect(&Tok::Bar)?;
                Node::Abs(Box::new(e))
            }
            Tok::Frac => {
                let a = self.group_arg()?;
                let b = self.group_arg()?;
                Node::Div(Box::new(a), Box::new(b))
            }
            Tok::Binom => {
                let a = self.group_arg()?;
                let b = self.group_arg()?;
                Node::Binom(Box::new(a), Box::new(b))
            }
            Tok::Sqrt => {
                let idx = if self.eat(&Tok::LBrack) {
                    let n = self.expr()?;
                    self.expect(&Tok::RBrack)?;
                    n
                } else {
                    int(2)
                };
                let x = if self.peek() == Some(&Tok::LParen) { self.atom()? } else { self.group_arg()? };
                Node::Root(Box::new(idx), Box::new(x))
            }
            Tok::Func(f) => {
                // `\sin^2 x`, `\log_2 8`, `\sin x`, `\sin(2x)`.
                let mut pow = None;
                let mut base = None;
                for _ in 0..2 {
                    if self.eat(&Tok::Caret) {
                        pow = Some(self.script()?);
                    } else if self.eat(&Tok::Underscore) {
                        base = Some(self.script()?);
                    }
                }
                let arg = if self.peek() == Some(&Tok::LParen) {
                    self.postfix()?
                } else {
                    let mut fs = vec![self.power()?];
                    while matches!(self.peek(), Some(Tok::Num(_) | Tok::Ident(_) | Tok::Pi)) {
                        fs.push(self.power()?);
                    }
                    if fs.len() == 1 { fs.pop()? } else { Node::Mul(fs) }
                };
                let call = match (f, base) {
                    (Func::Log, Some(b)) => Node::LogB(Box::new(b), Box::new(arg)),
                    (_, Some(_)) => return None,
                    (f, None) => Node::Func(f, Box::new(arg)),
                };
                match pow {
                    Some(Node::Neg(one)) if matches!(one.as_ref(), Node::Num(n) if n.is_one()) => {
                        // `\sin^{-1}` is arcsin.
                        let inv = match f {
                            Func::Sin => Func::Asin,
                            Func::Cos => Func::Acos,
                            Func::Tan => Func::Atan,
                            _ => return None,
                        };
                        match call {
                            Node::Func(_, a) => Node::Func(inv, a),
                            _ => return None,
                        }
                    }
                    Some(p) => Node::Pow(Box::new(call), Box::new(p)),
                    None => call,
                }
            }
            Tok::BeginMatrix => {
                let mut rows = vec![vec![]];
                loop {
                    match self.peek()? {
                        Tok::EndMatrix => {
                            self.i += 1;
                            break;
                        }
                        Tok::RowSep => {
                            self.i += 1;
                            rows.push(vec![]);
                        }
                        Tok::Amp => self.i += 1,
                        _ => {
                            let e = self.expr()?;
                            rows.last_mut()?.push(e);
                        }
                    }
                }
                rows.retain(|r| !r.is_empty());
                if rows.is_empty() || rows.iter().any(|r| r.len() != rows[0].len()) {
                    return None;
                }
                Node::Matrix(rows)
            }
            _ => return None,
        };
        self.depth -= 1;
        Some(n)
    }
}
