//! A tabular softmax policy over short token sequences with a rule reward: the smallest policy the
//! GRPO trainer can be proven on without any model crate.
//!
//! Prompt `p ∈ 0..P`; at position `t` the policy samples from `softmax(θ[p][t])` over `V` tokens,
//! token 0 ending the completion; generation stops at `L` tokens (truncated). The target for `p` is
//! `[1 + p % (V−1), 1 + (p+1) % (V−1), 1 + (p+2) % (V−1), EOS]`.

#![allow(dead_code)]

use grpo::trainer::{Completion, Policy, RewardFn, Sample, Scored, Scorer, StepInfo};
use grpo::{GrpoError, Result};
use optim::{AdamW, AdamWConfig, clip_grad_norm};
use tensor::Tensor;

pub const TARGET_LEN: usize = 4;

fn splitmix(s: &mut u64) -> f64 {
    *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

fn log_softmax(row: &[f64]) -> Vec<f64> {
    let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
    row.iter().map(|x| x - lse).collect()
}

/// The rule: `target(p)` token by token, then end-of-sequence.
pub fn target(p: usize, vocab: usize) -> [u32; TARGET_LEN] {
    let c = |k: usize| (1 + (p + k) % (vocab - 1)) as u32;
    [c(0), c(1), c(2), 0]
}

/// Partial credit: the fraction of target positions matched.
pub fn match_reward(vocab: usize) -> RewardFn<usize> {
    RewardFn::new("match", 1.0, move |p: &usize, c: &Completion| {
        let t = target(*p, vocab);
        Some((0..TARGET_LEN).filter(|&k| c.tokens.get(k) == Some(&t[k])).count() as f64 / TARGET_LEN as f64)
    })
}

/// Exact match (weight 0: logged as accuracy only).
pub fn exact_reward(vocab: usize) -> RewardFn<usize> {
    RewardFn::new("exact", 0.0, move |p: &usize, c: &Completion| Some((c.tokens == target(*p, vocab)) as u8 as f64))
        .accuracy()
}

/// Log-probabilities and entropies of completions under a logits table `[P][L][V]`.
fn score_table(table: &[f64], max_len: usize, vocab: usize, batch: &[Sample<'_, usize>]) -> Vec<Scored> {
    batch
        .iter()
        .map(|s| {
            let (mut lp, mut ent) = (Vec::new(), Vec::new());
            for (t, &tok) in s.completion.iter().enumerate() {
                let off = (s.prompt * max_len + t) * vocab;
                let ls = log_softmax(&table[off..off + vocab]);
                lp.push(ls[tok as usize]);
                ent.push(-ls.iter().map(|l| l.exp() * l).sum::<f64>());
            }
            Scored { logprobs: lp, entropy: Some(ent) }
        })
        .collect()
}

/// The frozen reference.
pub struct TableRef {
    table: Vec<f64>,
    max_len: usize,
    vocab: usize,
}

impl Scorer<usize> for TableRef {
    fn logprobs(&mut self, batch: &[Sample<'_, usize>]) -> Result<Vec<Scored>> {
        Ok(score_table(&self.table, self.max_len, self.vocab, batch))
    }
}

pub struct Tabular {
    pub prompts: usize,
    pub max_len: usize,
    pub vocab: usize,
    pub lr: f64,
    /// Perturbation of the sampler's logits (a rollout/trainer precision mismatch).
    pub sampler_noise: f64,
    /// The backward adds a NaN to the gradient (a non-finite injection).
    pub nan_grad: bool,
    params: tensor::Param,
    grad: Vec<f64>,
    opt: AdamW,
    rng: u64,
}

fn perr(e: impl std::fmt::Display) -> GrpoError {
    GrpoError::Policy(e.to_string())
}

impl Tabular {
    /// Uniform logits (all zero): every token equally likely.
    pub fn new(prompts: usize, max_len: usize, vocab: usize, lr: f64, seed: u64) -> Self {
        let n = prompts * max_len * vocab;
        let params = tensor::Param::new(Tensor::from_vec(vec![0f32; n], &[n]).unwrap());
        let opt = AdamW::new(AdamWConfig { weight_decay: 0.0, ..Default::default() }, &["logits"]);
        Tabular {
            prompts,
            max_len,
            vocab,
            lr,
            sampler_noise: 0.0,
            nan_grad: false,
            params,
            grad: vec![0.0; n],
            opt,
            rng: seed,
        }
    }

    pub fn table(&self) -> Vec<f64> {
        self.params.value.to_vec::<f32>().unwrap().into_iter().map(f64::from).collect()
    }
}

impl Scorer<usize> for Tabular {
    fn logprobs(&mut self, batch: &[Sample<'_, usize>]) -> Result<Vec<Scored>> {
        Ok(score_table(&self.table(), self.max_len, self.vocab, batch))
    }
}

impl Policy<usize> for Tabular {
    type Reference = TableRef;

    fn sample(&mut self, prompts: &[&usize], n: usize) -> Result<Vec<Vec<Completion>>> {
        let table = self.table();
        let mut out = Vec::new();
        for &&p in prompts {
            let mut group = Vec::new();
            for _ in 0..n {
                let (mut tokens, mut logprobs) = (Vec::new(), Vec::new());
                for t in 0..self.max_len {
                    let off = (p * self.max_len + t) * self.vocab;
                    let row: Vec<f64> = table[off..off + self.vocab]
                        .iter()
                        .map(|x| x + self.sampler_noise * (splitmix(&mut self.rng) - 0.5))
                        .collect();
                    let ls = log_softmax(&row);
                    let u = splitmix(&mut self.rng);
                    let mut acc = 0.0;
                    let mut tok = self.vocab - 1;
                    for (v, l) in ls.iter().enumerate() {
                        acc += l.exp();
                        if u < acc {
                            tok = v;
                            break;
                        }
                    }
                    tokens.push(tok as u32);
                    logprobs.push(ls[tok]);
                    if tok == 0 {
                        break;
                    }
                }
                let truncated = tokens.last() != Some(&0);
                group.push(Completion { tokens, logprobs, truncated });
            }
            out.push(group);
        }
        Ok(out)
    }

    fn backward(&mut self, batch: &[Sample<'_, usize>], dlogp: &[Vec<f64>]) -> Result<()> {
        let table = self.table();
        for (s, d) in batch.iter().zip(dlogp) {
            for (t, (&tok, &g)) in s.completion.iter().zip(d).enumerate() {
                let off = (s.prompt * self.max_len + t) * self.vocab;
                let ls = log_softmax(&table[off..off + self.vocab]);
                // d logp(tok) / d θ_v = 1{v = tok} − softmax_v
                for (v, l) in ls.iter().enumerate() {
                    self.grad[off + v] += g * ((v == tok as usize) as u8 as f64 - l.exp());
                }
            }
        }
        if self.nan_grad {
            self.grad[0] = f64::NAN;
        }
        Ok(())
    }

    fn step(&mut self) -> Result<StepInfo> {
        let n = self.grad.len();
        let g: Vec<f32> = self.grad.iter().map(|&x| x as f32).collect();
        self.params.zero_grad();
        self.params.accumulate_grad(&Tensor::from_vec(g, &[n]).map_err(perr)?).map_err(perr)?;
        let grad_norm = clip_grad_norm(&mut [&mut self.params], 1.0).map_err(perr)?;
        self.grad.iter_mut().for_each(|x| *x = 0.0);
        if !grad_norm.is_finite() {
            self.params.zero_grad();
            return Ok(StepInfo { grad_norm, lr: self.lr, skipped: true });
        }
        self.opt.step(&mut [&mut self.params], self.lr).map_err(perr)?;
        self.grad.iter_mut().for_each(|x| *x = 0.0);
        Ok(StepInfo { grad_norm, lr: self.lr, skipped: false })
    }

    fn discard(&mut self) -> Result<()> {
        self.grad.iter_mut().for_each(|x| *x = 0.0);
        Ok(())
    }

    fn reference(&self) -> Result<TableRef> {
        Ok(TableRef { table: self.table(), max_len: self.max_len, vocab: self.vocab })
    }
}
