//! Auxiliary-loss-free load balancing (Wang et al. 2024; DeepSeek-V3 §2.1.2): after each step
//! `b_i += γ · sign(mean_load − load_i)`; no gradient flows into the bias. MaxVio measures the
//! imbalance: `(max_i load_i − mean load) / mean load`. And the complementary sequence-wise
//! balance loss (§2.1.2, eq. 17–20), computed per document: [`sequence_balance_loss`].

use tensor::Tensor;

use crate::{Moe, Result};

/// `(max load − mean load) / mean load` (0 for an empty batch).
pub fn max_vio(load: &[usize]) -> f64 {
    let total: usize = load.iter().sum();
    if total == 0 || load.is_empty() {
        return 0.0;
    }
    let mean = total as f64 / load.len() as f64;
    (*load.iter().max().expect("non-empty") as f64 - mean) / mean
}

/// One bias update from a step's per-expert loads with speed `gamma`.
pub fn update_bias(moe: &mut Moe, load: &[usize], gamma: f64) -> Result<()> {
    let total: usize = load.iter().sum();
    let mean = total as f64 / load.len().max(1) as f64;
    let mut b = moe.e_score_correction_bias.to_vec::<f32>()?;
    for (bi, &l) in b.iter_mut().zip(load) {
        let diff = mean - l as f64;
        *bi += (gamma
            * if diff > 0.0 {
                1.0
            } else if diff < 0.0 {
                -1.0
            } else {
                0.0
            }) as f32;
    }
    let dev = moe.e_score_correction_bias.device().clone();
    moe.e_score_correction_bias = Tensor::from_vec(b, &[load.len()])?.to_device(&dev)?;
    Ok(())
}

/// Which document each routed token belongs to (the "sequence" of V3's sequence-wise balance
/// loss), or that it is padding (routed, but counted in neither the balance loss nor the loads).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenDocs {
    doc: Vec<u32>,
}

impl TokenDocs {
    /// The document id of a padding token.
    pub const PAD: u32 = u32::MAX;

    /// Document ids per token ([`TokenDocs::PAD`] for padding); tokens of one document share an
    /// id (they need not be adjacent).
    pub fn new(doc: Vec<u32>) -> TokenDocs {
        TokenDocs { doc }
    }

    /// `t` tokens in consecutive sequences of `seq_len` (the last may be shorter; 0 = one
    /// sequence).
    pub fn rows(t: usize, seq_len: usize) -> TokenDocs {
        let l = if seq_len == 0 { t.max(1) } else { seq_len };
        TokenDocs { doc: (0..t).map(|i| (i / l) as u32).collect() }
    }

    /// `b` rows of `s` tokens: each row's packed documents (`segment_ids`, a new document where
    /// the id changes) are separate documents; tokens whose `key_padding` entry is `false` are
    /// padding.
    pub fn packed(b: usize, s: usize, segment_ids: Option<&[u32]>, key_padding: Option<&[bool]>) -> TokenDocs {
        let mut doc = Vec::with_capacity(b * s);
        let mut next = 0u32;
        for r in 0..b {
            let mut last: Option<u32> = None;
            for j in 0..s {
                let i = r * s + j;
                if key_padding.is_some_and(|p| !p[i]) {
                    doc.push(Self::PAD);
                    continue;
                }
                let seg = segment_ids.map_or(0, |v| v[i]);
                if last != Some(seg) {
                    last = Some(seg);
                    next += 1;
                }
                doc.push(next - 1);
            }
        }
        TokenDocs { doc }
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.doc.len()
    }

    /// No tokens?
    pub fn is_empty(&self) -> bool {
        self.doc.is_empty()
    }

    /// The document id of every token.
    pub fn ids(&self) -> &[u32] {
        &self.doc
    }

    /// Is token `t` padding?
    pub fn is_pad(&self, t: usize) -> bool {
        self.doc[t] == Self::PAD
    }

    /// The tokens of each document, documents in order of first appearance.
    fn groups(&self) -> Vec<Vec<usize>> {
        let mut index = std::collections::HashMap::new();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        for (t, &d) in self.doc.iter().enumerate() {
            if d == Self::PAD {
                continue;
            }
            let g = *index.entry(d).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push(t);
        }
        groups
    }
}

/// The sequence-wise balance loss (DeepSeek-V3 eq. 17–20) averaged over the documents of
/// `docs`, and its gradient with respect to the affinities `s` (`[T·E]`, zero at padding). For
/// a document of `T_d` tokens: `f_i = E / (K·T_d) · Σ_t 1[i ∈ topk_t]`, `P_i = 1/T_d · Σ_t
/// s_{i,t} / Σ_j s_{j,t}`, `L_d = α Σ_i f_i P_i`; `f` is a constant (the choice has no gradient).
/// Perfectly balanced routing with uniform affinities gives `α`.
pub fn sequence_balance_loss(
    s: &[f64],
    idx: &[u32],
    docs: &TokenDocs,
    e: usize,
    k: usize,
    alpha: f64,
) -> (f64, Vec<f64>) {
    let groups = docs.groups();
    let n_docs = groups.len() as f64;
    let mut loss = 0.0;
    let mut grad = vec![0.0; s.len()];
    for toks in &groups {
        let tl = toks.len() as f64;
        let mut f = vec![0.0; e];
        for &t in toks {
            for &i in &idx[t * k..(t + 1) * k] {
                f[i as usize] += e as f64 / (k as f64 * tl);
            }
        }
        let g: Vec<f64> = f.iter().map(|fi| alpha * fi / (tl * n_docs)).collect();
        for &t in toks {
            let row = &s[t * e..(t + 1) * e];
            let z: f64 = row.iter().sum();
            let proj: f64 = g.iter().zip(row).map(|(gi, si)| gi * si / z).sum();
            for i in 0..e {
                loss += g[i] * row[i] / z;
                grad[t * e + i] = (g[i] - proj) / z;
            }
        }
    }
    (loss, grad)
}
