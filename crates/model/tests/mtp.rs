//! Multi-Token Prediction: the joint objective Σ logits ⊙ R + λ · Σ mtp_logits ⊙ R' has
//! gradients (main model and every MTP weight, including the path through the main model's last
//! hidden state) equal to central differences in f64; and targets are t_{i+2}.

use model::mtp::mtp_targets;
use model::{DeepseekV3, DeepseekV3Config};
use optim::Params;
use tensor::gradcheck::{GradCheck, check, project};
use tensor::ops::attention::AttnMask;
use tensor::ops::elementwise::scale;
use tensor::{DType, Device, Tensor};

fn cfg() -> DeepseekV3Config {
    DeepseekV3Config::from_json(
        r#"{"vocab_size": 9, "hidden_size": 8, "intermediate_size": 12, "moe_intermediate_size": 4,
        "num_hidden_layers": 1, "num_attention_heads": 2, "n_shared_experts": 1, "n_routed_experts": 4,
        "routed_scaling_factor": 2.5, "kv_lora_rank": 4, "q_lora_rank": 6, "qk_rope_head_dim": 2,
        "v_head_dim": 3, "qk_nope_head_dim": 2, "n_group": 2, "topk_group": 1, "num_experts_per_tok": 2,
        "first_k_dense_replace": 1, "max_position_embeddings": 32, "num_nextn_predict_layers": 1}"#,
        "mtp",
    )
    .unwrap()
}

#[test]
fn mtp_targets_skip_two_and_loss_is_weighted() {
    assert_eq!(mtp_targets(&[1, 2, 3, 4, 5, 6, 7, 8], 2, 4, -100), vec![3, 4, -100, 7, 8, -100]);
    let logits = Tensor::randn(&[2, 3, 9], 1.0, 1, DType::F64, &Device::Cpu).unwrap();
    let ids = [1, 2, 3, 4, 5, 6, 7, 8];
    let (l1, d1) = model::mtp::mtp_loss(&logits, &ids, (2, 4), 1.0).unwrap();
    let (l3, d3) = model::mtp::mtp_loss(&logits, &ids, (2, 4), 0.3).unwrap();
    assert!((l3 - 0.3 * l1).abs() < 1e-12);
    let (a, b) = (d1.to_vec_f64().unwrap(), d3.to_vec_f64().unwrap());
    assert!(a.iter().zip(&b).all(|(x, y)| (0.3 * x - y).abs() < 1e-12));
}

/// The MTP module shares the main model's embedding and head (V3 §2.2): one tensor each, so a
/// finite difference on the embedding or head moves both losses, and the analytic gradient must
/// be the sum of both losses' gradients to match.
#[test]
fn joint_gradients_match_finite_differences() {
    let c = cfg();
    let m0 = DeepseekV3::init(c.clone(), 0.5, 1, DType::F64, &Device::Cpu).unwrap();
    assert_eq!(m0.mtp.len(), 1);
    let train: Vec<(String, Tensor)> = m0.params().into_iter().map(|(n, p)| (n, p.value.clone())).collect();
    // One embedding and one head among the trainable parameters.
    for w in ["embed_tokens.weight", "head.weight"] {
        assert_eq!(
            train.iter().filter(|(n, _)| n.ends_with(w)).count(),
            1,
            "{w}: {:?}",
            train.iter().map(|(n, _)| n).collect::<Vec<_>>()
        );
    }
    let fixed: Vec<(String, Tensor)> =
        m0.state_dict().into_iter().filter(|(n, _)| !train.iter().any(|(t, _)| t == n)).collect();
    let (b, s) = (2, 4);
    let ids: Vec<u32> = (0..b * s).map(|i| (i * 5 % 9) as u32).collect();
    let pos: Vec<u32> = (0..b * s).map(|i| (i % s) as u32).collect();
    let lambda = 0.3;
    let r = Tensor::randn(&[b, s, 9], 1.0, 3, DType::F64, &Device::Cpu).unwrap();
    let r2 = Tensor::randn(&[b, s - 1, 9], 1.0, 4, DType::F64, &Device::Cpu).unwrap();
    let build = |xs: &[Tensor]| {
        let mut p = Params::default();
        for ((n, _), t) in train.iter().zip(xs) {
            p.insert(n.clone(), t.clone()).unwrap();
        }
        for (n, t) in &fixed {
            p.insert(n.clone(), t.clone()).unwrap();
        }
        DeepseekV3::load(c.clone(), &p).unwrap()
    };
    let inputs: Vec<Tensor> = train.iter().map(|(_, t)| t.clone()).collect();
    let mut m = build(&inputs);
    let (_, sv) = m.forward(&ids, b, s, &pos, &AttnMask::causal()).unwrap();
    let (_, msv) =
        m.mtp[0].forward(&sv, (&m.embed_tokens, &m.lm_head), &ids, (b, s), &pos, &AttnMask::causal(), 1e-6).unwrap();
    let d_trunk = m.mtp[0].backward(&msv, &scale(&r2, lambda).unwrap(), (&mut m.embed_tokens, &mut m.lm_head)).unwrap();
    m.backward_parts(&sv, Some(&r), None, Some(&d_trunk)).unwrap();
    let analytic: Vec<Tensor> = m
        .params()
        .iter()
        .map(|(_, p)| p.grad.clone().unwrap_or_else(|| Tensor::zeros(p.shape(), DType::F64, &Device::Cpu).unwrap()))
        .collect();
    let f = |xs: &[Tensor]| {
        let m = build(xs);
        let e = |e: model::ModelError| tensor::TensorError::Arg { op: "mtp", detail: e.to_string() };
        let (y, sv) = m.forward(&ids, b, s, &pos, &AttnMask::causal()).map_err(e)?;
        let (y2, _) = m.mtp[0]
            .forward(&sv, (&m.embed_tokens, &m.lm_head), &ids, (b, s), &pos, &AttnMask::causal(), 1e-6)
            .map_err(e)?;
        Ok(project(&y, &r)? + lambda * project(&y2, &r2)?)
    };
    let rep = check(f, &inputs, &analytic, &GradCheck { max_per_input: 4, ..GradCheck::default() }).unwrap();
    eprintln!("checked {} elements over {} parameters (main + MTP)", rep.checked, inputs.len());
    rep.assert_ok("main + MTP");
}

/// Checkpoints keep the released V3 layout: the MTP layer carries copies of the shared
/// embedding and head (equal to the model's), and a reload shares them again.
#[test]
fn checkpoint_carries_shared_copies_under_the_mtp_layer() {
    let c = cfg();
    let m = DeepseekV3::init(c.clone(), 0.5, 1, DType::F32, &Device::Cpu).unwrap();
    let l = c.num_hidden_layers;
    let sd: std::collections::HashMap<String, Tensor> = m.state_dict().into_iter().collect();
    for (copy, orig) in [
        (format!("model.layers.{l}.embed_tokens.weight"), "model.embed_tokens.weight"),
        (format!("model.layers.{l}.shared_head.head.weight"), "lm_head.weight"),
    ] {
        assert_eq!(sd[&copy].to_vec::<f32>().unwrap(), sd[orig].to_vec::<f32>().unwrap(), "{copy}");
    }
    let dir = std::env::temp_dir().join(format!("r1-mtp-share-{}", std::process::id()));
    m.save_pretrained(&dir).unwrap();
    let back = DeepseekV3::from_pretrained(&dir, DType::F32, &Device::Cpu).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(back.mtp.len(), 1);
    let names: Vec<String> = back.params().into_iter().map(|(n, _)| n).collect();
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with(&format!("model.layers.{l}.embed_tokens")) || n.contains("shared_head.head")),
        "{names:?}"
    );
    for ((n, a), (_, b)) in m.state_dict().iter().zip(back.state_dict().iter()) {
        assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap(), "{n}");
    }
}
