//! # model — DeepSeek-V3 (assembly)
//!
//! `embed_tokens → [RMSNorm → MLA → +residual → RMSNorm → MLP | MoE → +residual] × L → norm →
//! lm_head` (pre-norm blocks; dense SwiGLU MLP below `first_k_dense_replace`, DeepSeekMoE above;
//! untied head), plus the Multi-Token Prediction modules (§2.2) that share the embedding and the
//! head. Each layer owns its parameters ([`Param`]: value and gradient slot); backward passes add
//! into the slots; Hugging Face names appear only at checkpoint load and save. [`lm::CausalLm`]
//! is the interface every trainer drives.

pub mod checkpoint;
pub mod config;
pub mod generate;
pub mod lm;
pub mod mtp;

pub use config::DeepseekV3Config;
pub use fp8::LinearPrecision;
pub use generate::{Generation, SamplingParams};
pub use lm::{CausalLm, TokenBatch};

use mla::{Mla, MlaSaved};
use moe_router::balance::TokenDocs;
use moe_router::{Expert, ExpertSaved, Moe, MoeSaved};
use mtp::Mtp;
use optim::Params;
use tensor::ops::attention::AttnMask;
use tensor::ops::elementwise::add;
use tensor::ops::index::{embedding, embedding_backward};
use tensor::ops::loss::{cross_entropy, cross_entropy_backward};
use tensor::ops::matmul::{linear, linear_backward};
use tensor::ops::norm::{rms_norm, rms_norm_backward};
use tensor::{DType, Device, Param, Tensor};

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

/// The feed-forward part of a block (one per layer: the size difference of the variants costs
/// nothing worth a box).
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)]
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
    pub input_layernorm: Param,
    pub self_attn: Mla,
    pub post_attention_layernorm: Param,
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

    /// `x + attn(norm(x))`, then `+ mlp(norm(·))`, for `x [B, S, hidden]` (`docs`: the document
    /// of each token for the MoE balance loss and loads).
    fn forward(
        &self,
        x: &Tensor,
        positions: &[u32],
        mask: &AttnMask,
        docs: &TokenDocs,
        eps: f64,
    ) -> Result<(Tensor, BlockSaved)> {
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
                let (m, sv) = moe.forward_docs(&flat, docs)?;
                (m, FfnSaved::Moe(Box::new(sv)))
            }
        };
        let y = add(&x2, &m.reshape(&[b, s, d])?)?;
        Ok((y, BlockSaved { x: x.clone(), rstd1, attn, x2, rstd2, ffn }))
    }

    /// Backward of [`Block::forward`]; weight gradients into the block's parameters.
    fn backward(&mut self, bs: &BlockSaved, dy: &Tensor) -> Result<Tensor> {
        let (b, s, d) = (dy.dim(0), dy.dim(1), dy.dim(2));
        let dm = dy.reshape(&[b * s, d])?;
        let dh2 = match (&mut self.mlp, &bs.ffn) {
            (Ffn::Dense(e), FfnSaved::Dense(f)) => e.backward(f, &dm)?,
            (Ffn::Moe(m), FfnSaved::Moe(f)) => m.backward(f, &dm)?,
            _ => unreachable!("forward saves the block's own kind"),
        };
        let (dx2n, d_post) =
            rms_norm_backward(&bs.x2, &self.post_attention_layernorm, &bs.rstd2, &dh2.reshape(&[b, s, d])?)?;
        self.post_attention_layernorm.accumulate_grad(&d_post)?;
        let dx2 = add(dy, &dx2n)?;
        let dh = self.self_attn.backward(&bs.attn, &dx2)?;
        let (dxn, d_in) = rms_norm_backward(&bs.x, &self.input_layernorm, &bs.rstd1, &dh)?;
        self.input_layernorm.accumulate_grad(&d_in)?;
        Ok(add(&dx2, &dxn)?)
    }

    /// `(HF name, parameter)` of the block's trainable weights under `pre`, in the order of
    /// [`Block::params_mut`].
    fn params(&self, pre: &str) -> Vec<(String, &Param)> {
        let mut v = vec![(format!("{pre}.input_layernorm.weight"), &self.input_layernorm)];
        v.extend(self.self_attn.params().into_iter().map(|(n, t)| (format!("{pre}.self_attn.{n}"), t)));
        v.push((format!("{pre}.post_attention_layernorm.weight"), &self.post_attention_layernorm));
        match &self.mlp {
            Ffn::Dense(e) => v.extend(e.params().into_iter().map(|(n, t)| (format!("{pre}.mlp.{n}"), t))),
            Ffn::Moe(m) => v.extend(m.params().into_iter().map(|(n, t)| (format!("{pre}.mlp.{n}"), t))),
        }
        v
    }

    /// The block's trainable weights, in the order of [`Block::params`].
    fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = vec![&mut self.input_layernorm];
        v.extend(self.self_attn.params_mut());
        v.push(&mut self.post_attention_layernorm);
        match &mut self.mlp {
            Ffn::Dense(e) => v.extend(e.params_mut()),
            Ffn::Moe(m) => v.extend(m.params_mut()),
        }
        v
    }

    /// `(HF name, tensor)` of the block's non-gradient state (the MoE bias) under `pre`.
    fn buffers(&self, pre: &str) -> Vec<(String, Tensor)> {
        match &self.mlp {
            Ffn::Dense(_) => Vec::new(),
            Ffn::Moe(m) => m.buffers().into_iter().map(|(n, t)| (format!("{pre}.mlp.{n}"), t.clone())).collect(),
        }
    }
}

impl ModelSaved {
    /// Each MoE layer's routing in this forward (chosen experts `[B·S·k]`, affinities, loads).
    pub fn routing(&self) -> Vec<(usize, &moe_router::Routing)> {
        self.blocks
            .iter()
            .enumerate()
            .filter_map(|(i, b)| match &b.ffn {
                FfnSaved::Moe(m) => Some((i, &m.routing)),
                FfnSaved::Dense(_) => None,
            })
            .collect()
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
    /// The last block's output `[B, S, hidden]` (before the final norm; what MTP reads).
    x: Tensor,
    /// The final-normed hidden states `[B, S, hidden]`.
    hf: Tensor,
    rstd: Tensor,
    /// Per MoE layer (by layer index): the routed rows per expert of this batch.
    pub moe_loads: Vec<(usize, Vec<usize>)>,
    /// Sum over MoE layers of the sequence-wise balance loss (0 unless `aux_loss_alpha > 0`;
    /// its gradient is added by [`DeepseekV3::backward`]).
    pub balance_loss: f64,
}

/// The DeepSeek-V3 causal language model and its MTP modules (`cfg.num_nextn_predict_layers`
/// of them; they use the model's `embed_tokens` and `lm_head`, V3 §2.2).
#[derive(Clone, Debug)]
pub struct DeepseekV3 {
    pub cfg: DeepseekV3Config,
    pub embed_tokens: Param,
    pub layers: Vec<Block>,
    pub norm: Param,
    pub lm_head: Param,
    pub mtp: Vec<Mtp>,
}

impl DeepseekV3 {
    /// Random weights (N(0, std²), norms 1) for training from scratch and tests.
    pub fn init(cfg: DeepseekV3Config, std: f64, seed: u64, dt: DType, dev: &Device) -> Result<DeepseekV3> {
        let d = cfg.hidden_size;
        let ones = |n: usize| -> Result<Param> { Ok(Tensor::full(&[n], 1.0, dt, dev)?.into()) };
        let rope = cfg.mla().rope_table()?; // one table for every layer
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
                    self_attn: Mla::init_with_rope(cfg.mla(), rope.clone(), std, s, dt, dev)?,
                    post_attention_layernorm: ones(d)?,
                    mlp,
                })
            })
            .collect::<Result<_>>()?;
        let mtp = (0..cfg.num_nextn_predict_layers)
            .map(|k| Mtp::init(&cfg, &rope, std, seed.wrapping_add(1000 + k as u64), dt, dev))
            .collect::<Result<_>>()?;
        Ok(DeepseekV3 {
            embed_tokens: Tensor::randn(&[cfg.vocab_size, d], std, seed.wrapping_add(1), dt, dev)?.into(),
            lm_head: Tensor::randn(&[cfg.vocab_size, d], std, seed.wrapping_add(2), dt, dev)?.into(),
            norm: ones(d)?,
            layers,
            mtp,
            cfg,
        })
    }

    /// Build from tensors named as transformers writes them: the model, and the
    /// `cfg.num_nextn_predict_layers` MTP modules stored as layers `num_hidden_layers + k` (their
    /// copies of the embedding and head are not read: the modules use the model's).
    pub fn load(cfg: DeepseekV3Config, p: &Params) -> Result<DeepseekV3> {
        let get = |n: &str| p.get(n).cloned().map(Param::new).ok_or_else(|| ModelError::MissingWeight(n.to_string()));
        let rope = cfg.mla().rope_table()?; // one table for every layer
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
                    self_attn: Mla::load_with_rope(cfg.mla(), rope.clone(), p, &format!("{pre}.self_attn"))?,
                    post_attention_layernorm: get(&format!("{pre}.post_attention_layernorm.weight"))?,
                    mlp,
                })
            })
            .collect::<Result<_>>()?;
        let mtp = (0..cfg.num_nextn_predict_layers)
            .map(|k| Mtp::load(&cfg, &rope, p, cfg.num_hidden_layers + k))
            .collect::<Result<_>>()?;
        Ok(DeepseekV3 {
            embed_tokens: get("model.embed_tokens.weight")?,
            norm: get("model.norm.weight")?,
            lm_head: get("lm_head.weight")?,
            layers,
            mtp,
            cfg,
        })
    }

    /// Run the linear layers of every block — the MLA projections and the routed, shared and
    /// dense experts — in precision `p` (DeepSeek-V3 §3.3 FP8 training); the embedding, the
    /// output head, the MoE gate, the norms and the attention core keep their precision.
    /// [`DeepseekV3::init`] and [`DeepseekV3::load`] start in [`LinearPrecision::F32`], so set it
    /// again after a reload.
    pub fn set_linear_precision(&mut self, p: LinearPrecision) {
        for blk in self.layers.iter_mut().chain(self.mtp.iter_mut().map(|m| &mut m.block)) {
            blk.set_linear_precision(p);
        }
    }

    /// Every trainable parameter (model, then MTP modules) with its HF name, in the order of
    /// [`DeepseekV3::params_mut`]. The embedding and head appear once (the MTP modules share
    /// them).
    pub fn params(&self) -> Vec<(String, &Param)> {
        let mut v = vec![("model.embed_tokens.weight".to_string(), &self.embed_tokens)];
        for (i, b) in self.layers.iter().enumerate() {
            v.extend(b.params(&format!("model.layers.{i}")));
        }
        v.push(("model.norm.weight".to_string(), &self.norm));
        v.push(("lm_head.weight".to_string(), &self.lm_head));
        for (k, m) in self.mtp.iter().enumerate() {
            v.extend(m.params(self.cfg.num_hidden_layers + k));
        }
        v
    }

    /// Every trainable parameter, in the order of [`DeepseekV3::params`] (what the optimizer
    /// steps).
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = vec![&mut self.embed_tokens];
        for b in &mut self.layers {
            v.extend(b.params_mut());
        }
        v.push(&mut self.norm);
        v.push(&mut self.lm_head);
        for m in &mut self.mtp {
            v.extend(m.params_mut());
        }
        v
    }

    /// Every tensor a checkpoint holds, by HF name: the trainable weights, the MoE biases, and
    /// for each MTP module the copies of the shared embedding and head that released V3
    /// checkpoints carry under its layer (`embed_tokens`, `shared_head.head`).
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = vec![("model.embed_tokens.weight".into(), self.embed_tokens.value.clone())];
        for (i, b) in self.layers.iter().enumerate() {
            let pre = format!("model.layers.{i}");
            v.extend(b.params(&pre).into_iter().map(|(n, p)| (n, p.value.clone())));
            v.extend(b.buffers(&pre));
        }
        v.push(("model.norm.weight".into(), self.norm.value.clone()));
        v.push(("lm_head.weight".into(), self.lm_head.value.clone()));
        for (k, m) in self.mtp.iter().enumerate() {
            let layer = self.cfg.num_hidden_layers + k;
            v.extend(m.params(layer).into_iter().map(|(n, p)| (n, p.value.clone())));
            v.extend(m.block.buffers(&format!("model.layers.{layer}")));
            v.push((format!("model.layers.{layer}.embed_tokens.weight"), self.embed_tokens.value.clone()));
            v.push((format!("model.layers.{layer}.shared_head.head.weight"), self.lm_head.value.clone()));
        }
        v
    }

    /// Drop every parameter's gradient.
    pub fn zero_grad(&mut self) {
        self.params_mut().into_iter().for_each(Param::zero_grad);
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
        let (hf, saved) = self.forward_hidden(ids, b, s, positions, mask)?;
        Ok((linear(&hf, &self.lm_head)?, saved))
    }

    /// The final-normed hidden states `[B, S, hidden]` (what the head reads) for token ids
    /// `[B·S]` at `positions` under `mask`.
    pub fn forward_hidden(
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
        for (what, len) in [
            ("segment_ids", mask.segment_ids.as_ref().map(Vec::len)),
            ("key_padding", mask.key_padding.as_ref().map(Vec::len)),
        ] {
            if let Some(len) = len
                && len != b * s
            {
                return Err(ModelError::Input(format!("{what}: {len} entries for batch {b} × {s}")));
            }
        }
        let eps = self.cfg.rms_norm_eps;
        let mut x = embedding(ids, &self.embed_tokens)?.reshape(&[b, s, d])?;
        let mut blocks = Vec::with_capacity(self.layers.len());
        let mut moe_loads = Vec::new();
        let mut balance_loss = 0.0;
        // The balance loss per packed document; padding counts in neither it nor the loads.
        let docs = TokenDocs::packed(b, s, mask.segment_ids.as_deref(), mask.key_padding.as_deref());
        for (i, blk) in self.layers.iter().enumerate() {
            let (next, bs) = blk.forward(&x, positions, mask, &docs, eps)?;
            if let FfnSaved::Moe(m) = &bs.ffn {
                moe_loads.push((i, m.routing.load.clone()));
                balance_loss += m.routing.balance_loss;
            }
            blocks.push(bs);
            x = next;
        }
        let (hf, rstd) = rms_norm(&x, &self.norm, eps)?;
        Ok((hf.clone(), ModelSaved { ids: ids.to_vec(), blocks, x, hf, rstd, moe_loads, balance_loss }))
    }

    /// Backward from `dlogits [B, S, vocab]`: every parameter's gradient into its slot.
    pub fn backward(&mut self, sv: &ModelSaved, dlogits: &Tensor) -> Result<()> {
        self.backward_parts(sv, Some(dlogits), None, None)
    }

    /// Backward from any of: `d_logits [B, S, vocab]` (through the head), `d_hidden [B, S,
    /// hidden]` on the final-normed hidden states (a head of the caller's on top), `d_trunk
    /// [B, S, hidden]` on the last block's output (what an MTP module reads). At least one must
    /// be given.
    pub fn backward_parts(
        &mut self,
        sv: &ModelSaved,
        d_logits: Option<&Tensor>,
        d_hidden: Option<&Tensor>,
        d_trunk: Option<&Tensor>,
    ) -> Result<()> {
        let d = self.cfg.hidden_size;
        let (b, s) = (sv.hf.dim(0), sv.hf.dim(1));
        let mut dhf = match d_logits {
            Some(dl) => {
                let (dhf, d_head) = linear_backward(&sv.hf, &self.lm_head, dl)?;
                self.lm_head.accumulate_grad(&d_head)?;
                Some(dhf)
            }
            None => None,
        };
        dhf = sum_some(dhf, d_hidden)?;
        let dx = match dhf {
            Some(dhf) => {
                let (dx, d_norm) = rms_norm_backward(&sv.x, &self.norm, &sv.rstd, &dhf)?;
                self.norm.accumulate_grad(&d_norm)?;
                Some(dx)
            }
            None => None,
        };
        let mut dx = sum_some(dx, d_trunk)?
            .ok_or_else(|| ModelError::Input("backward needs d_logits, d_hidden or d_trunk".into()))?;
        for (blk, bs) in self.layers.iter_mut().zip(&sv.blocks).rev() {
            dx = blk.backward(bs, &dx)?;
        }
        let de = embedding_backward(&sv.ids, self.cfg.vocab_size, &dx.reshape(&[b * s, d])?)?;
        self.embed_tokens.accumulate_grad(&de)?;
        Ok(())
    }
}

/// `a + b` where both are present, else whichever is.
fn sum_some(a: Option<Tensor>, b: Option<&Tensor>) -> Result<Option<Tensor>> {
    Ok(match (a, b) {
        (Some(a), Some(b)) => Some(add(&a, b)?),
        (a, b) => a.or_else(|| b.cloned()),
    })
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
