//! Checkpoints in the Hugging Face layout: `config.json` plus `model.safetensors`, or shards listed
//! in `model.safetensors.index.json` (`weight_map`). Tensor names are transformers' names. f32,
//! bf16, f16 and f64 tensors load (f16 widened to f32). MTP weights (`model.layers.{L}.*` for
//! `L ≥ num_hidden_layers`) are optional and skipped for now. Missing or unexpected tensors are an
//! error listing them. Saving is the inverse and atomic (temp file + rename).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use optim::{Params, atomic_write};
use safetensors::SafeTensors;
use safetensors::tensor::{Dtype, TensorView};
use tensor::{DType, Device, Tensor};

use crate::{DeepseekV3, DeepseekV3Config, ModelError, Result};

fn io(path: &Path) -> impl Fn(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io { path: path.display().to_string(), source }
}

fn fmt(path: &Path, detail: impl Into<String>) -> ModelError {
    ModelError::Checkpoint { path: path.display().to_string(), detail: detail.into() }
}

/// Every tensor of the checkpoint in `dir`, converted to `dtype` on `device`.
pub fn load_tensors(dir: &Path, dtype: DType, device: &Device) -> Result<Params> {
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<String> = if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(io(&index))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| fmt(&index, e.to_string()))?;
        let map = v["weight_map"].as_object().ok_or_else(|| fmt(&index, "no \"weight_map\" object"))?;
        let set: BTreeSet<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
        set.into_iter().collect()
    } else {
        vec!["model.safetensors".to_string()]
    };
    let mut params = Params::default();
    for f in files {
        let path = dir.join(&f);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| fmt(&path, e.to_string()))?;
        for (name, view) in st.tensors() {
            let shape = view.shape().to_vec();
            let data = view.data();
            let t = match view.dtype() {
                Dtype::F32 => Tensor::from_vec(le::<4, f32>(data, f32::from_le_bytes), &shape)?,
                Dtype::F64 => Tensor::from_vec(le::<8, f64>(data, f64::from_le_bytes), &shape)?,
                Dtype::BF16 => Tensor::from_vec(le::<2, half::bf16>(data, half::bf16::from_le_bytes), &shape)?,
                Dtype::F16 => Tensor::from_vec(
                    le::<2, half::f16>(data, half::f16::from_le_bytes).iter().map(|x| x.to_f32()).collect::<Vec<f32>>(),
                    &shape,
                )?,
                other => {
                    return Err(fmt(
                        &path,
                        format!(
                            "tensor {name:?}: dtype {other:?} not supported (FP8 checkpoints load through the fp8 crate)"
                        ),
                    ));
                }
            };
            let t =
                if name.ends_with("e_score_correction_bias") { t.to_dtype(DType::F32)? } else { t.to_dtype(dtype)? };
            params.insert(name, t.to_device(device)?).map_err(|e| fmt(&path, e.to_string()))?;
        }
    }
    Ok(params)
}

fn le<const N: usize, T>(data: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N).map(|c| f(c.try_into().expect("chunk of N bytes"))).collect()
}

/// The tensor names a model of `cfg` has (without MTP).
pub fn expected_names(cfg: &DeepseekV3Config) -> BTreeSet<String> {
    let mut v =
        BTreeSet::from(["model.embed_tokens.weight".to_string(), "model.norm.weight".into(), "lm_head.weight".into()]);
    for i in 0..cfg.num_hidden_layers {
        let pre = format!("model.layers.{i}");
        for n in ["input_layernorm", "post_attention_layernorm"] {
            v.insert(format!("{pre}.{n}.weight"));
        }
        let q: &[&str] =
            if cfg.q_lora_rank.is_some() { &["q_a_proj", "q_a_layernorm", "q_b_proj"] } else { &["q_proj"] };
        for n in q.iter().chain(&["kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj", "o_proj"]) {
            v.insert(format!("{pre}.self_attn.{n}.weight"));
        }
        let mlp = |v: &mut BTreeSet<String>, p: &str| {
            for n in ["gate_proj", "up_proj", "down_proj"] {
                v.insert(format!("{p}.{n}.weight"));
            }
        };
        if i < cfg.first_k_dense_replace {
            mlp(&mut v, &format!("{pre}.mlp"));
        } else {
            v.insert(format!("{pre}.mlp.gate.weight"));
            if cfg.topk_method == "noaux_tc" {
                v.insert(format!("{pre}.mlp.gate.e_score_correction_bias"));
            }
            for e in 0..cfg.n_routed_experts {
                mlp(&mut v, &format!("{pre}.mlp.experts.{e}"));
            }
            if cfg.n_shared_experts > 0 {
                mlp(&mut v, &format!("{pre}.mlp.shared_experts"));
            }
        }
    }
    v
}

fn is_mtp(name: &str, cfg: &DeepseekV3Config) -> bool {
    name.strip_prefix("model.layers.")
        .and_then(|r| r.split('.').next())
        .and_then(|i| i.parse::<usize>().ok())
        .is_some_and(|i| i >= cfg.num_hidden_layers)
}

impl DeepseekV3 {
    /// Load `dir/config.json` and the weights (in `dtype` on `device`).
    pub fn from_pretrained(dir: &Path, dtype: DType, device: &Device) -> Result<DeepseekV3> {
        let cfg = DeepseekV3Config::from_file(dir)?;
        let params = load_tensors(dir, dtype, device)?;
        let have: BTreeSet<String> = params.names().iter().filter(|n| !is_mtp(n, &cfg)).cloned().collect();
        let want = expected_names(&cfg);
        let missing: Vec<&String> = want.difference(&have).collect();
        let unexpected: Vec<&String> = have.difference(&want).collect();
        if !missing.is_empty() || !unexpected.is_empty() {
            return Err(fmt(dir, format!("missing tensors {missing:?}; unexpected tensors {unexpected:?}")));
        }
        DeepseekV3::load(cfg, &params)
    }

    /// Write `dir/config.json` and `dir/model.safetensors` (f32 weights, bias f32), atomically.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        let cfg = serde_json::to_string_pretty(&self.cfg).map_err(|e| fmt(dir, e.to_string()))?;
        let mut bufs: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
        for (n, t) in self.named_parameters() {
            let bytes = t.to_vec::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect();
            bufs.insert(n, (t.shape().clone(), bytes));
        }
        let views: Vec<(String, TensorView<'_>)> = bufs
            .iter()
            .map(|(n, (s, b))| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (n.clone(), v)))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| fmt(dir, e.to_string()))?;
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| fmt(dir, e.to_string()))?;
        atomic_write(&dir.join("model.safetensors"), &bytes)?;
        atomic_write(&dir.join("config.json"), cfg.as_bytes())?;
        Ok(())
    }
}
