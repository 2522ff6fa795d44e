//! Math answer verification: extraction, normalisation, and equivalence by exact rationals, numeric
//! evaluation and random points. Model text is parsed into our own AST; nothing is executed, every stage is
//! bounded (input length, tokens, depth, evaluation steps), and no input makes it panic.

mod ast;
mod compare;
mod dd;
mod eval;
mod extract;
mod lex;

pub use extract::{Source, boxes, extract};

use crate::{Reward, RewardError, Sample, Score, str_field};
use ast::Node;

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

fn parse_math(s: &str) -> Parsed {
    if s.chars().count() > MAX_ANSWER_CHARS {
        return Parsed::Text(text_form(s));
    }
    match lex::lex(s).and_then(ast::parse) {
        Some(n) => Parsed::Math(n),
        None => Parsed::Text(text_form(s)),
    }
}

fn parse_gold(gold: &str) -> Parsed {
    let bx = boxes(gold);
    let g = match bx.last() {
        Some(b) => extract::clean(b),
        None => extract::clean(gold),
    };
    match choice_letter(&g) {
        Some(c) => Parsed::Choice(c),
        None => parse_math(&g),
    }
}

fn matches(gold: &Parsed, pred: &str) -> bool {
    match gold {
        Parsed::Choice(c) => pred_choice(pred) == Some(*c),
        Parsed::Math(g) => match parse_math(pred) {
            Parsed::Math(p) => {
                if compare::equivalent(g, &p) {
                    return true;
                }
                decimal_comma(pred).is_some_and(|alt| match parse_math(&alt) {
                    Parsed::Math(p) => compare::equivalent(g, &p),
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
    matches(&parse_gold(gold), &extract::clean(pred))
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
}

/// Extract the answer from `completion` and compare it with `gold`.
pub fn verify(gold: &str, completion: &str) -> Verdict {
    let g = parse_gold(gold);
    let Some((cands, source)) = extract(completion) else {
        return Verdict { correct: false, extracted: None, source: None };
    };
    let correct = cands.iter().any(|c| matches(&g, c));
    Verdict { correct, extracted: cands.into_iter().next(), source: Some(source) }
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
