//! FP8 training of the experts (DeepSeek-V3 §3.3): an expert's output and gradients stay within
//! E4M3's error of f32 and differ from it; [`Moe::set_linear_precision`] switches every routed
//! and shared expert and leaves the gate (routing) in f32.
//!
//! Budget (fp8 `tests/train.rs`): one FP8 GEMM is ≤ 5.1 % RMS relative off (two E4M3 roundings
//! per term, 3 mantissa bits), ≤ 6.25 % for Wgrad (three). The expert's output passes two GEMMs
//! (gate/up, then down) → ≤ 2 × 5.1 %; dx and the gate/up gradients pass the forward's two,
//! down's Dgrad and their own → ≤ 4 × 6.25 %. Every result must also be > 0.5 % off f32.

use moe_router::{Expert, LinearPrecision, Moe, MoeConfig, ScoringFunc, TopkMethod};
use tensor::{DType, Device, Tensor};

const GEMM2: f64 = 0.0510;
const GEMM3: f64 = 0.0625;

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    let n: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    n / b.iter().map(|y| y * y).sum::<f64>().sqrt()
}

#[test]
fn fp8_expert_is_close_to_f32_and_differs_from_it() {
    // hidden 200 and intermediate 150: partial tiles on both sides; 150 tokens.
    let mut e = Expert::init(200, 150, 0.08, 7, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(e.precision, LinearPrecision::F32);
    let x = Tensor::randn(&[150, 200], 1.0, 8, DType::F32, &Device::Cpu).unwrap();
    let dy = Tensor::randn(&[150, 200], 1.0, 9, DType::F32, &Device::Cpu).unwrap();
    // Output, input gradient and each weight's gradient by name.
    let run = |e: &Expert| {
        let mut e = e.clone();
        let (y, sv) = e.forward(&x).unwrap();
        let dx = e.backward(&sv, &dy).unwrap();
        let g: std::collections::HashMap<String, Tensor> =
            e.params().into_iter().map(|(n, p)| (format!("e.{n}"), p.grad.clone().unwrap())).collect();
        (y, dx, g)
    };
    let (y32, dx32, g32) = run(&e);
    e.precision = LinearPrecision::Fp8;
    let (y8, dx8, g8) = run(&e);
    let ey = rel(&y8, &y32);
    let edx = rel(&dx8, &dx32);
    eprintln!("y {ey:.4}  dx {edx:.4}");
    assert!(ey > 5e-3 && ey < 2.0 * GEMM2, "y: {ey}");
    assert!(edx > 5e-3 && edx < 4.0 * GEMM3, "dx: {edx}");
    for (name, _) in e.params() {
        let key = format!("e.{name}");
        let err = rel(&g8[&key], &g32[&key]);
        eprintln!("{name} {err:.4}");
        assert!(err > 5e-3 && err < 4.0 * GEMM3, "{name}: {err}");
    }
}

#[test]
fn moe_switch_reaches_every_expert_and_keeps_the_gate_in_f32() {
    let cfg = MoeConfig {
        hidden_size: 130,
        moe_intermediate_size: 40,
        n_routed_experts: 8,
        n_shared_experts: 1,
        num_experts_per_tok: 2,
        n_group: 2,
        topk_group: 1,
        norm_topk_prob: true,
        routed_scaling_factor: 2.5,
        scoring_func: ScoringFunc::Sigmoid,
        topk_method: TopkMethod::NoauxTc,
        seq_aux_alpha: 0.0,
    };
    let mut m = Moe::init(cfg, 0.08, 3, DType::F32, &Device::Cpu).unwrap();
    let x = Tensor::randn(&[96, 130], 1.0, 4, DType::F32, &Device::Cpu).unwrap();
    let (y32, s32) = m.forward(&x, 48).unwrap();
    m.set_linear_precision(LinearPrecision::Fp8);
    assert!(m.experts.iter().chain(&m.shared_experts).all(|e| e.precision == LinearPrecision::Fp8));
    let (y8, s8) = m.forward(&x, 48).unwrap();
    assert_eq!(s8.routing.topk_idx, s32.routing.topk_idx, "the gate must stay f32");
    assert_eq!(s8.routing.weights.to_vec::<f32>().unwrap(), s32.routing.weights.to_vec::<f32>().unwrap());
    let e = rel(&y8, &y32);
    eprintln!("moe y {e:.4}");
    assert!(e > 5e-3 && e < 2.0 * GEMM2, "moe output: {e}");
    m.set_linear_precision(LinearPrecision::F32);
    let (y, _) = m.forward(&x, 48).unwrap();
    assert_eq!(y.to_vec::<f32>().unwrap(), y32.to_vec::<f32>().unwrap());
}
