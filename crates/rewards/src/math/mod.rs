//! Math answer verification: extraction, normalisation, and equivalence by exact rationals, numeric
//! evaluation and random points. Model text is parsed into our own AST; nothing is executed, every stage is
//! bounded, and no input makes it panic.
//!
//! Bounds ([`Bound`]): answers longer than [`MAX_ANSWER_CHARS`] and parses nested deeper than [`MAX_DEPTH`]
//! are compared as text; no exact value grows beyond [`MAX_BITS`] bits (that operation is done in floating
//! point instead); one verification visits at most [`MAX_STEPS`] nodes and spends at most [`MAX_WORK`]
//! units of big-integer work, counted from operand sizes rather than measured in time, so a verdict is the
//! same on every machine. Past the work budget, exact arithmetic gives way to double-double/f64 evaluation;
//! past the step budget the evaluation gives up and the answers count as equal only when their trees are
//! identical. Every evaluation is cached for the rest of the verification, so matching lists, sets and `±`
//! variants evaluates each item once. [`Verdict::bounds`] says which bounds a verification reached.

mod ast;
mod compare;
mod dd;
mod eval;
mod extract;
mod lex;

pub use ast::MAX_DEPTH;
pub use eval::{Bound, MAX_BITS, MAX_STEPS, MAX_WORK};
pub use extract::{Source, boxes, extract};

use crate::{Reward, RewardError, Sample, Score, str_field};
use ast::Node;
use compare::Ctx;

/// Longest answer string parsed as math; longer ones are compared as text.
pub const MAX_ANSWER_CHARS: usize = 1000;

/// A parsed answer.
#[derive(Debug, Clone, PartialEq)]
enum Parsed {
    Math(Node),
    Choice(char),
    Text(String),
}

/// Strip the wrappers a multiple-choice letter comes in: `(C)`, `\text{(C)}`, `\textbf{(B)}`, `C.`.
fn choice_letter(s: &str) -> Option<char> {
    let mut t = s.trim().to_string();
    for w in ["\\textbf", "\\text", "\\mathrm", "\\mathbf", "\\mbox"] {
        t = t.replace(w, "");
    }
    let core: String = t.chars().filter(|c| !matches!(c, '{' | '}' | '(' | ')' | ' ' | '.' | ':' | '$')).collect();
    let mut cs = core.chars();
    match (cs.next(), cs.next()) {
        (Some(c), None) if c.is_ascii_uppercase() => Some(c),
        _ => None,
    }
}

/// A prediction's choice letter: the whole answer, or a leading `(B) 17` / `B) 17` / `\textbf{(B)} 17`.
fn pred_choice(s: &str) -> Option<char> {
    if let Some(c) = choice_letter(s) {
        return Some(c);
    }
    let t = s.trim().trim_start_matches("\\textbf{").trim_start_matches("\\text{");
    let b = t.as_bytes();
    match b {
        [b'(', c, b')', ..] | [c, b')', ..] if c.is_ascii_uppercase() => Some(*c as char),
        _ => None,
    }
}

fn text_form(s: &str) -> String {
    let mut t = s.to_lowercase();
    for w in ["\\text", "\\mathrm", "\\textbf", "\\mbox", "\\left", "\\right", "\\displaystyle", "\\!", "\\,", "\\;"] {
        t = t.replace(w, "");
    }
    t.chars().filter(|c| !c.is_whitespace() && !matches!(c, '{' | '}' | '$')).collect::<String>()
}

fn parse_math(s: &str, cx: &mut Ctx) -> Parsed {
    if s.chars().count() > MAX_ANSWER_CHARS {
        cx.budget.hit(Bound::Length);
        return Parsed::Text(text_form(s));
    }
    let Some(toks) = lex::lex(s) else {
        cx.budget.hit(Bound::Length);
        return Parsed::Text(text_form(s));
    };
    match ast::parse_depth(toks) {
        (Some(n), _) => Parsed::Math(n),
        (None, deep) => {
            if deep {
                cx.budget.hit(Bound::Depth);
            }
            Parsed::Text(text_form(s))
        }
    }
}

/// The gold answer: a choice letter, the last `\boxed{}` of a worked solution, or (several boxes given
/// separately, e.g. one per root) the set of every boxed answer.
fn parse_gold(gold: &str, cx: &mut Ctx) -> Parsed {
    let bx = boxes(gold);
    let g = match bx.as_slice() {
        [] => extract::clean(gold),
        [one] => extract::clean(one),
        many => {
            let mut parts: Vec<String> = Vec::new();
            for b in many {
                let c = extract::clean(b);
                if !parts.contains(&c) {
                    parts.push(c);
                }
            }
            if parts.len() == 1 { parts.swap_remove(0) } else { format!("\\{{{}\\}}", parts.join(",")) }
        }
    };
    match choice_letter(&g) {
        Some(c) => Parsed::Choice(c),
        None => parse_math(&g, cx),
    }
}

fn matches(gold: &Parsed, pred: &str, cx: &mut Ctx) -> bool {
    match gold {
        Parsed::Choice(c) => pred_choice(pred) == Some(*c),
        Parsed::Math(g) => match parse_math(pred, cx) {
            Parsed::Math(p) => {
                if compare::equivalent(cx, g, &p) {
                    return true;
                }
                decimal_comma(pred).is_some_and(|alt| match parse_math(&alt, cx) {
                    Parsed::Math(p) => compare::equivalent(cx, g, &p),
                    _ => false,
                })
            }
            Parsed::Text(_) | Parsed::Choice(_) => false,
        },
        Parsed::Text(t) => !t.is_empty() && text_form(pred) == *t,
    }
}

/// `3,5` → `3.5` when the comma cannot be a thousands separator (not three digits after it).
fn decimal_comma(s: &str) -> Option<String> {
    let t = s.trim();
    let (a, b) = t.split_once(',')?;
    let digits = |x: &str| !x.is_empty() && x.bytes().all(|c| c.is_ascii_digit());
    (digits(a.trim_start_matches('-')) && digits(b) && b.len() != 3).then(|| format!("{a}.{b}"))
}

/// Is `pred` (an answer string, already extracted) equivalent to `gold`?
pub fn answers_equivalent(gold: &str, pred: &str) -> bool {
    let mut cx = Ctx::default();
    let g = parse_gold(gold, &mut cx);
    matches(&g, &extract::clean(pred), &mut cx)
}

/// The outcome of verifying one completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Whether the extracted answer matches the gold answer.
    pub correct: bool,
    /// The answer that was compared (the first candidate), if any was found.
    pub extracted: Option<String>,
    /// Where it was found.
    pub source: Option<Source>,
    /// The verifier bounds this verification reached (empty for ordinary answers).
    pub bounds: Vec<Bound>,
    /// Node visits spent (at most [`MAX_STEPS`]).
    pub steps: u32,
    /// Big-integer work units spent (at most [`MAX_WORK`]).
    pub work: u64,
}

/// Extract the answer from `completion` and compare it with `gold`.
pub fn verify(gold: &str, completion: &str) -> Verdict {
    let mut cx = Ctx::default();
    let g = parse_gold(gold, &mut cx);
    let (correct, extracted, source) = match extract(completion) {
        None => (false, None, None),
        Some((cands, source)) => {
            let correct = cands.iter().any(|c| matches(&g, c, &mut cx));
            (correct, cands.into_iter().next(), Some(source))
        }
    };
    let b = &cx.budget;
    let bounds = [Bound::Length, Bound::Depth, Bound::Steps, Bound::Bits, Bound::Work]
        .into_iter()
        .filter(|x| b.reached(*x))
        .collect();
    Verdict { correct, extracted, source, bounds, steps: b.steps(), work: b.work() }
}

/// R1's accuracy reward: 1 when the completion's final answer equals the sample's `answer`, else 0.
#[derive(Debug, Clone, Copy, Default)]
pub struct MathAccuracy;

impl Reward for MathAccuracy {
    fn name(&self) -> &str {
        "accuracy"
    }

    fn score(&self, completion: &str, sample: &Sample) -> Result<Score, RewardError> {
        let gold = str_field(self.name(), sample, "answer")?;
        let v = verify(gold, completion);
        let shown = |s: &Option<String>| s.as_deref().map(|x| x.chars().take(60).collect::<String>());
        Ok(match (&v.extracted, v.correct) {
            (None, _) => Score::new(0.0, "no answer found"),
            (Some(_), true) => Score::new(1.0, format!("correct: {}", shown(&v.extracted).unwrap_or_default())),
            (Some(_), false) => Score::new(0.0, format!("wrong: {}", shown(&v.extracted).unwrap_or_default())),
        })
    }
}
