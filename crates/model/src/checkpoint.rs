//! Checkpoints in the Hugging Face layout: `config.json` plus `model.safetensors`, or shards listed
//! in `model.safetensors.index.json` (`weight_map`). Tensor names are transformers' names. f32,
//! bf16, f16 and f64 tensors load (f16 widened to f32); FP8 (E4M3) weights with a sibling
//! `<name>_scale_inv` (`[ceil(out/128), ceil(in/128)]`) are dequantised on load by the fp8 crate. MTP weights (`model.layers.{L}.*` for
//! `L ≥ num_hidden_layers`) are read for the `num_nextn_predict_layers` modules the config
//! announces (their copies of the embedding and head are not: the modules share the model's) and
//! written with the model. Missing or unexpected tensors are an error listing them. Saving
//! ([`DeepseekV3::save_pretrained_with`], [`SaveOptions`]) is the inverse: a checkpoint
//! transformers' `AutoModelForCausalLM` loads as is (`model_type`, `architectures`, `dtype` in
//! config.json; the weights in the dtype they have; shards with an index above
//! [`SaveOptions::max_shard_size`]), every file written atomically (temp file + rename).

use std::collections::{BTreeSet, HashMap};
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

    /// Write `dir/config.json` and the weights, MTP modules included
    /// ([`DeepseekV3::save_pretrained_with`] with [`SaveOptions::default`]).
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        self.save_pretrained_with(dir, &SaveOptions::default())
    }

    /// Write a checkpoint that transformers' `AutoModelForCausalLM.from_pretrained` loads as is:
    /// `config.json` (the config's keys, unknown ones included, plus `model_type`,
    /// `architectures`, `dtype`/`torch_dtype` of the saved weights and
    /// `num_nextn_predict_layers`; no `quantization_config`, the weights are not FP8) and the
    /// weights of the model and of its MTP modules (layers `num_hidden_layers + k`, with the
    /// copies of the shared embedding and head the released V3 layout carries),
    /// each in its own dtype or in `opts.dtype`, in one `model.safetensors` or, above
    /// `opts.max_shard_size`, in shards `model-0000i-of-0000n.safetensors` listed in
    /// `model.safetensors.index.json`. Every file is written atomically; weight files of an
    /// earlier save into `dir` that this one does not write are removed afterwards.
    pub fn save_pretrained_with(&self, dir: &Path, opts: &SaveOptions) -> Result<()> {
        if opts.max_shard_size == 0 {
            return Err(fmt(dir, "SaveOptions::max_shard_size must be > 0"));
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let named = self.state_dict();
        // (name, dtype, shape, little-endian bytes) in model order (the order shards are cut in).
        let mut bufs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(named.len());
        for (n, t) in named {
            let keep = n.ends_with("e_score_correction_bias");
            let t = match opts.dtype {
                Some(d) if !keep && d != t.dtype() => t.to_dtype(d)?,
                _ => t,
            };
            let (dt, bytes): (Dtype, Vec<u8>) = match t.dtype() {
                DType::F32 => (Dtype::F32, t.to_vec::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect()),
                DType::F64 => (Dtype::F64, t.to_vec::<f64>()?.iter().flat_map(|x| x.to_le_bytes()).collect()),
                DType::BF16 => (Dtype::BF16, t.to_vec::<half::bf16>()?.iter().flat_map(|x| x.to_le_bytes()).collect()),
            };
            bufs.push((n, dt, t.shape().clone(), bytes));
        }
        let weights_dtype = bufs.iter().find(|b| b.0 == "model.embed_tokens.weight").map_or(Dtype::F32, |b| b.1);
        // Cut shards greedily in model order, as transformers does: a tensor that would push the
        // current shard past the limit starts the next one (a tensor above the limit alone).
        let mut shards: Vec<Vec<usize>> = Vec::new();
        let mut size = 0u64;
        for (i, (_, _, _, b)) in bufs.iter().enumerate() {
            let n = b.len() as u64;
            match shards.last_mut() {
                Some(cur) if size + n <= opts.max_shard_size => {
                    cur.push(i);
                    size += n;
                }
                _ => {
                    shards.push(vec![i]);
                    size = n;
                }
            }
        }
        if shards.is_empty() {
            shards.push(Vec::new());
        }
        let files: Vec<String> = if shards.len() == 1 {
            vec![SINGLE.to_string()]
        } else {
            (1..=shards.len()).map(|i| format!("model-{i:05}-of-{:05}.safetensors", shards.len())).collect()
        };
        let mut weight_map = serde_json::Map::new();
        for (file, idx) in files.iter().zip(&shards) {
            let views: Vec<(String, TensorView<'_>)> = idx
                .iter()
                .map(|&i| {
                    let (n, d, s, b) = &bufs[i];
                    TensorView::new(*d, s.clone(), b).map(|v| (n.clone(), v))
                })
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| fmt(dir, e.to_string()))?;
            let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
            let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| fmt(dir, e.to_string()))?;
            atomic_write(&dir.join(file), &bytes)?;
            for &i in idx {
                weight_map.insert(bufs[i].0.clone(), file.clone().into());
            }
        }
        if files.len() > 1 {
            let total: u64 = bufs.iter().map(|b| b.3.len() as u64).sum();
            let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
            let text = serde_json::to_string_pretty(&index).map_err(|e| fmt(dir, e.to_string()))?;
            atomic_write(&dir.join(INDEX), text.as_bytes())?;
        }
        let cfg = hf_config_json(&self.cfg, self.mtp.len(), weights_dtype).map_err(|e| fmt(dir, e))?;
        atomic_write(&dir.join("config.json"), cfg.as_bytes())?;
        // Weight files of an earlier save that this one replaced (only after everything new is in
        // place: until then a reader sees the old checkpoint whole).
        let keep: BTreeSet<&str> = files.iter().map(String::as_str).chain((files.len() > 1).then_some(INDEX)).collect();
        for e in std::fs::read_dir(dir).map_err(io(dir))? {
            let e = e.map_err(io(dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if is_weight_file(&name) && !keep.contains(name.as_str()) {
                std::fs::remove_file(e.path()).map_err(io(&e.path()))?;
            }
        }
        Ok(())
    }
}

const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";

/// Default [`SaveOptions::max_shard_size`]: transformers' `max_shard_size="5GB"` (5·10⁹ bytes).
pub const DEFAULT_MAX_SHARD_SIZE: u64 = 5_000_000_000;

/// How [`DeepseekV3::save_pretrained_with`] writes the weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SaveOptions {
    /// Largest shard, in bytes of tensor data; a checkpoint above it is split into shards with an
    /// index. Default [`DEFAULT_MAX_SHARD_SIZE`].
    pub max_shard_size: u64,
    /// Store the weights in this dtype; `None` (the default) stores each tensor in the dtype it
    /// has (the dtype it is trained in). The router's `e_score_correction_bias` always keeps its
    /// own dtype.
    pub dtype: Option<DType>,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions { max_shard_size: DEFAULT_MAX_SHARD_SIZE, dtype: None }
    }
}

/// `model.safetensors`, `model.safetensors.index.json` or `model-NNNNN-of-NNNNN.safetensors`.
fn is_weight_file(name: &str) -> bool {
    if name == SINGLE || name == INDEX {
        return true;
    }
    let Some(rest) = name.strip_prefix("model-").and_then(|r| r.strip_suffix(".safetensors")) else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    rest.split_once("-of-").is_some_and(|(a, b)| digits(a) && digits(b))
}

/// The torch name of a safetensors dtype, as `config.json`'s `dtype` spells it.
fn torch_dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::BF16 => "bfloat16",
        Dtype::F64 => "float64",
        Dtype::F16 => "float16",
        _ => "float32",
    }
}

/// The `config.json` text a save writes: the config's own keys (unknown ones included) with
/// `num_nextn_predict_layers = n_mtp`, no `quantization_config`, the top-level `rope_theta` the
/// effective RoPE base, `num_key_value_heads = num_attention_heads`, and the keys transformers
/// needs to pick the model class and dtype.
fn hf_config_json(cfg: &DeepseekV3Config, n_mtp: usize, weights: Dtype) -> std::result::Result<String, String> {
    let mut cfg = cfg.clone();
    cfg.num_nextn_predict_layers = n_mtp;
    cfg.quantization_config = None;
    cfg.rope_theta = cfg.theta();
    let mut v = serde_json::to_value(&cfg).map_err(|e| e.to_string())?;
    let obj = v.as_object_mut().ok_or("config did not serialise to an object")?;
    // transformers' alias of num_nextn_predict_layers would contradict it.
    obj.remove("num_mtp_layers");
    obj.insert("model_type".into(), "deepseek_v3".into());
    // transformers repeats K/V heads num_attention_heads / num_key_value_heads times (default 128).
    obj.insert("num_key_value_heads".into(), cfg.num_attention_heads.into());
    obj.insert("architectures".into(), serde_json::json!(["DeepseekV3ForCausalLM"]));
    obj.insert("dtype".into(), torch_dtype_name(weights).into());
    obj.insert("torch_dtype".into(), torch_dtype_name(weights).into());
    serde_json::to_string_pretty(&v).map_err(|e| e.to_string())
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
