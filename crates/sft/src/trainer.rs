//! The training step (forward and backward of the whole model, MTP included) and its settings.

use fp8::LinearPrecision;
use model::lm::{AuxOptions, CausalLm, ExpertLoads, TokenBatch};
use model::{DeepseekV3, lm_loss};
use moe_router::balance::max_vio;
use optim::{AdamW, AdamWConfig, Schedule, clip_grad_norm, grad_norm};
use serde::{Deserialize, Serialize};
use tensor::ops::attention::AttnMask;

use crate::{Result, SftError};

/// Target id that contributes no loss (PyTorch's `ignore_index`, −100; `data` packs with the same).
pub const IGNORE: i64 = tensor::ops::loss::IGNORE_INDEX;

/// Optimisation settings (serde, so a run's config file can carry them).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warmup steps, then cosine decay to `lr · min_lr_ratio` at `total_steps`.
    pub warmup_steps: usize,
    pub total_steps: usize,
    pub min_lr_ratio: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 = off).
    pub max_grad_norm: f64,
    /// λ of the MTP loss (V3: 0.3 early, 0.1 later).
    pub mtp_lambda: f64,
    /// γ of the aux-loss-free bias update (V3: 0.001; 0 = off).
    pub bias_update_speed: f64,
    /// FP8 training (V3 §3.3): every MLA projection and expert GEMM — forward, activation
    /// gradient, weight gradient — on E4M3 operands with 1×128 / 128×128 scales; master weights,
    /// optimizer state, embedding, head, gate, norms and attention core stay f32.
    pub fp8: bool,
    /// What a non-finite loss or gradient norm does: skip the update (counted), or stop the run
    /// with an error naming the step.
    pub on_nonfinite: OnNonFinite,
}

/// The non-finite guard's action (checked before every optimizer step).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnNonFinite {
    /// Drop the step's gradients, leave the parameters, optimizer and biases as they were, count
    /// the step in [`StepStats::skipped`] (mixed-precision loss scalers do the same).
    #[default]
    Skip,
    /// Stop with [`SftError::NonFinite`].
    Stop,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            lr: 2e-3,
            warmup_steps: 50,
            total_steps: 1000,
            min_lr_ratio: 0.1,
            beta1: 0.9,
            beta2: 0.98,
            weight_decay: 0.01,
            max_grad_norm: 1.0,
            mtp_lambda: 0.3,
            bias_update_speed: 0.001,
            fp8: false,
            on_nonfinite: OnNonFinite::Skip,
        }
    }
}

impl TrainConfig {
    /// Reject settings that cannot train, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, detail: String| Err(SftError::Config { field, detail });
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", format!("{} must be > 0", self.lr));
        }
        if self.total_steps == 0 {
            return bad("total_steps", "must be > 0".into());
        }
        for (f, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return bad(f, format!("{v} must be in [0, 1)"));
            }
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return bad("min_lr_ratio", format!("{} must be in [0, 1]", self.min_lr_ratio));
        }
        for (f, v) in [
            ("weight_decay", self.weight_decay),
            ("max_grad_norm", self.max_grad_norm),
            ("mtp_lambda", self.mtp_lambda),
            ("bias_update_speed", self.bias_update_speed),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return bad(f, format!("{v} must be finite and ≥ 0"));
            }
        }
        Ok(())
    }

    /// The learning-rate schedule.
    pub fn schedule(&self) -> Schedule {
        Schedule::WarmupCosine {
            peak: self.lr,
            warmup: self.warmup_steps,
            total: self.total_steps,
            min_ratio: self.min_lr_ratio,
        }
    }

    pub(crate) fn adamw(&self) -> AdamWConfig {
        AdamWConfig { beta1: self.beta1, beta2: self.beta2, weight_decay: self.weight_decay, ..Default::default() }
    }
}

/// `b` packed rows of `s` tokens (row-major `[B·S]` vectors).
#[derive(Clone, Debug, PartialEq)]
pub struct LmBatch {
    pub ids: Vec<u32>,
    /// The next token of the same document, or [`IGNORE`] (document end, prompt, padding).
    pub targets: Vec<i64>,
    /// Position within the document (restarts at 0 for each packed document).
    pub positions: Vec<u32>,
    /// Packed-document ids (attention stays inside a document); `None` = one document per row.
    pub segment_ids: Option<Vec<u32>>,
    /// `false` marks padding: attended by nothing, counted in neither the balance loss nor the
    /// expert loads; `None` = no padding.
    pub key_padding: Option<Vec<bool>>,
    pub b: usize,
    pub s: usize,
}

impl LmBatch {
    /// Check the lengths and the vocabulary range.
    pub fn validate(&self, vocab: usize) -> Result<()> {
        let n = self.b * self.s;
        let bad = |field, detail: String| Err(SftError::Batch { field, detail });
        if n == 0 {
            return bad("b, s", format!("empty batch {} × {}", self.b, self.s));
        }
        for (f, len) in [("ids", self.ids.len()), ("targets", self.targets.len()), ("positions", self.positions.len())]
        {
            if len != n {
                return bad(f, format!("{len} entries for batch {} × {}", self.b, self.s));
            }
        }
        if let Some(seg) = &self.segment_ids
            && seg.len() != n
        {
            return bad("segment_ids", format!("{} entries for batch {} × {}", seg.len(), self.b, self.s));
        }
        if let Some(p) = &self.key_padding
            && p.len() != n
        {
            return bad("key_padding", format!("{} entries for batch {} × {}", p.len(), self.b, self.s));
        }
        if let Some(t) = self.ids.iter().find(|&&t| t as usize >= vocab) {
            return bad("ids", format!("token {t} outside the vocabulary (0..{vocab})"));
        }
        if let Some(t) = self.targets.iter().find(|&&t| t != IGNORE && !(0..vocab as i64).contains(&t)) {
            return bad("targets", format!("target {t} outside the vocabulary (0..{vocab}) and not {IGNORE}"));
        }
        Ok(())
    }

    /// The attention mask: causal, within each packed document, padding hidden.
    pub fn mask(&self) -> AttnMask {
        self.tokens().mask()
    }

    /// Number of targets that count.
    pub fn n_targets(&self) -> usize {
        self.targets.iter().filter(|&&t| t != IGNORE).count()
    }

    /// The tokens as the model reads them.
    pub fn tokens(&self) -> TokenBatch {
        TokenBatch {
            ids: self.ids.clone(),
            positions: self.positions.clone(),
            segment_ids: self.segment_ids.clone(),
            key_padding: self.key_padding.clone(),
            b: self.b,
            s: self.s,
        }
    }
}

/// What one step measured.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StepStats {
    /// 1-based number of the step just taken.
    pub step: usize,
    /// Mean next-token cross-entropy.
    pub loss: f64,
    /// λ · the MTP cross-entropy (0 without MTP).
    pub mtp_loss: f64,
    /// Sum over MoE layers of the sequence-wise balance loss.
    pub balance_loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub lr: f64,
    /// Mean MaxVio over MoE layers for this batch (before the bias update).
    pub max_vio: f64,
    /// Targets that counted.
    pub tokens: usize,
    /// Steps skipped so far by the non-finite guard (this one included when it was skipped).
    #[serde(default)]
    pub skipped: usize,
}

/// A causal LM and its optimizer: pretraining and SFT of any [`CausalLm`].
pub struct LmTrainer<M: CausalLm = DeepseekV3> {
    pub model: M,
    pub opt: AdamW,
    pub cfg: TrainConfig,
    /// Steps taken (skipped ones included: the data position follows it).
    pub step: usize,
    /// Steps the non-finite guard skipped.
    pub skipped: usize,
}

impl<M: CausalLm> LmTrainer<M> {
    /// A trainer at step 0; the model's linear layers are put in the configured precision.
    pub fn new(mut model: M, cfg: TrainConfig) -> Result<LmTrainer<M>> {
        cfg.validate()?;
        model.set_precision(if cfg.fp8 { LinearPrecision::Fp8 } else { LinearPrecision::F32 });
        // The optimizer keeps its state by position and saves it under these names: the two
        // lists must be the same parameters in the same order.
        let named: Vec<*const tensor::Param> = model.params().into_iter().map(|(_, p)| p as *const _).collect();
        let stepped: Vec<*const tensor::Param> = model.params_mut().into_iter().map(|p| p as *const _).collect();
        if named != stepped {
            return Err(SftError::Config {
                field: "model",
                detail: "params() and params_mut() list different parameters or orders".into(),
            });
        }
        let names: Vec<String> = model.params().into_iter().map(|(n, _)| n).collect();
        let opt = AdamW::new(cfg.adamw(), &names);
        Ok(LmTrainer { model, opt, cfg, step: 0, skipped: 0 })
    }

    /// The loss of `batch` with every parameter's gradient left in its slot (slots cleared
    /// first), and each MoE layer's expert loads (no update).
    pub fn loss_and_grads(&mut self, batch: &LmBatch) -> Result<(StepStats, ExpertLoads)> {
        batch.validate(self.model.vocab_size())?;
        self.model.zero_grad();
        let tokens = batch.tokens();
        let (logits, mut saved) = self.model.forward(&tokens)?;
        let (loss, dlogits) = lm_loss(&logits, &batch.targets, IGNORE)?;
        drop(logits);
        let aux = self.model.aux_losses(
            &mut saved,
            &tokens,
            &batch.targets,
            &AuxOptions { mtp_lambda: self.cfg.mtp_lambda },
        )?;
        let loads = self.model.expert_loads(&saved);
        self.model.backward(saved, Some(&dlogits), None)?;
        let vios: Vec<f64> = loads.iter().map(|(_, l)| max_vio(l)).collect();
        let stats = StepStats {
            step: self.step + 1,
            loss,
            mtp_loss: aux.mtp_loss,
            balance_loss: aux.balance_loss,
            grad_norm: 0.0,
            lr: self.cfg.schedule().lr(self.step),
            max_vio: if vios.is_empty() { 0.0 } else { vios.iter().sum::<f64>() / vios.len() as f64 },
            tokens: batch.n_targets(),
            skipped: self.skipped,
        };
        Ok((stats, loads))
    }

    /// One optimisation step on `batch`: forward, backward, clip, the non-finite guard, AdamW
    /// (parameters updated in place), the aux-loss-free bias update.
    pub fn step(&mut self, batch: &LmBatch) -> Result<StepStats> {
        let (mut stats, loads) = self.loss_and_grads(batch)?;
        let mut params = self.model.params_mut();
        stats.grad_norm = if self.cfg.max_grad_norm > 0.0 {
            clip_grad_norm(&mut params, self.cfg.max_grad_norm)?
        } else {
            grad_norm(&params)?
        };
        let bad = [("loss", stats.loss), ("mtp_loss", stats.mtp_loss), ("grad_norm", stats.grad_norm)]
            .into_iter()
            .find(|(_, v)| !v.is_finite());
        if let Some((what, value)) = bad {
            params.iter_mut().for_each(|p| p.zero_grad());
            if self.cfg.on_nonfinite == OnNonFinite::Stop {
                return Err(SftError::NonFinite { step: self.step + 1, what, value });
            }
            self.skipped += 1;
            self.step += 1;
            stats.skipped = self.skipped;
            return Ok(stats);
        }
        self.opt.step(&mut params, stats.lr)?;
        params.iter_mut().for_each(|p| p.zero_grad());
        drop(params);
        if self.cfg.bias_update_speed > 0.0 {
            self.model.update_expert_bias(&loads, self.cfg.bias_update_speed)?;
        }
        self.step += 1;
        Ok(stats)
    }

    /// Summed next-token cross-entropy and the number of targets over `batch` (no MTP).
    pub fn eval_loss(&self, batch: &LmBatch) -> Result<(f64, usize)> {
        batch.validate(self.model.vocab_size())?;
        let (logits, _) = self.model.forward(&batch.tokens())?;
        let (mean, _) = lm_loss(&logits, &batch.targets, IGNORE)?;
        let n = batch.n_targets();
        Ok((mean * n as f64, n))
    }
}
