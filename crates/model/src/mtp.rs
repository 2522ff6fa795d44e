//! Multi-Token Prediction (DeepSeek-V3 §2.2), depth 1: at position i the module combines the main
//! model's last hidden state `h_i` with the embedding of token `t_{i+1}` and predicts `t_{i+2}`:
//! `h'_i = eh_proj([enorm(emb(t_{i+1})) ; hnorm(h_i)])` (embedding first), `h = Block(h')`,
//! `logits = head(shared_head.norm(h))`. Loss `λ · CE` (λ = 0.3, then 0.1 in V3). The embedding
//! and the output head are the main model's (one tensor each; both losses' gradients sum in
//! them). Stored as layer `num_hidden_layers`: `enorm`, `hnorm`, `eh_proj`, the block's weights,
//! `shared_head.norm`, and copies of the shared `embed_tokens` and `shared_head.head` (the
//! released V3 layout; [`crate::DeepseekV3::state_dict`] writes them, loading ignores them).

use std::sync::Arc;

use optim::Params;
use tensor::ops::attention::AttnMask;
use tensor::ops::index::{embedding, embedding_backward};
use tensor::ops::loss::IGNORE_INDEX;
use tensor::ops::matmul::{linear, linear_backward};
use tensor::ops::norm::{rms_norm, rms_norm_backward};
use tensor::ops::rope::RopeTable;
use tensor::ops::shape::{cat, narrow, narrow_backward, split_last};
use tensor::{DType, Device, Param, Tensor};

use crate::{Block, BlockSaved, DeepseekV3Config, Ffn, ModelError, ModelSaved, Result};

/// One MTP module (its own weights; the embedding and head are the main model's).
#[derive(Clone, Debug)]
pub struct Mtp {
    pub enorm: Param,
    pub hnorm: Param,
    /// `[hidden, 2·hidden]`.
    pub eh_proj: Param,
    pub block: Block,
    /// `shared_head.norm`.
    pub norm: Param,
}

/// What [`Mtp::forward`] keeps for [`Mtp::backward`].
pub struct MtpSaved {
    next_ids: Vec<u32>,
    e: Tensor,
    re: Tensor,
    h: Tensor,
    rh: Tensor,
    c: Tensor,
    block: BlockSaved,
    y: Tensor,
    ry: Tensor,
    yn: Tensor,
    full: Vec<usize>,
}

impl MtpSaved {
    /// Routed tokens per expert of the module's MoE block for this batch (for the aux-loss-free
    /// bias update), when the block is MoE.
    pub fn moe_load(&self) -> Option<&[usize]> {
        match &self.block.ffn {
            crate::FfnSaved::Moe(m) => Some(&m.routing.load),
            crate::FfnSaved::Dense(_) => None,
        }
    }

    /// The block's sequence-wise balance loss (0 unless `aux_loss_alpha > 0`).
    pub fn balance_loss(&self) -> f64 {
        match &self.block.ffn {
            crate::FfnSaved::Moe(m) => m.routing.balance_loss,
            crate::FfnSaved::Dense(_) => 0.0,
        }
    }
}

impl Mtp {
    /// The arithmetic of the module's linear layers (its block's attention projections and
    /// experts; `eh_proj` and the head stay f32, as the main model's head does).
    pub fn set_linear_precision(&mut self, p: fp8::LinearPrecision) {
        self.block.set_linear_precision(p);
    }

    /// Random weights (norms 1); the attention shares the model's RoPE table `rope`.
    pub fn init(
        cfg: &DeepseekV3Config,
        rope: &Arc<RopeTable>,
        std: f64,
        seed: u64,
        dt: DType,
        dev: &Device,
    ) -> Result<Mtp> {
        let d = cfg.hidden_size;
        let ones = || -> Result<Param> { Ok(Tensor::full(&[d], 1.0, dt, dev)?.into()) };
        Ok(Mtp {
            enorm: ones()?,
            hnorm: ones()?,
            eh_proj: Tensor::randn(&[d, 2 * d], std, seed, dt, dev)?.into(),
            block: Block {
                input_layernorm: ones()?,
                self_attn: mla::Mla::init_with_rope(cfg.mla(), rope.clone(), std, seed + 1, dt, dev)?,
                post_attention_layernorm: ones()?,
                mlp: Ffn::Moe(moe_router::Moe::init(cfg.moe(), std, seed + 2, dt, dev)?),
            },
            norm: ones()?,
        })
    }

    /// Load `model.layers.{layer}.…`; the attention shares the model's RoPE table `rope`.
    pub fn load(cfg: &DeepseekV3Config, rope: &Arc<RopeTable>, p: &Params, layer: usize) -> Result<Mtp> {
        let pre = format!("model.layers.{layer}");
        let get = |n: &str| {
            let name = format!("{pre}.{n}");
            p.get(&name).cloned().map(Param::new).ok_or(ModelError::MissingWeight(name))
        };
        Ok(Mtp {
            enorm: get("enorm.weight")?,
            hnorm: get("hnorm.weight")?,
            eh_proj: get("eh_proj.weight")?,
            block: Block {
                input_layernorm: get("input_layernorm.weight")?,
                self_attn: mla::Mla::load_with_rope(cfg.mla(), rope.clone(), p, &format!("{pre}.self_attn"))?,
                post_attention_layernorm: get("post_attention_layernorm.weight")?,
                mlp: Ffn::Moe(moe_router::Moe::load(cfg.moe(), p, &format!("{pre}.mlp"))?),
            },
            norm: get("shared_head.norm.weight")?,
        })
    }

    /// `(HF name, parameter)` of the module's own weights under `model.layers.{layer}`, in the
    /// order of [`Mtp::params_mut`].
    pub fn params(&self, layer: usize) -> Vec<(String, &Param)> {
        let pre = format!("model.layers.{layer}");
        let mut v = vec![
            (format!("{pre}.enorm.weight"), &self.enorm),
            (format!("{pre}.hnorm.weight"), &self.hnorm),
            (format!("{pre}.eh_proj.weight"), &self.eh_proj),
        ];
        v.extend(self.block.params(&pre));
        v.push((format!("{pre}.shared_head.norm.weight"), &self.norm));
        v
    }

    /// The module's own weights, in the order of [`Mtp::params`].
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = vec![&mut self.enorm, &mut self.hnorm, &mut self.eh_proj];
        v.extend(self.block.params_mut());
        v.push(&mut self.norm);
        v
    }

    /// MTP logits `[B, S−1, vocab]` (position i predicts `t_{i+2}`) from the main forward's saved
    /// state, the shared `embed` and `head`, the token ids `[B·S]`, positions and the main
    /// forward's attention `mask` (its padding and packed-segment parts are narrowed to the first
    /// S−1 positions).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        main: &ModelSaved,
        (embed, head): (&Tensor, &Tensor),
        ids: &[u32],
        (b, s): (usize, usize),
        positions: &[u32],
        mask: &AttnMask,
        eps: f64,
    ) -> Result<(Tensor, MtpSaved)> {
        if s < 2 {
            return Err(ModelError::Input("MTP needs sequences of at least 2 tokens".into()));
        }
        let d = self.enorm.dim(0);
        let next_ids: Vec<u32> = (0..b).flat_map(|r| ids[r * s + 1..(r + 1) * s].to_vec()).collect();
        let pos: Vec<u32> = (0..b).flat_map(|r| positions[r * s..r * s + s - 1].to_vec()).collect();
        let e = embedding(&next_ids, embed)?.reshape(&[b, s - 1, d])?;
        let h = narrow(&main.x, 1, 0, s - 1)?;
        let (en, re) = rms_norm(&e, &self.enorm, eps)?;
        let (hn, rh) = rms_norm(&h, &self.hnorm, eps)?;
        let c = cat(&[en, hn], 2)?;
        let hp = linear(&c, &self.eh_proj)?;
        fn first<T: Copy>(v: &[T], b: usize, s: usize) -> Vec<T> {
            (0..b).flat_map(|r| v[r * s..r * s + s - 1].to_vec()).collect()
        }
        let (main_segments, main_padding) = (mask.segment_ids.clone(), mask.key_padding.clone());
        let mask = AttnMask {
            causal: mask.causal,
            key_padding: mask.key_padding.as_ref().map(|v| first(v, b, s)),
            segment_ids: mask.segment_ids.as_ref().map(|v| first(v, b, s)),
        };
        // Documents for the block's balance loss: a document's last token predicts across its
        // end (its target is ignored; an unpacked row drops it with the row's last position), so
        // it counts as padding there.
        let mut docs =
            moe_router::balance::TokenDocs::packed(b, s - 1, mask.segment_ids.as_deref(), mask.key_padding.as_deref())
                .ids()
                .to_vec();
        // Likewise the last real token before padding (it would embed a padding token).
        for r in 0..b {
            for i in 0..s - 1 {
                let (j, k) = (r * s + i, r * s + i + 1);
                let ends = main_segments.as_ref().is_some_and(|seg| seg[j] != seg[k])
                    || main_padding.as_ref().is_some_and(|p| !p[k]);
                if ends {
                    docs[r * (s - 1) + i] = moe_router::balance::TokenDocs::PAD;
                }
            }
        }
        let docs = moe_router::balance::TokenDocs::new(docs);
        let (y, block) = self.block.forward(&hp, &pos, &mask, &docs, eps)?;
        let (yn, ry) = rms_norm(&y, &self.norm, eps)?;
        let logits = linear(&yn, head)?;
        let full = main.x.shape().clone();
        Ok((logits, MtpSaved { next_ids, e, re, h, rh, c, block, y, ry, yn, full }))
    }

    /// Backward of [`Mtp::forward`]: gradients into the module's weights and into the shared
    /// `embed` and `head` (added to what the main loss put there); returns the gradient on the
    /// main model's last block output `[B, S, hidden]` (`d_trunk` of
    /// [`crate::DeepseekV3::backward_parts`]).
    pub fn backward(
        &mut self,
        sv: &MtpSaved,
        dlogits: &Tensor,
        (embed, head): (&mut Param, &mut Param),
    ) -> Result<Tensor> {
        let d = self.enorm.dim(0);
        let (dyn_, d_head) = linear_backward(&sv.yn, head, dlogits)?;
        head.accumulate_grad(&d_head)?;
        let (dy, d_norm) = rms_norm_backward(&sv.y, &self.norm, &sv.ry, &dyn_)?;
        self.norm.accumulate_grad(&d_norm)?;
        let dhp = self.block.backward(&sv.block, &dy)?;
        let (dc, d_eh) = linear_backward(&sv.c, &self.eh_proj, &dhp)?;
        self.eh_proj.accumulate_grad(&d_eh)?;
        let parts = split_last(&dc, &[d, d])?;
        let (de, d_en) = rms_norm_backward(&sv.e, &self.enorm, &sv.re, &parts[0])?;
        self.enorm.accumulate_grad(&d_en)?;
        let (dh, d_hn) = rms_norm_backward(&sv.h, &self.hnorm, &sv.rh, &parts[1])?;
        self.hnorm.accumulate_grad(&d_hn)?;
        let n = sv.next_ids.len();
        let d_emb = embedding_backward(&sv.next_ids, embed.dim(0), &de.reshape(&[n, d])?)?;
        embed.accumulate_grad(&d_emb)?;
        Ok(narrow_backward(&dh, &sv.full, 1, 0)?)
    }
}

/// MTP targets for ids `[B·S]`: position i (of S−1) predicts `t_{i+2}`; the last is ignored.
pub fn mtp_targets(ids: &[u32], b: usize, s: usize, ignore_index: i64) -> Vec<i64> {
    (0..b)
        .flat_map(|r| (0..s - 1).map(move |i| if i + 2 < s { ids[r * s + i + 2] as i64 } else { ignore_index }))
        .collect()
}

/// MTP targets from next-token targets `[B·S]` (`t[i]` = the token after i, or `ignore_index`
/// across a document boundary, on masked or padded tokens): position i (of S−1) predicts
/// `t[i+1]` when `t[i]` is kept, so a prediction never crosses a packed document's end.
pub fn mtp_targets_packed(targets: &[i64], b: usize, s: usize, ignore_index: i64) -> Vec<i64> {
    (0..b)
        .flat_map(|r| {
            let t = &targets[r * s..(r + 1) * s];
            (0..s - 1).map(move |i| if t[i] == ignore_index { ignore_index } else { t[i + 1] })
        })
        .collect()
}

/// The weighted MTP loss `λ · CE(mtp_logits, t_{i+2})` and its gradient with respect to the MTP
/// logits `[B, S−1, vocab]`.
pub fn mtp_loss(logits: &Tensor, ids: &[u32], (b, s): (usize, usize), lambda: f64) -> Result<(f64, Tensor)> {
    mtp_loss_with_targets(logits, &mtp_targets(ids, b, s, IGNORE_INDEX), lambda)
}

/// `λ · CE(mtp_logits, targets)` (targets `[B·(S−1)]`, −100 ignored) and its gradient.
pub fn mtp_loss_with_targets(logits: &Tensor, targets: &[i64], lambda: f64) -> Result<(f64, Tensor)> {
    let (loss, d) = crate::lm_loss(logits, targets, IGNORE_INDEX)?;
    Ok((lambda * loss, tensor::ops::elementwise::scale(&d, lambda)?))
}
