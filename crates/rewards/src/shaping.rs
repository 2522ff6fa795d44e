//! Format and shaping rewards: strict format, tag count, reasoning steps, language consistency, cosine
//! length, repetition penalty and DAPO's soft overlong punishment.

use crate::{Reward, RewardError, Sample, Score, math, str_field};
use regex::Regex;
use std::collections::HashSet;
use std::sync::LazyLock;

static FORMAT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?s)\A<think>\n(.*?)\n</think>\n<answer>\n(.*?)\n</answer>\s*\z").expect("static regex")
});

/// Strict R1 format: exactly one non-empty think block, then one non-empty answer block, nothing after.
#[derive(Debug, Clone, Copy, Default)]
pub struct Format;

/// Check the strict format; the reason says what is wrong.
pub fn format_check(c: &str) -> Result<(), &'static str> {
    let caps = FORMAT.captures(c).ok_or("not <think>…</think><answer>…</answer> with nothing after")?;
    let (think, answer) = (caps.get(1).map_or("", |m| m.as_str()), caps.get(2).map_or("", |m| m.as_str()));
    if think.trim().is_empty() || answer.trim().is_empty() {
        return Err("empty think or answer block");
    }
    for tag in ["<think>", "</think>", "<answer>", "</answer>"] {
        if c.matches(tag).count() != 1 {
            return Err("a tag appears more than once");
        }
    }
    Ok(())
}

impl Reward for Format {
    fn name(&self) -> &str {
        "format"
    }
    fn score(&self, c: &str, _: &Sample) -> Result<Score, RewardError> {
        Ok(match format_check(c) {
            Ok(()) => Score::new(1.0, "format ok"),
            Err(why) => Score::new(0.0, why),
        })
    }
}

/// 0.25 for each of `<think>\n`, `\n</think>\n`, `\n<answer>\n`, `\n</answer>` present exactly once.
#[derive(Debug, Clone, Copy, Default)]
pub struct TagCount;

impl Reward for TagCount {
    fn name(&self) -> &str {
        "tag_count"
    }
    fn score(&self, c: &str, _: &Sample) -> Result<Score, RewardError> {
        let n = ["<think>\n", "\n</think>\n", "\n<answer>\n", "\n</answer>"]
            .iter()
            .filter(|t| c.matches(*t).count() == 1)
            .count();
        Ok(Score::new(0.25 * n as f64, format!("{n}/4 tags once")))
    }
}

static STEPS: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?m)(^\s*Step \d+:|^\s*\d+\.\s|^\s*[-*]\s|\bFirst,|\bSecond,|\bNext,|\bFinally,)")
        .expect("static regex")
});

/// min(1, step markers / 3): "Step 1:", numbered or bulleted lines, "First," … "Finally,".
#[derive(Debug, Clone, Copy, Default)]
pub struct ReasoningSteps;

impl Reward for ReasoningSteps {
    fn name(&self) -> &str {
        "reasoning_steps"
    }
    fn score(&self, c: &str, _: &Sample) -> Result<Score, RewardError> {
        let n = STEPS.find_iter(c).count();
        Ok(Score::new((n as f64 / 3.0).min(1.0), format!("{n} step markers")))
    }
}

/// The writing system a word is in; digits, punctuation and math symbols are neutral (`None`).
fn script_of(ch: char) -> Option<&'static str> {
    match ch as u32 {
        0x41..=0x5A | 0x61..=0x7A | 0xC0..=0x24F => Some("latin"),
        0x370..=0x3FF => Some("greek"),
        0x400..=0x4FF => Some("cyrillic"),
        0x600..=0x6FF => Some("arabic"),
        0x3040..=0x30FF => Some("kana"),
        0xAC00..=0xD7AF | 0x1100..=0x11FF => Some("hangul"),
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0xF900..=0xFAFF => Some("cjk"),
        _ => None,
    }
}

/// Scripts that count as the target language.
fn target_scripts(lang: &str) -> Option<&'static [&'static str]> {
    Some(match lang.to_ascii_lowercase().as_str() {
        "en" | "english" | "fr" | "de" | "es" | "it" | "pt" | "latin" => &["latin"],
        "zh" | "chinese" | "cjk" => &["cjk"],
        "ja" | "japanese" => &["cjk", "kana"],
        "ko" | "korean" => &["hangul", "cjk"],
        "ru" | "russian" => &["cyrillic"],
        "ar" | "arabic" => &["arabic"],
        "el" | "greek" => &["greek"],
        _ => return None,
    })
}

/// Split text into words: runs of one script; each CJK character is a word of its own.
fn words_by_script(text: &str) -> Vec<&'static str> {
    let mut out = Vec::new();
    let mut cur: Option<&'static str> = None;
    for ch in text.chars() {
        let s = script_of(ch);
        match s {
            Some("cjk") => {
                out.push("cjk");
                cur = None;
            }
            Some(s) if cur != Some(s) => {
                out.push(s);
                cur = Some(s);
            }
            Some(_) => {}
            None => cur = None,
        }
    }
    out
}

/// Share of chain-of-thought words in the target language (`language` field, default English); words are
/// assigned a language by their script; a CoT with no words scores 1. Math in LaTeX commands (`\frac`) counts
/// as Latin, so for non-Latin targets LaTeX commands are removed first.
#[derive(Debug, Clone, Copy, Default)]
pub struct LanguageConsistency;

static LATEX_CMD: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\\[A-Za-z]+|\$[^$]*\$").expect("static regex"));

/// The share of words in `text` whose script belongs to `lang` (None for an unknown language code).
pub fn language_share(text: &str, lang: &str) -> Option<f64> {
    let targets = target_scripts(lang)?;
    let stripped = LATEX_CMD.replace_all(text, " ");
    let words = words_by_script(&stripped);
    if words.is_empty() {
        return Some(1.0);
    }
    let hit = words.iter().filter(|w| targets.contains(w)).count();
    Some(hit as f64 / words.len() as f64)
}

/// The think block, or the whole completion when there is none.
pub fn cot(c: &str) -> &str {
    match (c.find("<think>"), c.find("</think>")) {
        (Some(a), Some(b)) if b >= a + 7 => &c[a + 7..b],
        (None, Some(b)) => &c[..b],
        _ => c,
    }
}

impl Reward for LanguageConsistency {
    fn name(&self) -> &str {
        "language"
    }
    fn score(&self, c: &str, s: &Sample) -> Result<Score, RewardError> {
        let lang = match s.get("language") {
            None => "en",
            Some(_) => str_field(self.name(), s, "language")?,
        };
        let share = language_share(cot(c), lang).ok_or_else(|| RewardError::BadField {
            reward: self.name().into(),
            field: "language".into(),
            detail: format!("unknown language `{lang}`"),
        })?;
        Ok(Score::new(share, format!("{:.0}% of CoT words in {lang}", share * 100.0)))
    }
}

/// Length of a completion: the sample's `completion_tokens` field if present, else its characters.
fn length(reward: &str, c: &str, s: &Sample) -> Result<f64, RewardError> {
    match s.get("completion_tokens") {
        None => Ok(c.chars().count() as f64),
        Some(v) => v.as_f64().filter(|x| *x >= 0.0).ok_or_else(|| RewardError::BadField {
            reward: reward.into(),
            field: "completion_tokens".into(),
            detail: format!("expected a non-negative number, got {v}"),
        }),
    }
}

/// Cosine-scaled length reward (open-r1), with p = len/max_len clamped to [0, 1].
#[derive(Debug, Clone, Copy)]
pub struct CosineLength {
    pub max_len: f64,
    pub correct: (f64, f64),
    pub wrong: (f64, f64),
}

impl Default for CosineLength {
    fn default() -> Self {
        Self { max_len: 1000.0, correct: (0.5, 1.0), wrong: (-0.5, -1.0) }
    }
}

impl CosineLength {
    /// r = lo + ½(hi − lo)(1 + cos πp); `(lo, hi)` from the correct or wrong pair.
    pub fn value(&self, len: f64, correct: bool) -> f64 {
        let p = (len / self.max_len).clamp(0.0, 1.0);
        let (lo, hi) = if correct { self.correct } else { self.wrong };
        lo + 0.5 * (hi - lo) * (1.0 + (std::f64::consts::PI * p).cos())
    }
}

impl Reward for CosineLength {
    fn name(&self) -> &str {
        "cosine"
    }
    fn score(&self, c: &str, s: &Sample) -> Result<Score, RewardError> {
        let gold = str_field(self.name(), s, "answer")?;
        let ok = math::verify(gold, c).correct;
        let len = length(self.name(), c, s)?;
        Ok(Score::new(self.value(len, ok), format!("{} at length {len}", if ok { "correct" } else { "wrong" })))
    }
}

/// (1 − unique n-grams / n-grams) × max_penalty over whitespace words (max_penalty ≤ 0).
#[derive(Debug, Clone, Copy)]
pub struct RepetitionPenalty {
    pub n: usize,
    pub max_penalty: f64,
}

impl Default for RepetitionPenalty {
    fn default() -> Self {
        Self { n: 3, max_penalty: -1.0 }
    }
}

impl RepetitionPenalty {
    /// The penalty of a text.
    pub fn value(&self, text: &str) -> f64 {
        let words: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
        if self.n == 0 || words.len() < self.n {
            return 0.0;
        }
        let grams: Vec<&[String]> = words.windows(self.n).collect();
        let unique: HashSet<&[String]> = grams.iter().copied().collect();
        (1.0 - unique.len() as f64 / grams.len() as f64) * self.max_penalty
    }
}

impl Reward for RepetitionPenalty {
    fn name(&self) -> &str {
        "repetition"
    }
    fn score(&self, c: &str, _: &Sample) -> Result<Score, RewardError> {
        let v = self.value(c);
        Ok(Score::new(v, format!("{}-gram repetition penalty", self.n)))
    }
}

/// DAPO soft overlong punishment on length L: 0 if L ≤ Lmax − C; (Lmax − C − L)/C up to Lmax; −1 beyond.
#[derive(Debug, Clone, Copy)]
pub struct OverlongPunishment {
    pub max_len: f64,
    pub cache: f64,
}

impl Default for OverlongPunishment {
    fn default() -> Self {
        Self { max_len: 20480.0, cache: 4096.0 }
    }
}

impl OverlongPunishment {
    /// The punishment for length `len`.
    pub fn value(&self, len: f64) -> f64 {
        let free = self.max_len - self.cache;
        if len <= free {
            0.0
        } else if len <= self.max_len {
            (free - len) / self.cache
        } else {
            -1.0
        }
    }
}

impl Reward for OverlongPunishment {
    fn name(&self) -> &str {
        "overlong"
    }
    fn score(&self, c: &str, s: &Sample) -> Result<Score, RewardError> {
        let len = length(self.name(), c, s)?;
        Ok(Score::new(self.value(len), format!("length {len} of {}", self.max_len)))
    }
}
