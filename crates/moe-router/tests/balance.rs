//! The sequence-wise balance loss (DeepSeek-V3 eq. 17–20): its value against the formula, per
//! packed document, with padding excluded from the loss, its gradient and the expert loads.

use moe_router::balance::{TokenDocs, sequence_balance_loss};
use moe_router::{Moe, MoeConfig, ScoringFunc, TopkMethod};
use tensor::{DType, Device, Tensor};

/// Independent transcription for one document's tokens: `α Σ_i f_i P_i`.
fn doc_loss(s: &[f64], idx: &[u32], toks: &[usize], e: usize, k: usize, alpha: f64) -> f64 {
    let tl = toks.len() as f64;
    (0..e)
        .map(|i| {
            let hits = toks.iter().filter(|&&t| idx[t * k..(t + 1) * k].contains(&(i as u32))).count() as f64;
            let f = e as f64 / (k as f64 * tl) * hits;
            let p = toks.iter().map(|&t| s[t * e + i] / s[t * e..(t + 1) * e].iter().sum::<f64>()).sum::<f64>() / tl;
            alpha * f * p
        })
        .sum()
}

fn lcg(seed: u64, n: usize) -> Vec<f64> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            0.05 + (x >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect()
}

#[test]
fn uniform_balanced_routing_gives_alpha() {
    // 4 experts, k = 2, 4 tokens each choosing two, every expert twice; equal affinities.
    let (e, k, alpha) = (4, 2, 0.003);
    let s = vec![0.5; 4 * e];
    let idx = [0, 1, 2, 3, 1, 0, 3, 2];
    let (l, _) = sequence_balance_loss(&s, &idx, &TokenDocs::rows(4, 4), e, k, alpha);
    assert!((l - alpha).abs() < 1e-15, "{l}");
    // All tokens on experts 0 and 1: f = (2, 2, 0, 0), P uniform → still α (P carries no skew),
    // skewed affinities towards the chosen experts raise it above α.
    let idx = [0, 1, 0, 1, 0, 1, 0, 1];
    let (l, _) = sequence_balance_loss(&s, &idx, &TokenDocs::rows(4, 4), e, k, alpha);
    assert!((l - alpha).abs() < 1e-15, "{l}");
    let skew: Vec<f64> = (0..4).flat_map(|_| [0.9, 0.9, 0.1, 0.1]).collect();
    let (l, _) = sequence_balance_loss(&skew, &idx, &TokenDocs::rows(4, 4), e, k, alpha);
    assert!((l - 1.8 * alpha).abs() < 1e-12, "{l}");
}

/// Packed documents (ids not adjacent, one document split around another's tokens) and padding:
/// the loss is the mean over documents of each document's own formula; padding changes nothing.
#[test]
fn loss_is_the_mean_over_documents_and_ignores_padding() {
    let (e, k, alpha) = (6, 2, 0.01);
    let t = 11;
    let s = lcg(3, t * e);
    let idx: Vec<u32> = (0..t).flat_map(|i| [(i % e) as u32, ((i * 5 + 1) % e) as u32]).collect();
    let p = TokenDocs::PAD;
    let doc = vec![0, 0, 0, 7, 7, p, 0, 7, 3, 3, p];
    let docs = TokenDocs::new(doc.clone());
    let (l, g) = sequence_balance_loss(&s, &idx, &docs, e, k, alpha);
    let groups: Vec<Vec<usize>> = [0u32, 7, 3].iter().map(|d| (0..t).filter(|&i| doc[i] == *d).collect()).collect();
    let want = groups.iter().map(|toks| doc_loss(&s, &idx, toks, e, k, alpha)).sum::<f64>() / 3.0;
    assert!((l - want).abs() < 1e-15, "{l} vs {want}");
    // One sequence over the whole row (the old per-row computation) gives another value.
    let (whole, _) = sequence_balance_loss(&s, &idx, &TokenDocs::rows(t, t), e, k, alpha);
    assert!((whole - want).abs() > 1e-5, "{whole} vs {want}");
    // Padding tokens: no gradient; changing their affinities or choices changes nothing.
    for &pad in &[5usize, 10] {
        assert!(g[pad * e..(pad + 1) * e].iter().all(|&x| x == 0.0));
    }
    let mut s2 = s.clone();
    s2[5 * e..6 * e].iter_mut().for_each(|x| *x = 0.99);
    let mut idx2 = idx.clone();
    idx2[10 * k] = 0;
    idx2[10 * k + 1] = 1;
    let (l2, _) = sequence_balance_loss(&s2, &idx2, &docs, e, k, alpha);
    assert_eq!(l2, l);
    // The gradient equals central differences of the loss (f held fixed: choices unchanged).
    let h = 1e-6;
    for j in [0, 7, 20, 45, 50, 62] {
        let (mut a, mut b) = (s.clone(), s.clone());
        a[j] += h;
        b[j] -= h;
        let fd = (sequence_balance_loss(&a, &idx, &docs, e, k, alpha).0
            - sequence_balance_loss(&b, &idx, &docs, e, k, alpha).0)
            / (2.0 * h);
        assert!((fd - g[j]).abs() < 1e-8, "s[{j}]: {fd} vs {}", g[j]);
    }
}

#[test]
fn packed_rows_split_at_segments_and_padding() {
    let d = TokenDocs::packed(
        2,
        4,
        Some(&[0, 0, 1, 1, 0, 0, 0, 0]),
        Some(&[true, true, true, false, false, true, true, true]),
    );
    assert_eq!(d, TokenDocs::new(vec![0, 0, 1, TokenDocs::PAD, TokenDocs::PAD, 2, 2, 2]));
}

/// Routed padding tokens count in neither the loads (what the bias update reads) nor the
/// balance loss of the MoE layer.
#[test]
fn padding_is_not_counted_in_the_loads() {
    let cfg = MoeConfig {
        hidden_size: 6,
        moe_intermediate_size: 4,
        n_routed_experts: 8,
        n_shared_experts: 0,
        num_experts_per_tok: 2,
        n_group: 4,
        topk_group: 2,
        norm_topk_prob: true,
        routed_scaling_factor: 2.5,
        scoring_func: ScoringFunc::Sigmoid,
        topk_method: TopkMethod::NoauxTc,
        seq_aux_alpha: 0.01,
    };
    let m = Moe::init(cfg, 0.5, 2, DType::F64, &Device::Cpu).unwrap();
    let x = Tensor::randn(&[6, 6], 1.0, 3, DType::F64, &Device::Cpu).unwrap();
    let real = TokenDocs::new(vec![0, 0, 0, 0, 0, 0]);
    let padded = TokenDocs::new(vec![0, 0, TokenDocs::PAD, 0, 0, TokenDocs::PAD]);
    let (a, _) = m.route(&x, &real).unwrap();
    let (b, _) = m.route(&x, &padded).unwrap();
    assert_eq!(a.load.iter().sum::<usize>(), 12);
    assert_eq!(b.load.iter().sum::<usize>(), 8);
    for pad in [2usize, 5] {
        for &i in &a.topk_idx[pad * 2..pad * 2 + 2] {
            assert!(a.load[i as usize] > b.load[i as usize]);
        }
    }
    assert_ne!(a.balance_loss, b.balance_loss);
    let e = m.route(&x, &TokenDocs::rows(5, 5)).err().unwrap().to_string();
    assert!(e.contains("5 document ids for 6 tokens"), "{e}");
}
