//! The causal-LM interface every trainer drives (pretraining, SFT, GRPO, distillation, reward
//! models): score token batches (packed segments and padding included), back-propagate from the
//! logits or from the final hidden states into parameter handles, generate over the model's
//! cache, hand the optimizer its parameters, switch precision, save and load. [`DeepseekV3`]
//! implements it; a second architecture implements the same trait and every trainer runs on it.
//!
//! [`token_logprobs`] / [`backward_logprobs`] give per-token log-probabilities at a sampling
//! temperature (what RL compares with the rollout engine's) for any implementation.

use std::path::Path;

use fp8::LinearPrecision;
use moe_router::balance::update_bias;
use tensor::ops::attention::AttnMask;
use tensor::ops::elementwise::scale;
use tensor::ops::index::{gather_last, scatter_last};
use tensor::ops::loss::IGNORE_INDEX;
use tensor::ops::softmax::{log_softmax, log_softmax_backward};
use tensor::{DType, Device, Param, Tensor};

use crate::mtp::{mtp_loss_with_targets, mtp_targets_packed};
use crate::{DeepseekV3, Ffn, Generation, ModelError, ModelSaved, Result, SamplingParams};

/// `b` rows of `s` tokens (row-major `[B·S]` vectors).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBatch {
    pub ids: Vec<u32>,
    /// Position of each token within its document (restarts at 0 for each packed document).
    pub positions: Vec<u32>,
    /// Packed-document ids (attention stays inside a document); `None` = one document per row.
    pub segment_ids: Option<Vec<u32>>,
    /// `false` marks padding (attended by nothing); `None` = no padding.
    pub key_padding: Option<Vec<bool>>,
    pub b: usize,
    pub s: usize,
}

impl TokenBatch {
    /// `b` unpacked, unpadded rows of `s` tokens, positions `0..s`.
    pub fn rows(ids: Vec<u32>, b: usize, s: usize) -> TokenBatch {
        let positions = (0..b * s).map(|i| (i % s.max(1)) as u32).collect();
        TokenBatch { ids, positions, segment_ids: None, key_padding: None, b, s }
    }

    /// Check lengths and the vocabulary range (errors name the field).
    pub fn validate(&self, vocab: usize) -> Result<()> {
        let n = self.b * self.s;
        let bad = |detail: String| Err(ModelError::Input(detail));
        if n == 0 {
            return bad(format!("empty batch {} × {}", self.b, self.s));
        }
        let lens = [
            ("ids", Some(self.ids.len())),
            ("positions", Some(self.positions.len())),
            ("segment_ids", self.segment_ids.as_ref().map(Vec::len)),
            ("key_padding", self.key_padding.as_ref().map(Vec::len)),
        ];
        for (f, len) in lens {
            if let Some(len) = len
                && len != n
            {
                return bad(format!("{f}: {len} entries for batch {} × {}", self.b, self.s));
            }
        }
        if let Some(t) = self.ids.iter().find(|&&t| t as usize >= vocab) {
            return bad(format!("ids: token {t} outside the vocabulary (0..{vocab})"));
        }
        Ok(())
    }

    /// The attention mask: causal, within each packed document, padding hidden.
    pub fn mask(&self) -> AttnMask {
        AttnMask { causal: true, key_padding: self.key_padding.clone(), segment_ids: self.segment_ids.clone() }
    }
}

/// Settings of the architecture's own training losses (beside the trainer's).
#[derive(Clone, Debug, PartialEq)]
pub struct AuxOptions {
    /// λ of the Multi-Token Prediction loss (0 = off).
    pub mtp_lambda: f64,
}

/// What the architecture's own training losses measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuxStats {
    /// λ · the MTP cross-entropy (0 without MTP).
    pub mtp_loss: f64,
    /// Sum over MoE layers (MTP included) of the sequence-wise balance loss.
    pub balance_loss: f64,
}

/// `(layer index, routed tokens per expert)` of every MoE layer for one batch; an MTP module's
/// block is layer `num_hidden_layers + k` (its checkpoint index).
pub type ExpertLoads = Vec<(usize, Vec<usize>)>;

/// A causal language model as trainers see it.
pub trait CausalLm: Send {
    /// What a forward keeps for its backward.
    type Saved: Send;

    fn vocab_size(&self) -> usize;
    fn hidden_size(&self) -> usize;
    /// The longest position the model supports.
    fn max_positions(&self) -> usize;
    /// Where the parameters live.
    fn device(&self) -> Device;

    /// Logits `[B, S, vocab]`.
    fn forward(&self, batch: &TokenBatch) -> Result<(Tensor, Self::Saved)>;
    /// The final-normed hidden states `[B, S, hidden]` (what the output head reads; heads such as
    /// a reward model's scalar head sit on top).
    fn forward_hidden(&self, batch: &TokenBatch) -> Result<(Tensor, Self::Saved)>;
    /// Backward from `d_logits` (after [`CausalLm::forward`]) and/or `d_hidden` (on the final
    /// hidden states): every parameter's gradient is added into its slot.
    fn backward(&mut self, saved: Self::Saved, d_logits: Option<&Tensor>, d_hidden: Option<&Tensor>) -> Result<()>;

    /// The architecture's own training losses for next-token `targets` (`[B·S]`, −100 ignored)
    /// of `batch` after a forward (V3: Multi-Token Prediction; the balance loss is reported
    /// here, its gradient is part of the backward): computed and back-propagated into the
    /// parameters only they touch; what reaches the shared trunk waits in `saved` for
    /// [`CausalLm::backward`]. Default: none.
    fn aux_losses(
        &mut self,
        _saved: &mut Self::Saved,
        _batch: &TokenBatch,
        _targets: &[i64],
        _opts: &AuxOptions,
    ) -> Result<AuxStats> {
        Ok(AuxStats::default())
    }

    /// Routed tokens per expert of every MoE layer in the forward behind `saved` (empty for a
    /// dense model).
    fn expert_loads(&self, _saved: &Self::Saved) -> ExpertLoads {
        Vec::new()
    }

    /// The auxiliary-loss-free bias update (V3 §2.1.2) from one step's loads, speed `gamma`.
    /// Default: nothing to update.
    fn update_expert_bias(&mut self, _loads: &ExpertLoads, _gamma: f64) -> Result<()> {
        Ok(())
    }

    /// Continuations of `prompts` through the model's cache (see [`SamplingParams`]).
    fn generate(&self, prompts: &[Vec<u32>], sp: &SamplingParams) -> Result<Generation>;

    /// Every trainable parameter with its Hugging Face name, in the order of
    /// [`CausalLm::params_mut`] (names are for checkpoint I/O and optimizer settings).
    fn params(&self) -> Vec<(String, &Param)>;
    /// Every trainable parameter, in a fixed order (what the optimizer steps).
    fn params_mut(&mut self) -> Vec<&mut Param>;

    /// The arithmetic of the linear layers (f32/bf16 as stored, or FP8, DeepSeek-V3 §3.3).
    fn set_precision(&mut self, p: LinearPrecision);

    /// Write a Hugging Face checkpoint directory (config.json + safetensors).
    fn save_pretrained(&self, dir: &Path) -> Result<()>;
    /// Load a Hugging Face checkpoint directory in `dtype` onto `device`.
    fn from_pretrained(dir: &Path, dtype: DType, device: &Device) -> Result<Self>
    where
        Self: Sized;

    /// Drop every parameter's gradient.
    fn zero_grad(&mut self) {
        self.params_mut().into_iter().for_each(Param::zero_grad);
    }
}

/// What [`token_logprobs`] keeps for [`backward_logprobs`].
pub struct LogprobSaved<S> {
    saved: S,
    /// `log_softmax(logits / T)` `[B·S, vocab]` (f32).
    logp: Tensor,
    targets: Vec<u32>,
    /// Positions with a target (the others get no gradient).
    scored: Vec<bool>,
    temperature: f64,
    /// Shape and dtype of the logits.
    shape: Vec<usize>,
    dtype: DType,
}

/// Per-token log-probabilities `log softmax(logits / T)[target]` for `targets` (`[B·S]`, the
/// token each position scores; negative = none, reported as 0) at temperature `temperature`
/// (≤ 0 means 1, as generation reports greedy logprobs), in f64, plus what the backward needs.
pub fn token_logprobs<M: CausalLm>(
    model: &M,
    batch: &TokenBatch,
    targets: &[i64],
    temperature: f64,
) -> Result<(Vec<f64>, LogprobSaved<M::Saved>)> {
    if targets.len() != batch.b * batch.s {
        return Err(ModelError::Input(format!("{} targets for batch {} × {}", targets.len(), batch.b, batch.s)));
    }
    let v = model.vocab_size();
    if let Some(t) = targets.iter().find(|&&t| t >= v as i64) {
        return Err(ModelError::Input(format!("target {t} outside the vocabulary (0..{v})")));
    }
    let t = if temperature > 0.0 { temperature } else { 1.0 };
    let (logits, saved) = model.forward(batch)?;
    let (shape, dtype) = (logits.shape().clone(), logits.dtype());
    // The log-softmax in f64 on the CPU (as generation samples); in f32 on a GPU (no f64 kernels).
    let cdt = if dtype == DType::F64 || logits.device().is_cpu() { DType::F64 } else { DType::F32 };
    let flat = logits.reshape(&[batch.b * batch.s, v])?.to_dtype(cdt)?;
    let logp = log_softmax(&scale(&flat, 1.0 / t)?)?;
    let idx: Vec<u32> = targets.iter().map(|&x| x.max(0) as u32).collect();
    let picked = gather_last(&logp, &idx, 1)?.to_vec_f64()?;
    let out = picked.iter().zip(targets).map(|(&lp, &x)| if x < 0 { 0.0 } else { lp }).collect();
    let scored = targets.iter().map(|&x| x >= 0).collect();
    Ok((out, LogprobSaved { saved, logp, targets: idx, scored, temperature: t, shape, dtype }))
}

/// Backward of [`token_logprobs`] from `d_logp` (`[B·S]`, d loss / d logprob; positions without
/// a target get no gradient whatever `d_logp` holds there).
pub fn backward_logprobs<M: CausalLm>(model: &mut M, st: LogprobSaved<M::Saved>, d_logp: &[f64]) -> Result<()> {
    let n = st.targets.len();
    if d_logp.len() != n {
        return Err(ModelError::Input(format!("{} logprob gradients for {n} tokens", d_logp.len())));
    }
    let v = st.logp.dim(1);
    let d: Vec<f64> = d_logp.iter().zip(&st.scored).map(|(&d, &s)| if s { d } else { 0.0 }).collect();
    let d = Tensor::from_vec(d, &[n, 1])?.to_dtype(st.logp.dtype())?.to_device(st.logp.device())?;
    let d_all = scatter_last(&d, &st.targets, v)?;
    let d_scaled = log_softmax_backward(&st.logp, &d_all)?;
    let d_logits = scale(&d_scaled, 1.0 / st.temperature)?.to_dtype(st.dtype)?.reshape(&st.shape)?;
    model.backward(st.saved, Some(&d_logits), None)
}

/// [`DeepseekV3`]'s forward state, plus the gradient its MTP modules send to the trunk.
pub struct V3Saved {
    main: ModelSaved,
    d_trunk: Option<Tensor>,
}

impl V3Saved {
    /// The model's forward state (routing, loads, balance loss). Back-propagate through
    /// [`CausalLm::backward`], which also adds the MTP modules' gradient on the trunk.
    pub fn main(&self) -> &ModelSaved {
        &self.main
    }
}

impl CausalLm for DeepseekV3 {
    type Saved = V3Saved;

    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    fn max_positions(&self) -> usize {
        self.cfg.max_position_embeddings
    }

    fn device(&self) -> Device {
        self.embed_tokens.device().clone()
    }

    fn forward(&self, batch: &TokenBatch) -> Result<(Tensor, V3Saved)> {
        batch.validate(self.cfg.vocab_size)?;
        let (logits, main) = DeepseekV3::forward(self, &batch.ids, batch.b, batch.s, &batch.positions, &batch.mask())?;
        Ok((logits, V3Saved { main, d_trunk: None }))
    }

    fn forward_hidden(&self, batch: &TokenBatch) -> Result<(Tensor, V3Saved)> {
        batch.validate(self.cfg.vocab_size)?;
        let (h, main) = self.forward_hidden(&batch.ids, batch.b, batch.s, &batch.positions, &batch.mask())?;
        Ok((h, V3Saved { main, d_trunk: None }))
    }

    fn backward(&mut self, saved: V3Saved, d_logits: Option<&Tensor>, d_hidden: Option<&Tensor>) -> Result<()> {
        self.backward_parts(&saved.main, d_logits, d_hidden, saved.d_trunk.as_ref())
    }

    fn aux_losses(
        &mut self,
        saved: &mut V3Saved,
        batch: &TokenBatch,
        targets: &[i64],
        opts: &AuxOptions,
    ) -> Result<AuxStats> {
        let mut stats = AuxStats { mtp_loss: 0.0, balance_loss: saved.main.balance_loss };
        let (b, s) = (batch.b, batch.s);
        if opts.mtp_lambda <= 0.0 || s < 2 || self.mtp.is_empty() {
            return Ok(stats);
        }
        if targets.len() != b * s {
            return Err(ModelError::Input(format!("{} targets for batch {b} × {s}", targets.len())));
        }
        // Depth 1, as V3 trains: the first module.
        let eps = self.cfg.rms_norm_eps;
        let layer = self.cfg.num_hidden_layers;
        let mask = batch.mask();
        let (ml, msv) = self.mtp[0].forward(
            &saved.main,
            (&self.embed_tokens, &self.lm_head),
            &batch.ids,
            (b, s),
            &batch.positions,
            &mask,
            eps,
        )?;
        stats.balance_loss += msv.balance_loss();
        if let Some(l) = msv.moe_load() {
            saved.main.moe_loads.push((layer, l.to_vec()));
        }
        let t = mtp_targets_packed(targets, b, s, IGNORE_INDEX);
        if t.iter().any(|&x| x != IGNORE_INDEX) {
            let (l, dml) = mtp_loss_with_targets(&ml, &t, opts.mtp_lambda)?;
            stats.mtp_loss = l;
            let dt = self.mtp[0].backward(&msv, &dml, (&mut self.embed_tokens, &mut self.lm_head))?;
            saved.d_trunk = Some(match saved.d_trunk.take() {
                Some(old) => tensor::ops::elementwise::add(&old, &dt)?,
                None => dt,
            });
        }
        Ok(stats)
    }

    fn expert_loads(&self, saved: &V3Saved) -> ExpertLoads {
        saved.main.moe_loads.clone()
    }

    fn update_expert_bias(&mut self, loads: &ExpertLoads, gamma: f64) -> Result<()> {
        let main = self.layers.len();
        for (layer, load) in loads {
            let ffn = match layer.checked_sub(main) {
                None => self.layers.get_mut(*layer).map(|l| &mut l.mlp),
                Some(k) => self.mtp.get_mut(k).map(|m| &mut m.block.mlp),
            };
            match ffn {
                Some(Ffn::Moe(moe)) => update_bias(moe, load, gamma)?,
                Some(Ffn::Dense(_)) => {}
                None => return Err(ModelError::Input(format!("expert loads for layer {layer}, which does not exist"))),
            }
        }
        Ok(())
    }

    fn generate(&self, prompts: &[Vec<u32>], sp: &SamplingParams) -> Result<Generation> {
        DeepseekV3::generate(self, prompts, sp)
    }

    fn params(&self) -> Vec<(String, &Param)> {
        DeepseekV3::params(self)
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        DeepseekV3::params_mut(self)
    }

    fn set_precision(&mut self, p: LinearPrecision) {
        self.set_linear_precision(p);
    }

    fn save_pretrained(&self, dir: &Path) -> Result<()> {
        DeepseekV3::save_pretrained(self, dir)
    }

    fn from_pretrained(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        DeepseekV3::from_pretrained(dir, dtype, device)
    }
}
