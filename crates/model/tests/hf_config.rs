//! `config.json` as transformers reads it: omitted keys take `DeepseekV3Config()`'s defaults (the
//! committed dump `tests/fixtures/hf/transformers_default_config.json`, made by
//! `make_hf_checkpoint_fixtures.py`); unsupported values (`attention_bias: true`,
//! `moe_layer_freq ≠ 1`, `num_key_value_heads ≠ num_attention_heads`, `hidden_act ≠ silu`) are
//! rejected naming the file, the field and the value; a save keeps unknown keys, writes
//! `quantization_config` only for FP8 weights (never), stores the weights in their dtype and
//! shards them above `SaveOptions::max_shard_size` as transformers does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use model::checkpoint::{SaveOptions, quantize_checkpoint_fp8};
use model::{DeepseekV3, DeepseekV3Config};
use safetensors::{Dtype, SafeTensors};
use serde_json::{Value, json};
use tensor::ops::attention::AttnMask;
use tensor::{DType, Device};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("r1-hfcfg-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn transformers_defaults() -> serde_json::Map<String, Value> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/transformers_default_config.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    v.as_object().unwrap().clone()
}

/// The sizes: required here (an omitted one is an error, not the 671B model).
const SIZES: [&str; 11] = [
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "moe_intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "kv_lora_rank",
    "qk_rope_head_dim",
    "v_head_dim",
    "qk_nope_head_dim",
    "max_position_embeddings",
];

/// The fields with a default, which must be transformers'.
const DEFAULTED: [&str; 13] = [
    "n_shared_experts",
    "n_routed_experts",
    "routed_scaling_factor",
    "q_lora_rank",
    "n_group",
    "topk_group",
    "num_experts_per_tok",
    "first_k_dense_replace",
    "norm_topk_prob",
    "rms_norm_eps",
    "rope_interleave",
    "tie_word_embeddings",
    "attention_bias",
];

/// `cfg` (parsed from a config without the [`DEFAULTED`] keys) has transformers' defaults.
fn assert_defaults(cfg: &DeepseekV3Config) {
    let hf = transformers_defaults();
    let ours = serde_json::to_value(cfg).unwrap();
    for k in DEFAULTED {
        let (a, b) = (&ours[k], &hf[k]);
        assert!(!b.is_null() || k == "q_lora_rank", "{k}: not in the transformers dump");
        // Compare numbers as numbers (2.5 vs 2.5, 8 vs 8), everything else as JSON.
        let same = match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        };
        assert!(same, "{k}: ours {a}, transformers {b}");
    }
    let hf_theta = hf["rope_parameters"]["rope_theta"].as_f64().unwrap();
    assert_eq!(cfg.theta(), hf_theta, "rope_theta");
    assert_eq!(hf["rope_parameters"]["rope_type"], "default");
    assert!(cfg.yarn().is_none());
    assert_eq!(hf["hidden_act"], "silu", "the only activation the model has");
    // The one deliberate difference: transformers' num_mtp_layers defaults to 1; here an
    // omitted key means no MTP tensors in the checkpoint.
    assert_eq!(hf["num_nextn_predict_layers"], 1);
    assert_eq!(cfg.num_nextn_predict_layers, 0);
}

/// transformers' sizes alone parse to transformers' `DeepseekV3Config()`: the same model as its
/// full dump (whose other keys are kept, not used).
#[test]
fn the_sizes_alone_give_transformers_default_config() {
    let hf = transformers_defaults();
    let sizes: serde_json::Map<String, Value> = SIZES.iter().map(|k| (k.to_string(), hf[*k].clone())).collect();
    assert!(sizes.values().all(Value::is_u64), "{sizes:?}");
    let cfg = DeepseekV3Config::from_json(&Value::Object(sizes).to_string(), "sizes.json").unwrap();
    assert_defaults(&cfg);
    let full = DeepseekV3Config::from_json(&Value::Object(hf).to_string(), "dump").unwrap();
    assert_eq!(full.mla(), cfg.mla());
    assert_eq!(full.moe(), cfg.moe());
    assert_eq!(
        (full.vocab_size, full.num_hidden_layers, full.first_k_dense_replace, full.intermediate_size),
        (cfg.vocab_size, cfg.num_hidden_layers, cfg.first_k_dense_replace, cfg.intermediate_size)
    );
    // A size is required.
    let e = DeepseekV3Config::from_json("{}", "empty.json").unwrap_err().to_string();
    assert!(e.contains("empty.json") && e.contains("missing field"), "{e}");
}

/// A small config that names only the sizes: the routing keys it omits are transformers'.
#[test]
fn omitted_routing_keys_take_transformers_defaults() {
    let text = r#"{"vocab_size": 64, "hidden_size": 32, "intermediate_size": 48, "moe_intermediate_size": 12,
        "num_hidden_layers": 5, "num_attention_heads": 4, "kv_lora_rank": 16,
        "qk_rope_head_dim": 8, "v_head_dim": 8, "qk_nope_head_dim": 8, "max_position_embeddings": 64}"#;
    let cfg = DeepseekV3Config::from_json(text, "small.json").unwrap();
    assert_defaults(&cfg);
    // An explicit null is a direct q_proj; an omitted key is transformers' 1536.
    let null =
        DeepseekV3Config::from_json(&text.replace("\"vocab_size\"", "\"q_lora_rank\": null, \"vocab_size\""), "n")
            .unwrap();
    assert_eq!((null.q_lora_rank, cfg.q_lora_rank), (None, Some(1536)));
    // transformers' alias of the MTP depth.
    let alias = DeepseekV3Config::from_json(&text.replace("{", "{\"num_mtp_layers\": 2, "), "a").unwrap();
    assert_eq!(alias.num_nextn_predict_layers, 2);
}

fn small(extra: &str) -> String {
    format!(
        r#"{{"vocab_size": 13, "hidden_size": 8, "intermediate_size": 12, "moe_intermediate_size": 4,
        "num_hidden_layers": 2, "num_attention_heads": 2, "n_shared_experts": 1, "n_routed_experts": 4,
        "routed_scaling_factor": 2.5, "kv_lora_rank": 4, "q_lora_rank": null, "qk_rope_head_dim": 2,
        "v_head_dim": 3, "qk_nope_head_dim": 2, "n_group": 2, "topk_group": 1, "num_experts_per_tok": 2,
        "first_k_dense_replace": 1, "max_position_embeddings": 32{extra}}}"#
    )
}

/// The value is rejected, from text and from a file, with the file, the field and the value named;
/// `ok` is accepted.
fn assert_rejected(field: &str, bad: &str, shown: &str, ok: &str) {
    let e = DeepseekV3Config::from_json(&small(&format!(", \"{field}\": {bad}")), "cfg-origin.json")
        .unwrap_err()
        .to_string();
    assert!(e.contains("cfg-origin.json") && e.contains(field) && e.contains(shown), "{e}");
    let d = tmp(&format!("reject-{field}"));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("config.json"), small(&format!(", \"{field}\": {bad}"))).unwrap();
    let e = DeepseekV3Config::from_file(&d).unwrap_err().to_string();
    assert!(e.contains(&d.join("config.json").display().to_string()) && e.contains(field) && e.contains(shown), "{e}");
    std::fs::remove_dir_all(d).ok();
    DeepseekV3Config::from_json(&small(&format!(", \"{field}\": {ok}")), "ok").unwrap();
}

#[test]
fn attention_bias_true_is_rejected() {
    assert_rejected("attention_bias", "true", "true", "false");
}

#[test]
fn moe_layer_freq_other_than_1_is_rejected() {
    assert_rejected("moe_layer_freq", "2", "2", "1");
    assert_rejected("moe_layer_freq", "0", "0", "1");
}

#[test]
fn num_key_value_heads_other_than_the_heads_is_rejected() {
    assert_rejected("num_key_value_heads", "1", "1", "2");
}

#[test]
fn hidden_act_other_than_silu_is_rejected() {
    assert_rejected("hidden_act", "\"gelu\"", "gelu", "\"silu\"");
}

fn model(extra: &str, dt: DType) -> DeepseekV3 {
    let cfg = DeepseekV3Config::from_json(&small(extra), "test").unwrap();
    DeepseekV3::init(cfg, 0.3, 5, dt, &Device::Cpu).unwrap()
}

fn logits(m: &DeepseekV3) -> Vec<f64> {
    let ids: Vec<u32> = (0..10).map(|i| (i * 5 % 13) as u32).collect();
    let pos: Vec<u32> = (0..10).map(|i| i % 5).collect();
    m.forward(&ids, 2, 5, &pos, &AttnMask::causal()).unwrap().0.to_vec_f64().unwrap()
}

/// JSON equality with numbers compared as numbers (`32` and `32.0` are the same value).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_json(p, q)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, p)| y.get(k).is_some_and(|q| same_json(p, q)))
        }
        _ => a == b,
    }
}

fn read_config(dir: &Path) -> serde_json::Map<String, Value> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    v.as_object().unwrap().clone()
}

/// name → (dtype, bytes) of every tensor in every `.safetensors` file of `dir`, with its file.
fn tensors(dir: &Path) -> BTreeMap<String, (String, Dtype, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let f = e.unwrap().file_name().to_string_lossy().into_owned();
        if f.ends_with(".safetensors") {
            let bytes = std::fs::read(dir.join(&f)).unwrap();
            for (n, t) in SafeTensors::deserialize(&bytes).unwrap().tensors() {
                out.insert(n, (f.clone(), t.dtype(), t.data().to_vec()));
            }
        }
    }
    out
}

#[test]
fn unknown_keys_survive_a_save_and_transformers_keys_are_written() {
    let extra = r#", "rope_scaling": {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 16,
        "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0, "my_rope_key": [1, 2]},
        "moe_layer_freq": 1, "hidden_act": "silu", "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config"},
        "transformers_version": "4.46.3", "bos_token_id": 0, "eos_token_id": [1, 2], "seq_aux": true,
        "some_future_key": {"nested": {"deep": null}}, "model_type": "deepseek_v3", "torch_dtype": "bfloat16",
        "num_key_value_heads": 2, "architectures": ["Something"]"#;
    let original: Value = serde_json::from_str(&small(extra)).unwrap();
    let m = model(extra, DType::F32);
    let d = tmp("unknown");
    m.save_pretrained(&d).unwrap();
    let saved = read_config(&d);
    let derived = ["dtype", "torch_dtype", "architectures", "num_nextn_predict_layers"];
    for (k, v) in original.as_object().unwrap() {
        if !derived.contains(&k.as_str()) {
            assert!(saved.get(k).is_some_and(|s| same_json(s, v)), "key {k}: saved {:?}, given {v}", saved.get(k));
        }
    }
    assert_eq!(saved["architectures"], json!(["DeepseekV3ForCausalLM"]));
    assert_eq!(saved["model_type"], "deepseek_v3");
    assert_eq!((&saved["dtype"], &saved["torch_dtype"]), (&json!("float32"), &json!("float32")));
    assert_eq!(saved["num_key_value_heads"], 2);
    assert_eq!(saved["num_nextn_predict_layers"], 0);
    assert!(!saved.contains_key("quantization_config"), "{saved:?}");
    // Reloading gives the same config, and saving again the same file.
    let back = DeepseekV3::from_pretrained(&d, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(back.cfg, DeepseekV3Config { num_nextn_predict_layers: 0, ..m.cfg.clone() });
    let d2 = tmp("unknown2");
    back.save_pretrained(&d2).unwrap();
    assert_eq!(read_config(&d2), saved);
    for p in [d, d2] {
        std::fs::remove_dir_all(p).ok();
    }
}

#[test]
fn quantization_config_is_written_only_for_fp8_weights() {
    let (src, fp8, out) = (tmp("q-src"), tmp("q-fp8"), tmp("q-out"));
    model("", DType::F32).save_pretrained(&src).unwrap();
    quantize_checkpoint_fp8(&src, &fp8).unwrap();
    assert!(read_config(&fp8).contains_key("quantization_config"));
    let m = DeepseekV3::from_pretrained(&fp8, DType::F32, &Device::Cpu).unwrap();
    assert!(m.cfg.quantization_config.is_some());
    m.save_pretrained(&out).unwrap();
    let cfg = read_config(&out);
    assert!(!cfg.contains_key("quantization_config"), "dequantised weights saved, {cfg:?}");
    assert!(tensors(&out).values().all(|(_, d, _)| *d == Dtype::F32));
    assert_eq!(logits(&DeepseekV3::from_pretrained(&out, DType::F32, &Device::Cpu).unwrap()), logits(&m));
    for p in [src, fp8, out] {
        std::fs::remove_dir_all(p).ok();
    }
}

#[test]
fn weights_are_saved_in_the_dtype_they_have() {
    for (dt, st, name) in [(DType::BF16, Dtype::BF16, "bfloat16"), (DType::F32, Dtype::F32, "float32")] {
        let m = model("", dt);
        let d = tmp(&format!("dtype-{name}"));
        m.save_pretrained(&d).unwrap();
        assert_eq!(read_config(&d)["dtype"], name);
        let saved = tensors(&d);
        for (n, t) in m.state_dict() {
            let want = if n.ends_with("e_score_correction_bias") { Dtype::F32 } else { st };
            assert_eq!(t.dtype() == DType::F32, want == Dtype::F32, "{n}: in-memory {:?}", t.dtype());
            assert_eq!(saved[&n].1, want, "{n}");
        }
        // Bit-exact round trip in the same dtype.
        let back = DeepseekV3::from_pretrained(&d, dt, &Device::Cpu).unwrap();
        for ((n, a), (_, b)) in m.state_dict().iter().zip(back.state_dict()) {
            assert_eq!(a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap(), "{n}");
        }
        std::fs::remove_dir_all(d).ok();
    }
    // Or in the dtype asked for (the router bias keeps f32).
    let m = model("", DType::F32);
    let d = tmp("dtype-opt");
    m.save_pretrained_with(&d, &SaveOptions { dtype: Some(DType::BF16), ..SaveOptions::default() }).unwrap();
    assert_eq!(read_config(&d)["torch_dtype"], "bfloat16");
    for (n, (_, dt, _)) in tensors(&d) {
        let want = if n.ends_with("e_score_correction_bias") { Dtype::F32 } else { Dtype::BF16 };
        assert_eq!(dt, want, "{n}");
    }
    std::fs::remove_dir_all(d).ok();
}

#[test]
fn above_max_shard_size_the_weights_are_sharded_with_an_index() {
    let m = model("", DType::F32);
    let sizes: Vec<(String, u64)> = m.state_dict().into_iter().map(|(n, t)| (n, (t.numel() * 4) as u64)).collect();
    let total: u64 = sizes.iter().map(|s| s.1).sum();
    let limit = total / 4;
    // transformers' rule: walk the tensors in model order; one that would push the shard past the
    // limit starts the next shard.
    let mut want: Vec<Vec<&str>> = vec![vec![]];
    let mut cur = 0;
    for (n, s) in &sizes {
        if cur + s > limit && !want.last().unwrap().is_empty() {
            want.push(vec![]);
            cur = 0;
        }
        want.last_mut().unwrap().push(n);
        cur += s;
    }
    assert!(want.len() >= 4, "{} shards", want.len());
    let d = tmp("sharded");
    m.save_pretrained(&d).unwrap(); // a single file first: the sharded save replaces it
    assert!(d.join("model.safetensors").exists());
    m.save_pretrained_with(&d, &SaveOptions { max_shard_size: limit, ..SaveOptions::default() }).unwrap();
    let k = want.len();
    let files: Vec<String> = (1..=k).map(|i| format!("model-{i:05}-of-{k:05}.safetensors")).collect();
    let mut listing: Vec<String> =
        std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    listing.sort();
    let mut expect = files.clone();
    expect.extend(["config.json".to_string(), "model.safetensors.index.json".to_string()]);
    expect.sort();
    assert_eq!(listing, expect);
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("model.safetensors.index.json")).unwrap()).unwrap();
    assert_eq!(index["metadata"]["total_size"], total);
    let stored = tensors(&d);
    assert_eq!(index["weight_map"].as_object().unwrap().len(), sizes.len());
    for (i, names) in want.iter().enumerate() {
        for n in names {
            assert_eq!(index["weight_map"][*n], files[i], "{n}");
            assert_eq!(stored[*n].0, files[i], "{n}");
        }
    }
    let back = DeepseekV3::from_pretrained(&d, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(logits(&back), logits(&m));
    // Saving unsharded into the same directory removes the shards and the index.
    back.save_pretrained(&d).unwrap();
    let mut listing: Vec<String> =
        std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    listing.sort();
    assert_eq!(listing, ["config.json", "model.safetensors"]);
    assert_eq!(logits(&DeepseekV3::from_pretrained(&d, DType::F32, &Device::Cpu).unwrap()), logits(&m));
    let e = m
        .save_pretrained_with(&d, &SaveOptions { max_shard_size: 0, ..SaveOptions::default() })
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_shard_size"), "{e}");
    std::fs::remove_dir_all(d).ok();
}
