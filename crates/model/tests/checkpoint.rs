//! HF-layout checkpoints: save → load gives the same logits (single file and shards); missing and
//! unexpected tensors, bad configs and unreadable files are errors naming them.

use std::path::PathBuf;

use model::{DeepseekV3, DeepseekV3Config};
use tensor::ops::attention::AttnMask;
use tensor::{DType, Device};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("r1-model-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cfg() -> DeepseekV3Config {
    DeepseekV3Config::from_json(
        r#"{"vocab_size": 13, "hidden_size": 8, "intermediate_size": 12, "moe_intermediate_size": 4,
        "num_hidden_layers": 2, "num_attention_heads": 2, "n_shared_experts": 1, "n_routed_experts": 4,
        "routed_scaling_factor": 2.5, "kv_lora_rank": 4, "q_lora_rank": null, "qk_rope_head_dim": 2,
        "v_head_dim": 3, "qk_nope_head_dim": 2, "n_group": 2, "topk_group": 1, "num_experts_per_tok": 2,
        "first_k_dense_replace": 1, "max_position_embeddings": 32,
        "rope_scaling": {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 16, "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}}"#,
        "test",
    )
    .unwrap()
}

fn logits(m: &DeepseekV3) -> Vec<f32> {
    let ids: Vec<u32> = (0..10).map(|i| (i * 5 % 13) as u32).collect();
    let pos: Vec<u32> = (0..10).map(|i| i % 5).collect();
    m.forward(&ids, 2, 5, &pos, &AttnMask::causal()).unwrap().0.to_vec::<f32>().unwrap()
}

#[test]
fn save_then_load_gives_the_same_model() {
    let d = dir("roundtrip");
    let m = DeepseekV3::init(cfg(), 0.3, 5, DType::F32, &Device::Cpu).unwrap();
    m.save_pretrained(&d).unwrap();
    let back = DeepseekV3::from_pretrained(&d, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(back.cfg, m.cfg);
    assert_eq!(logits(&back), logits(&m));
    // The same tensors split over two shards with an index.
    let d2 = dir("sharded");
    std::fs::copy(d.join("config.json"), d2.join("config.json")).unwrap();
    std::fs::copy(d.join("model.safetensors"), d2.join("model-00001-of-00001.safetensors")).unwrap();
    let names: Vec<String> = m.state_dict().into_iter().map(|(n, _)| n).collect();
    let map: serde_json::Map<String, serde_json::Value> =
        names.iter().map(|n| (n.clone(), serde_json::Value::from("model-00001-of-00001.safetensors"))).collect();
    std::fs::write(d2.join("model.safetensors.index.json"), serde_json::json!({"weight_map": map}).to_string())
        .unwrap();
    assert_eq!(logits(&DeepseekV3::from_pretrained(&d2, DType::F32, &Device::Cpu).unwrap()), logits(&m));
    for p in [d, d2] {
        std::fs::remove_dir_all(p).ok();
    }
}

#[test]
fn missing_and_unexpected_tensors_are_listed() {
    let d = dir("mismatch");
    let m = DeepseekV3::init(cfg(), 0.3, 5, DType::F32, &Device::Cpu).unwrap();
    m.save_pretrained(&d).unwrap();
    // Fewer experts in the config: expert 3's tensors become unexpected.
    let mut c = cfg();
    c.n_routed_experts = 2;
    c.n_group = 1;
    std::fs::write(d.join("config.json"), serde_json::to_string(&c).unwrap()).unwrap();
    let e = DeepseekV3::from_pretrained(&d, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("unexpected tensors") && e.contains("model.layers.1.mlp.experts.3.down_proj.weight"), "{e}");
    c.n_routed_experts = 6;
    c.n_group = 2;
    std::fs::write(d.join("config.json"), serde_json::to_string(&c).unwrap()).unwrap();
    let e = DeepseekV3::from_pretrained(&d, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("missing tensors") && e.contains("model.layers.1.mlp.experts.5.gate_proj.weight"), "{e}");
    std::fs::write(d.join("model.safetensors"), b"garbage").unwrap();
    std::fs::write(d.join("config.json"), serde_json::to_string(&cfg()).unwrap()).unwrap();
    let e = DeepseekV3::from_pretrained(&d, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
    std::fs::write(d.join("config.json"), "{\"hidden_size\": 4").unwrap();
    let e = DeepseekV3::from_pretrained(&d, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("config.json"), "{e}");
    std::fs::remove_dir_all(d).ok();
}

/// An FP8 checkpoint in DeepSeek's released layout (E4M3 projections + `weight_scale_inv`,
/// `quantization_config`) loads, dequantised on load, to exactly the model of the dequantised
/// weights; and its logits stay close to the f32 original.
#[test]
fn fp8_checkpoint_loads_dequantised() {
    let d = dir("fp8-src");
    let q = dir("fp8-dst");
    let m = DeepseekV3::init(cfg(), 0.3, 5, DType::F32, &Device::Cpu).unwrap();
    m.save_pretrained(&d).unwrap();
    let deq = model::checkpoint::quantize_checkpoint_fp8(&d, &q).unwrap();
    let text = std::fs::read_to_string(q.join("config.json")).unwrap();
    assert!(text.contains("\"quant_method\":\"fp8\""), "{text}");
    let loaded = DeepseekV3::from_pretrained(&q, DType::F32, &Device::Cpu).unwrap();
    assert!(loaded.cfg.quantization_config.is_some());
    let reference = DeepseekV3::load(cfg(), &deq).unwrap();
    assert_eq!(logits(&loaded), logits(&reference), "dequantise-on-load must equal the dequantised reference");
    let (a, b) = (logits(&loaded), logits(&m));
    let e = a.iter().zip(&b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>().sqrt()
        / b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
    assert!(e > 0.0 && e < 0.1, "FP8 weights perturb the logits a little: rel {e}");
    // A missing scale is named.
    let bytes = std::fs::read(q.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<_> =
        st.tensors().into_iter().filter(|(n, _)| n != "model.layers.0.self_attn.o_proj.weight_scale_inv").collect();
    std::fs::write(q.join("model.safetensors"), safetensors::serialize(kept, None).unwrap()).unwrap();
    let e = DeepseekV3::from_pretrained(&q, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("model.layers.0.self_attn.o_proj.weight_scale_inv"), "{e}");
    for p in [d, q] {
        std::fs::remove_dir_all(p).ok();
    }
}
