//! LaTeX / plain-text answer → tokens, with the normalisations that are easiest at this level
//! (`\dfrac`→`\frac`, spacing commands, `\left`/`\right`, degrees, currency, thousands separators, units).

/// A math function applied to one argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Func {
    Sin,
    Cos,
    Tan,
    Sec,
    Csc,
    Cot,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Tanh,
    Ln,
    Log,
    Exp,
}

/// Relation operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl RelOp {
    /// The operator read right-to-left (`a < b` ⇔ `b > a`).
    pub fn flip(self) -> RelOp {
        match self {
            RelOp::Lt => RelOp::Gt,
            RelOp::Le => RelOp::Ge,
            RelOp::Gt => RelOp::Lt,
            RelOp::Ge => RelOp::Le,
            o => o,
        }
    }
}

/// One token.
#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    Num(String),
    Ident(String),
    Func(Func),
    Sqrt,
    Frac,
    Binom,
    Choose,
    Pi,
    E,
    Inf,
    Plus,
    Minus,
    Star,
    Slash,
    Caret,
    Underscore,
    Bang,
    Percent,
    PlusMinus,
    LParen,
    RParen,
    LBrack,
    RBrack,
    LBrace,
    RBrace,
    SetOpen,
    SetClose,
    Bar,
    Comma,
    Amp,
    RowSep,
    Rel(RelOp),
    Cup,
    In,
    Empty,
    Reals,
    BeginMatrix,
    EndMatrix,
    /// A word (units, prose); the parser drops these.
    Word,
    /// A construct we do not understand: the parse fails and the answer is compared as text.
    Unknown,
}

/// Token limit: longer answers are compared as text.
pub const MAX_TOKENS: usize = 2000;

/// Tokenise; `None` when the input is too long.
pub fn lex(src: &str) -> Option<Vec<Tok>> {
    let mut lx = Lexer { s: src.as_bytes(), src, i: 0, out: Vec::new(), depth: 0 };
    lx.run()?;
    Some(lx.out)
}

struct Lexer<'a> {
    s: &'a [u8],
    src: &'a str,
    i: usize,
    out: Vec<Tok>,
    depth: i32,
}

const UNIT_WORDS_2: &[&str] =
    &["cm", "mm", "km", "kg", "mg", "ml", "mL", "ft", "yd", "mi", "hr", "sq", "lb", "oz", "am", "pm"];

impl Lexer<'_> {
    fn push(&mut self, t: Tok) -> Option<()> {
        match t {
            Tok::LParen | Tok::LBrack | Tok::SetOpen => self.depth += 1,
            Tok::RParen | Tok::RBrack | Tok::SetClose => self.depth -= 1,
            _ => {}
        }
        self.out.push(t);
        (self.out.len() <= MAX_TOKENS).then_some(())
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn rest(&self) -> &str {
        self.src.get(self.i..).unwrap_or("")
    }

    /// Step over one whole character (the cursor stays on a char boundary).
    fn skip_char(&mut self) {
        self.i += self.src.get(self.i..).and_then(|r| r.chars().next()).map_or(1, char::len_utf8);
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    /// Read `{…}` (balanced) at the cursor and return its inside.
    fn brace_group(&mut self) -> Option<&str> {
        self.skip_ws();
        if self.peek() != Some(b'{') {
            return None;
        }
        let start = self.i + 1;
        let mut d = 0usize;
        while let Some(c) = self.peek() {
            match c {
                b'\\' => {
                    self.i += 1;
                    self.skip_char();
                    continue;
                }
                b'{' => d += 1,
                b'}' => {
                    d -= 1;
                    if d == 0 {
                        self.i += 1;
                        return Some(&self.src[start..self.i - 1]);
                    }
                }
                _ => {}
            }
            self.i += 1;
        }
        None
    }

    fn run(&mut self) -> Option<()> {
        while self.i < self.s.len() {
            let c = self.s[self.i];
            match c {
                b' ' | b'\t' | b'\n' | b'\r' | b'~' | b'$' => self.i += 1,
                b'0'..=b'9' | b'.' if c != b'.' || self.s.get(self.i + 1).is_some_and(u8::is_ascii_digit) => {
                    self.number()?
                }
                b'.' | b':' | b';' => {
                    // A trailing period is punctuation; `;` separates list items.
                    self.i += 1;
                    if c == b';' {
                        self.push(Tok::Comma)?;
                    } else if c == b':' {
                        self.push(Tok::Unknown)?;
                    }
                }
                b'\\' => self.command()?,
                b'a'..=b'z' | b'A'..=b'Z' => self.word()?,
                b'+' => {
                    self.i += 1;
                    if self.peek() == Some(b'-') {
                        self.i += 1;
                        self.push(Tok::PlusMinus)?;
                    } else {
                        self.push(Tok::Plus)?;
                    }
                }
                b'-' => {
                    self.i += 1;
                    self.push(Tok::Minus)?;
                }
                b'*' => {
                    self.i += 1;
                    if self.peek() == Some(b'*') {
                        self.i += 1;
                        self.push(Tok::Caret)?;
                    } else {
                        self.push(Tok::Star)?;
                    }
                }
                b'/' => {
                    self.i += 1;
                    self.push(Tok::Slash)?;
                }
                b'^' => {
                    self.i += 1;
                    if self.degree_follows() {
                        continue;
                    }
                    self.push(Tok::Caret)?;
                }
                b'_' => {
                    self.i += 1;
                    self.push(Tok::Underscore)?;
                }
                b'!' => {
                    self.i += 1;
                    if self.peek() == Some(b'=') {
                        self.i += 1;
                        self.push(Tok::Rel(RelOp::Ne))?;
                    } else {
                        self.push(Tok::Bang)?;
                    }
                }
                b'%' => {
                    self.i += 1;
                    self.push(Tok::Percent)?;
                }
                b'(' => {
                    self.i += 1;
                    self.push(Tok::LParen)?;
                }
                b')' => {
                    self.i += 1;
                    self.push(Tok::RParen)?;
                }
                b'[' => {
                    self.i += 1;
                    self.push(Tok::LBrack)?;
                }
                b']' => {
                    self.i += 1;
                    self.push(Tok::RBrack)?;
                }
                b'{' => {
                    // `{,}` is a thousands separator handled by `number`; elsewhere a group.
                    self.i += 1;
                    self.push(Tok::LBrace)?;
                }
                b'}' => {
                    self.i += 1;
                    self.push(Tok::RBrace)?;
                }
                b'|' => {
                    self.i += 1;
                    self.push(Tok::Bar)?;
                }
                b',' => {
                    self.i += 1;
                    self.push(Tok::Comma)?;
                }
                b'&' => {
                    self.i += 1;
                    self.push(Tok::Amp)?;
                }
                b'=' => {
                    self.i += 1;
                    if self.peek() == Some(b'=') {
                        self.i += 1;
                    }
                    self.push(Tok::Rel(RelOp::Eq))?;
                }
                b'<' | b'>' => {
                    self.i += 1;
                    let eq = self.peek() == Some(b'=');
                    if eq {
                        self.i += 1;
                    }
                    self.push(Tok::Rel(match (c, eq) {
                        (b'<', false) => RelOp::Lt,
                        (b'<', true) => RelOp::Le,
                        (_, false) => RelOp::Gt,
                        (_, true) => RelOp::Ge,
                    }))?;
                }
                b'\'' | b'"' | b'`' | b'?' | b'#' | b'@' => {
                    self.i += 1;
                    self.push(Tok::Unknown)?;
                }
                0x80.. => self.unicode()?,
                _ => {
                    self.i += 1;
                    self.push(Tok::Unknown)?;
                }
            }
        }
        Some(())
    }

    /// After `^`: `\circ`, `{\circ}` mean degrees and are dropped.
    fn degree_follows(&mut self) -> bool {
        let r = self.rest();
        for pat in ["{\\circ}", "\\circ", "{ \\circ }", "{\\circ }"] {
            if r.starts_with(pat) {
                self.i += pat.len();
                return true;
            }
        }
        false
    }

    fn digits(&mut self) -> usize {
        let st = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        self.i - st
    }

    fn number(&mut self) -> Option<()> {
        let mut text = String::new();
        let st = self.i;
        let lead = self.digits();
        text.push_str(&self.src[st..self.i]);
        // Thousands separators `7,425,000`, `1{,}000`, `1\,000`, only outside brackets and after 1-3 digits.
        if (1..=3).contains(&lead) && !text.starts_with('0') {
            loop {
                let r = self.rest();
                let sep = if self.depth == 0 && r.starts_with(',') {
                    1
                } else if r.starts_with("{,}") {
                    3
                } else if r.starts_with("\\,") {
                    2
                } else {
                    0
                };
                let g = r.as_bytes();
                if sep > 0
                    && g.len() >= sep + 3
                    && g[sep..sep + 3].iter().all(u8::is_ascii_digit)
                    && !g.get(sep + 3).is_some_and(u8::is_ascii_digit)
                {
                    text.push_str(&r[sep..sep + 3]);
                    self.i += sep + 3;
                } else {
                    break;
                }
            }
        }
        if self.peek() == Some(b'.') && self.s.get(self.i + 1).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
            let st = self.i;
            self.digits();
            text.push('.');
            text.push_str(&self.src[st..self.i]);
        }
        if text.len() > 400 {
            return None;
        }
        // Scientific notation written by programs: `1.5e3`, `2E-4` (digits right after).
        let r: Vec<u8> = self.rest().bytes().take(12).collect();
        if matches!(r.first(), Some(b'e' | b'E')) {
            let mut k = 1;
            if matches!(r.get(1), Some(b'+' | b'-')) {
                k = 2;
            }
            if r.get(k).is_some_and(u8::is_ascii_digit) && !r.get(k + 1).is_some_and(u8::is_ascii_alphabetic) {
                self.i += k;
                let st = self.i;
                self.digits();
                if self.i - st > 6 {
                    return None;
                }
                let exp = &self.src[st..self.i];
                let neg = r[1] == b'-';
                self.push(Tok::LParen)?;
                self.push(Tok::Num(text))?;
                self.push(Tok::Star)?;
                self.push(Tok::Num("10".into()))?;
                self.push(Tok::Caret)?;
                self.push(Tok::LBrace)?;
                if neg {
                    self.push(Tok::Minus)?;
                }
                self.push(Tok::Num(exp.into()))?;
                self.push(Tok::RBrace)?;
                return self.push(Tok::RParen);
            }
        }
        self.push(Tok::Num(text))
    }

    fn word(&mut self) -> Option<()> {
        let st = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
            self.i += 1;
        }
        let w = &self.src[st..self.i];
        let t = match w {
            "sqrt" => Tok::Sqrt,
            "pi" => Tok::Pi,
            "e" => Tok::E,
            "inf" | "infty" | "infinity" | "oo" => Tok::Inf,
            "or" | "and" => Tok::Comma,
            "U" => Tok::Cup,
            _ => match func_name(w) {
                Some(f) => Tok::Func(f),
                None if w.len() == 1 => Tok::Ident(w.into()),
                None if w.len() == 2 && !UNIT_WORDS_2.contains(&w) => {
                    // `xy` is x·y.
                    for ch in w.chars() {
                        let t = if ch == 'e' { Tok::E } else { Tok::Ident(ch.to_string()) };
                        self.push(t)?;
                    }
                    return Some(());
                }
                None => Tok::Word,
            },
        };
        self.push(t)
    }

    fn unicode(&mut self) -> Option<()> {
        let ch = self.rest().chars().next()?;
        self.i += ch.len_utf8();
        let t = match ch {
            'π' => Tok::Pi,
            '√' => Tok::Sqrt,
            '∞' => Tok::Inf,
            '≤' | '⩽' => Tok::Rel(RelOp::Le),
            '≥' | '⩾' => Tok::Rel(RelOp::Ge),
            '≠' => Tok::Rel(RelOp::Ne),
            '×' | '·' | '⋅' | '∗' => Tok::Star,
            '÷' => Tok::Slash,
            '−' | '–' => Tok::Minus,
            '±' => Tok::PlusMinus,
            '∪' => Tok::Cup,
            '∈' => Tok::In,
            '∅' => Tok::Empty,
            'ℝ' => Tok::Reals,
            '°' | '€' | '£' | '¥' | '\u{a0}' | '\u{2009}' => return Some(()),
            '²' | '³' => {
                self.push(Tok::Caret)?;
                Tok::Num(if ch == '²' { "2" } else { "3" }.into())
            }
            c if c.is_alphabetic() => {
                while self.rest().chars().next().is_some_and(char::is_alphabetic) {
                    self.i += self.rest().chars().next().map_or(1, char::len_utf8);
                }
                Tok::Word
            }
            _ => Tok::Unknown,
        };
        self.push(t)
    }

    fn command(&mut self) -> Option<()> {
        self.i += 1;
        let Some(c) = self.peek() else {
            return Some(());
        };
        if !c.is_ascii_alphabetic() {
            self.skip_char();
            let t = match c {
                b',' | b'!' | b';' | b':' | b' ' | b'>' => return Some(()),
                b'{' => Tok::SetOpen,
                b'}' => Tok::SetClose,
                b'%' => Tok::Percent,
                b'$' => return Some(()),
                b'\\' => Tok::RowSep,
                b'|' => Tok::Bar,
                // `\(`, `\)`, `\[`, `\]` are math delimiters.
                b'(' | b')' | b'[' | b']' => return Some(()),
                _ => Tok::Unknown,
            };
            return self.push(t);
        }
        let st = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_alphabetic()) {
            self.i += 1;
        }
        let name = &self.src[st..self.i];
        let t = match name {
            "left" | "right" | "big" | "Big" | "bigg" | "Bigg" | "bigl" | "bigr" | "Bigl" | "Bigr" | "biggl"
            | "biggr" | "displaystyle" | "textstyle" | "quad" | "qquad" | "circ" | "degree" | "boxed" | "fbox"
            | "limits" | "nolimits" | "hbox" | "mathit" | "rm" | "bf" | "it" | "medspace" | "thinspace"
            | "negthinspace" | "dollar" | "cdotp" | "ensuremath" => {
                // `\left.` / `\right.` are empty delimiters.
                if (name == "left" || name == "right") && self.peek() == Some(b'.') {
                    self.i += 1;
                }
                return Some(());
            }
            "frac" | "dfrac" | "tfrac" | "cfrac" => Tok::Frac,
            "sqrt" => Tok::Sqrt,
            "binom" | "dbinom" | "tbinom" => Tok::Binom,
            "choose" => Tok::Choose,
            "pi" => Tok::Pi,
            "infty" | "infin" => Tok::Inf,
            "cdot" | "times" | "ast" => Tok::Star,
            "div" => Tok::Slash,
            "pm" | "mp" => Tok::PlusMinus,
            "le" | "leq" | "leqslant" => Tok::Rel(RelOp::Le),
            "ge" | "geq" | "geqslant" => Tok::Rel(RelOp::Ge),
            "lt" => Tok::Rel(RelOp::Lt),
            "gt" => Tok::Rel(RelOp::Gt),
            "ne" | "neq" => Tok::Rel(RelOp::Ne),
            "cup" => Tok::Cup,
            "in" => Tok::In,
            "emptyset" | "varnothing" => Tok::Empty,
            "lbrace" => Tok::SetOpen,
            "rbrace" => Tok::SetClose,
            "langle" => Tok::LParen,
            "rangle" => Tok::RParen,
            "vert" | "lvert" | "rvert" | "mid" => Tok::Bar,
            "lfloor" | "rfloor" | "lceil" | "rceil" => Tok::Unknown,
            "exp" => Tok::Func(Func::Exp),
            "text" | "textbf" | "mbox" | "textit" | "textrm" | "mathrm" | "mathbf" | "operatorname" | "textnormal" => {
                return self.text_command(name);
            }
            "mathbb" => {
                let g = self.brace_group().unwrap_or("").trim();
                if g == "R" { Tok::Reals } else { Tok::Unknown }
            }
            "begin" => {
                let env = self.brace_group().unwrap_or("");
                if env.ends_with("matrix") {
                    Tok::BeginMatrix
                } else if env == "array" {
                    // column spec
                    self.brace_group();
                    Tok::BeginMatrix
                } else {
                    Tok::Unknown
                }
            }
            "end" => {
                let env = self.brace_group().unwrap_or("");
                if env.ends_with("matrix") || env == "array" { Tok::EndMatrix } else { Tok::Unknown }
            }
            "cr" => Tok::RowSep,
            _ => match func_name(name) {
                Some(f) => Tok::Func(f),
                None if GREEK.contains(&name) => Tok::Ident(name.into()),
                None => Tok::Unknown,
            },
        };
        self.push(t)
    }

    /// `\text{…}` and friends: keep the content when it is math-like (a choice letter, a number, a
    /// function name), turn `or`/`and` into list commas, drop unit words.
    fn text_command(&mut self, name: &str) -> Option<()> {
        let Some(inner) = self.brace_group() else {
            return self.push(Tok::Unknown);
        };
        let inner = inner.to_string();
        if (name == "operatorname" || name == "mathrm")
            && let Some(f) = func_name(inner.trim())
        {
            return self.push(Tok::Func(f));
        }
        let t = inner.trim();
        if ["m", "g", "s", "h", "L", "K", "N", "J", "W", "V", "A"].contains(&t) {
            // A single-letter unit in text (`12\,\mathrm{m}^3`), not a variable.
            return self.push(Tok::Word);
        }
        let sub = lex(&inner)?;
        for t in sub {
            self.push(t)?;
        }
        Some(())
    }
}

const GREEK: &[&str] = &[
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "varepsilon",
    "zeta",
    "eta",
    "theta",
    "vartheta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "rho",
    "sigma",
    "tau",
    "upsilon",
    "phi",
    "varphi",
    "chi",
    "psi",
    "omega",
    "Gamma",
    "Delta",
    "Theta",
    "Lambda",
    "Xi",
    "Sigma",
    "Phi",
    "Psi",
    "Omega",
];

fn func_name(w: &str) -> Option<Func> {
    Some(match w {
        "sin" => Func::Sin,
        "cos" => Func::Cos,
        "tan" | "tg" => Func::Tan,
        "sec" => Func::Sec,
        "csc" => Func::Csc,
        "cot" | "ctg" => Func::Cot,
        "arcsin" | "asin" => Func::Asin,
        "arccos" | "acos" => Func::Acos,
        "arctan" | "atan" => Func::Atan,
        "sinh" => Func::Sinh,
        "cosh" => Func::Cosh,
        "tanh" => Func::Tanh,
        "ln" => Func::Ln,
        "log" | "lg" => Func::Log,
        "exp" => Func::Exp,
        _ => return None,
    })
}
