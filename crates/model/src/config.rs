//! `config.json` of a DeepSeek-V3 checkpoint (serde). Accepts both the released form
//! (`rope_theta` + `rope_scaling`) and transformers-5 `rope_parameters`. The sizes (`vocab_size`,
//! `hidden_size`, `intermediate_size`, `moe_intermediate_size`, `num_hidden_layers`,
//! `num_attention_heads`, `kv_lora_rank`, `qk_rope_head_dim`, `qk_nope_head_dim`, `v_head_dim`,
//! `max_position_embeddings`) are required: an omitted size is an error (transformers would build
//! the 671B model). Every other omitted key takes the default of transformers' `DeepseekV3Config`
//! (`q_lora_rank` 1536 — `null` for none —, 256 routed experts, 1 shared, top-8 of 8 groups
//! limited to 4, scale 2.5, 3 dense layers, …), except `num_nextn_predict_layers` (0 here: it
//! announces MTP tensors in the checkpoint). Keys this crate does not interpret are kept in
//! [`DeepseekV3Config::extra`] (and [`RopeParams::extra`]) so that a save writes them back.
//! Inconsistent or unsupported values (`attention_bias: true`, `moe_layer_freq` ≠ 1,
//! `num_key_value_heads` ≠ `num_attention_heads`, `hidden_act` ≠ `silu`, …) are rejected with an
//! error naming the file, the field and the value.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tensor::ops::rope::Yarn;

use crate::{ModelError, Result};

/// The rope block in either spelling.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct RopeParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_type: Option<String>,
    /// The released checkpoints' spelling of `rope_type`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta_fast: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta_slow: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mscale: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mscale_all_dim: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention_factor: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncate: Option<bool>,
    /// Keys of the block this crate does not interpret (written back on save).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

// transformers' `DeepseekV3Config` defaults (the DeepSeek-V3 671B model).
fn d_true() -> bool {
    true
}
fn d_eps() -> f64 {
    1e-6
}
fn d_theta() -> f64 {
    10000.0
}
fn d_one() -> usize {
    1
}
fn d_routed() -> usize {
    256
}
fn d_rsf() -> f64 {
    2.5
}
fn d_q_lora() -> Option<usize> {
    Some(1536)
}
fn d_n_group() -> usize {
    8
}
fn d_topk_group() -> usize {
    4
}
fn d_top_k() -> usize {
    8
}
fn d_dense() -> usize {
    3
}
fn d_sigmoid() -> String {
    "sigmoid".into()
}
fn d_noaux() -> String {
    "noaux_tc".into()
}

/// The fields of a DeepSeek-V3 `config.json` the model uses, plus the keys it does not use.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct DeepseekV3Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub moe_intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "d_one")]
    pub n_shared_experts: usize,
    #[serde(default = "d_routed")]
    pub n_routed_experts: usize,
    #[serde(default = "d_rsf")]
    pub routed_scaling_factor: f64,
    pub kv_lora_rank: usize,
    /// `null` for a direct `q_proj`; an omitted key means 1536 (as in transformers).
    #[serde(default = "d_q_lora")]
    pub q_lora_rank: Option<usize>,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
    pub qk_nope_head_dim: usize,
    #[serde(default = "d_n_group")]
    pub n_group: usize,
    #[serde(default = "d_topk_group")]
    pub topk_group: usize,
    #[serde(default = "d_top_k")]
    pub num_experts_per_tok: usize,
    #[serde(default = "d_dense")]
    pub first_k_dense_replace: usize,
    #[serde(default = "d_true")]
    pub norm_topk_prob: bool,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
    /// The RoPE base; [`DeepseekV3Config::from_json`] sets it from `rope_parameters` /
    /// `rope_scaling` when the block names one.
    #[serde(default = "d_theta")]
    pub rope_theta: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeParams>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<RopeParams>,
    #[serde(default = "d_true")]
    pub rope_interleave: bool,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// MTP modules stored as layers `num_hidden_layers..` (transformers' `num_mtp_layers`, whose
    /// default is 1; here an omitted key means none, so that a checkpoint without MTP tensors
    /// loads).
    #[serde(default, alias = "num_mtp_layers")]
    pub num_nextn_predict_layers: usize,
    #[serde(default = "d_sigmoid")]
    pub scoring_func: String,
    #[serde(default = "d_noaux")]
    pub topk_method: String,
    /// Must be false (no attention biases); `true` is rejected when parsed.
    #[serde(default)]
    pub attention_bias: bool,
    /// α of the sequence-wise balance loss (V3 eq. 17–20; DeepSeek's `aux_loss_alpha`). Used in
    /// training only; 0 turns it off.
    #[serde(default)]
    pub aux_loss_alpha: f64,
    /// FP8 checkpoints: `{quant_method: fp8, fmt: e4m3, weight_block_size: [128, 128], …}`. Not
    /// written by a save (the saved weights are never FP8).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization_config: Option<serde_json::Value>,
    /// Every other key of the file (`moe_layer_freq`, `hidden_act`, `bos_token_id`, `auto_map`, …),
    /// written back unchanged by a save. The keys a save always writes itself
    /// ([`WRITTEN_ON_SAVE`]) are dropped by [`DeepseekV3Config::from_json`].
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The `config.json` keys a save derives from the model and the saved weights (`model_type`,
/// `architectures`, `dtype`, `torch_dtype`, `num_key_value_heads`) rather than from
/// [`DeepseekV3Config::extra`].
pub const WRITTEN_ON_SAVE: [&str; 5] = ["model_type", "architectures", "dtype", "torch_dtype", "num_key_value_heads"];

impl DeepseekV3Config {
    /// Parse and validate `config.json` text; `origin` names the file in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<DeepseekV3Config> {
        let mut c: DeepseekV3Config = serde_json::from_str(text).map_err(|e| ModelError::Config {
            file: origin.into(),
            field: "(json)".into(),
            detail: e.to_string(),
        })?;
        c.validate(origin)?;
        c.extra.retain(|k, _| !WRITTEN_ON_SAVE.contains(&k.as_str()));
        c.rope_theta = c.theta();
        Ok(c)
    }

    /// Read `DIR/config.json` (or the file itself).
    pub fn from_file(path: &Path) -> Result<DeepseekV3Config> {
        let p = if path.is_dir() { path.join("config.json") } else { path.to_path_buf() };
        let text =
            std::fs::read_to_string(&p).map_err(|e| ModelError::Io { path: p.display().to_string(), source: e })?;
        DeepseekV3Config::from_json(&text, &p.display().to_string())
    }

    fn rope(&self) -> Option<&RopeParams> {
        self.rope_parameters.as_ref().or(self.rope_scaling.as_ref())
    }

    /// The RoPE base (from `rope_parameters` when present).
    pub fn theta(&self) -> f64 {
        self.rope().and_then(|r| r.rope_theta).unwrap_or(self.rope_theta)
    }

    /// YaRN parameters when the rope type is `yarn`.
    pub fn yarn(&self) -> Option<Yarn> {
        let r = self.rope()?;
        if r.rope_type.as_deref().or(r.kind.as_deref()) != Some("yarn") {
            return None;
        }
        Some(Yarn {
            factor: r.factor.unwrap_or(1.0),
            original_max_position_embeddings: r
                .original_max_position_embeddings
                .unwrap_or(self.max_position_embeddings),
            beta_fast: r.beta_fast.unwrap_or(32.0),
            beta_slow: r.beta_slow.unwrap_or(1.0),
            mscale: r.mscale,
            mscale_all_dim: r.mscale_all_dim,
            attention_factor: r.attention_factor,
            truncate: r.truncate.unwrap_or(true),
        })
    }

    fn validate(&self, origin: &str) -> Result<()> {
        let bad =
            |field: &str, detail: String| Err(ModelError::Config { file: origin.into(), field: field.into(), detail });
        for (f, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("kv_lora_rank", self.kv_lora_rank),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return bad(f, "must be > 0".into());
            }
        }
        if !self.qk_rope_head_dim.is_multiple_of(2) || self.qk_rope_head_dim == 0 {
            return bad("qk_rope_head_dim", format!("{} must be even and > 0", self.qk_rope_head_dim));
        }
        if !(self.aux_loss_alpha >= 0.0 && self.aux_loss_alpha.is_finite()) {
            return bad("aux_loss_alpha", format!("{} must be finite and ≥ 0", self.aux_loss_alpha));
        }
        if self.attention_bias {
            return bad("attention_bias", "true is not supported (MLA here has no projection biases)".into());
        }
        if let Some(v) = self.extra.get("moe_layer_freq")
            && v.as_u64() != Some(1)
        {
            return bad(
                "moe_layer_freq",
                format!("{v} is not supported (only 1: every layer from first_k_dense_replace on is MoE)"),
            );
        }
        if let Some(v) = self.extra.get("num_key_value_heads")
            && !v.is_null()
            && v.as_u64() != Some(self.num_attention_heads as u64)
        {
            return bad(
                "num_key_value_heads",
                format!("{v} is not supported (MLA: must equal num_attention_heads {})", self.num_attention_heads),
            );
        }
        if let Some(v) = self.extra.get("hidden_act")
            && v.as_str() != Some("silu")
        {
            return bad("hidden_act", format!("{v} is not supported (only \"silu\")"));
        }
        if !self.rope_interleave {
            return bad("rope_interleave", "false is not supported (DeepSeek checkpoints interleave)".into());
        }
        if self.first_k_dense_replace < self.num_hidden_layers && self.n_routed_experts == 0 {
            return bad("n_routed_experts", "0 but layers from first_k_dense_replace on are MoE".into());
        }
        if !["sigmoid", "softmax"].contains(&self.scoring_func.as_str()) {
            return bad("scoring_func", format!("{:?} (expected sigmoid or softmax)", self.scoring_func));
        }
        if !["noaux_tc", "greedy", "group_limited_greedy"].contains(&self.topk_method.as_str()) {
            return bad("topk_method", format!("{:?}", self.topk_method));
        }
        if let Some(r) = self.rope()
            && r.rope_type.as_deref().or(r.kind.as_deref()) == Some("yarn")
            && r.factor.is_none_or(|f| f <= 0.0)
        {
            return bad("rope_scaling.factor", format!("{:?} (yarn needs a factor > 0)", r.factor));
        }
        if self.first_k_dense_replace < self.num_hidden_layers {
            self.moe().validate().map_err(|e| ModelError::Config {
                file: origin.into(),
                field: "moe".into(),
                detail: e.to_string(),
            })?;
        }
        Ok(())
    }

    /// The attention config of every layer.
    pub fn mla(&self) -> mla::MlaConfig {
        mla::MlaConfig {
            hidden_size: self.hidden_size,
            num_attention_heads: self.num_attention_heads,
            q_lora_rank: self.q_lora_rank,
            kv_lora_rank: self.kv_lora_rank,
            qk_nope_head_dim: self.qk_nope_head_dim,
            qk_rope_head_dim: self.qk_rope_head_dim,
            v_head_dim: self.v_head_dim,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.theta(),
            max_position_embeddings: self.max_position_embeddings,
            yarn: self.yarn(),
        }
    }

    /// The MoE config of the layers from `first_k_dense_replace` on.
    pub fn moe(&self) -> moe_router::MoeConfig {
        use moe_router::{ScoringFunc, TopkMethod};
        moe_router::MoeConfig {
            hidden_size: self.hidden_size,
            moe_intermediate_size: self.moe_intermediate_size,
            n_routed_experts: self.n_routed_experts,
            n_shared_experts: self.n_shared_experts,
            num_experts_per_tok: self.num_experts_per_tok,
            n_group: self.n_group,
            topk_group: self.topk_group,
            norm_topk_prob: self.norm_topk_prob,
            routed_scaling_factor: self.routed_scaling_factor,
            scoring_func: if self.scoring_func == "softmax" { ScoringFunc::Softmax } else { ScoringFunc::Sigmoid },
            topk_method: match self.topk_method.as_str() {
                "greedy" => TopkMethod::Greedy,
                "group_limited_greedy" => TopkMethod::GroupLimitedGreedy,
                _ => TopkMethod::NoauxTc,
            },
            seq_aux_alpha: self.aux_loss_alpha,
        }
    }
}
