//! Multi-Token Prediction: the joint objective Σ logits ⊙ R + λ · Σ mtp_logits ⊙ R' has
//! gradients (main model and every MTP weight, including the path through the main model's last
//! hidden state) equal to central differences in f64; and targets are t_{i+2}.

use model::mtp::{Mtp, mtp_targets};
use model::{DeepseekV3, DeepseekV3Config};
use optim::{Grads, Params};
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

#[test]
fn joint_gradients_match_finite_differences() {
    let c = cfg();
    let main = DeepseekV3::init(c.clone(), 0.5, 1, DType::F64, &Device::Cpu).unwrap();
    let mtp = Mtp::init(&c, 0.5, 7, DType::F64, &Device::Cpu).unwrap();
    let layer = c.num_hidden_layers;
    let mut named = main.named_parameters();
    named.extend(mtp.named(layer));
    let (train, fixed): (Vec<_>, Vec<_>) = named.into_iter().partition(|(n, _)| !n.contains("e_score_correction_bias"));
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
        (DeepseekV3::load(c.clone(), &p).unwrap(), Mtp::load(&c, &p, layer).unwrap())
    };
    let inputs: Vec<Tensor> = train.iter().map(|(_, t)| t.clone()).collect();
    let (m, t) = build(&inputs);
    let (_, sv) = m.forward(&ids, b, s, &pos, &AttnMask::causal()).unwrap();
    let (_, msv) = t.forward(&sv, &ids, (b, s), &pos, &AttnMask::causal(), 1e-6).unwrap();
    let mut grads = Grads::default();
    let dh = t.backward(&msv, &scale(&r2, lambda).unwrap(), &mut grads, layer).unwrap();
    m.backward_with_hidden(&sv, &r, Some(&dh), &mut grads).unwrap();
    let analytic: Vec<Tensor> = train
        .iter()
        .map(|(n, w)| {
            grads.get(n).cloned().unwrap_or_else(|| Tensor::zeros(w.shape(), DType::F64, &Device::Cpu).unwrap())
        })
        .collect();
    let f = |xs: &[Tensor]| {
        let (m, t) = build(xs);
        let e = |e: model::ModelError| tensor::TensorError::Arg { op: "mtp", detail: e.to_string() };
        let (y, sv) = m.forward(&ids, b, s, &pos, &AttnMask::causal()).map_err(e)?;
        let (y2, _) = t.forward(&sv, &ids, (b, s), &pos, &AttnMask::causal(), 1e-6).map_err(e)?;
        Ok(project(&y, &r)? + lambda * project(&y2, &r2)?)
    };
    let rep = check(f, &inputs, &analytic, &GradCheck { max_per_input: 4, ..GradCheck::default() }).unwrap();
    eprintln!("checked {} elements over {} parameters (main + MTP)", rep.checked, inputs.len());
    rep.assert_ok("main + MTP");
}
