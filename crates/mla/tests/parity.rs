//! Parity with Hugging Face transformers' `DeepseekV3Attention` (5.17, float64, eager, causal) on
//! committed fixtures made by `tests/fixtures/make_fixtures.py`: q_lora_rank set, q_lora_rank
//! null, and YaRN. Our f32 forward must match within 1e-5 relative (‖Δ‖/‖ref‖).

use std::collections::HashMap;

use mla::{Mla, MlaConfig};
use optim::Params;
use safetensors::SafeTensors;
use tensor::ops::attention::AttnMask;
use tensor::ops::rope::{Yarn, inv_freq};
use tensor::{DType, Tensor};

struct Fixture {
    tensors: HashMap<String, Tensor>,
    meta: HashMap<String, String>,
}

fn load(name: &str) -> Fixture {
    let path = format!("{}/tests/fixtures/mla_{name}.safetensors", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::F64, "{n}");
            let data: Vec<f64> = v.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect();
            (n, Tensor::from_vec(data, v.shape()).unwrap())
        })
        .collect();
    Fixture { tensors, meta }
}

fn config(f: &Fixture) -> MlaConfig {
    let c: serde_json::Value = serde_json::from_str(&f.meta["config"]).unwrap();
    let y: serde_json::Value = serde_json::from_str(&f.meta["yarn"]).unwrap();
    let u = |k: &str| c[k].as_u64().unwrap() as usize;
    MlaConfig {
        hidden_size: u("hidden_size"),
        num_attention_heads: u("num_attention_heads"),
        q_lora_rank: c["q_lora_rank"].as_u64().map(|v| v as usize),
        kv_lora_rank: u("kv_lora_rank"),
        qk_nope_head_dim: u("qk_nope_head_dim"),
        qk_rope_head_dim: u("qk_rope_head_dim"),
        v_head_dim: u("v_head_dim"),
        rms_norm_eps: c["rms_norm_eps"].as_f64().unwrap(),
        rope_theta: c["rope_theta"].as_f64().unwrap(),
        max_position_embeddings: u("max_position_embeddings"),
        yarn: (!y.is_null()).then(|| Yarn {
            factor: y["factor"].as_f64().unwrap(),
            original_max_position_embeddings: y["original_max_position_embeddings"].as_u64().unwrap() as usize,
            beta_fast: y["beta_fast"].as_f64().unwrap(),
            beta_slow: y["beta_slow"].as_f64().unwrap(),
            mscale: y["mscale"].as_f64(),
            mscale_all_dim: y["mscale_all_dim"].as_f64(),
            attention_factor: None,
            truncate: true,
        }),
    }
}

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let n: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    n / b.iter().map(|y| y * y).sum::<f64>().sqrt()
}

fn check(name: &str) {
    let f = load(name);
    let cfg = config(&f);
    // The frequency table, the cos/sin factor and the softmax scale as transformers computes them.
    let ours = inv_freq(cfg.qk_rope_head_dim, cfg.rope_theta, cfg.yarn.as_ref());
    assert!(rel(&ours, &f.tensors["inv_freq"].to_vec_f64().unwrap()) < 1e-6, "{name}: inv_freq");
    let scaling: f64 = f.meta["scaling"].parse().unwrap();
    assert!((cfg.softmax_scale() - scaling).abs() < 1e-12 * scaling, "{name}: softmax scale");
    let att: f64 = f.meta["attention_scaling"].parse().unwrap();
    assert!((cfg.yarn.as_ref().map_or(1.0, Yarn::attention_factor) - att).abs() < 1e-12, "{name}: attention factor");

    let x = &f.tensors["x"];
    let (b, s) = (x.dim(0), x.dim(1));
    let positions: Vec<u32> = f.tensors["position_ids"].to_vec_f64().unwrap().iter().map(|&p| p as u32).collect();
    let want = f.tensors["y"].to_vec_f64().unwrap();
    // transformers computes the rotary cos/sin in float32 even for a float64 model, so the
    // float64 comparison agrees to f32 rounding of the angles (~1e-7), not to f64 precision.
    for (dt, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-6)] {
        let mut params = Params::default();
        for (n, t) in &f.tensors {
            if n.ends_with(".weight") {
                params.insert(format!("attn.{n}"), t.to_dtype(dt).unwrap()).unwrap();
            }
        }
        let m = Mla::load(cfg.clone(), &params, "attn").unwrap();
        let (y, _) = m.forward(&x.to_dtype(dt).unwrap(), &positions, &AttnMask::causal()).unwrap();
        assert_eq!(y.shape(), &vec![b, s, cfg.hidden_size]);
        let e = rel(&y.to_vec_f64().unwrap(), &want);
        eprintln!("{name} {dt:?}: rel err {e:e} (transformers {})", f.meta["transformers"]);
        assert!(e <= tol, "{name} {dt:?}: rel err {e:e} > {tol:e}");
    }
}

#[test]
fn parity_q_lora() {
    check("qlora");
}

#[test]
fn parity_no_q_lora() {
    check("no_qlora");
}

#[test]
fn parity_yarn() {
    check("yarn");
}
