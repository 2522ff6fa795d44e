//! Parity with Hugging Face transformers' `DeepseekV3MoE` (5.17, float64; its router runs in
//! float32) on committed fixtures with non-zero random `e_score_correction_bias`
//! (`tests/fixtures/make_fixtures.py`): the same experts chosen for every token, and outputs
//! within 1e-5 relative in f32.

use std::collections::HashMap;

use moe_router::{Moe, MoeConfig, ScoringFunc, TopkMethod};
use optim::Params;
use safetensors::SafeTensors;
use tensor::{DType, Tensor};

fn check(name: &str) {
    let path = format!("{}/tests/fixtures/moe_{name}.safetensors", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t: HashMap<String, Tensor> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            let d: Vec<f64> = v.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect();
            (n, Tensor::from_vec(d, v.shape()).unwrap())
        })
        .collect();
    let c: serde_json::Value = serde_json::from_str(&meta["config"]).unwrap();
    let u = |k: &str| c[k].as_u64().unwrap() as usize;
    let cfg = MoeConfig {
        hidden_size: u("hidden_size"),
        moe_intermediate_size: u("moe_intermediate_size"),
        n_routed_experts: u("n_routed_experts"),
        n_shared_experts: u("n_shared_experts"),
        num_experts_per_tok: u("num_experts_per_tok"),
        n_group: u("n_group"),
        topk_group: u("topk_group"),
        norm_topk_prob: c["norm_topk_prob"].as_bool().unwrap(),
        routed_scaling_factor: c["routed_scaling_factor"].as_f64().unwrap(),
        scoring_func: ScoringFunc::Sigmoid,
        topk_method: TopkMethod::NoauxTc,
        seq_aux_alpha: 0.0,
    };
    let k = cfg.num_experts_per_tok;
    for dt in [DType::F32, DType::F64] {
        let mut p = Params::default();
        for (n, v) in &t {
            if n.contains("weight") || n.contains("bias") {
                p.insert(format!("mlp.{n}"), v.to_dtype(dt).unwrap()).unwrap();
            }
        }
        let m = Moe::load(cfg.clone(), &p, "mlp").unwrap();
        assert!(
            m.e_score_correction_bias.to_vec_f64().unwrap().iter().any(|&b| b.abs() > 0.1),
            "bias must be non-zero"
        );
        let (y, s) = m.forward(&t["x"].to_dtype(dt).unwrap(), t["x"].dim(0)).unwrap();
        let mut idx = s.routing.topk_idx.clone();
        idx.chunks_mut(k).for_each(|c| c.sort());
        let want_idx: Vec<u32> = t["topk_idx"].to_vec_f64().unwrap().iter().map(|&v| v as u32).collect();
        assert_eq!(idx, want_idx, "{name} {dt:?}: chosen experts differ");
        let (a, b) = (y.to_vec_f64().unwrap(), t["y"].to_vec_f64().unwrap());
        let e = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt()
            / b.iter().map(|y| y * y).sum::<f64>().sqrt();
        eprintln!("{name} {dt:?}: rel err {e:e} (transformers {})", meta["transformers"]);
        assert!(e <= 1e-5, "{name} {dt:?}: rel err {e:e}");
    }
}

#[test]
fn parity_grouped_routing() {
    check("grouped");
}

#[test]
fn parity_wide_unnormalised() {
    check("wide");
}
