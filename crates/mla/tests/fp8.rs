//! FP8 training of the MLA projections (DeepSeek-V3 §3.3): the forward output and every
//! gradient stay within E4M3's error of the f32 layer and differ from it measurably; the
//! default precision is f32.
//!
//! Budget. One FP8 GEMM carries two independent E4M3 roundings per product term (three for
//! Wgrad), each ≤ 2⁻⁴/√3 ≈ 3.6 % RMS relative (3 mantissa bits), so ≤ 5.1 % (6.25 %) on its
//! own (fp8 `tests/train.rs`). A result here passes through a chain of such GEMMs: the output
//! through at most three (q_a → q_b or kv_a → kv_b, then o_proj), a weight gradient through at
//! most four (o_proj's Dgrad, kv_b / q_b's Dgrad, then its own Wgrad, after the forward's
//! three). Errors of successive GEMMs add at worst linearly, so the output is held to
//! 3 × 5.1 % and the gradients to 6 × 6.25 % — far below any real bug (a wrong tile or transpose
//! gives O(1) error), and every result must also be > 0.5 % away from f32.

use mla::{LinearPrecision, Mla, MlaConfig};
use tensor::ops::attention::AttnMask;
use tensor::{DType, Device, Tensor};

const GEMM2: f64 = 0.0510; // √2 · 2⁻⁴/√3
const GEMM3: f64 = 0.0625; // √3 · 2⁻⁴/√3

fn rel(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    let n: f64 = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    n / b.iter().map(|y| y * y).sum::<f64>().sqrt()
}

/// Partial 128-tiles on every dimension: hidden 160, q rank 136, kv rank 72, heads × dims 2 × 40.
fn cfg(q_lora: Option<usize>) -> MlaConfig {
    MlaConfig {
        hidden_size: 160,
        num_attention_heads: 2,
        q_lora_rank: q_lora,
        kv_lora_rank: 72,
        qk_nope_head_dim: 24,
        qk_rope_head_dim: 16,
        v_head_dim: 40,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        max_position_embeddings: 256,
        yarn: None,
    }
}

#[test]
fn fp8_mla_is_close_to_f32_and_differs_from_it() {
    for q_lora in [Some(136), None] {
        let mut m = Mla::init(cfg(q_lora), 0.08, 3, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(m.precision, LinearPrecision::F32);
        let (b, s) = (2, 70);
        let x = Tensor::randn(&[b, s, 160], 1.0, 4, DType::F32, &Device::Cpu).unwrap();
        let dy = Tensor::randn(&[b, s, 160], 1.0, 5, DType::F32, &Device::Cpu).unwrap();
        let pos: Vec<u32> = (0..b * s).map(|i| (i % s) as u32).collect();
        // Output, input gradient and each weight's gradient by name.
        let run = |m: &Mla| {
            let mut m = m.clone();
            let (y, sv) = m.forward(&x, &pos, &AttnMask::causal()).unwrap();
            let dx = m.backward(&sv, &dy).unwrap();
            let g: std::collections::HashMap<String, Tensor> =
                m.params().into_iter().map(|(n, p)| (format!("l.{n}"), p.grad.clone().unwrap())).collect();
            (y, dx, g)
        };
        let (y32, dx32, g32) = run(&m);
        m.precision = LinearPrecision::Fp8;
        let (y8, dx8, g8) = run(&m);
        let e = rel(&y8, &y32);
        eprintln!("q_lora {q_lora:?}: y {e:.4}");
        assert!(e > 5e-3 && e < 3.0 * GEMM2, "output: {e}");
        let e = rel(&dx8, &dx32);
        eprintln!("  dx {e:.4}");
        assert!(e > 5e-3 && e < 6.0 * GEMM3, "dx: {e}");
        for (name, _) in m.params() {
            let key = format!("l.{name}");
            let (a, r) = (&g8[&key], &g32[&key]);
            let e = rel(a, r);
            eprintln!("  {name} {e:.4}");
            assert!(e > 5e-3 && e < 6.0 * GEMM3, "{name}: {e}");
        }
    }
}
