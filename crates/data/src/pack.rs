//! Packing tokenised documents into fixed-length training sequences.
//!
//! Each [`Packed`] sequence holds whole documents back to back (greedy, in order: a document that does not fit
//! in the space left starts a new sequence), then padding. Every document is its own segment: positions
//! restart at 0 and `segment_ids` (1, 2, … within a sequence; 0 for padding) feed the attention's
//! packed-segment mask, so no token attends across documents.
//!
//! `targets[i]` is `ids[i + 1]` when that token belongs to the same document and is a loss token, else
//! [`IGNORE_INDEX`] (document ends, masked prompt tokens, padding).
//!
//! Documents longer than `seq_len` follow [`Overflow`]: `Truncate` keeps the first `seq_len` tokens and drops
//! the rest; `Split` cuts them into `seq_len` chunks, each packed as its own segment (the token after a cut is
//! not predicted from the chunk before it).

use crate::Tokenizer;
use crate::error::{Result, invalid};

/// Target value ignored by the loss (PyTorch's `-100`).
pub const IGNORE_INDEX: i64 = -100;

/// A tokenised document with an optional per-token loss mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenDoc {
    /// Token ids.
    pub ids: Vec<u32>,
    /// `loss_mask[j]`: token `j` is a prediction target. `None` = every token (pretraining).
    pub loss_mask: Option<Vec<bool>>,
}

impl TokenDoc {
    /// A document trained on every token.
    pub fn new(ids: Vec<u32>) -> Self {
        Self { ids, loss_mask: None }
    }

    /// Prompt + completion, with the loss on the completion only (SFT).
    pub fn prompt_completion(prompt: &[u32], completion: &[u32]) -> Self {
        let mut ids = prompt.to_vec();
        ids.extend_from_slice(completion);
        let mut mask = vec![false; prompt.len()];
        mask.resize(ids.len(), true);
        Self { ids, loss_mask: Some(mask) }
    }

    /// Tokenise a whole document, loss on every token (pretraining; corpus texts already end in `<eos>`).
    pub fn encode(tok: &Tokenizer, text: &str) -> Result<Self> {
        Ok(Self::new(tok.encode(text)?))
    }

    /// Tokenise `prompt`, then `completion` followed by `<eos>`, with the loss on the completion and `<eos>`
    /// only (SFT; e.g. a pair from [`Record::sft_pair`](crate::Record::sft_pair)).
    pub fn encode_sft(tok: &Tokenizer, prompt: &str, completion: &str) -> Result<Self> {
        let mut c = tok.encode(completion)?;
        c.push(tok.eos_id());
        Ok(Self::prompt_completion(&tok.encode(prompt)?, &c))
    }

    fn is_loss(&self, j: usize) -> bool {
        self.loss_mask.as_ref().is_none_or(|m| m[j])
    }
}

/// What to do with a document longer than the sequence length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Keep the first `seq_len` tokens.
    #[default]
    Truncate,
    /// Cut into chunks of `seq_len` tokens, each its own segment.
    Split,
}

/// One packed training sequence; every vector has length `seq_len`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// Input ids (padding = the pad id).
    pub ids: Vec<u32>,
    /// Next-token targets or [`IGNORE_INDEX`].
    pub targets: Vec<i64>,
    /// Position within the segment (restarts at 0 for each document and for the padding).
    pub positions: Vec<u32>,
    /// Segment of each token: 1, 2, … for documents, 0 for padding.
    pub segment_ids: Vec<u32>,
}

impl Packed {
    /// Sequence length.
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    /// Whether the sequence is empty (never, for packer output).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    /// `true` for real tokens, `false` for padding (an attention key-padding mask).
    pub fn key_padding(&self) -> Vec<bool> {
        self.segment_ids.iter().map(|&s| s != 0).collect()
    }
    /// Number of targets the loss counts.
    pub fn loss_tokens(&self) -> usize {
        self.targets.iter().filter(|&&t| t != IGNORE_INDEX).count()
    }
}

/// A streaming greedy packer.
#[derive(Debug, Clone)]
pub struct Packer {
    seq_len: usize,
    pad_id: u32,
    overflow: Overflow,
    cur: Packed,
    segments: u32,
}

impl Packer {
    /// A packer for sequences of `seq_len` (≥ 1) tokens.
    pub fn new(seq_len: usize, pad_id: u32, overflow: Overflow) -> Result<Self> {
        if seq_len == 0 {
            return invalid("seq_len", 0, "must be at least 1");
        }
        Ok(Self { seq_len, pad_id, overflow, cur: empty(seq_len), segments: 0 })
    }

    /// Add a document; returns the sequences it completed (possibly none).
    pub fn push(&mut self, doc: &TokenDoc) -> Result<Vec<Packed>> {
        if let Some(m) = &doc.loss_mask
            && m.len() != doc.ids.len()
        {
            return invalid("loss_mask length", m.len(), format!("must equal the document length {}", doc.ids.len()));
        }
        let mut out = Vec::new();
        let n = match self.overflow {
            Overflow::Truncate => doc.ids.len().min(self.seq_len),
            Overflow::Split => doc.ids.len(),
        };
        let mut start = 0;
        while start < n {
            let end = (start + self.seq_len).min(n);
            if self.cur.ids.len() + (end - start) > self.seq_len {
                out.extend(self.flush());
            }
            self.segments += 1;
            let seg = self.segments;
            for j in start..end {
                let pos = (j - start) as u32;
                self.cur.ids.push(doc.ids[j]);
                let next = j + 1;
                let target = if next < end && doc.is_loss(next) { i64::from(doc.ids[next]) } else { IGNORE_INDEX };
                self.cur.targets.push(target);
                self.cur.positions.push(pos);
                self.cur.segment_ids.push(seg);
            }
            start = end;
        }
        if self.cur.ids.len() == self.seq_len {
            out.extend(self.flush());
        }
        Ok(out)
    }

    /// Pad and return the sequence in progress, if it holds any token.
    pub fn flush(&mut self) -> Option<Packed> {
        if self.cur.ids.is_empty() {
            return None;
        }
        let mut p = std::mem::replace(&mut self.cur, empty(self.seq_len));
        self.segments = 0;
        let used = p.ids.len();
        p.ids.resize(self.seq_len, self.pad_id);
        p.targets.resize(self.seq_len, IGNORE_INDEX);
        p.positions.extend((0..(self.seq_len - used) as u32).collect::<Vec<_>>());
        p.segment_ids.resize(self.seq_len, 0);
        Some(p)
    }
}

fn empty(seq_len: usize) -> Packed {
    Packed {
        ids: Vec::with_capacity(seq_len),
        targets: Vec::with_capacity(seq_len),
        positions: Vec::with_capacity(seq_len),
        segment_ids: Vec::with_capacity(seq_len),
    }
}

/// Pack all documents (greedy, in order) into sequences of `seq_len`, the last one padded.
pub fn pack(docs: &[TokenDoc], seq_len: usize, pad_id: u32, overflow: Overflow) -> Result<Vec<Packed>> {
    let mut packer = Packer::new(seq_len, pad_id, overflow)?;
    let mut out = Vec::new();
    for d in docs {
        out.extend(packer.push(d)?);
    }
    out.extend(packer.flush());
    Ok(out)
}

/// Sequences stacked row-major into `[batch, seq_len]` buffers, as the model's forward takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Number of sequences.
    pub batch: usize,
    /// Sequence length.
    pub seq_len: usize,
    /// `[batch · seq_len]` input ids.
    pub ids: Vec<u32>,
    /// `[batch · seq_len]` targets.
    pub targets: Vec<i64>,
    /// `[batch · seq_len]` positions.
    pub positions: Vec<u32>,
    /// `[batch · seq_len]` segment ids.
    pub segment_ids: Vec<u32>,
}

impl Batch {
    /// Stack sequences of one length; an empty slice or unequal lengths are an error.
    pub fn stack(seqs: &[Packed]) -> Result<Self> {
        let Some(first) = seqs.first() else {
            return invalid("batch", 0, "needs at least one sequence");
        };
        let seq_len = first.len();
        if let Some(p) = seqs.iter().find(|p| p.len() != seq_len) {
            return invalid("sequence length", p.len(), format!("must equal the first sequence's {seq_len}"));
        }
        let cat = |f: &dyn Fn(&Packed) -> &[u32]| seqs.iter().flat_map(|p| f(p).iter().copied()).collect::<Vec<_>>();
        Ok(Self {
            batch: seqs.len(),
            seq_len,
            ids: cat(&|p| &p.ids),
            targets: seqs.iter().flat_map(|p| p.targets.iter().copied()).collect(),
            positions: cat(&|p| &p.positions),
            segment_ids: cat(&|p| &p.segment_ids),
        })
    }
}
