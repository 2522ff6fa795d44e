//! The pretraining corpus of `docs/miniature.md` (the "base model" world) and the cold-start SFT set.
//!
//! Every document is a training problem's prompt, a completion in one of nine styles and `<eos>`:
//!
//! | kind | default share | completion for `7-3+2+0` |
//! |---|---|---|
//! | `DirectBare` | 50% × 80% | `6` |
//! | `DirectSentence` | 50% × 10% | `the answer is 6` |
//! | `DirectTagged` | 50% × 10% | `<answer>6</answer>` |
//! | `TaggedCot` | 5% | `<think>7-3=4; 4+2=6; 6+0=6</think> <answer>6</answer>` (separators vary) |
//! | `MessyCommas` | 45% / 5 | `7-3=4, 4+2=6, 6+0=6, so 6` |
//! | `MessyThen` | 45% / 5 | `7-3=4 then 4+2=6 then 6+0=6. answer: 6` |
//! | `MessyLines` | 45% / 5 | `\n7-3=4\n4+2=6\n6+0=6\nso the answer is 6` |
//! | `MessyFirst` | 45% / 5 | `first 7-3=4, then 4+2=6, then 6+0=6, so 6` |
//! | `MessyTerse` | 45% / 5 | `4 6 6 = 6` |
//!
//! No corpus document is in the strict R1 format: the base model gets latent ability, not the clean format.

use rand::{Rng, RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use super::chain::{ChainTask, Problem};
use crate::error::{Result, invalid};
use crate::jsonl::Record;
use crate::pack::{Batch, Overflow, Packer, TokenDoc};
use crate::tokenizer::Tokenizer;
use crate::tokenizer::{ANSWER, ANSWER_END, EOS, THINK, THINK_END};

/// Proportions of the corpus (weights; each group is normalised on its own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorpusMix {
    /// Direct answers (default 0.50).
    pub direct: f64,
    /// Tagged chains of thought with varied separators (default 0.05).
    pub tagged_cot: f64,
    /// Messy chains of thought (default 0.45).
    pub messy_cot: f64,
    /// Within direct: bare number, `the answer is N`, `<answer>N</answer>` (default 0.8, 0.1, 0.1).
    pub direct_styles: [f64; 3],
    /// Within messy: commas, then, lines, first, terse (default equal).
    pub messy_styles: [f64; 5],
}

impl Default for CorpusMix {
    fn default() -> Self {
        Self { direct: 0.5, tagged_cot: 0.05, messy_cot: 0.45, direct_styles: [0.8, 0.1, 0.1], messy_styles: [1.0; 5] }
    }
}

impl CorpusMix {
    /// Check every weight is finite and non-negative and every group has a positive total.
    pub fn validate(&self) -> Result<()> {
        let groups: [(&'static str, &[f64]); 3] = [
            ("corpus mix (direct, tagged_cot, messy_cot)", &[self.direct, self.tagged_cot, self.messy_cot]),
            ("direct_styles", &self.direct_styles),
            ("messy_styles", &self.messy_styles),
        ];
        for (name, w) in groups {
            if w.iter().any(|x| !x.is_finite() || *x < 0.0) || w.iter().sum::<f64>() <= 0.0 {
                return invalid(name, format!("{w:?}"), "weights must be finite, non-negative, with a positive sum");
            }
        }
        Ok(())
    }
}

/// The style of a corpus document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DocKind {
    /// `6`
    DirectBare,
    /// `the answer is 6`
    DirectSentence,
    /// `<answer>6</answer>`
    DirectTagged,
    /// `<think>…</think>` then `<answer>…</answer>`, loose separators.
    TaggedCot,
    /// `7-3=4, 4+2=6, 6+0=6, so 6`
    MessyCommas,
    /// `7-3=4 then 4+2=6 then 6+0=6. answer: 6`
    MessyThen,
    /// one step a line, then `so the answer is 6`
    MessyLines,
    /// `first 7-3=4, then 4+2=6, then 6+0=6, so 6`
    MessyFirst,
    /// running values only: `4 6 6 = 6`
    MessyTerse,
}

impl DocKind {
    /// Every kind, in table order.
    pub const ALL: [DocKind; 9] = [
        DocKind::DirectBare,
        DocKind::DirectSentence,
        DocKind::DirectTagged,
        DocKind::TaggedCot,
        DocKind::MessyCommas,
        DocKind::MessyThen,
        DocKind::MessyLines,
        DocKind::MessyFirst,
        DocKind::MessyTerse,
    ];

    /// The completion of this style for a problem (without `<eos>`); `rng` picks the tagged separators.
    pub fn completion<R: Rng + ?Sized>(self, p: &Problem, rng: &mut R) -> String {
        let steps: Vec<String> = p.steps().iter().map(ToString::to_string).collect();
        let a = &p.answer;
        match self {
            DocKind::DirectBare => a.clone(),
            DocKind::DirectSentence => format!("the answer is {a}"),
            DocKind::DirectTagged => format!("{ANSWER}{a}{ANSWER_END}"),
            DocKind::TaggedCot => {
                const SEPS: [&str; 4] = [", ", "; ", " ", "\n"];
                const GAPS: [&str; 3] = ["", " ", "\n"];
                let sep = SEPS[rng.random_range(0..SEPS.len())];
                let gap = GAPS[rng.random_range(0..GAPS.len())];
                format!("{THINK}{}{THINK_END}{gap}{ANSWER}{a}{ANSWER_END}", steps.join(sep))
            }
            DocKind::MessyCommas => format!("{}, so {a}", steps.join(", ")),
            DocKind::MessyThen => format!("{}. answer: {a}", steps.join(" then ")),
            DocKind::MessyLines => format!("\n{}\nso the answer is {a}", steps.join("\n")),
            DocKind::MessyFirst => format!("first {}, so {a}", steps.join(", then ")),
            DocKind::MessyTerse => {
                let vals: Vec<String> = p.steps().iter().map(|s| s.result.to_string()).collect();
                format!("{} = {a}", vals.join(" "))
            }
        }
    }
}

/// One corpus document: prompt + completion + `<eos>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    /// The full text, ending in `<eos>`.
    pub text: String,
    /// Its style.
    pub kind: DocKind,
}

/// The corpus generator over a task's training problems.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Corpus {
    /// The task (level and split).
    pub task: ChainTask,
    /// The proportions.
    pub mix: CorpusMix,
}

impl Corpus {
    /// A generator; the mix is validated.
    pub fn new(task: ChainTask, mix: CorpusMix) -> Result<Self> {
        mix.validate()?;
        Ok(Self { task, mix })
    }

    /// Draw a style by the mix.
    pub fn kind<R: Rng + ?Sized>(&self, rng: &mut R) -> DocKind {
        let m = &self.mix;
        match pick(rng, &[m.direct, m.tagged_cot, m.messy_cot]) {
            0 => [DocKind::DirectBare, DocKind::DirectSentence, DocKind::DirectTagged][pick(rng, &m.direct_styles)],
            1 => DocKind::TaggedCot,
            _ => DocKind::ALL[4 + pick(rng, &m.messy_styles)],
        }
    }

    /// One document from a training problem.
    pub fn document<R: Rng + ?Sized>(&self, rng: &mut R) -> Result<Document> {
        let p = self.task.sample_train(rng)?;
        let kind = self.kind(rng);
        let text = format!("{}{}{EOS}", p.prompt, kind.completion(&p, rng));
        Ok(Document { text, kind })
    }

    /// A pretraining batch: fresh documents, tokenised and greedily packed until `n_seqs` sequences of `seq_len`
    /// are full (a document longer than `seq_len` is truncated); the partly filled last sequence is discarded.
    pub fn batch<R: Rng + ?Sized>(&self, tok: &Tokenizer, rng: &mut R, n_seqs: usize, seq_len: usize) -> Result<Batch> {
        if n_seqs == 0 {
            return invalid("n_seqs", 0, "must be at least 1");
        }
        let mut packer = Packer::new(seq_len, tok.pad_id(), Overflow::Truncate)?;
        let mut seqs = Vec::with_capacity(n_seqs);
        while seqs.len() < n_seqs {
            let doc = self.document(rng)?;
            seqs.extend(packer.push(&TokenDoc::encode(tok, &doc.text)?)?);
        }
        seqs.truncate(n_seqs);
        Batch::stack(&seqs)
    }

    /// `n` documents from a generator seeded with `seed`.
    pub fn documents(&self, n: usize, seed: u64) -> Result<Vec<Document>> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| self.document(&mut rng)).collect()
    }
}

/// Index drawn with probability proportional to `weights` (validated: finite, non-negative, positive sum).
fn pick<R: Rng + ?Sized>(rng: &mut R, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i;
        }
        u -= w;
    }
    weights.iter().rposition(|w| *w > 0.0).unwrap_or(0)
}

/// The cold-start SFT set: `n` training problems (seeded) as prompt/completion records whose completion is the
/// clean CoT (no `<eos>`; append it when tokenising) and whose `answer` field is the gold answer.
pub fn cold_start_records(task: &ChainTask, n: usize, seed: u64) -> Result<Vec<Record>> {
    Ok(task.train_problems(n, seed)?.iter().map(Problem::record).collect())
}
