//! Checkpoints written by [`DeepseekV3::save_pretrained_with`] are Hugging Face checkpoints.
//!
//! The committed fixtures under `tests/fixtures/hf/` were written by this file's ignored
//! `write_hf_fixtures` (tiny random models, our save code) and then loaded by transformers'
//! `AutoModelForCausalLM.from_pretrained` in `tests/fixtures/make_hf_checkpoint_fixtures.py`, which
//! stored its float64 logits (`hf/transformers_logits.safetensors`) and `DeepseekV3Config()`'s
//! defaults (`hf/transformers_default_config.json`). Here, without Python:
//! - saving each fixture model again (built from the same seeds, or loaded from the committed
//!   files) writes the committed files, tensor by tensor and config key by key (a format change
//!   without refreshing the fixtures fails);
//! - the logits `r1 logits` computes (f32 load, causal, positions 0..S) on each committed
//!   checkpoint equal transformers' (and in f64, to rounding);
//! - config defaults are transformers' defaults; unknown keys survive a save; `dtype`, sharding
//!   and `quantization_config` are written as transformers writes them.
//!
//! Refresh: `cargo test -p model --test hf_checkpoint -- --ignored write_hf_fixtures`, then
//! `python3 crates/model/tests/fixtures/make_hf_checkpoint_fixtures.py crates/model/tests/fixtures/hf`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use model::checkpoint::SaveOptions;
use model::{DeepseekV3, DeepseekV3Config};
use optim::Params;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use tensor::ops::attention::AttnMask;
use tensor::{DType, Device, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("r1-hf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// The shard limit of the `sharded` fixture (bytes of tensor data per shard).
const SHARD_LIMIT: u64 = 12_000;

/// A fixture variant: its config and how it is saved.
struct Variant {
    name: &'static str,
    config: &'static str,
    mtp: usize,
    opts: SaveOptions,
    /// The dtype a re-save loads the committed checkpoint in (the dtype it was trained in).
    load_dtype: DType,
}

fn variants() -> Vec<Variant> {
    let plain = SaveOptions::default();
    vec![
        // The form `r1 train` writes (top-level rope_theta, q_lora_rank null), one MTP layer,
        // and keys this crate does not interpret.
        Variant {
            name: "f32_mtp",
            config: r#"{"vocab_size": 32, "hidden_size": 16, "intermediate_size": 24, "moe_intermediate_size": 8,
              "num_hidden_layers": 2, "num_attention_heads": 2, "n_shared_experts": 1, "n_routed_experts": 4,
              "routed_scaling_factor": 1.5, "kv_lora_rank": 8, "q_lora_rank": null, "qk_rope_head_dim": 4,
              "v_head_dim": 4, "qk_nope_head_dim": 4, "n_group": 2, "topk_group": 1, "num_experts_per_tok": 2,
              "first_k_dense_replace": 1, "norm_topk_prob": true, "rope_theta": 10000.0,
              "max_position_embeddings": 32, "aux_loss_alpha": 0.0001, "tie_word_embeddings": false,
              "moe_layer_freq": 1, "hidden_act": "silu", "bos_token_id": 0, "eos_token_id": 1,
              "r1_note": {"kept": [1, 2.5, "x"]}}"#,
            mtp: 1,
            opts: plain,
            load_dtype: DType::F32,
        },
        // bf16 weights; YaRN in the released checkpoints' spelling (`rope_scaling.type`).
        Variant {
            name: "bf16_yarn",
            config: r#"{"vocab_size": 32, "hidden_size": 16, "intermediate_size": 24, "moe_intermediate_size": 8,
              "num_hidden_layers": 2, "num_attention_heads": 2, "n_shared_experts": 1, "n_routed_experts": 8,
              "routed_scaling_factor": 2.5, "kv_lora_rank": 8, "q_lora_rank": 12, "qk_rope_head_dim": 4,
              "v_head_dim": 4, "qk_nope_head_dim": 4, "n_group": 4, "topk_group": 2, "num_experts_per_tok": 2,
              "first_k_dense_replace": 1, "norm_topk_prob": false, "rope_theta": 10000.0,
              "max_position_embeddings": 32,
              "rope_scaling": {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 16,
                "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}}"#,
            mtp: 0,
            opts: SaveOptions { dtype: Some(DType::BF16), ..plain },
            load_dtype: DType::BF16,
        },
        // Above the shard limit: shards + index; transformers-5 `rope_parameters`, two dense layers.
        Variant {
            name: "sharded",
            config: r#"{"vocab_size": 32, "hidden_size": 16, "intermediate_size": 24, "moe_intermediate_size": 8,
              "num_hidden_layers": 3, "num_attention_heads": 2, "n_shared_experts": 2, "n_routed_experts": 4,
              "routed_scaling_factor": 1.0, "kv_lora_rank": 8, "q_lora_rank": 8, "qk_rope_head_dim": 4,
              "v_head_dim": 4, "qk_nope_head_dim": 4, "n_group": 1, "topk_group": 1, "num_experts_per_tok": 2,
              "first_k_dense_replace": 2, "max_position_embeddings": 32,
              "rope_parameters": {"rope_type": "default", "rope_theta": 5000.0}}"#,
            mtp: 0,
            opts: SaveOptions { max_shard_size: SHARD_LIMIT, ..plain },
            load_dtype: DType::F32,
        },
    ]
}

/// Deterministic N(0, 1) samples (splitmix64 + Box–Muller), independent of the tensor crate.
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// Random weights under every name of `names_shapes`: norms 1 + 0.1·N, router biases 0.3·N
/// (non-zero, so the selection bias matters), everything else 0.2·N.
fn random_params(names_shapes: &[(String, Vec<usize>)], seed: u64) -> Params {
    let mut rng = Rng(seed);
    let mut p = Params::default();
    for (n, shape) in names_shapes {
        let numel: usize = shape.iter().product();
        let v: Vec<f32> = (0..numel)
            .map(|_| {
                let z = rng.normal();
                if n.contains("norm") {
                    (1.0 + 0.1 * z) as f32
                } else if n.ends_with("e_score_correction_bias") {
                    (0.3 * z) as f32
                } else {
                    (0.2 * z) as f32
                }
            })
            .collect();
        p.insert(n.clone(), Tensor::from_vec(v, shape).unwrap()).unwrap();
    }
    p
}

fn parse(v: &Variant) -> DeepseekV3Config {
    DeepseekV3Config::from_json(v.config, v.name).unwrap()
}

/// Save variant `k` (random weights from [`random_params`]) into `dir` with our save code.
fn write_variant(k: usize, v: &Variant, dir: &Path) {
    let mut cfg = parse(v);
    cfg.num_nextn_predict_layers = v.mtp;
    let shell = DeepseekV3::init(cfg.clone(), 0.1, 1, DType::F32, &Device::Cpu).unwrap();
    // Every tensor a checkpoint holds; the MTP layers' copies of the shared embedding and head
    // are drawn too but not read back (the save writes the shared tensors there).
    let shapes: Vec<(String, Vec<usize>)> =
        shell.state_dict().iter().map(|(n, t)| (n.clone(), t.shape().clone())).collect();
    let p = random_params(&shapes, 1000 + k as u64);
    let model = DeepseekV3::load(cfg.clone(), &p).unwrap();
    let _ = std::fs::remove_dir_all(dir);
    model.save_pretrained_with(dir, &v.opts).unwrap();
}

/// Writes the committed checkpoints (run by hand, then run the Python script).
#[test]
#[ignore = "writes tests/fixtures/hf; run by hand to refresh the fixtures"]
fn write_hf_fixtures() {
    for (k, v) in variants().iter().enumerate() {
        let dir = fixtures().join(v.name);
        write_variant(k, v, &dir);
        eprintln!("wrote {}", dir.display());
    }
}

/// The same models saved again give the committed files.
#[test]
fn saving_the_fixture_models_writes_the_committed_files() {
    for (k, v) in variants().iter().enumerate() {
        let dst = tmp(&format!("write-{}", v.name));
        write_variant(k, v, &dst);
        assert_same_checkpoint(&dst, &fixtures().join(v.name));
        std::fs::remove_dir_all(dst).ok();
    }
}

/// Every tensor of the checkpoint in `dir`: name → (file, dtype, shape, bytes).
type Files = BTreeMap<String, (String, Dtype, Vec<usize>, Vec<u8>)>;

fn read_weights(dir: &Path) -> Files {
    let mut out = Files::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if !name.ends_with(".safetensors") {
            continue;
        }
        let bytes = std::fs::read(dir.join(&name)).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        for (n, t) in st.tensors() {
            let prev = out.insert(n.clone(), (name.clone(), t.dtype(), t.shape().to_vec(), t.data().to_vec()));
            assert!(prev.is_none(), "{}: tensor {n} in two files", dir.display());
        }
    }
    out
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// Same files, same tensors (name, file, dtype, shape, bytes), same JSON (key by key).
fn assert_same_checkpoint(got: &Path, want: &Path) {
    assert_eq!(file_names(got), file_names(want), "files of {} vs {}", got.display(), want.display());
    let (g, w) = (read_weights(got), read_weights(want));
    assert_eq!(g.keys().collect::<Vec<_>>(), w.keys().collect::<Vec<_>>(), "tensor names");
    for (n, (gf, gd, gs, gb)) in &g {
        let (wf, wd, ws, wb) = &w[n];
        assert_eq!((gf, gd, gs), (wf, wd, ws), "{n}: file, dtype, shape");
        assert!(gb == wb, "{n}: data differs");
    }
    for json in ["config.json", "model.safetensors.index.json"] {
        if !want.join(json).exists() {
            continue;
        }
        let (g, w) = (read_json(&got.join(json)), read_json(&want.join(json)));
        let (g, w) = (g.as_object().unwrap(), w.as_object().unwrap());
        assert_eq!(g.keys().collect::<Vec<_>>(), w.keys().collect::<Vec<_>>(), "{json}: keys");
        for (k, wv) in w {
            assert_eq!(&g[k], wv, "{json}: key {k}");
        }
    }
}

#[test]
fn resaving_each_fixture_writes_the_committed_files() {
    for v in variants() {
        let src = fixtures().join(v.name);
        let m = DeepseekV3::from_pretrained(&src, v.load_dtype, &Device::Cpu).unwrap();
        assert_eq!(m.mtp.len(), v.mtp, "{}: MTP layers", v.name);
        let dst = tmp(&format!("resave-{}", v.name));
        let opts = SaveOptions { dtype: None, ..v.opts };
        m.save_pretrained_with(&dst, &opts).unwrap();
        assert_same_checkpoint(&dst, &src);
        // The committed config parses to the variant's config (unknown keys included), with the
        // MTP layers it holds.
        let mut want = parse(&v);
        want.num_nextn_predict_layers = v.mtp;
        assert_eq!(m.cfg, want, "{}", v.name);
        std::fs::remove_dir_all(dst).ok();
    }
}

/// transformers' logits for the committed checkpoints (`input_ids` [B, S] and `<variant>.logits`)
/// and the file's metadata (versions, loading reports).
struct Reference {
    ids: Vec<u32>,
    b: usize,
    s: usize,
    logits: BTreeMap<String, Vec<f64>>,
    meta: BTreeMap<String, String>,
}

fn reference() -> Reference {
    let path = fixtures().join("transformers_logits.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta: BTreeMap<String, String> = header.metadata().clone().unwrap_or_default().into_iter().collect();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor("input_ids").unwrap();
    assert_eq!(ids.dtype(), Dtype::I64);
    let (b, s) = (ids.shape()[0], ids.shape()[1]);
    let ids: Vec<u32> = ids.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect();
    let mut logits = BTreeMap::new();
    for (n, t) in st.tensors() {
        if let Some(v) = n.strip_suffix(".logits") {
            assert_eq!(t.dtype(), Dtype::F64);
            logits.insert(
                v.to_string(),
                t.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
            );
        }
    }
    Reference { ids, b, s, logits, meta }
}

fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter().zip(want).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt()
        / want.iter().map(|y| y * y).sum::<f64>().sqrt()
}

#[test]
fn logits_on_each_fixture_equal_transformers() {
    let Reference { ids, b, s, logits: want, meta } = reference();
    let mut names: Vec<String> = variants().iter().map(|v| v.name.to_string()).collect();
    names.sort();
    assert_eq!(want.keys().cloned().collect::<Vec<_>>(), names, "one reference per variant");
    for v in variants() {
        let n = v.name;
        // transformers loaded every tensor of the checkpoint: none missing or mismatched, and
        // the only unexpected ones are the MTP layer's (transformers has no MTP module).
        let report = |k: &str| -> Vec<String> {
            serde_json::from_str(meta.get(&format!("{n}.{k}")).unwrap_or_else(|| panic!("{n}.{k} in {meta:?}")))
                .unwrap()
        };
        assert!(report("missing_keys").is_empty() && report("mismatched_keys").is_empty(), "{n}: {meta:?}");
        let unexpected = report("unexpected_keys");
        let mtp_prefix = format!("model.layers.{}.", parse(&v).num_hidden_layers);
        assert_eq!(unexpected.is_empty(), v.mtp == 0, "{n}: {unexpected:?}");
        assert!(unexpected.iter().all(|k| k.starts_with(&mtp_prefix)), "{n}: {unexpected:?}");
        let dir = fixtures().join(n);
        let pos: Vec<u32> = (0..b * s).map(|i| (i % s) as u32).collect();
        // f32 as `r1 logits` runs it; f64 as transformers did. transformers computes RMSNorm, the
        // attention softmax, the router and the RoPE angles in float32 even in a float64 model,
        // so f64 agrees to ~2e-7, not to rounding (1e-6: the bound of tests/parity.rs).
        for (dt, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-6)] {
            let m = DeepseekV3::from_pretrained(&dir, dt, &Device::Cpu).unwrap();
            let (logits, _) = m.forward(&ids, b, s, &pos, &AttnMask::causal()).unwrap();
            assert_eq!(logits.shape(), &vec![b, s, m.cfg.vocab_size]);
            let e = rel_err(&logits.to_vec_f64().unwrap(), &want[n]);
            eprintln!("{n} {dt:?}: logits rel err {e:e}");
            assert!(e <= tol, "{n} {dt:?}: rel err {e:e} > {tol:e}");
        }
    }
}
