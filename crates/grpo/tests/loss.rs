//! Policy loss, KL and aggregation: hand-computed values, the finite-difference check of
//! `d loss / d logp`, and micro-batch / rank invariance under global normalisation.

use grpo::loss::{
    Aggregation, KlEstimator, KlPenalty, LossConfig, LossInputs, Normalizer, PolicyLoss, RatioLevel, policy_loss,
    surrogate,
};
use proptest::prelude::*;
use tensor::Tensor;
use tensor::gradcheck::{GradCheck, check};

const AGGS: [Aggregation; 4] = [
    Aggregation::TokenMean,
    Aggregation::SeqMeanTokenMean,
    Aggregation::SeqMeanTokenSum,
    Aggregation::SeqMeanTokenSumNorm,
];

fn cfg(policy: PolicyLoss, kl: Option<KlPenalty>, aggregation: Aggregation) -> LossConfig {
    LossConfig { policy, kl, aggregation, max_completion_len: 4 }
}

fn no_clip() -> PolicyLoss {
    PolicyLoss { eps_low: 0.5, eps_high: 100.0, ..Default::default() }
}

fn run(x: &LossInputs, c: &LossConfig) -> grpo::loss::LossOutput {
    policy_loss(x, c, &Normalizer::of(x.mask, x.seq_len).unwrap()).unwrap()
}

#[test]
fn surrogate_branches_hand_computed() {
    let p = PolicyLoss::default();
    let lr = 1.5f64.ln();
    // ρ = 1.5 > 1.2 with A > 0: clipped to 1.2, no gradient.
    let (l, d, f) = surrogate(lr, 1.0, &p);
    assert!((l + 1.2).abs() < 1e-15 && d == 0.0 && f.high && !f.low);
    // ρ = 1.5 with A < 0: unclipped branch is the minimum, l = ρ·|A|, dl/dlogρ = −ρA.
    let (l, d, f) = surrogate(lr, -1.0, &p);
    assert!((l - 1.5).abs() < 1e-15 && (d - 1.5).abs() < 1e-15 && !f.high && !f.low);
    // ρ = 0.5 < 0.8 with A < 0: clipped low.
    let (l, d, f) = surrogate(0.5f64.ln(), -1.0, &p);
    assert!((l - 0.8).abs() < 1e-15 && d == 0.0 && f.low);
    // Dual-clip c = 1.2 caps the A < 0 loss at −A·c.
    let dual = PolicyLoss { dual_clip: Some(1.2), ..p };
    let (l, d, f) = surrogate(lr, -1.0, &dual);
    assert!((l - 1.2).abs() < 1e-15 && d == 0.0 && f.dual);
    // Clip-higher: ε_high = 0.28 lets ρ = 1.25 through with A > 0.
    let (l, d, _) = surrogate(1.25f64.ln(), 2.0, &PolicyLoss::dapo());
    assert!((l + 2.5).abs() < 1e-15 && (d + 2.5).abs() < 1e-15);
    // The log-ratio clamp: exp(clamp(30, ±20)), gradient cut.
    let clamp = PolicyLoss { eps_high: 1e12, ..p };
    let (l, d, _) = surrogate(30.0, 1.0, &clamp);
    assert_eq!((l, d), (-(20f64.exp()), 0.0));
}

#[test]
fn kl_estimators_hand_computed() {
    let x = 2f64.ln(); // logp − logp_ref
    let k = |e| KlPenalty { beta: 1.0, estimator: e, log_ratio_clamp: None, value_clamp: None };
    assert_eq!(k(KlEstimator::K1).estimate(x, 0.0), (x, 1.0));
    assert_eq!(k(KlEstimator::K2).estimate(x, 0.0), (0.5 * x * x, x));
    let (v, d) = k(KlEstimator::K3).estimate(x, 0.0);
    assert!((v - (0.5 + x - 1.0)).abs() < 1e-15 && (d - 0.5).abs() < 1e-15);
    // verl's clamps: k3 at a log difference of −30 is clamped at 10, gradient cut.
    assert_eq!(KlPenalty::k3(1.0).estimate(-30.0, 0.0), (10.0, 0.0));
}

#[test]
fn aggregations_hand_computed() {
    // Two sequences (lengths 1 and 3, T = 3), ρ = 1, A = [1, 2]: token losses [−1], [−2, −2, −2].
    let logp = [-1.0, 0.0, 0.0, -0.5, -0.7, -0.2];
    let mask = [true, false, false, true, true, true];
    let x = LossInputs {
        seq_len: 3,
        logp: &logp,
        old_logp: &logp,
        ref_logp: None,
        mask: &mask,
        advantages: &[1.0, 2.0],
        is_weights: None,
    };
    let expect = [
        (Aggregation::TokenMean, -7.0 / 4.0, [-0.25, -0.5]),
        (Aggregation::SeqMeanTokenMean, -1.5, [-0.5, -1.0 / 3.0]),
        (Aggregation::SeqMeanTokenSum, -3.5, [-0.5, -1.0]),
        (Aggregation::SeqMeanTokenSumNorm, -7.0 / 8.0, [-1.0 / 8.0, -2.0 / 8.0]),
    ];
    for (agg, loss, g) in expect {
        let o = run(&x, &cfg(no_clip(), None, agg));
        assert!((o.loss - loss).abs() < 1e-15, "{agg:?}: {}", o.loss);
        let want = [g[0], 0.0, 0.0, g[1], g[1], g[1]];
        for (a, b) in o.grad.iter().zip(want) {
            assert!((a - b).abs() < 1e-15, "{agg:?}: {:?}", o.grad);
        }
    }
    // β·k1 adds β·(logp − ref) per token under the same weights, and IS weights scale the policy term.
    let refl = [0.0; 6];
    let w = [2.0; 6];
    let kl = KlPenalty { beta: 0.1, estimator: KlEstimator::K1, log_ratio_clamp: None, value_clamp: None };
    let o = run(&LossInputs { ref_logp: Some(&refl), is_weights: Some(&w), ..x }, &cfg(no_clip(), Some(kl), AGGS[0]));
    assert!((o.loss - (2.0 * -7.0 / 4.0 + 0.1 * (-1.0 - 0.5 - 0.7 - 0.2) / 4.0)).abs() < 1e-15);
    assert!((o.stats.kl_mean() - (-2.4 / 4.0)).abs() < 1e-15);
}

#[test]
fn gspo_sequence_ratio_hand_computed() {
    // log-ratios 0.2 and 0.4: s = exp(0.3) for the whole sequence; token-mean over 2 tokens.
    let logp = [0.2, 0.4];
    let x = LossInputs {
        seq_len: 2,
        logp: &logp,
        old_logp: &[0.0, 0.0],
        ref_logp: None,
        mask: &[true, true],
        advantages: &[1.0],
        is_weights: None,
    };
    let p = PolicyLoss { level: RatioLevel::Sequence, ..no_clip() };
    let o = run(&x, &cfg(p, None, Aggregation::TokenMean));
    let s = 0.3f64.exp();
    assert!((o.loss + s).abs() < 1e-15);
    assert!(o.grad.iter().all(|g| (g + s / 2.0).abs() < 1e-15), "{:?}", o.grad);
    // The GSPO clip range (3e-4, 4e-4) clips this sequence entirely: no gradient.
    let o = run(&x, &cfg(PolicyLoss::gspo(), None, Aggregation::TokenMean));
    assert_eq!(o.grad, vec![0.0, 0.0]);
    assert_eq!(o.stats.clip_high, 2);
}

#[test]
fn rejects_bad_input() {
    let x = LossInputs {
        seq_len: 2,
        logp: &[0.0, f64::NAN],
        old_logp: &[0.0, 0.0],
        ref_logp: None,
        mask: &[true, true],
        advantages: &[1.0],
        is_weights: None,
    };
    let n = Normalizer::of(x.mask, 2).unwrap();
    let c = LossConfig::default();
    assert!(policy_loss(&x, &c, &n).unwrap_err().to_string().contains("logp = NaN"));
    let e = policy_loss(&LossInputs { advantages: &[1.0, 2.0], ..x }, &c, &n).unwrap_err();
    assert!(e.to_string().contains("advantages has length 2, expected 1"));
    let e = policy_loss(
        &LossInputs { logp: &[0.0, 0.0], ..x },
        &cfg(PolicyLoss::default(), Some(KlPenalty::k3(0.1)), AGGS[0]),
        &n,
    );
    assert!(e.unwrap_err().to_string().contains("ref_logp"));
    let bad = LossConfig { policy: PolicyLoss { eps_low: 1.5, ..Default::default() }, ..c };
    assert!(
        policy_loss(&LossInputs { logp: &[0.0, 0.0], ..x }, &bad, &n)
            .unwrap_err()
            .to_string()
            .contains("eps_low = 1.5")
    );
    let bad = LossConfig { policy: PolicyLoss { dual_clip: Some(0.5), ..Default::default() }, ..c };
    assert!(
        policy_loss(&LossInputs { logp: &[0.0, 0.0], ..x }, &bad, &n)
            .unwrap_err()
            .to_string()
            .contains("dual_clip = 0.5")
    );
    // NaN on a padding position is never read.
    let ok = policy_loss(&LossInputs { mask: &[true, false], ..x }, &c, &n).unwrap();
    assert!(ok.loss.is_finite());
}

/// A random batch: `[B·T]` arrays with `old`/`ref` log-probs within ±1.5 of `logp`, so the
/// clipping, dual-clip and clamp branches all occur.
#[derive(Clone, Debug)]
struct Batch {
    seq_len: usize,
    logp: Vec<f64>,
    old: Vec<f64>,
    reference: Vec<f64>,
    mask: Vec<bool>,
    adv: Vec<f64>,
    w: Option<Vec<f64>>,
}

impl Batch {
    fn inputs(&self) -> LossInputs<'_> {
        LossInputs {
            seq_len: self.seq_len,
            logp: &self.logp,
            old_logp: &self.old,
            ref_logp: Some(&self.reference),
            mask: &self.mask,
            advantages: &self.adv,
            is_weights: self.w.as_deref(),
        }
    }
}

fn batch(max_b: usize) -> impl Strategy<Value = Batch> {
    (1usize..max_b, 1usize..7).prop_flat_map(|(b, t)| {
        let n = b * t;
        (
            prop::collection::vec(-3.0f64..0.0, n),
            prop::collection::vec(-1.5f64..1.5, n),
            prop::collection::vec(-1.5f64..1.5, n),
            prop::collection::vec(prop::bool::weighted(0.8), n),
            prop::collection::vec(-2.0f64..2.0, b),
            prop::option::of(prop::collection::vec(0.5f64..2.0, n)),
        )
            .prop_map(move |(logp, d_old, d_ref, mask, adv, w)| Batch {
                seq_len: t,
                old: logp.iter().zip(&d_old).map(|(a, b)| a + b).collect(),
                reference: logp.iter().zip(&d_ref).map(|(a, b)| a + b).collect(),
                logp,
                mask,
                adv,
                w,
            })
    })
}

fn config() -> impl Strategy<Value = LossConfig> {
    let policy = (
        prop_oneof![Just((0.2, 0.2)), Just((0.2, 0.28)), Just((0.1, 10.0))],
        prop::option::of(prop_oneof![Just(1.5), Just(3.0)]),
        prop::option::of(prop_oneof![Just(20.0), Just(0.3)]),
        prop_oneof![Just(RatioLevel::Token), Just(RatioLevel::Sequence)],
    )
        .prop_map(|((lo, hi), dual, clamp, level)| PolicyLoss {
            eps_low: lo,
            eps_high: hi,
            dual_clip: dual,
            log_ratio_clamp: clamp,
            level,
        });
    let kl = prop::option::of(
        (
            prop_oneof![Just(0.0), Just(0.04), Just(1.0)],
            prop_oneof![Just(KlEstimator::K1), Just(KlEstimator::K2), Just(KlEstimator::K3)],
            prop::option::of(prop_oneof![Just(20.0), Just(0.5)]),
            prop::option::of(prop_oneof![Just(10.0), Just(0.05)]),
        )
            .prop_map(|(beta, estimator, log_ratio_clamp, value_clamp)| KlPenalty {
                beta,
                estimator,
                log_ratio_clamp,
                value_clamp,
            }),
    );
    (policy, kl, prop::sample::select(AGGS.to_vec())).prop_map(|(policy, kl, aggregation)| LossConfig {
        policy,
        kl,
        aggregation,
        max_completion_len: 7,
    })
}

/// Distance from the points where the loss is not differentiable (clip edges, dual-clip cap,
/// clamps): the finite difference is only meaningful away from them.
fn kink_distance(b: &Batch, c: &LossConfig) -> f64 {
    let mut d = f64::INFINITY;
    let mut near = |x: f64, k: f64| d = d.min((x - k).abs());
    let p = &c.policy;
    let t = b.seq_len;
    for i in 0..b.adv.len() {
        let row: Vec<usize> = (i * t..(i + 1) * t).filter(|&j| b.mask[j]).collect();
        if row.is_empty() {
            continue;
        }
        let lrs: Vec<f64> = match p.level {
            RatioLevel::Token => row.iter().map(|&j| b.logp[j] - b.old[j]).collect(),
            RatioLevel::Sequence => vec![row.iter().map(|&j| b.logp[j] - b.old[j]).sum::<f64>() / row.len() as f64],
        };
        for lr in lrs {
            near(lr, (1.0 - p.eps_low).ln());
            near(lr, (1.0 + p.eps_high).ln());
            if let Some(cl) = p.log_ratio_clamp {
                near(lr.abs(), cl);
            }
            if let Some(dc) = p.dual_clip {
                near(lr, dc.ln());
            }
        }
        if let Some(k) = &c.kl {
            for &j in &row {
                let x = b.logp[j] - b.reference[j];
                if let Some(cl) = k.log_ratio_clamp {
                    near(x.abs(), cl);
                }
                if let Some(vc) = k.value_clamp {
                    let v = KlPenalty { value_clamp: None, ..*k }.estimate(b.logp[j], b.reference[j]).0;
                    near(v.abs(), vc);
                }
            }
        }
    }
    d
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// For every policy-loss variant, KL estimator, clamp and aggregation, the analytic
    /// `d loss / d logp` matches central differences of the loss value (f64, `tensor::gradcheck`).
    #[test]
    fn gradient_matches_finite_differences(b in batch(6), c in config()) {
        prop_assume!(kink_distance(&b, &c) > 1e-4);
        let n = Normalizer::of(&b.mask, b.seq_len).unwrap();
        let out = policy_loss(&b.inputs(), &c, &n).unwrap();
        let shape = [b.logp.len()];
        let f = |x: &[Tensor]| -> tensor::Result<f64> {
            let logp = x[0].to_vec_f64()?;
            Ok(policy_loss(&LossInputs { logp: &logp, ..b.inputs() }, &c, &n).unwrap().loss)
        };
        let rep = check(
            f,
            &[Tensor::from_vec(b.logp.clone(), &shape).unwrap()],
            &[Tensor::from_vec(out.grad.clone(), &shape).unwrap()],
            &GradCheck::default(),
        ).unwrap();
        prop_assert!(rep.ok(), "{:?} {:?}", rep.mismatches, c);
    }

    /// Any split of the global batch over ranks and micro-batches, each normalised by the GLOBAL
    /// counts, sums to the loss and gradient of the single batch (gradient accumulation is exact).
    #[test]
    fn micro_batch_invariance(b in batch(12), c in config(), cuts in prop::collection::vec(any::<bool>(), 12)) {
        let t = b.seq_len;
        let nseq = b.adv.len();
        // Parts: contiguous runs of sequences, cut where `cuts` says; half go to "rank 0".
        let mut starts: Vec<usize> = (1..nseq).filter(|&i| cuts[i]).collect();
        starts.insert(0, 0);
        let parts: Vec<std::ops::Range<usize>> =
            starts.iter().zip(starts.iter().skip(1).chain([&nseq])).map(|(&a, &b)| a..b).collect();
        let slice = |r: &std::ops::Range<usize>| Batch {
            seq_len: t,
            logp: b.logp[r.start * t..r.end * t].to_vec(),
            old: b.old[r.start * t..r.end * t].to_vec(),
            reference: b.reference[r.start * t..r.end * t].to_vec(),
            mask: b.mask[r.start * t..r.end * t].to_vec(),
            adv: b.adv[r.clone()].to_vec(),
            w: b.w.as_ref().map(|w| w[r.start * t..r.end * t].to_vec()),
        };
        let pieces: Vec<Batch> = parts.iter().map(slice).collect();
        // Each "rank" counts its own micro-batches; the counts are then all-reduced (merged).
        let half = pieces.len() / 2;
        let count = |ps: &[Batch]| ps.iter().fold(Normalizer::default(), |n, p| n.merge(Normalizer::of(&p.mask, t).unwrap()));
        let global = count(&pieces[..half]).merge(count(&pieces[half..]));
        prop_assert_eq!(global, Normalizer::of(&b.mask, t).unwrap());
        let whole = policy_loss(&b.inputs(), &c, &global).unwrap();
        let (mut loss, mut grad) = (0.0, Vec::new());
        for p in &pieces {
            let o = policy_loss(&p.inputs(), &c, &global).unwrap();
            loss += o.loss;
            grad.extend(o.grad);
        }
        prop_assert!((loss - whole.loss).abs() <= 1e-12 * (1.0 + whole.loss.abs()), "{} vs {}", loss, whole.loss);
        prop_assert_eq!(grad, whole.grad);
    }
}

/// The bug the global normaliser prevents (verl #5625): normalising each micro-batch by its own
/// token count changes the token-mean loss when micro-batches hold different numbers of tokens.
#[test]
fn local_normalisation_would_change_the_loss() {
    let logp = [-1.0, -1.0, -1.0, -1.0];
    let mask = [true, false, true, true];
    let adv = [1.0, 3.0];
    let x = LossInputs {
        seq_len: 2,
        logp: &logp,
        old_logp: &logp,
        ref_logp: None,
        mask: &mask,
        advantages: &adv,
        is_weights: None,
    };
    let c = cfg(no_clip(), None, Aggregation::TokenMean);
    let whole = run(&x, &c).loss; // (−1 − 3 − 3)/3
    assert!((whole + 7.0 / 3.0).abs() < 1e-15);
    let part = |r: std::ops::Range<usize>| LossInputs {
        logp: &logp[r.start * 2..r.end * 2],
        old_logp: &logp[r.start * 2..r.end * 2],
        mask: &mask[r.start * 2..r.end * 2],
        advantages: &adv[r],
        ..x
    };
    let local: f64 = [part(0..1), part(1..2)].iter().map(|p| run(p, &c).loss).sum::<f64>() / 2.0;
    assert!((local + 2.0).abs() < 1e-15, "{local}"); // mean of −1 and −3: not −7/3
    let global = Normalizer::of(&mask, 2).unwrap();
    let summed: f64 = [part(0..1), part(1..2)].iter().map(|p| policy_loss(p, &c, &global).unwrap().loss).sum();
    assert!((summed - whole).abs() < 1e-15);
}
