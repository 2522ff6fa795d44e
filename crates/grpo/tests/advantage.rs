//! Advantages: exact values on hand-computed cases and the properties of grpo-reference.md.

use grpo::advantage::{AdvantageKind, StdKind, advantages, combine_rewards};
use proptest::prelude::*;

const GRPO0: AdvantageKind = AdvantageKind::Grpo { eps: 0.0, std: StdKind::Biased };

fn close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol * (1.0 + x.abs().max(y.abs())), "{a:?} vs {b:?}");
    }
}

#[test]
fn grpo_hand_computed() {
    // mean 0.5, population std 0.5.
    close(&advantages(&[1.0, 0.0, 0.0, 1.0], 4, &GRPO0).unwrap(), &[1.0, -1.0, -1.0, 1.0], 1e-15);
    // Bessel: std = sqrt(1/3), so A = ±0.5·sqrt(3).
    let h = 0.5 * 3f64.sqrt();
    let unb = AdvantageKind::Grpo { eps: 0.0, std: StdKind::Unbiased };
    close(&advantages(&[1.0, 0.0, 0.0, 1.0], 4, &unb).unwrap(), &[h, -h, -h, h], 1e-15);
    // TRL's ε = 1e-4 enters the denominator.
    let trl = 0.5 / (1.0 / 3f64.sqrt() + 1e-4);
    close(&advantages(&[1.0, 0.0, 0.0, 1.0], 4, &AdvantageKind::TRL).unwrap(), &[trl, -trl, -trl, trl], 1e-15);
    // Two groups are independent; the second is constant.
    close(&advantages(&[2.0, 4.0, 3.0, 3.0], 2, &GRPO0).unwrap(), &[-1.0, 1.0, 0.0, 0.0], 1e-15);
}

#[test]
fn dr_grpo_and_rloo_hand_computed() {
    let r = [1.0, 2.0, 3.0, 6.0];
    close(&advantages(&r, 4, &AdvantageKind::DrGrpo).unwrap(), &[-2.0, -1.0, 0.0, 3.0], 1e-15);
    // r_i − (Σ r − r_i)/3 with Σ r = 12.
    close(&advantages(&r, 4, &AdvantageKind::Rloo).unwrap(), &[1.0 - 11.0 / 3.0, 2.0 - 10.0 / 3.0, 0.0, 4.0], 1e-15);
}

#[test]
fn batch_std_and_reinforce_pp_hand_computed() {
    // Batch rewards [0, 1, 2, 2]: mean 1.25, population variance 0.6875.
    let s = 0.6875f64.sqrt();
    let k = AdvantageKind::BatchStd { eps: 0.0, std: StdKind::Biased };
    close(&advantages(&[0.0, 1.0, 2.0, 2.0], 2, &k).unwrap(), &[-0.5 / s, 0.5 / s, 0.0, 0.0], 1e-15);
    // d = [−0.5, 0.5, −1.5, 1.5]: mean 0, population std sqrt(1.25).
    let s = 1.25f64.sqrt();
    let k = AdvantageKind::ReinforcePlusPlus { eps: 0.0, std: StdKind::Biased };
    close(&advantages(&[0.0, 1.0, 0.0, 3.0], 2, &k).unwrap(), &[-0.5 / s, 0.5 / s, -1.5 / s, 1.5 / s], 1e-15);
}

#[test]
fn missing_rewards_get_zero_and_leave_the_statistics() {
    // Present [1, 0, 1]: mean 2/3, population std sqrt(2)/3 → A = [1/√2, −√2, 1/√2].
    let a = advantages(&[1.0, f64::NAN, 0.0, 1.0], 4, &GRPO0).unwrap();
    let h = 0.5f64.sqrt();
    close(&a, &[h, 0.0, -2.0 * h, h], 1e-15);
    let r =
        combine_rewards(&[vec![Some(1.0), None], vec![None, None], vec![Some(0.5), Some(2.0)]], &[1.0, 0.5]).unwrap();
    assert_eq!(r[0], 1.0);
    assert!(r[1].is_nan());
    assert_eq!(r[2], 1.5);
}

#[test]
fn group_of_one_and_bad_input() {
    for k in kinds(1e-4) {
        assert_eq!(advantages(&[3.0, -1.0], 1, &k).unwrap(), vec![0.0, 0.0], "{k:?}");
    }
    assert!(advantages(&[1.0, 2.0, 3.0], 2, &GRPO0).unwrap_err().to_string().contains("rewards.len() = 3"));
    assert!(advantages(&[1.0, f64::INFINITY], 2, &GRPO0).unwrap_err().to_string().contains("rewards = inf"));
    assert!(advantages(&[1.0], 0, &GRPO0).unwrap_err().to_string().contains("group_size = 0"));
    let bad = AdvantageKind::Grpo { eps: -1.0, std: StdKind::Biased };
    assert!(advantages(&[1.0], 1, &bad).unwrap_err().to_string().contains("eps = -1"));
}

fn kinds(eps: f64) -> Vec<AdvantageKind> {
    let mut v = vec![AdvantageKind::DrGrpo, AdvantageKind::Rloo];
    for std in [StdKind::Biased, StdKind::Unbiased] {
        v.push(AdvantageKind::Grpo { eps, std });
        v.push(AdvantageKind::BatchStd { eps, std });
        v.push(AdvantageKind::ReinforcePlusPlus { eps, std });
    }
    v
}

/// Rule-like rewards: quarter steps in [−10, 10], `groups × g` of them.
fn batch() -> impl Strategy<Value = (usize, Vec<f64>)> {
    (1usize..5, 1usize..8).prop_flat_map(|(groups, g)| {
        (Just(g), prop::collection::vec((-40i32..=40).prop_map(|k| k as f64 / 4.0), groups * g))
    })
}

proptest! {
    /// grpo, batch-std, Dr. GRPO and RLOO advantages sum to zero over every group.
    #[test]
    fn group_mean_is_zero((g, r) in batch(), eps in prop_oneof![Just(0.0), Just(1e-4)]) {
        for k in kinds(eps).into_iter().filter(|k| !matches!(k, AdvantageKind::ReinforcePlusPlus { .. })) {
            let a = advantages(&r, g, &k).unwrap();
            for grp in a.chunks(g) {
                let (s, m) = (grp.iter().sum::<f64>(), grp.iter().map(|x| x.abs()).sum::<f64>());
                prop_assert!(s.abs() <= 1e-12 * (1.0 + m), "{k:?} {grp:?}");
            }
        }
    }

    /// Adding a constant to one group's rewards changes no advantage (grpo, Dr. GRPO, RLOO,
    /// REINFORCE++); batch-std is invariant to one constant added to the whole batch.
    #[test]
    fn shift_invariance((g, r) in batch(), shifts in prop::collection::vec((-400i32..=400).prop_map(|k| k as f64 / 4.0), 5)) {
        for k in kinds(1e-4) {
            let batch_level = matches!(k, AdvantageKind::BatchStd { .. });
            let shifted: Vec<f64> = r.iter().enumerate()
                .map(|(i, x)| x + if batch_level { shifts[0] } else { shifts[i / g] }).collect();
            let (a, b) = (advantages(&r, g, &k).unwrap(), advantages(&shifted, g, &k).unwrap());
            for (x, y) in a.iter().zip(&b) {
                prop_assert!((x - y).abs() <= 1e-9 * (1.0 + x.abs()), "{k:?}: {a:?} vs {b:?}");
            }
        }
    }

    /// With ε = 0, scaling a group's rewards by c > 0 leaves grpo advantages unchanged (batch-std and
    /// REINFORCE++ under one scale for the whole batch); with ε > 0 only up to ε.
    #[test]
    fn scale_invariance((g, r) in batch(), scales in prop::collection::vec(0.01f64..100.0, 5)) {
        for std in [StdKind::Biased, StdKind::Unbiased] {
            for k in [AdvantageKind::Grpo { eps: 0.0, std }, AdvantageKind::BatchStd { eps: 0.0, std },
                      AdvantageKind::ReinforcePlusPlus { eps: 0.0, std }] {
                let per_group = matches!(k, AdvantageKind::Grpo { .. });
                let scaled: Vec<f64> = r.iter().enumerate()
                    .map(|(i, x)| x * if per_group { scales[i / g] } else { scales[0] }).collect();
                let (a, b) = (advantages(&r, g, &k).unwrap(), advantages(&scaled, g, &k).unwrap());
                for (x, y) in a.iter().zip(&b) {
                    prop_assert!((x - y).abs() <= 1e-9 * (1.0 + x.abs()), "{k:?}: {a:?} vs {b:?}");
                }
            }
        }
    }

    /// Permuting completions within a group permutes their advantages the same way (every kind).
    #[test]
    fn permutation_equivariance((g, r) in batch(), seed in any::<u64>()) {
        let mut perm: Vec<usize> = (0..r.len()).collect();
        let mut s = seed;
        for grp in perm.chunks_mut(g) {
            for i in (1..grp.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                grp.swap(i, ((s >> 33) % (i as u64 + 1)) as usize);
            }
        }
        let permuted: Vec<f64> = perm.iter().map(|&i| r[i]).collect();
        for k in kinds(1e-4) {
            let (a, b) = (advantages(&r, g, &k).unwrap(), advantages(&permuted, g, &k).unwrap());
            for (j, &i) in perm.iter().enumerate() {
                prop_assert!((a[i] - b[j]).abs() <= 1e-12 * (1.0 + a[i].abs()), "{k:?}");
            }
        }
    }

    /// A group whose rewards are all equal gets all-zero advantages, whatever the other groups hold.
    #[test]
    fn constant_group_is_zero((g, r) in batch(), c in -10.0f64..10.0, which in 0usize..5) {
        let mut r = r;
        let n = r.len() / g;
        let which = which % n;
        r[which * g..(which + 1) * g].fill(c);
        for k in kinds(1e-4).into_iter().chain(kinds(0.0)) {
            let a = advantages(&r, g, &k).unwrap();
            prop_assert!(a[which * g..(which + 1) * g].iter().all(|x| *x == 0.0), "{k:?} {a:?}");
        }
    }

    /// No finite input, including G = 1, subnormals and ±f64::MAX, yields a NaN; rewards within
    /// ±1e100 yield finite advantages.
    #[test]
    fn never_nan(g in 1usize..6, groups in 1usize..4,
                 raw in prop::collection::vec(any::<f64>().prop_filter("finite", |x| x.is_finite()), 24),
                 eps in prop_oneof![Just(0.0), Just(1e-4), Just(1e-9)]) {
        let r = &raw[..g * groups];
        for k in kinds(eps) {
            let a = advantages(r, g, &k).unwrap();
            prop_assert!(a.iter().all(|x| !x.is_nan()), "{k:?} {r:?} -> {a:?}");
            if r.iter().all(|x| x.abs() <= 1e100) {
                prop_assert!(a.iter().all(|x| x.is_finite()), "{k:?} {r:?} -> {a:?}");
            }
        }
    }

    /// A missing (NaN) reward gets A = 0 and the group-local estimators give the others exactly what
    /// they would get without it.
    #[test]
    fn missing_reward_is_left_out((g, r) in batch().prop_filter("g ≥ 2", |(g, _)| *g >= 2), drop in 0usize..8) {
        let drop = drop % g;
        let mut with_nan = r[..g].to_vec();
        with_nan[drop] = f64::NAN;
        let mut without = r[..g].to_vec();
        without.remove(drop);
        for k in [GRPO0, AdvantageKind::TRL, AdvantageKind::DrGrpo, AdvantageKind::Rloo] {
            let mut a = advantages(&with_nan, g, &k).unwrap();
            prop_assert_eq!(a.remove(drop), 0.0);
            let b = advantages(&without, g - 1, &k).unwrap();
            for (x, y) in a.iter().zip(&b) {
                prop_assert!((x - y).abs() <= 1e-12 * (1.0 + x.abs()), "{k:?}");
            }
        }
    }
}
