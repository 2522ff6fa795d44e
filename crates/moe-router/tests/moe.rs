//! DeepSeekMoE: gradient checks (f64) of the input, every expert, the gate weight and the
//! balance loss; routing properties; aux-loss-free balancing on a skewed stream; device parity.

use moe_router::balance::{max_vio, update_bias};
use moe_router::{Moe, MoeConfig, ScoringFunc, TopkMethod};
use optim::Params;
use proptest::prelude::*;
use tensor::gradcheck::{GradCheck, check, project};
use tensor::{DType, Device, Tensor};

fn cfg(e: usize, groups: usize, topk_group: usize, k: usize, alpha: f64) -> MoeConfig {
    MoeConfig {
        hidden_size: 6,
        moe_intermediate_size: 4,
        n_routed_experts: e,
        n_shared_experts: 1,
        num_experts_per_tok: k,
        n_group: groups,
        topk_group,
        norm_topk_prob: true,
        routed_scaling_factor: 2.5,
        scoring_func: ScoringFunc::Sigmoid,
        topk_method: TopkMethod::NoauxTc,
        seq_aux_alpha: alpha,
    }
}

fn with_bias(mut m: Moe, seed: u64) -> Moe {
    let e = m.cfg.n_routed_experts;
    m.e_score_correction_bias = Tensor::randn(&[e], 0.3, seed, DType::F32, &Device::Cpu).unwrap();
    m
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]

    /// Property: for L = Σ MoE(x) ⊙ R + balance loss, the backward's gradients of the input,
    /// every routed and shared expert weight and the gate weight equal central differences
    /// (the choice is piecewise constant, so it does not move under ±ε).
    #[test]
    fn gradients_match_finite_differences(groups in 1usize..4, k in 1usize..3, norm: bool, softmax: bool,
                                          alpha in prop::sample::select(vec![0.0, 0.1]), seed in 0u64..1000) {
        let mut c = cfg(4 * groups, groups, groups.div_ceil(2), k, alpha);
        c.norm_topk_prob = norm;
        if softmax { c.scoring_func = ScoringFunc::Softmax; c.topk_method = TopkMethod::GroupLimitedGreedy; }
        let m = with_bias(Moe::init(c.clone(), 0.7, seed, DType::F64, &Device::Cpu).unwrap(), seed);
        let names: Vec<String> = m.params().iter().map(|(n, _)| format!("mlp.{n}")).collect();
        let (t, seq) = (6, 3);
        let mut inputs = vec![Tensor::randn(&[t, c.hidden_size], 1.0, seed + 5, DType::F64, &Device::Cpu).unwrap()];
        inputs.extend(m.params().iter().map(|(_, w)| w.value.clone()));
        let bias = m.e_score_correction_bias.clone();
        let build = |xs: &[Tensor]| {
            let mut p = Params::default();
            for (n, w) in names.iter().zip(&xs[1..]) { p.insert(n.clone(), w.clone()).unwrap(); }
            p.insert("mlp.gate.e_score_correction_bias", bias.clone()).unwrap();
            Moe::load(c.clone(), &p, "mlp").unwrap()
        };
        let r = Tensor::randn(&[t, c.hidden_size], 1.0, seed + 9, DType::F64, &Device::Cpu).unwrap();
        let f = |xs: &[Tensor]| {
            let (y, s) = build(xs).forward(&xs[0], seq).map_err(|e| tensor::TensorError::Arg { op: "moe", detail: e.to_string() })?;
            Ok(project(&y, &r)? + s.routing.balance_loss)
        };
        let mut layer = build(&inputs);
        let (_, saved) = layer.forward(&inputs[0], seq).unwrap();
        let dx = layer.backward(&saved, &r).unwrap();
        let zero = |w: &Tensor| Tensor::zeros(w.shape(), DType::F64, &Device::Cpu).unwrap();
        let mut analytic = vec![dx];
        // Experts that received no token get no gradient: their true gradient is zero.
        analytic.extend(layer.params().iter().map(|(_, p)| p.grad.clone().unwrap_or_else(|| zero(&p.value))));
        check(f, &inputs, &analytic, &GradCheck { max_per_input: 16, ..GradCheck::default() }).unwrap().assert_ok("moe");
    }

    /// Properties of the V3 gate on random scores and biases: (1) with norm_topk_prob the
    /// weights of each token sum to routed_scaling_factor; (2) every chosen expert lies in one of
    /// the topk_group groups with the largest top-2 sums of s + b; (3) the bias changes the
    /// choice but never the weights: each weight is rsf · s_e / Σ_chosen s.
    #[test]
    fn gate_properties(groups in 1usize..5, per in 2usize..5, seed in 0u64..1000) {
        let e = groups * per;
        let topk_group = groups.div_ceil(2);
        let k = (topk_group * per).min(3);
        let m = with_bias(Moe::init(cfg(e, groups, topk_group, k, 0.0), 1.0, seed, DType::F32, &Device::Cpu).unwrap(), seed + 1);
        let x = Tensor::randn(&[16, 6], 1.0, seed + 2, DType::F32, &Device::Cpu).unwrap();
        let (r, _) = m.route(&x, &moe_router::balance::TokenDocs::rows(16, 16)).unwrap();
        let s = r.scores.to_vec_f64().unwrap();
        let b = m.e_score_correction_bias.to_vec_f64().unwrap();
        let w = r.weights.to_vec_f64().unwrap();
        for t in 0..16 {
            let wt = &w[t * k..(t + 1) * k];
            prop_assert!((wt.iter().sum::<f64>() - 2.5).abs() < 1e-5);
            let c: Vec<f64> = (0..e).map(|i| s[t * e + i] + b[i]).collect();
            let mut gs: Vec<(f64, usize)> = (0..groups).map(|g| {
                let mut v: Vec<f64> = c[g * per..(g + 1) * per].to_vec();
                v.sort_by(|a, b| b.partial_cmp(a).unwrap());
                (v[0] + v[1], g)
            }).collect();
            gs.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
            let kept: Vec<usize> = gs[..topk_group].iter().map(|p| p.1).collect();
            let idx = &r.topk_idx[t * k..(t + 1) * k];
            let z: f64 = idx.iter().map(|&i| s[t * e + i as usize]).sum();
            for (j, &i) in idx.iter().enumerate() {
                prop_assert!(kept.contains(&(i as usize / per)), "expert {i} outside kept groups {kept:?}");
                prop_assert!((wt[j] - 2.5 * s[t * e + i as usize] / z).abs() < 1e-5);
            }
        }
    }

    /// Property: permuting the tokens permutes the outputs (routing is per token).
    #[test]
    fn permuting_tokens_permutes_outputs(seed in 0u64..1000) {
        let m = with_bias(Moe::init(cfg(8, 4, 2, 2, 0.0), 0.5, seed, DType::F64, &Device::Cpu).unwrap(), seed);
        let t = 9;
        let x = Tensor::randn(&[t, 6], 1.0, seed + 3, DType::F64, &Device::Cpu).unwrap();
        let perm: Vec<u32> = (0..t as u32).map(|i| (i * 4 + seed as u32) % t as u32).collect();
        let (y, _) = m.forward(&x, t).unwrap();
        let (yp, _) = m.forward(&tensor::ops::index::index_select(&x, &perm).unwrap(), t).unwrap();
        let want = tensor::ops::index::index_select(&y, &perm).unwrap().to_vec_f64().unwrap();
        let got = yp.to_vec_f64().unwrap();
        prop_assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-12));
    }
}

/// A skewed token stream whose gate starts biased toward 4 of 16 experts: with the aux-loss-free
/// bias update (γ = 0.003) MaxVio falls below 0.2 within 600 steps; without it, it stays high.
#[test]
fn aux_free_bias_balances_a_skewed_stream() {
    let (e, d, t) = (16, 8, 2048);
    let c = MoeConfig { hidden_size: d, ..cfg(e, 4, 2, 4, 0.0) };
    let mut m = Moe::init(c, 0.3, 3, DType::F32, &Device::Cpu).unwrap();
    // Tokens share a mean direction μ; experts 0..4 align with it.
    let mu = Tensor::full(&[1, d], 1.0, DType::F32, &Device::Cpu).unwrap();
    let mut gw = m.gate_weight.to_vec::<f32>().unwrap();
    for r in 0..4 {
        for j in 0..d {
            gw[r * d + j] += 0.25;
        }
    }
    m.gate_weight = Tensor::from_vec(gw, &[e, d]).unwrap().into();
    let batch = |step: u64| {
        let noise = Tensor::randn(&[t, d], 1.0, 100 + step, DType::F32, &Device::Cpu).unwrap();
        tensor::ops::elementwise::add(&noise, &mu).unwrap()
    };
    let run = |m: &mut Moe, gamma: f64| -> Vec<f64> {
        (0..600)
            .map(|s| {
                let (r, _) = m.route(&batch(s), &moe_router::balance::TokenDocs::rows(t, t)).unwrap();
                if gamma > 0.0 {
                    update_bias(m, &r.load, gamma).unwrap();
                }
                max_vio(&r.load)
            })
            .collect()
    };
    let without = run(&mut m.clone(), 0.0);
    let with = run(&mut m, 0.003);
    let tail = |v: &[f64]| v[v.len() - 20..].iter().sum::<f64>() / 20.0;
    eprintln!(
        "MaxVio: start {:.2}; after 600 steps with bias updates {:.3}, without {:.2}",
        with[0],
        tail(&with),
        tail(&without)
    );
    assert!(with[0] > 1.0, "the stream must start skewed (MaxVio {})", with[0]);
    assert!(tail(&with) < 0.2, "with updates MaxVio {}", tail(&with));
    assert!(tail(&without) > 1.0, "without updates MaxVio {}", tail(&without));
    assert!(with.iter().position(|&v| v < 0.2).is_some_and(|i| i < 600));
}

/// The same forward and backward on every device present (CPU-vs-CUDA parity on a GPU).
#[test]
fn same_results_on_every_device() {
    let c = cfg(8, 4, 2, 2, 0.1);
    let x = Tensor::randn(&[10, 6], 1.0, 1, DType::F32, &Device::Cpu).unwrap();
    let r = Tensor::randn(&[10, 6], 1.0, 2, DType::F32, &Device::Cpu).unwrap();
    let run = |dev: &Device| {
        let mut m = Moe::init(c.clone(), 0.5, 4, DType::F32, dev).unwrap();
        m.e_score_correction_bias = Tensor::randn(&[8], 0.3, 5, DType::F32, dev).unwrap();
        let (y, s) = m.forward(&x.to_device(dev).unwrap(), 5).unwrap();
        let dx = m.backward(&s, &r.to_device(dev).unwrap()).unwrap();
        let mut out = vec![y.to_vec_f64().unwrap(), dx.to_vec_f64().unwrap()];
        out.extend(m.params().iter().filter_map(|(_, p)| p.grad.as_ref()).map(|g| g.to_vec_f64().unwrap()));
        (out, s.routing.topk_idx)
    };
    let (want, want_idx) = run(&Device::Cpu);
    for dev in Device::all_available() {
        let (got, idx) = run(&dev);
        assert_eq!(idx, want_idx, "{dev:?}: routing differs");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let n: f64 = g.iter().zip(w).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
            let d: f64 = w.iter().map(|b| b * b).sum::<f64>().sqrt();
            assert!(n <= 1e-5 * d, "{dev:?} output {i}: rel err {}", n / d);
        }
    }
}

#[test]
fn bad_config_is_named() {
    let mut c = cfg(8, 3, 2, 2, 0.0);
    let e = Moe::init(c.clone(), 0.1, 0, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("n_group") && e.contains('3'), "{e}");
    c.n_group = 4;
    c.num_experts_per_tok = 5;
    let e = Moe::init(c, 0.1, 0, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("num_experts_per_tok") && e.contains('5'), "{e}");
}
