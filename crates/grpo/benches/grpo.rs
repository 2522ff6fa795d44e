//! Advantages + policy loss over a 512 × 16 batch: 512 prompts × G = 16 completions for the
//! advantages; 512 sequences × 16 tokens for the loss (k3 KL, token-mean), as one step's math.
use criterion::{Criterion, criterion_group, criterion_main};
use grpo::advantage::{AdvantageKind, advantages};
use grpo::loss::{KlPenalty, LossConfig, LossInputs, Normalizer, PolicyLoss, policy_loss};

fn lcg(s: &mut u64) -> f64 {
    *s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (*s >> 11) as f64 / (1u64 << 53) as f64
}

fn bench(c: &mut Criterion) {
    let (b, t) = (512, 16);
    let mut s = 1;
    let rewards: Vec<f64> = (0..b * t).map(|_| (lcg(&mut s) < 0.4) as u8 as f64).collect();
    c.bench_function("advantages_grpo_512x16", |bch| {
        bch.iter(|| advantages(&rewards, 16, &AdvantageKind::TRL).unwrap())
    });
    let adv = advantages(&rewards[..b], 16, &AdvantageKind::TRL).unwrap();
    let logp: Vec<f64> = (0..b * t).map(|_| -3.0 * lcg(&mut s)).collect();
    let old: Vec<f64> = logp.iter().map(|l| l + 0.4 * (lcg(&mut s) - 0.5)).collect();
    let reference: Vec<f64> = logp.iter().map(|l| l + 0.4 * (lcg(&mut s) - 0.5)).collect();
    let mask: Vec<bool> = (0..b * t).map(|_| lcg(&mut s) < 0.9).collect();
    let x = LossInputs {
        seq_len: t,
        logp: &logp,
        old_logp: &old,
        ref_logp: Some(&reference),
        mask: &mask,
        advantages: &adv,
        is_weights: None,
    };
    let cfg = LossConfig { policy: PolicyLoss::dapo(), kl: Some(KlPenalty::k3(0.001)), ..Default::default() };
    let norm = Normalizer::of(&mask, t).unwrap();
    c.bench_function("policy_loss_token_mean_512x16", |bch| bch.iter(|| policy_loss(&x, &cfg, &norm).unwrap()));
    c.bench_function("advantages_plus_loss_512x16", |bch| {
        bch.iter(|| {
            let a = advantages(&rewards[..b], 16, &AdvantageKind::TRL).unwrap();
            policy_loss(&LossInputs { advantages: &a, ..x }, &cfg, &norm).unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
