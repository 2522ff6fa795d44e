//! The training step (forward and backward of the whole model, MTP included) and its settings.

use fp8::LinearPrecision;
use model::mtp::{Mtp, mtp_loss_with_targets, mtp_targets_packed};
use model::{DeepseekV3, Ffn, lm_loss};
use moe_router::balance::{max_vio, update_bias};
use optim::{AdamW, AdamWConfig, Grads, Params, Schedule, clip_grad_norm};
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

    fn adamw(&self) -> AdamWConfig {
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
        if let Some(t) = self.ids.iter().find(|&&t| t as usize >= vocab) {
            return bad("ids", format!("token {t} outside the vocabulary (0..{vocab})"));
        }
        if let Some(t) = self.targets.iter().find(|&&t| t != IGNORE && !(0..vocab as i64).contains(&t)) {
            return bad("targets", format!("target {t} outside the vocabulary (0..{vocab}) and not {IGNORE}"));
        }
        Ok(())
    }

    /// The attention mask: causal, within each packed document.
    pub fn mask(&self) -> AttnMask {
        AttnMask { causal: true, key_padding: None, segment_ids: self.segment_ids.clone() }
    }

    /// Number of targets that count.
    pub fn n_targets(&self) -> usize {
        self.targets.iter().filter(|&&t| t != IGNORE).count()
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
}

/// `(layer index, routed tokens per expert)` of every MoE layer for one batch; the MTP module's
/// block is layer `num_hidden_layers` (its checkpoint index).
pub type MoeLoads = Vec<(usize, Vec<usize>)>;

/// A model, its MTP modules and its optimizer.
pub struct LmTrainer {
    pub model: DeepseekV3,
    pub mtp: Vec<Mtp>,
    pub opt: AdamW,
    pub cfg: TrainConfig,
    /// Steps taken.
    pub step: usize,
}

impl LmTrainer {
    /// A trainer at step 0 (MTP uses the first module only: depth 1, as V3).
    pub fn new(model: DeepseekV3, mtp: Vec<Mtp>, cfg: TrainConfig) -> Result<LmTrainer> {
        cfg.validate()?;
        let opt = AdamW::new(cfg.adamw());
        let mut t = LmTrainer { model, mtp, opt, cfg, step: 0 };
        t.apply_precision();
        Ok(t)
    }

    /// Put every linear layer (model and MTP) in the configured precision.
    fn apply_precision(&mut self) {
        let p = if self.cfg.fp8 { LinearPrecision::Fp8 } else { LinearPrecision::F32 };
        self.model.set_linear_precision(p);
        for m in &mut self.mtp {
            m.set_linear_precision(p);
        }
    }

    /// Every parameter (model, then MTP) by HF name.
    pub fn params(&self) -> Result<Params> {
        let mut p = Params::default();
        for (n, t) in self.model.named_parameters() {
            p.insert(n, t)?;
        }
        for (k, m) in self.mtp.iter().enumerate() {
            for (n, t) in m.named(self.model.cfg.num_hidden_layers + k) {
                p.insert(n, t)?;
            }
        }
        Ok(p)
    }

    /// Rebuild the model and MTP from `p`.
    pub fn set_params(&mut self, p: &Params) -> Result<()> {
        let cfg = self.model.cfg.clone();
        self.model = DeepseekV3::load(cfg.clone(), p)?;
        self.mtp =
            (0..self.mtp.len()).map(|k| Mtp::load(&cfg, p, cfg.num_hidden_layers + k)).collect::<model::Result<_>>()?;
        // A reload starts every linear layer in f32.
        self.apply_precision();
        Ok(())
    }

    /// The loss, the gradient of every parameter and each MoE layer's expert loads for `batch`
    /// (no update).
    pub fn loss_and_grads(&self, batch: &LmBatch) -> Result<(StepStats, Grads, MoeLoads)> {
        batch.validate(self.model.cfg.vocab_size)?;
        let (b, s) = (batch.b, batch.s);
        let mask = batch.mask();
        let (logits, saved) = self.model.forward(&batch.ids, b, s, &batch.positions, &mask)?;
        let (loss, dlogits) = lm_loss(&logits, &batch.targets, IGNORE)?;
        let mut grads = Grads::default();
        let mut mtp_loss = 0.0;
        let (mut mtp_balance, mut mtp_load) = (0.0, None);
        let d_hidden = match self.mtp.first() {
            Some(m) if self.cfg.mtp_lambda > 0.0 && s >= 2 => {
                let eps = self.model.cfg.rms_norm_eps;
                let (ml, msv) = m.forward(&saved, &batch.ids, (b, s), &batch.positions, &mask, eps)?;
                mtp_balance = msv.balance_loss();
                mtp_load = msv.moe_load().map(<[usize]>::to_vec);
                let t = mtp_targets_packed(&batch.targets, b, s, IGNORE);
                if t.iter().any(|&x| x != IGNORE) {
                    let (l, dml) = mtp_loss_with_targets(&ml, &t, self.cfg.mtp_lambda)?;
                    mtp_loss = l;
                    Some(m.backward(&msv, &dml, &mut grads, self.model.cfg.num_hidden_layers)?)
                } else {
                    None
                }
            }
            _ => None,
        };
        self.model.backward_with_hidden(&saved, &dlogits, d_hidden.as_ref(), &mut grads)?;
        let vios: Vec<f64> = saved.moe_loads.iter().map(|(_, l)| max_vio(l)).collect();
        let stats = StepStats {
            step: self.step + 1,
            loss,
            mtp_loss,
            balance_loss: saved.balance_loss + mtp_balance,
            grad_norm: 0.0,
            lr: self.cfg.schedule().lr(self.step),
            max_vio: if vios.is_empty() { 0.0 } else { vios.iter().sum::<f64>() / vios.len() as f64 },
            tokens: batch.n_targets(),
        };
        let mut loads = saved.moe_loads;
        if let Some(l) = mtp_load {
            loads.push((self.model.cfg.num_hidden_layers, l));
        }
        Ok((stats, grads, loads))
    }

    /// One optimisation step on `batch`.
    pub fn step(&mut self, batch: &LmBatch) -> Result<StepStats> {
        let (mut stats, mut grads, loads) = self.loss_and_grads(batch)?;
        stats.grad_norm = if self.cfg.max_grad_norm > 0.0 {
            clip_grad_norm(&mut grads, self.cfg.max_grad_norm)?
        } else {
            grads.global_norm()?
        };
        let mut p = self.params()?;
        self.opt.step(&mut p, &grads, stats.lr)?;
        self.set_params(&p)?;
        if self.cfg.bias_update_speed > 0.0 {
            let main = self.model.layers.len();
            for (layer, load) in &loads {
                let ffn = match layer.checked_sub(main) {
                    None => &mut self.model.layers[*layer].mlp,
                    Some(k) => &mut self.mtp[k].block.mlp,
                };
                if let Ffn::Moe(moe) = ffn {
                    update_bias(moe, load, self.cfg.bias_update_speed)?;
                }
            }
        }
        self.step += 1;
        Ok(stats)
    }

    /// Summed next-token cross-entropy and the number of targets over `batch` (no MTP).
    pub fn eval_loss(&self, batch: &LmBatch) -> Result<(f64, usize)> {
        batch.validate(self.model.cfg.vocab_size)?;
        let (logits, _) = self.model.forward(&batch.ids, batch.b, batch.s, &batch.positions, &batch.mask())?;
        let (mean, _) = lm_loss(&logits, &batch.targets, IGNORE)?;
        let n = batch.n_targets();
        Ok((mean * n as f64, n))
    }
}
