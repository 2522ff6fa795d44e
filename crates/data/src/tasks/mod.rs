//! Embedded synthetic tasks with verifiable answers, deterministic from a seed.
//!
//! - [`chain`]: the "bounded chain" arithmetic task (`Q: 7-3+2+0\nA: ` → `6`) with a seeded train/held-out
//!   split and the clean R1-format completion.
//! - [`corpus`]: the pretraining corpus of `docs/miniature.md` (direct answers, tagged and messy chains of
//!   thought) and the cold-start SFT set, drawn from training problems only.
//! - [`strict_answer`] / [`any_final_number`]: answer extractors for evaluation.

pub mod chain;
pub mod corpus;

pub use chain::{ChainTask, Grade, Problem};
pub use corpus::{Corpus, CorpusMix, DocKind, Document, cold_start_records};

use crate::tokenizer::{ANSWER, ANSWER_END};

/// The integer inside the first `<answer>…</answer>` (surrounding whitespace allowed), if it is exactly one.
pub fn strict_answer(completion: &str) -> Option<i64> {
    let start = completion.find(ANSWER)? + ANSWER.len();
    let len = completion[start..].find(ANSWER_END)?;
    parse_int(completion[start..start + len].trim())
}

/// The last integer anywhere in the text (a `-` counts as a sign only when no digit, letter or `)` precedes it,
/// so `7-3` reads as 7 and 3).
pub fn any_final_number(completion: &str) -> Option<i64> {
    let b = completion.as_bytes();
    let mut last = None;
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let mut start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if start > 0
                && b[start - 1] == b'-'
                && (start < 2 || !(b[start - 2].is_ascii_alphanumeric() || b[start - 2] == b')'))
            {
                start -= 1;
            }
            if let Some(v) = parse_int(&completion[start..i]) {
                last = Some(v);
            }
        } else {
            i += 1;
        }
    }
    last
}

fn parse_int(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}
