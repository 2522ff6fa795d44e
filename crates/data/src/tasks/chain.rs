//! The "bounded chain": digits joined by `+`/`-`, every running value in 0–9, evaluated left to right.
//!
//! Level = number of operands (default 4). The prompt is one user turn of the project chat template,
//! `Q: 7-3+2+0\nA: `, and the clean completion is in R1's strict format (what `rewards`' `format` reward
//! accepts): `<think>\n7-3=4\n4+2=6\n6+0=6\n</think>\n<answer>\n6\n</answer>`, then `<eos>`.

use rand::{Rng, RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::chat::{Message, apply_chat_template};
use crate::error::{Result, invalid};
use crate::jsonl::Record;
use crate::split::is_test;
use crate::tasks::{any_final_number, strict_answer};
use crate::tokenizer::{ANSWER, ANSWER_END, EOS, THINK, THINK_END};

/// Smallest level (operands).
pub const MIN_LEVEL: usize = 2;
/// Largest level (operands).
pub const MAX_LEVEL: usize = 16;
/// The default level of `docs/miniature.md`.
pub const DEFAULT_LEVEL: usize = 4;

/// Rejection-sampling attempts before a split side is declared empty.
const MAX_ATTEMPTS: usize = 1_000_000;

/// One chain problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// The expression, e.g. `7-3+2+0`.
    pub expr: String,
    /// What the model is given: `Q: 7-3+2+0\nA: `.
    pub prompt: String,
    /// The gold answer, e.g. `6`.
    pub answer: String,
    /// The clean completion (strict R1 format, without `<eos>`).
    pub cot: String,
    /// Number of operands.
    pub level: usize,
    /// The operands, first to last.
    pub operands: Vec<u8>,
    /// The operators (`+` or `-`), one fewer than the operands.
    pub ops: Vec<char>,
}

/// One step of the evaluation: `lhs op rhs = result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Running value before the step.
    pub lhs: u8,
    /// `+` or `-`.
    pub op: char,
    /// The operand.
    pub rhs: u8,
    /// Running value after the step.
    pub result: u8,
}

impl Problem {
    /// Build from operands and operators; every running value must stay in 0–9.
    pub fn new(operands: Vec<u8>, ops: Vec<char>) -> Result<Self> {
        if operands.len() < MIN_LEVEL || operands.len() > MAX_LEVEL {
            return invalid("operands", operands.len(), format!("a chain has {MIN_LEVEL}..={MAX_LEVEL} operands"));
        }
        if ops.len() + 1 != operands.len() {
            return invalid("ops", ops.len(), format!("must be one fewer than the {} operands", operands.len()));
        }
        let mut v = i32::from(operands[0]);
        for (i, (&op, &d)) in ops.iter().zip(&operands[1..]).enumerate() {
            if operands[0] > 9 || d > 9 {
                return invalid("operand", d.max(operands[0]), "operands are digits 0-9");
            }
            v = match op {
                '+' => v + i32::from(d),
                '-' => v - i32::from(d),
                other => return invalid("op", other, "must be + or -"),
            };
            if !(0..=9).contains(&v) {
                return invalid("running value", v, format!("after step {} must stay in 0-9", i + 1));
            }
        }
        let mut expr = operands[0].to_string();
        for (op, d) in ops.iter().zip(&operands[1..]) {
            expr.push(*op);
            expr.push(char::from(b'0' + d));
        }
        let prompt = apply_chat_template(&[Message::user(expr.clone())], true);
        let mut p =
            Problem { expr, prompt, answer: v.to_string(), cot: String::new(), level: operands.len(), operands, ops };
        let lines: Vec<String> = p.steps().iter().map(Step::to_string).collect();
        p.cot = format!("{THINK}\n{}\n{THINK_END}\n{ANSWER}\n{}\n{ANSWER_END}", lines.join("\n"), p.answer);
        Ok(p)
    }

    /// Parse an expression such as `7-3+2+0`.
    pub fn parse(expr: &str) -> Result<Self> {
        let (mut operands, mut ops) = (Vec::new(), Vec::new());
        for (i, c) in expr.chars().enumerate() {
            match (i % 2, c) {
                (0, '0'..='9') => operands.push(c as u8 - b'0'),
                (1, '+' | '-') => ops.push(c),
                _ => return invalid("expression", expr, format!("character {c:?} at {i}: expected digit op digit …")),
            }
        }
        Self::new(operands, ops)
    }

    /// The value of the chain.
    pub fn value(&self) -> i64 {
        self.steps().last().map_or(i64::from(self.operands[0]), |s| i64::from(s.result))
    }

    /// The evaluation steps, left to right.
    pub fn steps(&self) -> Vec<Step> {
        let mut v = self.operands[0];
        self.ops
            .iter()
            .zip(&self.operands[1..])
            .map(|(&op, &rhs)| {
                let result = if op == '+' { v + rhs } else { v - rhs };
                let s = Step { lhs: v, op, rhs, result };
                v = result;
                s
            })
            .collect()
    }

    /// The clean completion followed by `<eos>`.
    pub fn completion(&self) -> String {
        format!("{}{EOS}", self.cot)
    }

    /// The fields reward functions read (`rewards::Sample` is this map): `answer`, plus `expr` and `level`.
    pub fn fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("answer".into(), self.answer.clone().into());
        m.insert("expr".into(), self.expr.clone().into());
        m.insert("level".into(), self.level.into());
        m
    }

    /// Grade a completion (its `<eos>`, if any, is ignored): strict = the integer inside `<answer>` is right;
    /// lenient = the last integer in the text is right.
    pub fn grade(&self, completion: &str) -> Grade {
        let c = completion.strip_suffix(EOS).unwrap_or(completion);
        let v = self.value();
        Grade { strict: strict_answer(c) == Some(v), any_final_number: any_final_number(c) == Some(v) }
    }

    /// A prompt/completion record (completion = the clean CoT, no `<eos>`) with the gold `answer` field.
    pub fn record(&self) -> Record {
        Record::prompt_completion(self.prompt.clone(), self.cot.clone()).with("answer", self.answer.clone())
    }
}

/// How a completion fares against a problem (`docs/miniature.md`'s two accuracies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Grade {
    /// The integer inside `<answer>…</answer>` equals the answer.
    pub strict: bool,
    /// The last integer in the completion equals the answer.
    pub any_final_number: bool,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}{}={}", self.lhs, self.op, self.rhs, self.result)
    }
}

/// The task at one level with a seeded train/held-out split over expressions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainTask {
    /// Number of operands.
    pub level: usize,
    /// Seed of the split hash.
    pub split_seed: u64,
    /// Share of expressions held out for evaluation.
    pub test_fraction: f64,
}

impl ChainTask {
    /// The task at `level` operands (2..=16), split seed 0, 10% held out.
    pub fn new(level: usize) -> Result<Self> {
        if !(MIN_LEVEL..=MAX_LEVEL).contains(&level) {
            return invalid("level", level, format!("must be in {MIN_LEVEL}..={MAX_LEVEL}"));
        }
        Ok(Self { level, split_seed: 0, test_fraction: 0.1 })
    }

    /// Change the split: `test_fraction` in (0, 0.5].
    pub fn with_split(mut self, seed: u64, test_fraction: f64) -> Result<Self> {
        if !(test_fraction > 0.0 && test_fraction <= 0.5) {
            return invalid("test_fraction", test_fraction, "must be in (0, 0.5]");
        }
        self.split_seed = seed;
        self.test_fraction = test_fraction;
        Ok(self)
    }

    /// A uniformly drawn chain (either side of the split): first operand uniform in 0–9, then each step picks
    /// `+` or `-` with equal odds and a digit uniformly among those keeping the value in 0–9.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Problem {
        let mut v: u8 = rng.random_range(0..=9);
        let mut operands = vec![v];
        let mut ops = Vec::with_capacity(self.level - 1);
        for _ in 1..self.level {
            let (op, d) =
                if rng.random_bool(0.5) { ('+', rng.random_range(0..=9 - v)) } else { ('-', rng.random_range(0..=v)) };
            v = if op == '+' { v + d } else { v - d };
            operands.push(d);
            ops.push(op);
        }
        Problem::new(operands, ops).expect("sampled chains stay in range")
    }

    /// Whether a problem is held out (its expression hashes to the test side).
    pub fn is_test(&self, p: &Problem) -> bool {
        is_test(&p.expr, self.split_seed, self.test_fraction)
    }

    /// A training problem (rejection sampling).
    pub fn sample_train<R: Rng + ?Sized>(&self, rng: &mut R) -> Result<Problem> {
        self.sample_side(rng, false)
    }

    /// A held-out problem (rejection sampling).
    pub fn sample_test<R: Rng + ?Sized>(&self, rng: &mut R) -> Result<Problem> {
        self.sample_side(rng, true)
    }

    fn sample_side<R: Rng + ?Sized>(&self, rng: &mut R, test: bool) -> Result<Problem> {
        for _ in 0..MAX_ATTEMPTS {
            let p = self.sample(rng);
            if self.is_test(&p) == test {
                return Ok(p);
            }
        }
        invalid("split", if test { "test" } else { "train" }, format!("no problem found in {MAX_ATTEMPTS} draws"))
    }

    /// `n` training problems drawn with replacement from a generator seeded with `seed`.
    pub fn train_problems(&self, n: usize, seed: u64) -> Result<Vec<Problem>> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| self.sample_train(&mut rng)).collect()
    }

    /// `n` distinct held-out problems from a generator seeded with `seed`; an error if the level has fewer.
    pub fn test_problems(&self, n: usize, seed: u64) -> Result<Vec<Problem>> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(n);
        let mut draws = 0;
        while out.len() < n {
            draws += 1;
            if draws > MAX_ATTEMPTS {
                return invalid(
                    "n",
                    n,
                    format!("only {} distinct held-out problems found at level {}", out.len(), self.level),
                );
            }
            let p = self.sample(&mut rng);
            if self.is_test(&p) && seen.insert(p.expr.clone()) {
                out.push(p);
            }
        }
        Ok(out)
    }
}
