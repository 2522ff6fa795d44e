//! # mla — Multi-head Latent Attention (DeepSeek-V2 §2.1, DeepSeek-V3 §2.1.1)
//!
//! ```text
//! c_q  = RMSNorm(x·W_DQ)            q = c_q·W_UQ → [q_nope | q_pe],  q_pe = RoPE(q_pe)
//! [c_kv | k_pe] = x·W_DKV           k_pe = RoPE(k_pe)  (one rope key shared by all heads)
//! c_kv = RMSNorm(c_kv)              [k_nope | v] = c_kv·W_UKV (per head)
//! o    = softmax((q_nope·k_nope + q_pe·k_pe)·scale) · v          y = o·W_O
//! ```
//! HF names: `q_a_proj` (W_DQ), `q_a_layernorm`, `q_b_proj` (W_UQ) — or `q_proj` when
//! `q_lora_rank` is null — `kv_a_proj_with_mqa` (W_DKV), `kv_a_layernorm`, `kv_b_proj` (W_UKV),
//! `o_proj`. [`Mla::forward`] / [`Mla::backward`] train; [`cache`] holds the latent KV cache and
//! the naive and absorbed decode paths. [`Mla::precision`] runs the five projections of the
//! training path in FP8 (DeepSeek-V3 §3.3, [`fp8::linear_with`]); the norms, RoPE and the
//! attention core stay in f32, and so does decoding.

pub mod cache;

pub use fp8::LinearPrecision;
use fp8::{LinearSaved, linear_with, linear_with_backward};
use optim::Params;
use serde::{Deserialize, Serialize};
use tensor::ops::attention::{AttnMask, attention_bshd, attention_bshd_backward};
use tensor::ops::elementwise::add;
use tensor::ops::norm::{rms_norm, rms_norm_backward};
use tensor::ops::rope::{RopeTable, Yarn, rope, rope_backward};
use tensor::ops::shape::{broadcast_to, broadcast_to_backward, cat, split_last};
use tensor::{DType, Device, Param, Tensor};

use std::sync::Arc;

/// Errors of the MLA layer.
#[derive(Debug, thiserror::Error)]
pub enum MlaError {
    #[error(transparent)]
    Tensor(#[from] tensor::TensorError),
    #[error(transparent)]
    Optim(#[from] optim::OptimError),
    #[error(transparent)]
    Fp8(#[from] fp8::Fp8Error),
    #[error("config field {field}: {detail}")]
    Config { field: &'static str, detail: String },
    #[error("missing weight {0:?}")]
    MissingWeight(String),
}

/// Shorthand result type.
pub type Result<T> = std::result::Result<T, MlaError>;

/// The attention part of a DeepSeek-V3 `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MlaConfig {
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    /// `None` → a direct `q_proj` (DeepSeek-V2-Lite style).
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    /// YaRN parameters (`rope_scaling` / `rope_parameters` with type `yarn`).
    #[serde(skip)]
    pub yarn: Option<Yarn>,
}

impl MlaConfig {
    /// `qk_nope_head_dim + qk_rope_head_dim`.
    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// `qk_head_dim^-0.5`, times `mscale(factor, mscale_all_dim)²` under YaRN.
    pub fn softmax_scale(&self) -> f64 {
        (self.qk_head_dim() as f64).powf(-0.5) * self.yarn.as_ref().map_or(1.0, Yarn::softmax_scale_factor)
    }

    /// The RoPE table of this configuration (`qk_rope_head_dim`, `rope_theta`, YaRN, one row per
    /// position up to `max_position_embeddings`). Every layer of a model has the same one: build
    /// it once and hand it to each layer ([`Mla::init_with_rope`], [`Mla::load_with_rope`]).
    pub fn rope_table(&self) -> Result<Arc<RopeTable>> {
        Ok(Arc::new(RopeTable::new(
            self.qk_rope_head_dim,
            self.rope_theta,
            self.max_position_embeddings,
            self.yarn.as_ref(),
        )?))
    }

    /// Check that the dimensions are usable.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, detail: String| Err(MlaError::Config { field, detail });
        for (f, v) in [
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("kv_lora_rank", self.kv_lora_rank),
            ("qk_rope_head_dim", self.qk_rope_head_dim),
            ("v_head_dim", self.v_head_dim),
        ] {
            if v == 0 {
                return bad(f, "must be > 0".into());
            }
        }
        if !self.qk_rope_head_dim.is_multiple_of(2) {
            return bad("qk_rope_head_dim", format!("{} is odd (RoPE rotates pairs)", self.qk_rope_head_dim));
        }
        if self.q_lora_rank == Some(0) {
            return bad("q_lora_rank", "0 (use null for a direct q_proj)".into());
        }
        Ok(())
    }
}

/// The query projection: low-rank with a norm, or direct.
#[derive(Clone, Debug)]
pub enum QProj {
    LowRank { q_a_proj: Param, q_a_layernorm: Param, q_b_proj: Param },
    Direct { q_proj: Param },
}

/// One MLA layer's weights (HF layout `[out, in]`) and its RoPE table (shared by every layer of
/// a model).
#[derive(Clone, Debug)]
pub struct Mla {
    pub cfg: MlaConfig,
    pub q: QProj,
    pub kv_a_proj_with_mqa: Param,
    pub kv_a_layernorm: Param,
    pub kv_b_proj: Param,
    pub o_proj: Param,
    pub rope: Arc<RopeTable>,
    /// Arithmetic of the projections in [`Mla::forward`] / [`Mla::backward`] (DeepSeek-V3 §3.3);
    /// [`LinearPrecision::F32`] after `init` / `load`.
    pub precision: LinearPrecision,
}

/// A shared table must fit the layer: its rotary dimension and at least the configured positions.
fn check_rope(cfg: &MlaConfig, rope: &RopeTable) -> Result<()> {
    if rope.dim != cfg.qk_rope_head_dim || rope.max_positions < cfg.max_position_embeddings {
        return Err(MlaError::Config {
            field: "rope",
            detail: format!(
                "shared table has dim {} and {} positions, the layer needs dim {} and {}",
                rope.dim, rope.max_positions, cfg.qk_rope_head_dim, cfg.max_position_embeddings
            ),
        });
    }
    Ok(())
}

/// The low-rank query path's saved activations: `(q_a_proj output, normed c_q, its rstd)`.
type QSaved = Option<(Tensor, Tensor, Tensor)>;

/// What each projection's [`linear_with`] kept (FP8 operands in FP8 mode).
struct LinSaved {
    /// `q_a_proj`, or `q_proj` when direct.
    q_first: LinearSaved,
    /// `q_b_proj` (low-rank path only).
    q_b: Option<LinearSaved>,
    kv_a: LinearSaved,
    kv_b: LinearSaved,
    o: LinearSaved,
}

/// What [`Mla::forward`] keeps for [`Mla::backward`].
pub struct MlaSaved {
    x: Tensor,
    qa: QSaved,
    ckv: Tensor,
    ckv_n: Tensor,
    rstd_kv: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    p: Tensor,
    attn_out: Tensor,
    positions: Vec<u32>,
    lin: LinSaved,
}

impl Mla {
    /// Random weights (N(0, std²); norm weights 1) for tests and training from scratch, with a
    /// RoPE table of its own.
    pub fn init(cfg: MlaConfig, std: f64, seed: u64, dtype: DType, dev: &Device) -> Result<Mla> {
        cfg.validate()?;
        let rope = cfg.rope_table()?;
        Mla::init_with_rope(cfg, rope, std, seed, dtype, dev)
    }

    /// [`Mla::init`] sharing `rope` (from [`MlaConfig::rope_table`] of an equal configuration).
    pub fn init_with_rope(
        cfg: MlaConfig,
        rope: Arc<RopeTable>,
        std: f64,
        seed: u64,
        dtype: DType,
        dev: &Device,
    ) -> Result<Mla> {
        cfg.validate()?;
        check_rope(&cfg, &rope)?;
        let h = cfg.num_attention_heads;
        let r = |o: usize, i: usize, s: u64| -> Result<Param> {
            Ok(Tensor::randn(&[o, i], std, seed.wrapping_mul(31).wrapping_add(s), dtype, dev)?.into())
        };
        let ones = |n: usize| -> Result<Param> { Ok(Tensor::full(&[n], 1.0, dtype, dev)?.into()) };
        let q = match cfg.q_lora_rank {
            Some(qr) => QProj::LowRank {
                q_a_proj: r(qr, cfg.hidden_size, 1)?,
                q_a_layernorm: ones(qr)?,
                q_b_proj: r(h * cfg.qk_head_dim(), qr, 2)?,
            },
            None => QProj::Direct { q_proj: r(h * cfg.qk_head_dim(), cfg.hidden_size, 3)? },
        };
        Ok(Mla {
            rope,
            q,
            kv_a_proj_with_mqa: r(cfg.kv_lora_rank + cfg.qk_rope_head_dim, cfg.hidden_size, 4)?,
            kv_a_layernorm: ones(cfg.kv_lora_rank)?,
            kv_b_proj: r(h * (cfg.qk_nope_head_dim + cfg.v_head_dim), cfg.kv_lora_rank, 5)?,
            o_proj: r(cfg.hidden_size, h * cfg.v_head_dim, 6)?,
            precision: LinearPrecision::F32,
            cfg,
        })
    }

    /// Load the weights named `{prefix}.q_a_proj.weight`, … from `params`, with a RoPE table of
    /// its own.
    pub fn load(cfg: MlaConfig, params: &Params, prefix: &str) -> Result<Mla> {
        cfg.validate()?;
        let rope = cfg.rope_table()?;
        Mla::load_with_rope(cfg, rope, params, prefix)
    }

    /// [`Mla::load`] sharing `rope` (from [`MlaConfig::rope_table`] of an equal configuration).
    pub fn load_with_rope(cfg: MlaConfig, rope: Arc<RopeTable>, params: &Params, prefix: &str) -> Result<Mla> {
        cfg.validate()?;
        check_rope(&cfg, &rope)?;
        let get = |n: &str| {
            let name = format!("{prefix}.{n}.weight");
            params.get(&name).cloned().map(Param::new).ok_or(MlaError::MissingWeight(name))
        };
        let q = match cfg.q_lora_rank {
            Some(_) => QProj::LowRank {
                q_a_proj: get("q_a_proj")?,
                q_a_layernorm: get("q_a_layernorm")?,
                q_b_proj: get("q_b_proj")?,
            },
            None => QProj::Direct { q_proj: get("q_proj")? },
        };
        Ok(Mla {
            rope,
            q,
            kv_a_proj_with_mqa: get("kv_a_proj_with_mqa")?,
            kv_a_layernorm: get("kv_a_layernorm")?,
            kv_b_proj: get("kv_b_proj")?,
            o_proj: get("o_proj")?,
            precision: LinearPrecision::F32,
            cfg,
        })
    }

    /// `(HF name suffix, parameter)` for every parameter, e.g. `("q_a_proj.weight", W)`, in the
    /// order of [`Mla::params_mut`].
    pub fn params(&self) -> Vec<(&'static str, &Param)> {
        let mut v = match &self.q {
            QProj::LowRank { q_a_proj, q_a_layernorm, q_b_proj } => vec![
                ("q_a_proj.weight", q_a_proj),
                ("q_a_layernorm.weight", q_a_layernorm),
                ("q_b_proj.weight", q_b_proj),
            ],
            QProj::Direct { q_proj } => vec![("q_proj.weight", q_proj)],
        };
        v.extend([
            ("kv_a_proj_with_mqa.weight", &self.kv_a_proj_with_mqa),
            ("kv_a_layernorm.weight", &self.kv_a_layernorm),
            ("kv_b_proj.weight", &self.kv_b_proj),
            ("o_proj.weight", &self.o_proj),
        ]);
        v
    }

    /// Every parameter, in the order of [`Mla::params`].
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v: Vec<&mut Param> = match &mut self.q {
            QProj::LowRank { q_a_proj, q_a_layernorm, q_b_proj } => vec![q_a_proj, q_a_layernorm, q_b_proj],
            QProj::Direct { q_proj } => vec![q_proj],
        };
        v.extend([&mut self.kv_a_proj_with_mqa, &mut self.kv_a_layernorm, &mut self.kv_b_proj, &mut self.o_proj]);
        v
    }

    /// Queries `[B, S, H, qk_head_dim]` with RoPE applied to the `q_pe` part, plus what the
    /// backward needs of the low-rank path.
    fn queries(&self, x: &Tensor, positions: &[u32]) -> Result<(Tensor, QSaved)> {
        let (q, saved, _, _) = self.queries_with(x, positions, LinearPrecision::F32)?;
        Ok((q, saved))
    }

    /// [`Mla::queries`] with projections in precision `p`, plus what each projection kept.
    fn queries_with(
        &self,
        x: &Tensor,
        positions: &[u32],
        p: LinearPrecision,
    ) -> Result<(Tensor, QSaved, LinearSaved, Option<LinearSaved>)> {
        let c = &self.cfg;
        let (b, s) = (x.dim(0), x.dim(1));
        let (q, saved, l1, l2) = match &self.q {
            QProj::LowRank { q_a_proj, q_a_layernorm, q_b_proj } => {
                let (qa, l1) = linear_with(p, x, q_a_proj)?;
                let (cq, rstd) = rms_norm(&qa, q_a_layernorm, c.rms_norm_eps)?;
                let (q, l2) = linear_with(p, &cq, q_b_proj)?;
                (q, Some((qa, cq, rstd)), l1, Some(l2))
            }
            QProj::Direct { q_proj } => {
                let (q, l1) = linear_with(p, x, q_proj)?;
                (q, None, l1, None)
            }
        };
        let q = q.reshape(&[b, s, c.num_attention_heads, c.qk_head_dim()])?;
        let parts = split_last(&q, &[c.qk_nope_head_dim, c.qk_rope_head_dim])?;
        let q_pe = rope(&parts[1], positions, &self.rope)?;
        Ok((cat(&[parts[0].clone(), q_pe], 3)?, saved, l1, l2))
    }

    /// The compressed KV of `x [B, S, D]`: `(c_kv before the norm, normed c_kv, its rstd,
    /// roped k_pe [B, S, 1, rope])` — the normed latent and k_pe are what the cache keeps.
    /// The projection is f32 (the decode paths); training uses [`Mla::precision`].
    pub fn compress_kv(&self, x: &Tensor, positions: &[u32]) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
        let ((ckv, ckv_n, rstd, k_pe), _) = self.compress_kv_with(x, positions, LinearPrecision::F32)?;
        Ok((ckv, ckv_n, rstd, k_pe))
    }

    /// [`Mla::compress_kv`] with `kv_a_proj_with_mqa` in precision `p`, plus what it kept.
    #[allow(clippy::type_complexity)]
    fn compress_kv_with(
        &self,
        x: &Tensor,
        positions: &[u32],
        p: LinearPrecision,
    ) -> Result<((Tensor, Tensor, Tensor, Tensor), LinearSaved)> {
        let c = &self.cfg;
        let (b, s) = (x.dim(0), x.dim(1));
        let (kv, lin) = linear_with(p, x, &self.kv_a_proj_with_mqa)?;
        let parts = split_last(&kv, &[c.kv_lora_rank, c.qk_rope_head_dim])?;
        let k_pe = rope(&parts[1].reshape(&[b, s, 1, c.qk_rope_head_dim])?, positions, &self.rope)?;
        let (ckv_n, rstd) = rms_norm(&parts[0], &self.kv_a_layernorm, c.rms_norm_eps)?;
        Ok(((parts[0].clone(), ckv_n, rstd, k_pe), lin))
    }

    /// Per-head keys and values `[B, T, H, qk]`, `[B, T, H, v]` from the normed latent and k_pe.
    fn expand_kv(&self, ckv_n: &Tensor, k_pe: &Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v, _) = self.expand_kv_with(ckv_n, k_pe, LinearPrecision::F32)?;
        Ok((k, v))
    }

    /// [`Mla::expand_kv`] with `kv_b_proj` in precision `p`, plus what it kept.
    fn expand_kv_with(
        &self,
        ckv_n: &Tensor,
        k_pe: &Tensor,
        p: LinearPrecision,
    ) -> Result<(Tensor, Tensor, LinearSaved)> {
        let c = &self.cfg;
        let (b, t, h) = (ckv_n.dim(0), ckv_n.dim(1), c.num_attention_heads);
        let (kvb, lin) = linear_with(p, ckv_n, &self.kv_b_proj)?;
        let kvb = kvb.reshape(&[b, t, h, c.qk_nope_head_dim + c.v_head_dim])?;
        let parts = split_last(&kvb, &[c.qk_nope_head_dim, c.v_head_dim])?;
        let k_pe_h = broadcast_to(k_pe, &[b, t, h, c.qk_rope_head_dim])?;
        Ok((cat(&[parts[0].clone(), k_pe_h], 3)?, parts[1].clone(), lin))
    }

    /// Training / prefill forward: `x [B, S, hidden]`, `positions` (B·S, per token: packed
    /// sequences restart their positions), `mask` (causal, padding, segments) → `[B, S, hidden]`.
    pub fn forward(&self, x: &Tensor, positions: &[u32], mask: &AttnMask) -> Result<(Tensor, MlaSaved)> {
        let c = &self.cfg;
        let (b, s, h) = (x.dim(0), x.dim(1), c.num_attention_heads);
        let prec = self.precision;
        let (q, qa, q_first, q_b) = self.queries_with(x, positions, prec)?;
        let ((ckv, ckv_n, rstd_kv, k_pe), kv_a) = self.compress_kv_with(x, positions, prec)?;
        let (k, v, kv_b) = self.expand_kv_with(&ckv_n, &k_pe, prec)?;
        // Heads stay in the projections' [B, S, H, D] order (no permutes around the attention).
        let (o, p) = attention_bshd(&q, &k, &v, c.softmax_scale(), mask)?;
        let attn_out = o.reshape(&[b, s, h * c.v_head_dim])?;
        let (y, o) = linear_with(prec, &attn_out, &self.o_proj)?;
        let lin = LinSaved { q_first, q_b, kv_a, kv_b, o };
        let saved = MlaSaved {
            x: x.clone(),
            qa,
            ckv,
            ckv_n,
            rstd_kv,
            q,
            k,
            v,
            p,
            attn_out,
            positions: positions.to_vec(),
            lin,
        };
        Ok((y, saved))
    }

    /// Backward of [`Mla::forward`]: adds every weight's gradient into its [`Param`] and
    /// returns `dx`.
    pub fn backward(&mut self, sv: &MlaSaved, dy: &Tensor) -> Result<Tensor> {
        let c = self.cfg.clone();
        let (b, s, h) = (sv.x.dim(0), sv.x.dim(1), c.num_attention_heads);
        let (nope, rd, vd) = (c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim);

        let lin = &sv.lin;
        let (d_attn, d_o_proj) = linear_with_backward(&sv.attn_out, &self.o_proj, &lin.o, dy)?;
        self.o_proj.accumulate_grad(&d_o_proj)?;
        let d_o = d_attn.reshape(&[b, s, h, vd])?;
        let (dq, dk, dv) = attention_bshd_backward(&sv.q, &sv.k, &sv.v, &sv.p, c.softmax_scale(), &d_o)?;

        // Keys: k_nope and v come from kv_b_proj(c_kv); the shared k_pe sums over heads.
        let dks = split_last(&dk, &[nope, rd])?;
        let dk_pe = rope_backward(&broadcast_to_backward(&dks[1], &[b, s, 1, rd])?, &sv.positions, &self.rope)?;
        let dkvb = cat(&[dks[0].clone(), dv], 3)?.reshape(&[b, s, h * (nope + vd)])?;
        let (dckv_n, d_kv_b) = linear_with_backward(&sv.ckv_n, &self.kv_b_proj, &lin.kv_b, &dkvb)?;
        self.kv_b_proj.accumulate_grad(&d_kv_b)?;
        let (dckv, d_kv_ln) = rms_norm_backward(&sv.ckv, &self.kv_a_layernorm, &sv.rstd_kv, &dckv_n)?;
        self.kv_a_layernorm.accumulate_grad(&d_kv_ln)?;
        let dkv = cat(&[dckv, dk_pe.reshape(&[b, s, rd])?], 2)?;
        let (dx_kv, d_kv_a) = linear_with_backward(&sv.x, &self.kv_a_proj_with_mqa, &lin.kv_a, &dkv)?;
        self.kv_a_proj_with_mqa.accumulate_grad(&d_kv_a)?;

        // Queries.
        let dqs = split_last(&dq, &[nope, rd])?;
        let dq_pe = rope_backward(&dqs[1], &sv.positions, &self.rope)?;
        let dq = cat(&[dqs[0].clone(), dq_pe], 3)?.reshape(&[b, s, h * c.qk_head_dim()])?;
        let dx_q = match (&mut self.q, &sv.qa, &lin.q_b) {
            (QProj::LowRank { q_a_proj, q_a_layernorm, q_b_proj }, Some((qa, cq, rstd)), Some(l_qb)) => {
                let (dcq, d_qb) = linear_with_backward(cq, q_b_proj, l_qb, &dq)?;
                q_b_proj.accumulate_grad(&d_qb)?;
                let (dqa, d_qln) = rms_norm_backward(qa, q_a_layernorm, rstd, &dcq)?;
                q_a_layernorm.accumulate_grad(&d_qln)?;
                let (dx, d_qa) = linear_with_backward(&sv.x, q_a_proj, &lin.q_first, &dqa)?;
                q_a_proj.accumulate_grad(&d_qa)?;
                dx
            }
            (QProj::Direct { q_proj }, _, _) => {
                let (dx, d_q) = linear_with_backward(&sv.x, q_proj, &lin.q_first, &dq)?;
                q_proj.accumulate_grad(&d_q)?;
                dx
            }
            (QProj::LowRank { .. }, _, _) => unreachable!("forward saves the low-rank path"),
        };
        Ok(add(&dx_kv, &dx_q)?)
    }
}
