//! # model — DeepSeek-V3 (assembly)
//!
//! `embed_tokens → [RMSNorm → MLA → +residual → RMSNorm → MLP | MoE → +residual] × L → norm →
//! lm_head` (pre-norm blocks; dense SwiGLU MLP below `first_k_dense_replace`, DeepSeekMoE above;
//! untied head). Forward and backward for every parameter, by HF checkpoint name.

pub mod checkpoint;
pub mod config;
pub mod generate;
pub mod mtp;

pub use config::DeepseekV3Config;
pub use fp8::LinearPrecision;
pub use generate::{Generation, SamplingParams};

use mla::{Mla, MlaSaved};
use moe_router::{Expert, ExpertSaved, Moe, MoeSaved};
use optim::{Grads, Params};
use tensor::ops::attention::AttnMask;
use tensor::ops::elementwise::add;
use tensor::ops::index::{embedding, embedding_backward};
use tensor::ops::loss::{cross_entropy, cross_entropy_backward};
use tensor::ops::matmul::{linear, linear_backward};
use tensor::ops::norm::{rms_norm, rms_norm_backward};
use tensor::{DType, Device, Tensor};

/// Errors of the model crate.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Tensor(#[from] tensor::TensorError),
    #[error(transparent)]
    Optim(#[from] optim::OptimError),
    #[error(transparent)]
    Mla(#[from] mla::MlaError),
    #[error(transparent)]
    Moe(#[from] moe_router::MoeError),
    #[error("{file}: field {field}: {detail}")]
    Config { file: String, field: String, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Checkpoint { path: String, detail: String },
    #[error("missing weight {0:?}")]
    MissingWeight(String),
    #[error("input: {0}")]
    Input(String),
}

/// Shorthand result type.
pub type Result<T> = std::result::Result<T, ModelError>;

/// The feed-forward part of a block.
#[derive(Clone, Debug)]
pub enum Ffn {
    Dense(Expert),
    Moe(Moe),
}

enum FfnSaved {
    Dense(ExpertSaved),
    Moe(Box<MoeSaved>),
}

/// One decoder block.
#[derive(Clone, Debug)]
pub struct Block {
    pub input_layernorm: Tensor,
    pub self_attn: Mla,
    pub post_attention_layernorm: Tensor,
    pub mlp: Ffn,
}

impl Block {
    /// The arithmetic of the block's linear layers (attention projections and experts; the
    /// gate, norms and attention core stay f32).
    pub fn set_linear_precision(&mut self, p: LinearPrecision) {
        self.self_attn.precision = p;
        match &mut self.mlp {
            Ffn::Dense(e) => e.precision = p,
            Ffn::Moe(m) => m.set_linear_precision(p),
        }
    }

    /// `x + attn(norm(x))`, then `+ mlp(norm(·))`, for `x [B, S, hidden]`.
    fn forward(&self, x: &Tensor, positions: &[u32], mask: &AttnMask, eps: f64) -> Result<(Tensor, BlockSaved)> {
        let (b, s, d) = (x.dim(0), x.dim(1), x.dim(2));
        let (h, rstd1) = rms_norm(x, &self.input_layernorm, eps)?;
        let (a, attn) = self.self_attn.forward(&h, positions, mask)?;
        let x2 = add(x, &a)?;
        let (h2, rstd2) = rms_norm(&x2, &self.post_attention_layernorm, eps)?;
        let flat = h2.reshape(&[b * s, d])?;
        let (m, ffn) = match &self.mlp {
            Ffn::Dense(e) => {
                let (m, sv) = e.forward(&flat)?;
                (m, FfnSaved::Dense(sv))
            }
            Ffn::Moe(moe) => {
                let (m, sv) = moe.forward(&flat, s)?;
                (m, FfnSaved::Moe(Box::new(sv)))
            }
        };
        let y = add(&x2, &m.reshape(&[b, s, d])?)?;
        Ok((y, BlockSaved { x: x.clone(), rstd1, attn, x2, rstd2, ffn }))
    }

    /// Backward of [`Block::forward`]; weight gradients under `{pre}.…`.
    fn backward(&self, bs: &BlockSaved, dy: &Tensor, grads: &mut Grads, pre: &str) -> Result<Tensor> {
        let (b, s, d) = (dy.dim(0), dy.dim(1), dy.dim(2));
        let dm = dy.reshape(&[b * s, d])?;
        let dh2 = match (&self.mlp, &bs.ffn) {
            (Ffn::Dense(e), FfnSaved::Dense(f)) => e.backward(f, &dm, grads, &format!("{pre}.mlp"))?,
            (Ffn::Moe(m), FfnSaved::Moe(f)) => m.backward(f, &dm, grads, &format!("{pre}.mlp"))?,
            _ => unreachable!("forward saves the block's own kind"),
        };
        let (dx2n, d_post) =
            rms_norm_backward(&bs.x2, &self.post_attention_layernorm, &bs.rstd2, &dh2.reshape(&[b, s, d])?)?;
        grads.accumulate(&format!("{pre}.post_attention_layernorm.weight"), &d_post)?;
        let dx2 = add(dy, &dx2n)?;
        let dh = self.self_attn.backward(&bs.attn, &dx2, grads, &format!("{pre}.self_attn"))?;
        let (dxn, d_in) = rms_norm_backward(&bs.x, &self.input_layernorm, &bs.rstd1, &dh)?;
        grads.accumulate(&format!("{pre}.input_layernorm.weight"), &d_in)?;
        Ok(add(&dx2, &dxn)?)
    }

    /// `(HF name, tensor)` of the block's parameters and buffers under `pre`.
    fn named(&self, pre: &str) -> Vec<(String, Tensor)> {
        let mut v = vec![(format!("{pre}.input_layernorm.weight"), self.input_layernorm.clone())];
        v.extend(self.self_attn.weights().into_iter().map(|(n, t)| (format!("{pre}.self_attn.{n}"), t.clone())));
        v.push((format!("{pre}.post_attention_layernorm.weight"), self.post_attention_layernorm.clone()));
        match &self.mlp {
            Ffn::Dense(e) => v.extend(e.weights().into_iter().map(|(n, t)| (format!("{pre}.mlp.{n}"), t.clone()))),
            Ffn::Moe(m) => {
                v.extend(m.weights().into_iter().map(|(n, t)| (format!("{pre}.mlp.{n}"), t.clone())));
                v.extend(m.buffers().into_iter().map(|(n, t)| (format!("{pre}.mlp.{n}"), t.clone())));
            }
        }
        v
    }
}

struct BlockSaved {
    x: Tensor,
    rstd1: Tensor,
    attn: MlaSaved,
    x2: Tensor,
    rstd2: Tensor,
    ffn: FfnSaved,
}

/// What [`DeepseekV3::forward`] keeps for [`DeepseekV3::backward`].
pub struct ModelSaved {
    ids: Vec<u32>,
    blocks: Vec<BlockSaved>,
    x: Tensor,
    hf: Tensor,
    rstd: Tensor,
    /// Per MoE layer (by layer index): the routed rows per expert of this batch.
    pub moe_loads: Vec<(usize, Vec<usize>)>,
    /// Sum over MoE layers of the sequence-wise balance loss (0 unless `aux_loss_alpha > 0`;
    /// its gradient is added by [`DeepseekV3::backward`]).
    pub balance_loss: f64,
}

/// The DeepSeek-V3 causal language model.
#[derive(Clone, Debug)]
pub struct DeepseekV3 {
    pub cfg: DeepseekV3Config,
    pub embed_tokens: Tensor,
    pub layers: Vec<Block>,
    pub norm: Tensor,
    pub lm_head: Tensor,
}

impl DeepseekV3 {
    /// Random weights (N(0, std²), norms 1) for training from scratch and tests.
    pub fn init(cfg: DeepseekV3Config, std: f64, seed: u64, dt: DType, dev: &Device) -> Result<DeepseekV3> {
        let d = cfg.hidden_size;
        let ones = |n: usize| Tensor::full(&[n], 1.0, dt, dev);
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let s = seed.wrapping_mul(7919).wrapping_add(100 * i as u64 + 1);
                let mlp = if i < cfg.first_k_dense_replace {
                    Ffn::Dense(Expert::init(d, cfg.intermediate_size, std, s + 50, dt, dev)?)
                } else {
                    Ffn::Moe(Moe::init(cfg.moe(), std, s + 60, dt, dev)?)
                };
                Ok(Block {
                    input_layernorm: ones(d)?,
                    self_attn: Mla::init(cfg.mla(), std, s, dt, dev)?,
                    post_attention_layernorm: ones(d)?,
                    mlp,
                })
            })
            .collect::<Result<_>>()?;
        Ok(DeepseekV3 {
            embed_tokens: Tensor::randn(&[cfg.vocab_size, d], std, seed.wrapping_add(1), dt, dev)?,
            lm_head: Tensor::randn(&[cfg.vocab_size, d], std, seed.wrapping_add(2), dt, dev)?,
            norm: ones(d)?,
            layers,
            cfg,
        })
    }

    /// Build from parameters named as transformers writes them.
    pub fn load(cfg: DeepseekV3Config, p: &Params) -> Result<DeepseekV3> {
        let get = |n: &str| p.get(n).cloned().ok_or_else(|| ModelError::MissingWeight(n.to_string()));
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let pre = format!("model.layers.{i}");
                let mlp = if i < cfg.first_k_dense_replace {
                    Ffn::Dense(Expert::load(p, &format!("{pre}.mlp"))?)
                } else {
                    Ffn::Moe(Moe::load(cfg.moe(), p, &format!("{pre}.mlp"))?)
                };
                Ok(Block {
                    input_layernorm: get(&format!("{pre}.input_layernorm.weight"))?,
                    self_attn: Mla::load(cfg.mla(), p, &format!("{pre}.self_attn"))?,
                    post_attention_layernorm: get(&format!("{pre}.post_attention_layernorm.weight"))?,
                    mlp,
                })
            })
            .collect::<Result<_>>()?;
        Ok(DeepseekV3 {
            embed_tokens: get("model.embed_tokens.weight")?,
            norm: get("model.norm.weight")?,
            lm_head: get("lm_head.weight")?,
            layers,
            cfg,
        })
    }

    /// Run the linear layers of every block — the MLA projections and the routed, shared and
    /// dense experts — in precision `p` (DeepSeek-V3 §3.3 FP8 training); the embedding, the
    /// output head, the MoE gate, the norms and the attention core keep their precision.
    /// [`DeepseekV3::init`] and [`DeepseekV3::load`] start in [`LinearPrecision::F32`], so set it
    /// again after a reload.
    pub fn set_linear_precision(&mut self, p: LinearPrecision) {
        for blk in &mut self.layers {
            blk.set_linear_precision(p);
        }
    }

    /// Every parameter by HF name (trainable weights, then the MoE biases as buffers).
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![("model.embed_tokens.weight".to_string(), self.embed_tokens.clone())];
        for (i, b) in self.layers.iter().enumerate() {
            v.extend(b.named(&format!("model.layers.{i}")));
        }
        v.push(("model.norm.weight".to_string(), self.norm.clone()));
        v.push(("lm_head.weight".to_string(), self.lm_head.clone()));
        v
    }

    /// Logits `[B, S, vocab]` for token ids `[B·S]` at `positions` (B·S) under `mask`.
    pub fn forward(
        &self,
        ids: &[u32],
        b: usize,
        s: usize,
        positions: &[u32],
        mask: &AttnMask,
    ) -> Result<(Tensor, ModelSaved)> {
        let d = self.cfg.hidden_size;
        if ids.len() != b * s || positions.len() != b * s {
            return Err(ModelError::Input(format!(
                "{} ids / {} positions for batch {b} × {s}",
                ids.len(),
                positions.len()
            )));
        }
        let eps = self.cfg.rms_norm_eps;
        let mut x = embedding(ids, &self.embed_tokens)?.reshape(&[b, s, d])?;
        let mut blocks = Vec::with_capacity(self.layers.len());
        let mut moe_loads = Vec::new();
        let mut balance_loss = 0.0;
        for (i, blk) in self.layers.iter().enumerate() {
            let (next, bs) = blk.forward(&x, positions, mask, eps)?;
            if let FfnSaved::Moe(m) = &bs.ffn {
                moe_loads.push((i, m.routing.load.clone()));
                balance_loss += m.routing.balance_loss;
            }
            blocks.push(bs);
            x = next;
        }
        let (hf, rstd) = rms_norm(&x, &self.norm, eps)?;
        let logits = linear(&hf, &self.lm_head)?;
        Ok((logits, ModelSaved { ids: ids.to_vec(), blocks, x, hf, rstd, moe_loads, balance_loss }))
    }

    /// Backward from `dlogits [B, S, vocab]`: every parameter's gradient by HF name.
    pub fn backward(&self, sv: &ModelSaved, dlogits: &Tensor, grads: &mut Grads) -> Result<()> {
        self.backward_with_hidden(sv, dlogits, None, grads)
    }

    /// [`DeepseekV3::backward`] plus an extra gradient `[B, S, hidden]` on the last block's output
    /// (the hidden state MTP reads).
    pub fn backward_with_hidden(
        &self,
        sv: &ModelSaved,
        dlogits: &Tensor,
        d_hidden: Option<&Tensor>,
        grads: &mut Grads,
    ) -> Result<()> {
        let d = self.cfg.hidden_size;
        let (b, s) = (dlogits.dim(0), dlogits.dim(1));
        let (dhf, d_head) = linear_backward(&sv.hf, &self.lm_head, dlogits)?;
        grads.accumulate("lm_head.weight", &d_head)?;
        let (mut dx, d_norm) = rms_norm_backward(&sv.x, &self.norm, &sv.rstd, &dhf)?;
        grads.accumulate("model.norm.weight", &d_norm)?;
        if let Some(extra) = d_hidden {
            dx = add(&dx, extra)?;
        }
        for (i, (blk, bs)) in self.layers.iter().zip(&sv.blocks).enumerate().rev() {
            dx = blk.backward(bs, &dx, grads, &format!("model.layers.{i}"))?;
        }
        let de = embedding_backward(&sv.ids, self.cfg.vocab_size, &dx.reshape(&[b * s, d])?)?;
        grads.accumulate("model.embed_tokens.weight", &de)?;
        Ok(())
    }
}

/// Mean next-token cross-entropy over `targets` (B·S, `ignore_index` skipped) and its gradient
/// with respect to the logits.
pub fn lm_loss(logits: &Tensor, targets: &[i64], ignore_index: i64) -> Result<(f64, Tensor)> {
    let v = logits.dim(-1);
    let flat = logits.reshape(&[logits.numel() / v, v])?;
    let (loss, _) = cross_entropy(&flat, targets, ignore_index)?;
    let d = cross_entropy_backward(&flat, targets, ignore_index, 1.0)?.reshape(logits.shape())?;
    Ok((loss.item()?, d))
}
