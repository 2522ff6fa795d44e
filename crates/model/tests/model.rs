//! The assembled model: config parsing (both rope spellings, named errors), a whole-model
//! finite-difference gradient check (f64), and a training smoke run.

use model::{DeepseekV3, DeepseekV3Config, lm_loss};
use optim::{AdamW, AdamWConfig, Params};
use tensor::gradcheck::{GradCheck, check, project};
use tensor::ops::attention::AttnMask;
use tensor::{DType, Device, Tensor};

fn tiny_json(extra: &str) -> String {
    format!(
        r#"{{"vocab_size": 11, "hidden_size": 8, "intermediate_size": 12, "moe_intermediate_size": 4,
        "num_hidden_layers": 2, "num_attention_heads": 2, "n_shared_experts": 1, "n_routed_experts": 4,
        "routed_scaling_factor": 2.5, "kv_lora_rank": 4, "q_lora_rank": 6, "qk_rope_head_dim": 2,
        "v_head_dim": 3, "qk_nope_head_dim": 2, "n_group": 2, "topk_group": 1, "num_experts_per_tok": 2,
        "first_k_dense_replace": 1, "norm_topk_prob": true, "max_position_embeddings": 32,
        "some_unknown_key": [1, 2, 3]{extra}}}"#
    )
}

#[test]
fn config_accepts_both_rope_spellings_and_names_bad_fields() {
    let a = DeepseekV3Config::from_json(
        &tiny_json(r#", "rope_theta": 5000.0, "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8, "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}"#),
        "a/config.json",
    )
    .unwrap();
    let b = DeepseekV3Config::from_json(
        &tiny_json(r#", "rope_parameters": {"rope_type": "yarn", "rope_theta": 5000.0, "factor": 4.0, "original_max_position_embeddings": 8, "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}"#),
        "b/config.json",
    )
    .unwrap();
    assert_eq!(a.mla(), b.mla());
    assert_eq!(a.theta(), 5000.0);
    assert_eq!(a.yarn().unwrap().factor, 4.0);
    let base = tiny_json("");
    for (json, field) in [
        (base.replace("\"qk_rope_head_dim\": 2", "\"qk_rope_head_dim\": 3"), "qk_rope_head_dim"),
        (tiny_json(r#", "rope_parameters": {"rope_type": "yarn"}"#), "rope_scaling.factor"),
        (tiny_json(r#", "scoring_func": "relu""#), "scoring_func"),
        (base.replace("\"topk_group\": 1", "\"topk_group\": 3"), "topk_group"),
    ] {
        let msg = DeepseekV3Config::from_json(&json, "bad/config.json").unwrap_err().to_string();
        assert!(msg.contains("bad/config.json") && msg.contains(field), "{field}: {msg}");
    }
    let e = DeepseekV3Config::from_json("{\"vocab_size\": 3}", "x/config.json").unwrap_err().to_string();
    assert!(e.contains("x/config.json") && e.contains("hidden_size"), "{e}");
}

fn tiny() -> DeepseekV3Config {
    DeepseekV3Config::from_json(&tiny_json(""), "tiny").unwrap()
}

/// Every parameter's gradient (embedding, norms, MLA, dense MLP, MoE experts and gate, head)
/// equals central differences of Σ logits ⊙ R, in f64.
#[test]
fn whole_model_gradient_check() {
    let cfg = tiny();
    let m = DeepseekV3::init(cfg.clone(), 0.5, 3, DType::F64, &Device::Cpu).unwrap();
    let trainable: Vec<(String, Tensor)> = m.params().into_iter().map(|(n, p)| (n, p.value.clone())).collect();
    let bias: Vec<(String, Tensor)> =
        m.state_dict().into_iter().filter(|(n, _)| n.contains("e_score_correction_bias")).collect();
    let (b, s) = (2, 4);
    let ids: Vec<u32> = (0..b * s).map(|i| (i * 7 % 11) as u32).collect();
    let pos: Vec<u32> = (0..b * s).map(|i| (i % s) as u32).collect();
    let build = |xs: &[Tensor]| {
        let mut p = Params::default();
        for ((n, _), t) in trainable.iter().zip(xs) {
            p.insert(n.clone(), t.clone()).unwrap();
        }
        for (n, t) in &bias {
            p.insert(n.clone(), t.clone()).unwrap();
        }
        DeepseekV3::load(cfg.clone(), &p).unwrap()
    };
    let inputs: Vec<Tensor> = trainable.iter().map(|(_, t)| t.clone()).collect();
    let r = Tensor::randn(&[b, s, cfg.vocab_size], 1.0, 9, DType::F64, &Device::Cpu).unwrap();
    let mut model = build(&inputs);
    let (_, saved) = model.forward(&ids, b, s, &pos, &AttnMask::causal()).unwrap();
    model.backward(&saved, &r).unwrap();
    let analytic: Vec<Tensor> = model
        .params()
        .iter()
        .map(|(_, p)| p.grad.clone().unwrap_or_else(|| Tensor::zeros(p.shape(), DType::F64, &Device::Cpu).unwrap()))
        .collect();
    let f = |xs: &[Tensor]| {
        let (y, _) = build(xs)
            .forward(&ids, b, s, &pos, &AttnMask::causal())
            .map_err(|e| tensor::TensorError::Arg { op: "model", detail: e.to_string() })?;
        project(&y, &r)
    };
    let rep = check(f, &inputs, &analytic, &GradCheck { max_per_input: 6, ..GradCheck::default() }).unwrap();
    eprintln!("checked {} elements over {} parameters, max abs err {:e}", rep.checked, inputs.len(), rep.max_abs_err);
    rep.assert_ok("whole model");
}

/// On a fixed synthetic token stream (a repeating pattern), 60 AdamW steps lower the LM loss.
#[test]
fn training_smoke_loss_falls() {
    let cfg = tiny();
    let mut m = DeepseekV3::init(cfg.clone(), 0.2, 1, DType::F32, &Device::Cpu).unwrap();
    let (b, s) = (4, 8);
    let stream: Vec<u32> = (0..b * (s + 1)).map(|i| ((i * 3 + i / 5) % 11) as u32).collect();
    let ids: Vec<u32> = (0..b).flat_map(|r| stream[r * (s + 1)..r * (s + 1) + s].to_vec()).collect();
    let targets: Vec<i64> = (0..b)
        .flat_map(|r| stream[r * (s + 1) + 1..(r + 1) * (s + 1)].iter().map(|&t| t as i64).collect::<Vec<_>>())
        .collect();
    let pos: Vec<u32> = (0..b * s).map(|i| (i % s) as u32).collect();
    let names: Vec<String> = m.params().into_iter().map(|(n, _)| n).collect();
    let mut opt = AdamW::new(AdamWConfig::default(), &names);
    let mut losses = vec![];
    for _ in 0..60 {
        let (logits, saved) = m.forward(&ids, b, s, &pos, &AttnMask::causal()).unwrap();
        let (loss, dl) = lm_loss(&logits, &targets, -100).unwrap();
        losses.push(loss);
        m.zero_grad();
        m.backward(&saved, &dl).unwrap();
        drop(saved);
        opt.step(&mut m.params_mut(), 1e-2).unwrap();
    }
    eprintln!("loss {:.3} → {:.3}", losses[0], losses[59]);
    assert!(losses[59] < 0.5 * losses[0], "loss {losses:?}");
}
