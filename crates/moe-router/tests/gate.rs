//! The V3 gate's expert choice (`noaux_tc`) on hand-built affinities: groups masked with −inf
//! (not 0), and the chosen experts exactly the top-k of `s + b` inside the kept groups.

use moe_router::{Moe, MoeConfig, ScoringFunc, TopkMethod};
use proptest::prelude::*;
use tensor::{DType, Device};

fn moe(e: usize, groups: usize, topk_group: usize, k: usize) -> Moe {
    let cfg = MoeConfig {
        hidden_size: 4,
        moe_intermediate_size: 2,
        n_routed_experts: e,
        n_shared_experts: 0,
        num_experts_per_tok: k,
        n_group: groups,
        topk_group,
        norm_topk_prob: true,
        routed_scaling_factor: 2.5,
        scoring_func: ScoringFunc::Sigmoid,
        topk_method: TopkMethod::NoauxTc,
        seq_aux_alpha: 0.0,
    };
    Moe::init(cfg, 0.1, 0, DType::F64, &Device::Cpu).unwrap()
}

/// Every choice score `s + b` is negative. Groups (2 experts each) score by the sum of their
/// top-2: group 1 (−0.35) and group 3 (−0.5) are kept, groups 0 (−1.4) and 2 (−0.9) masked. The
/// top-2 inside the kept groups are experts 2 (−0.1) and 6 (−0.2). Masking the other groups with
/// 0 instead of −inf would pick experts from the masked groups (0 beats every kept score).
#[test]
fn masked_groups_lose_to_negative_scores() {
    let m = moe(8, 4, 2, 2);
    let s = [0.2; 8];
    let c = [-0.6, -0.8, -0.1, -0.25, -0.4, -0.5, -0.2, -0.3];
    let b: Vec<f64> = c.iter().zip(&s).map(|(c, s)| c - s).collect();
    assert_eq!(m.choose(&s, &b), vec![2, 6]);
    // With k = 4 the whole of both kept groups is chosen, best first; no masked expert appears.
    let m4 = moe(8, 4, 2, 4);
    assert_eq!(m4.choose(&s, &b), vec![2, 6, 3, 7]);
}

/// Independent transcription of `noaux_tc`: rank groups by the sum of their two best `s + b`
/// (ties to the lower group), keep `topk_group`, then the `k` best experts among the kept
/// groups' experts (ties to the lower index).
fn reference(s: &[f64], b: &[f64], groups: usize, topk_group: usize, k: usize) -> Vec<u32> {
    let e = s.len();
    let per = e / groups;
    let c: Vec<f64> = s.iter().zip(b).map(|(x, y)| x + y).collect();
    let mut g: Vec<(f64, usize)> = (0..groups)
        .map(|gi| {
            let mut v = c[gi * per..(gi + 1) * per].to_vec();
            v.sort_by(|a, b| b.total_cmp(a));
            (v[0] + v[1], gi)
        })
        .collect();
    g.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let kept: Vec<usize> = g[..topk_group].iter().map(|p| p.1).collect();
    let mut cand: Vec<usize> = (0..e).filter(|i| kept.contains(&(i / per))).collect();
    cand.sort_by(|&x, &y| c[y].total_cmp(&c[x]).then(x.cmp(&y)));
    cand[..k].iter().map(|&i| i as u32).collect()
}

proptest! {
    /// Property: the chosen experts are exactly the top-k of `s + b` inside the kept groups, in
    /// descending order, for random affinities in (0, 1) and biases of either sign (often making
    /// every choice score negative).
    #[test]
    fn chosen_are_the_topk_inside_the_kept_groups(groups in 1usize..6, per in 2usize..6, seed in 0u64..10_000,
                                                   bias_shift in -2.0f64..0.5) {
        let e = groups * per;
        let topk_group = 1 + (seed as usize) % groups;
        let k = 1 + (seed as usize / 7) % (topk_group * per);
        let m = moe(e, groups, topk_group, k);
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        let s: Vec<f64> = (0..e).map(|_| next()).collect();
        let b: Vec<f64> = (0..e).map(|_| next() - 0.5 + bias_shift).collect();
        prop_assert_eq!(m.choose(&s, &b), reference(&s, &b, groups, topk_group, k));
    }
}
