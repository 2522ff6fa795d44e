//! The GRPO trainer proven on a tabular softmax policy with a rule reward: the reward rises from
//! chance to ≥ 0.95, the KL to the reference stays bounded with β > 0, every variant trains, and
//! every step writes one JSON line of metrics.

mod common;

use common::{Tabular, exact_reward, match_reward};
use grpo::advantage::{AdvantageKind, StdKind};
use grpo::batch::OverlongPunishment;
use grpo::loss::{Aggregation, KlEstimator, KlPenalty, LossConfig, PolicyLoss};
use grpo::trainer::{GrpoConfig, StepMetrics, Trainer};

const PROMPTS: usize = 4;
const MAX_LEN: usize = 5;
const VOCAB: usize = 4;

fn base() -> GrpoConfig {
    GrpoConfig {
        group_size: 8,
        prompts_per_step: 4,
        inner_iterations: 2,
        mini_batches: 2,
        micro_batch: 5,
        advantage: AdvantageKind::TRL,
        loss: LossConfig { kl: Some(KlPenalty::k3(0.04)), max_completion_len: MAX_LEN, ..Default::default() },
        ref_reset_every: None,
        ..Default::default()
    }
}

fn train_with(
    cfg: GrpoConfig,
    steps: usize,
    policy: &mut Tabular,
    sink: Option<Box<dyn std::io::Write>>,
) -> Vec<StepMetrics> {
    let mut tr = Trainer::new(cfg, vec![match_reward(VOCAB), exact_reward(VOCAB)], &*policy).unwrap();
    if let Some(s) = sink {
        tr = tr.with_metrics(s);
    }
    let mut prompts = (0..PROMPTS).cycle();
    (0..steps).map(|_| tr.step(policy, &mut prompts).unwrap()).collect()
}

fn train(cfg: GrpoConfig, steps: usize) -> Vec<StepMetrics> {
    train_with(cfg, steps, &mut Tabular::new(PROMPTS, MAX_LEN, VOCAB, 0.1, 7), None)
}

fn tail_reward(m: &[StepMetrics]) -> f64 {
    m[m.len() - 5..].iter().map(|s| s.reward.mean).sum::<f64>() / 5.0
}

#[test]
fn reward_rises_from_chance_and_metrics_are_written() {
    let path = std::env::temp_dir().join(format!("grpo-metrics-{}.jsonl", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    let m = train_with(base(), 150, &mut Tabular::new(PROMPTS, MAX_LEN, VOCAB, 0.1, 1), Some(Box::new(file)));
    // Uniform policy: E[match] = (1/4 + 3/16 + 9/64 + 27/256)/4 ≈ 0.171.
    let first = m[..3].iter().map(|s| s.reward.mean).sum::<f64>() / 3.0;
    eprintln!("reward: first 3 steps {first:.3}, last 5 steps {:.3}; accuracy {:?}", tail_reward(&m), m[149].accuracy);
    assert!(first < 0.35, "first steps already at {first}");
    assert!(tail_reward(&m) >= 0.95, "reward {}", tail_reward(&m));
    assert!(m[149].accuracy.unwrap() >= 0.9);
    let last = &m[149];
    assert_eq!(last.optimizer_steps, 4); // μ = 2 × 2 mini-batches
    assert!(last.grad_norm.unwrap().is_finite() && last.lr == Some(0.1));
    assert!(last.entropy.unwrap() < m[0].entropy.unwrap());
    assert!(m[0].truncated_frac > 0.0 && m[0].completion_len_max == MAX_LEN);
    // Sampler and trainer compute the same log-probabilities here: the mismatch ratio is exactly 1.
    let is = m[0].rollout_is.unwrap();
    assert!(is.tokens > 0 && is.ratio_min == 1.0 && is.ratio_max == 1.0 && is.mismatch_kl == 0.0, "{is:?}");
    // One JSON line per step with every metric of grpo-reference.md.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 150);
    for key in [
        "reward",
        "rewards",
        "accuracy",
        "zero_std_frac",
        "kl",
        "clip_low_frac",
        "clip_high_frac",
        "entropy",
        "completion_len_mean",
        "completion_len_max",
        "truncated_frac",
        "grad_norm",
        "lr",
        "tokens_per_s",
        "time_generation_s",
        "time_scoring_s",
        "time_training_s",
    ] {
        assert!(lines[10].get(key).is_some(), "metric {key} missing");
    }
    assert_eq!(lines[149]["step"], 149);
    assert!(lines[0]["rewards"]["match"]["mean"].as_f64().unwrap() < 0.35);
}

#[test]
fn kl_stays_bounded_with_beta_and_resets_with_the_reference() {
    let kl_of = |beta: f64, reset: Option<usize>| {
        let mut c = base();
        c.loss.kl = Some(KlPenalty::k3(beta));
        c.ref_reset_every = reset;
        train(c, 150)
    };
    let weak = kl_of(1e-3, None);
    let strong = kl_of(2.0, None);
    let max = |m: &[StepMetrics]| m.iter().map(|s| s.kl.unwrap()).fold(0.0, f64::max);
    let late = |m: &[StepMetrics]| m[50..].iter().map(|s| s.kl.unwrap()).sum::<f64>() / (m.len() - 50) as f64;
    eprintln!("max KL: β=1e-3 {:.4}, β=2 {:.4}", max(&weak), max(&strong));
    eprintln!("mean KL over steps 50..150: β=1e-3 {:.4}, β=2 {:.4}", late(&weak), late(&strong));
    assert!(strong.iter().all(|s| s.kl.unwrap().is_finite()));
    // β pulls the policy back to the reference: the KL stays a fraction of the β = 1e-3 run's.
    assert!(max(&strong) < 0.25 * max(&weak), "max KL β = 2: {}, β = 1e-3: {}", max(&strong), max(&weak));
    assert!(late(&strong) < 0.25 * late(&weak), "late KL β = 2: {}, β = 1e-3: {}", late(&strong), late(&weak));
    // Reset every 10 steps: the step after a reset starts again from KL 0. Where the policy still
    // moves (the window before the reset reached KL > 1e-3), the KL drops by 10× at the reset.
    let reset = kl_of(1e-3, Some(10));
    let mut moving = 0;
    for k in (10..150).step_by(10) {
        let window = max(&reset[k - 10..k]);
        if window > 1e-3 {
            moving += 1;
            assert!(reset[k].kl.unwrap() < 0.1 * window, "step {k}: {:?} vs window max {window}", reset[k].kl);
        }
    }
    assert!(moving >= 3, "only {moving} resets while the policy moved");
    assert!(max(&reset[10..]) < 0.5 * max(&weak[10..]), "{} vs {}", max(&reset[10..]), max(&weak[10..]));
    // β = 0: no reference, no KL metric.
    let mut c = base();
    c.loss.kl = None;
    assert!(train(c, 2).iter().all(|s| s.kl.is_none()));
}

#[test]
fn every_variant_trains() {
    type Edit = fn(&mut GrpoConfig);
    let variants: Vec<(&str, Edit)> = vec![
        ("grpo trl", |_| {}),
        ("grpo biased std", |c| c.advantage = AdvantageKind::Grpo { eps: 1e-6, std: StdKind::Biased }),
        ("batch std", |c| c.advantage = AdvantageKind::BatchStd { eps: 1e-4, std: StdKind::Unbiased }),
        // Unscaled advantages (Dr. GRPO, RLOO) are ~10× smaller than std-scaled ones on this reward,
        // so β shrinks by the same factor to keep the KL term's relative weight.
        ("dr grpo", |c| {
            c.advantage = AdvantageKind::DrGrpo;
            c.loss.aggregation = Aggregation::SeqMeanTokenSumNorm;
            c.loss.kl = Some(KlPenalty::k3(0.004));
        }),
        ("rloo", |c| {
            c.advantage = AdvantageKind::Rloo;
            c.loss.kl = Some(KlPenalty::k3(0.004));
        }),
        ("reinforce++", |c| c.advantage = AdvantageKind::ReinforcePlusPlus { eps: 1e-8, std: StdKind::Unbiased }),
        ("seq-mean-token-mean", |c| c.loss.aggregation = Aggregation::SeqMeanTokenMean),
        ("seq-mean-token-sum", |c| c.loss.aggregation = Aggregation::SeqMeanTokenSum),
        ("clip-higher", |c| c.loss.policy = PolicyLoss::dapo()),
        ("dual-clip", |c| c.loss.policy.dual_clip = Some(3.0)),
        ("r1 eps 10", |c| c.loss.policy = PolicyLoss { eps_low: 0.9, eps_high: 10.0, ..Default::default() }),
        ("gspo", |c| c.loss.policy = PolicyLoss::gspo()),
        ("k1", |c| c.loss.kl.as_mut().unwrap().estimator = KlEstimator::K1),
        ("k2", |c| c.loss.kl.as_mut().unwrap().estimator = KlEstimator::K2),
        ("no kl", |c| c.loss.kl = None),
        ("mu 1", |c| {
            c.inner_iterations = 1;
            c.mini_batches = 1;
        }),
        ("dynamic sampling", |c| c.dynamic_sampling = Some(3)),
        ("mask truncated", |c| c.mask_truncated = true),
        ("overlong", |c| c.overlong = Some(OverlongPunishment { max_len: MAX_LEN, cache: 1 })),
        ("tis", |c| c.tis_cap = Some(2.0)),
    ];
    for (name, edit) in variants {
        let mut c = base();
        edit(&mut c);
        let m = train(c, 200);
        eprintln!("{name:>20}: reward {:.3} → {:.3}", m[0].reward.mean, tail_reward(&m));
        assert!(tail_reward(&m) >= 0.95, "{name}: reward {}", tail_reward(&m));
    }
}

#[test]
fn batch_shaping_in_the_loop() {
    // Dynamic sampling refills to the target while groups vary, and reports zero-variance groups.
    let mut c = base();
    c.dynamic_sampling = Some(4);
    let m = train(c, 150);
    // The refill stops early only when the batch is full; a short batch means the rounds ran out.
    for s in &m {
        assert!(s.groups_kept <= 4);
        assert!(s.groups_kept == 4 || s.sampling_rounds == 4, "step {}: {} groups", s.step, s.groups_kept);
    }
    assert!(m[..10].iter().all(|s| s.groups_kept == 4));
    assert!(m.iter().any(|s| s.sampling_rounds > 1));
    assert!(m[149].zero_std_frac > 0.5, "converged policy: {}", m[149].zero_std_frac);
    // TIS with a noisy sampler: the mismatch is measured and the weights get capped.
    let mut c = base();
    c.tis_cap = Some(1.0);
    let mut p = Tabular::new(PROMPTS, MAX_LEN, VOCAB, 0.1, 3);
    p.sampler_noise = 1.0;
    let m = train_with(c, 150, &mut p, None);
    let is = m[0].rollout_is.unwrap();
    eprintln!("rollout IS at step 0: {is:?}");
    assert!(is.tokens > 0 && is.ratio_min < 1.0 && is.ratio_max > 1.0 && is.capped_frac > 0.0);
    assert!(tail_reward(&m) >= 0.95, "tis: {}", tail_reward(&m));
    // Overlong punishment lowers the reward of truncated completions.
    let mut c = base();
    c.overlong = Some(OverlongPunishment { max_len: 4, cache: 2 });
    let with = train(c, 1)[0].reward.mean;
    assert!(with < train(base(), 1)[0].reward.mean);
}

#[test]
fn config_errors_name_the_field() {
    let p = Tabular::new(PROMPTS, MAX_LEN, VOCAB, 0.1, 0);
    let bad = |c: GrpoConfig| Trainer::new(c, vec![match_reward(VOCAB)], &p).err().unwrap().to_string();
    assert!(bad(GrpoConfig { group_size: 0, ..base() }).contains("group_size = 0"));
    assert!(bad(GrpoConfig { tis_cap: Some(-1.0), ..base() }).contains("tis_cap = -1"));
    assert!(bad(GrpoConfig { ref_reset_every: Some(0), ..base() }).contains("ref_reset_every = 0"));
    let mut c = base();
    c.loss.aggregation = Aggregation::SeqMeanTokenSumNorm;
    c.loss.max_completion_len = 0;
    assert!(bad(c).contains("max_completion_len = 0"));
}

#[test]
fn micro_batch_size_does_not_change_the_step() {
    // One prompt batch, one optimizer step: micro-batches of 1, 3 and all 32 sequences accumulate
    // the same gradient because the trainer normalises by the mini-batch's global counts.
    let run = |micro: usize, agg: Aggregation| {
        let mut c = base();
        c.inner_iterations = 1;
        c.mini_batches = 1;
        c.micro_batch = micro;
        c.loss.aggregation = agg;
        let mut p = Tabular::new(PROMPTS, MAX_LEN, VOCAB, 0.1, 11);
        let m = train_with(c, 1, &mut p, None);
        let is = m[0].rollout_is.unwrap(); // measured on the training forward when μ = 1
        assert!(is.tokens > 0 && is.ratio_max == 1.0, "{is:?}");
        (m[0].loss, m[0].grad_norm.unwrap(), p.table())
    };
    for agg in [Aggregation::TokenMean, Aggregation::SeqMeanTokenMean, Aggregation::SeqMeanTokenSumNorm] {
        let (loss, norm, table) = run(32, agg);
        assert!(norm > 0.0);
        for micro in [1, 3] {
            let (l, n, t) = run(micro, agg);
            assert!((l - loss).abs() <= 1e-12 * (1.0 + loss.abs()), "{agg:?} micro {micro}: loss {l} vs {loss}");
            // The gradient reaches the policy in f32: equal up to f32 rounding of the sums.
            assert!((n - norm).abs() <= 1e-6 * norm, "{agg:?} micro {micro}: grad norm {n} vs {norm}");
            assert_eq!(t, table, "{agg:?} micro {micro}");
        }
    }
}

#[test]
fn config_is_data_with_r1_defaults() {
    // R1-Zero (R1 §2.2 and supplementary): G = 16, 32 prompts per step, k3 with β = 0.001,
    // reference reset every 400 steps.
    let d = GrpoConfig::default();
    assert_eq!((d.group_size, d.prompts_per_step, d.ref_reset_every), (16, 32, Some(400)));
    let kl = d.loss.kl.unwrap();
    assert_eq!((kl.beta, kl.estimator), (0.001, KlEstimator::K3));
    // A config round-trips through JSON, so runs can be configured from files.
    let mut c = base();
    c.overlong = Some(OverlongPunishment { max_len: 5, cache: 2 });
    c.loss.policy = PolicyLoss::gspo();
    let back: GrpoConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
}

/// The non-finite guard (inputs are already validated finite, so a NaN gradient is what can still
/// occur): the policy reports a non-finite gradient norm and drops the gradient; with `skip` no
/// update is applied (the table stays as it was) and every mini-batch is counted, with `stop`
/// the step ends with an error naming it.
#[test]
fn nonfinite_loss_is_skipped_or_stops() {
    let mut policy = Tabular::new(PROMPTS, MAX_LEN, VOCAB, 0.1, 3);
    policy.nan_grad = true;
    let before = policy.table();
    let rewards = || vec![match_reward(VOCAB), exact_reward(VOCAB)];
    let mut tr = Trainer::new(base(), rewards(), &policy).unwrap();
    let mut prompts = (0..PROMPTS).cycle();
    let m = tr.step(&mut policy, &mut prompts).unwrap();
    assert_eq!((m.optimizer_steps, m.skipped_updates), (0, 4), "{m:?}");
    assert_eq!(policy.table(), before, "no update from a non-finite loss");
    let cfg = GrpoConfig { on_nonfinite: grpo::OnNonFinite::Stop, ..base() };
    let mut tr = Trainer::new(cfg, rewards(), &policy).unwrap();
    let e = tr.step(&mut policy, &mut prompts).unwrap_err().to_string();
    assert!(e.contains("step 1") && e.contains("grad_norm") && e.contains("NaN"), "{e}");
}
