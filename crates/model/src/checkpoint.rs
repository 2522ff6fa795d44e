//! Checkpoints in the Hugging Face layout: `config.json` plus `model.safetensors`, or shards listed
//! in `model.safetensors.index.json` (`weight_map`). Tensor names are transformers' names. f32,
//! bf16, f16 and f64 tensors load (f16 widened to f32); FP8 (E4M3) weights with a sibling
//! `<name>_scale_inv` (`[ceil(out/128), ceil(in/128)]`) are dequantised on load by the fp8 crate. MTP weights (`model.layers.{L}.*` for
//! `L ≥ num_hidden_layers`) are read for the `num_nextn_predict_layers` modules the config
//! announces (their copies of the embedding and head are not: the modules share the model's) and
//! written by [`DeepseekV3::save_pretrained`]. Missing or unexpected tensors are an error listing
//! them. Saving is the inverse and atomic (temp file + rename).

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
    // FP8 weights wait for their `<name>_scale_inv`, which may sit in another shard.
    let mut fp8: Vec<(String, Vec<u8>, [usize; 2], std::path::PathBuf)> = Vec::new();
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
                Dtype::F8_E4M3 => {
                    let [o, i] = <[usize; 2]>::try_from(shape.as_slice()).map_err(|_| {
                        fmt(&path, format!("FP8 tensor {name:?} has shape {shape:?}, expected [out, in]"))
                    })?;
                    fp8.push((name, data.to_vec(), [o, i], path.clone()));
                    continue;
                }
                other => {
                    return Err(fmt(
                        &path,
                        format!(
                            "tensor {name:?}: dtype {other:?} not supported (supported: F32, F64, BF16, F16, F8_E4M3 with _scale_inv)"
                        ),
                    ));
                }
            };
            let keep_f32 = name.ends_with("e_score_correction_bias") || name.ends_with("_scale_inv");
            let t = if keep_f32 { t.to_dtype(DType::F32)? } else { t.to_dtype(dtype)? };
            params.insert(name, t.to_device(device)?).map_err(|e| fmt(&path, e.to_string()))?;
        }
    }
    if fp8.is_empty() {
        return Ok(params);
    }
    // Dequantise every FP8 weight with its block scales (fp8 · scale_inv per 128×128 block) and
    // drop the scale tensors.
    let scales: HashMap<String, Tensor> =
        params.iter().filter(|(n, _)| n.ends_with("_scale_inv")).map(|(n, t)| (n.to_string(), t.clone())).collect();
    let mut out = Params::default();
    for (n, t) in params.iter().filter(|(n, _)| !n.ends_with("_scale_inv")) {
        out.insert(n, t.clone())?;
    }
    for (name, bytes, shape, path) in fp8 {
        let sname = format!("{name}_scale_inv");
        let s = scales.get(&sname).ok_or_else(|| fmt(&path, format!("FP8 tensor {name:?} has no {sname:?}")))?;
        let w = fp8::dequantize_weight(&name, &bytes, shape, s).map_err(|e| fmt(&path, e.to_string()))?;
        out.insert(name, w.to_dtype(dtype)?.to_device(device)?).map_err(|e| fmt(&path, e.to_string()))?;
    }
    Ok(out)
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

    /// Write `dir/config.json` and `dir/model.safetensors` (f32 weights, bias f32), atomically:
    /// the model and its MTP modules, stored as layers `num_hidden_layers + k` with
    /// `num_nextn_predict_layers` in the config (the released V3 layout).
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut cfg = self.cfg.clone();
        cfg.num_nextn_predict_layers = self.mtp.len();
        let cfg = serde_json::to_string_pretty(&cfg).map_err(|e| fmt(dir, e.to_string()))?;
        let named = self.state_dict();
        let mut bufs: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
        for (n, t) in named {
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

/// A parity fixture unpacked by [`unpack_fixture`]: the reference input ids and logits.
#[derive(Clone, Debug)]
pub struct Fixture {
    pub input_ids: Vec<u32>,
    pub batch: usize,
    pub seq: usize,
    /// `[batch, seq, vocab]`, float64 from transformers.
    pub logits: Vec<f64>,
}

/// Unpack a parity fixture (one safetensors file: the weights under checkpoint names, the
/// reference tensors `__input_ids` and `__logits`, and `config` in the metadata — see
/// `tests/fixtures/make_fixtures.py`) into an HF checkpoint directory `dir`.
pub fn unpack_fixture(fixture: &Path, dir: &Path) -> Result<Fixture> {
    let bytes = std::fs::read(fixture).map_err(io(fixture))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| fmt(fixture, e.to_string()))?;
    let config = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("config").cloned())
        .ok_or_else(|| fmt(fixture, "metadata field \"config\" missing"))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| fmt(fixture, e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    atomic_write(&dir.join("config.json"), config.as_bytes())?;
    let weights: Vec<(String, TensorView<'_>)> =
        st.tensors().into_iter().filter(|(n, _)| !n.starts_with("__")).collect();
    let out = safetensors::serialize(weights, Some(HashMap::new())).map_err(|e| fmt(fixture, e.to_string()))?;
    atomic_write(&dir.join("model.safetensors"), &out)?;
    let get = |n: &str| -> Result<(Vec<usize>, Vec<f64>)> {
        let v = st.tensor(n).map_err(|e| fmt(fixture, format!("{n}: {e}")))?;
        Ok((v.shape().to_vec(), le::<8, f64>(v.data(), f64::from_le_bytes)))
    };
    let (shape, ids) = get("__input_ids")?;
    let (_, logits) = get("__logits")?;
    Ok(Fixture { input_ids: ids.iter().map(|&v| v as u32).collect(), batch: shape[0], seq: shape[1], logits })
}

/// Is `name` a weight that DeepSeek's FP8 checkpoints store in E4M3 (attention projections, dense
/// MLP and expert weights — not the embedding, head, gate, norms or bias)?
pub fn is_fp8_weight(name: &str) -> bool {
    let proj = [
        "q_proj",
        "q_a_proj",
        "q_b_proj",
        "kv_a_proj_with_mqa",
        "kv_b_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];
    name.starts_with("model.layers.") && proj.iter().any(|p| name.ends_with(&format!(".{p}.weight")))
}

/// Write an FP8 copy of the checkpoint in `src` to `dst` in the layout of DeepSeek's released
/// FP8 checkpoints: each [`is_fp8_weight`] tensor as `F8_E4M3` with a sibling `<name>_scale_inv`
/// (f32, one scale per 128×128 block), everything else unchanged, and `quantization_config` in
/// config.json. Returns the dequantised weights (what a loader must reproduce).
pub fn quantize_checkpoint_fp8(src: &Path, dst: &Path) -> Result<Params> {
    let params = load_tensors(src, DType::F32, &Device::Cpu)?;
    let cfg_path = src.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(io(&cfg_path))?;
    let mut cfg: serde_json::Value = serde_json::from_str(&text).map_err(|e| fmt(&cfg_path, e.to_string()))?;
    cfg["quantization_config"] = serde_json::json!({"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]});
    let mut bufs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut dequantised = Params::default();
    for (name, t) in params.iter() {
        let v = t.to_vec::<f32>()?;
        if is_fp8_weight(name) && t.rank() == 2 {
            let (o, i) = (t.dim(0), t.dim(1));
            let q = fp8::quant::quantize_weight(name, &v, o, i, fp8::quant::ScaleFormat::Fp32)
                .map_err(|e| fmt(src, e.to_string()))?;
            bufs.push((name.to_string(), Dtype::F8_E4M3, vec![o, i], q.data.iter().map(|x| x.to_bits()).collect()));
            let ss = q.scale_shape().to_vec();
            bufs.push((
                format!("{name}_scale_inv"),
                Dtype::F32,
                ss,
                q.scale_inv.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ));
            dequantised.insert(name, Tensor::from_vec(q.dequantize(), &[o, i])?)?;
        } else {
            bufs.push((
                name.to_string(),
                Dtype::F32,
                t.shape().clone(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ));
            dequantised.insert(name, t.clone())?;
        }
    }
    let views: Vec<(String, TensorView<'_>)> = bufs
        .iter()
        .map(|(n, d, s, b)| TensorView::new(*d, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| fmt(dst, e.to_string()))?;
    let bytes = safetensors::serialize(views, Some(HashMap::new())).map_err(|e| fmt(dst, e.to_string()))?;
    std::fs::create_dir_all(dst).map_err(io(dst))?;
    atomic_write(&dst.join("model.safetensors"), &bytes)?;
    atomic_write(&dst.join("config.json"), cfg.to_string().as_bytes())?;
    Ok(dequantised)
}
