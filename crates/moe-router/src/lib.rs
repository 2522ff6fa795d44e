//! # moe-router — DeepSeekMoE (DeepSeek-V3 §2.1.2)
//!
//! ```text
//! s   = sigmoid(x·W_gateᵀ)                    (router logits in fp32; softmax for V2 checkpoints)
//! c   = s + e_score_correction_bias            (the bias only chooses experts)
//! keep the topk_group groups with the largest sum of their top-2 c; others → −inf
//! idx = top-k(c);  w = s[idx];  w /= Σw + 1e-20 (norm_topk_prob);  w *= routed_scaling_factor
//! y   = Σ_k w_k · expert_idx_k(x) + shared_experts(x),   expert(x) = down(silu(gate·x) ⊙ up·x)
//! ```
//! Tokens are dispatched by grouping them per expert (permute → one GEMM per expert →
//! unpermute with the combine weights); no token is dropped. [`Moe::backward`] gives gradients
//! for the input, every expert and the gate weight (through the selected scores; none into the
//! bias or through the choice). [`balance`] holds the auxiliary-loss-free bias update and the
//! sequence-wise balance loss. [`Expert::precision`] runs an expert's three projections in FP8
//! (DeepSeek-V3 §3.3, [`fp8::linear_with`]); the gate stays in f32.

pub mod balance;
mod gate;

pub use gate::{GateSaved, Routing, ScoringFunc, TopkMethod};

pub use fp8::LinearPrecision;
use fp8::{LinearSaved, linear_with, linear_with_backward};
use optim::Params;
use rayon::prelude::*;
use tensor::ops::activation::{swiglu, swiglu_backward};
use tensor::ops::elementwise::{add, mul};
use tensor::ops::index::{combine_rows, combine_rows_backward, index_add, index_select};
use tensor::ops::matmul::{matmul, pad_groups, stack, unpad_groups, unstack};
use tensor::ops::reduce::sum_dim;
use tensor::{DType, Device, Param, Tensor};

/// Errors of the MoE layer.
#[derive(Debug, thiserror::Error)]
pub enum MoeError {
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
pub type Result<T> = std::result::Result<T, MoeError>;

/// The MoE part of a DeepSeek-V3 `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    pub hidden_size: usize,
    pub moe_intermediate_size: usize,
    pub n_routed_experts: usize,
    pub n_shared_experts: usize,
    pub num_experts_per_tok: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f64,
    pub scoring_func: ScoringFunc,
    pub topk_method: TopkMethod,
    /// α of the sequence-wise balance loss (0 disables it).
    pub seq_aux_alpha: f64,
}

impl MoeConfig {
    /// Check the routing dimensions.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, detail: String| Err(MoeError::Config { field, detail });
        if self.n_routed_experts == 0 || self.num_experts_per_tok == 0 {
            return bad("n_routed_experts", "routed experts and num_experts_per_tok must be > 0".into());
        }
        if self.n_group == 0 || !self.n_routed_experts.is_multiple_of(self.n_group) {
            return bad(
                "n_group",
                format!("{} does not divide n_routed_experts {}", self.n_group, self.n_routed_experts),
            );
        }
        if self.topk_group == 0 || self.topk_group > self.n_group {
            return bad("topk_group", format!("{} not in 1..={}", self.topk_group, self.n_group));
        }
        let kept = self.topk_group * self.n_routed_experts / self.n_group;
        if self.num_experts_per_tok > kept {
            return bad(
                "num_experts_per_tok",
                format!("{} exceeds the {kept} experts in the kept groups", self.num_experts_per_tok),
            );
        }
        if self.topk_method == TopkMethod::NoauxTc && self.n_routed_experts / self.n_group < 2 {
            return bad("n_group", "noaux_tc scores groups by their top-2: groups need ≥ 2 experts".into());
        }
        Ok(())
    }
}

/// One SwiGLU MLP (HF `gate_proj`, `up_proj`, `down_proj`, `[out, in]`): a routed expert, the
/// shared experts, and the dense MLP of the first `first_k_dense_replace` layers.
#[derive(Clone, Debug)]
pub struct Expert {
    pub gate_proj: Param,
    pub up_proj: Param,
    pub down_proj: Param,
    /// Arithmetic of the three projections (DeepSeek-V3 §3.3); [`LinearPrecision::F32`] after
    /// `init` / `load`.
    pub precision: LinearPrecision,
}

/// What the routed experts kept: per expert (CPU, FP8 precision), or the grouped activations of
/// all experts at once (CUDA with f32/bf16 projections: one batched GEMM per projection).
enum RoutedSaved {
    PerExpert(Box<PerExpertSaved>),
    Grouped(Box<GroupedSaved>),
}

/// Each expert's activations and output rows (`[0, hidden]` for an expert without tokens), and
/// where each `t·k + j` routing slot's row lies: `(expert, row)`.
struct PerExpertSaved {
    experts: Vec<Option<ExpertSaved>>,
    ys: Vec<Tensor>,
    loc: Vec<(u32, u32)>,
}

/// Padded `[experts, m_max, ·]` activations and the stacked weights `[experts, out, in]`, and
/// the unpadded outputs `y_perm` with their routing weights `w_perm` (rows in dispatch order).
struct GroupedSaved {
    x: Tensor,
    g: Tensor,
    u: Tensor,
    h: Tensor,
    w: [Tensor; 3],
    m_max: usize,
    y_perm: Tensor,
    w_perm: Tensor,
}

/// What [`Expert::forward`] keeps for [`Expert::backward`].
pub struct ExpertSaved {
    x: Tensor,
    g: Tensor,
    u: Tensor,
    h: Tensor,
    /// What the gate, up and down projections kept.
    lin: [LinearSaved; 3],
}

impl Expert {
    /// Random N(0, std²) weights for hidden `d` and intermediate `inter`.
    pub fn init(d: usize, inter: usize, std: f64, seed: u64, dt: DType, dev: &Device) -> Result<Expert> {
        Ok(Expert {
            gate_proj: Tensor::randn(&[inter, d], std, seed, dt, dev)?.into(),
            up_proj: Tensor::randn(&[inter, d], std, seed + 1, dt, dev)?.into(),
            down_proj: Tensor::randn(&[d, inter], std, seed + 2, dt, dev)?.into(),
            precision: LinearPrecision::F32,
        })
    }

    /// Load `{prefix}.{gate,up,down}_proj.weight`.
    pub fn load(p: &Params, prefix: &str) -> Result<Expert> {
        let get = |n: &str| {
            let name = format!("{prefix}.{n}.weight");
            p.get(&name).cloned().map(Param::new).ok_or(MoeError::MissingWeight(name))
        };
        Ok(Expert {
            gate_proj: get("gate_proj")?,
            up_proj: get("up_proj")?,
            down_proj: get("down_proj")?,
            precision: LinearPrecision::F32,
        })
    }

    /// `down(silu(gate·x) ⊙ up·x)` for `x [tokens, hidden]`.
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, ExpertSaved)> {
        let p = self.precision;
        let (g, lg) = linear_with(p, x, &self.gate_proj)?;
        let (u, lu) = linear_with(p, x, &self.up_proj)?;
        let h = swiglu(&g, &u)?;
        let (y, ld) = linear_with(p, &h, &self.down_proj)?;
        Ok((y, ExpertSaved { x: x.clone(), g, u, h, lin: [lg, lu, ld] }))
    }

    /// Backward of [`Expert::forward`]: weight gradients into the three [`Param`]s, returns `dx`.
    pub fn backward(&mut self, s: &ExpertSaved, dy: &Tensor) -> Result<Tensor> {
        let [lg, lu, ld] = &s.lin;
        let (dh, d_down) = linear_with_backward(&s.h, &self.down_proj, ld, dy)?;
        let (dg, du) = swiglu_backward(&s.g, &s.u, &dh)?;
        let (dx1, d_gate) = linear_with_backward(&s.x, &self.gate_proj, lg, &dg)?;
        let (dx2, d_up) = linear_with_backward(&s.x, &self.up_proj, lu, &du)?;
        self.gate_proj.accumulate_grad(&d_gate)?;
        self.up_proj.accumulate_grad(&d_up)?;
        self.down_proj.accumulate_grad(&d_down)?;
        Ok(add(&dx1, &dx2)?)
    }

    /// `(HF name suffix, parameter)` of the three projections, in the order of
    /// [`Expert::params_mut`].
    pub fn params(&self) -> [(&'static str, &Param); 3] {
        [
            ("gate_proj.weight", &self.gate_proj),
            ("up_proj.weight", &self.up_proj),
            ("down_proj.weight", &self.down_proj),
        ]
    }

    /// The three projections, in the order of [`Expert::params`].
    pub fn params_mut(&mut self) -> [&mut Param; 3] {
        [&mut self.gate_proj, &mut self.up_proj, &mut self.down_proj]
    }
}

/// The DeepSeekMoE layer: gate, routed experts, shared experts.
#[derive(Clone, Debug)]
pub struct Moe {
    pub cfg: MoeConfig,
    /// `[n_routed_experts, hidden]`.
    pub gate_weight: Param,
    /// `[n_routed_experts]`, f32; changed only by [`balance::update_bias`].
    pub e_score_correction_bias: Tensor,
    pub experts: Vec<Expert>,
    /// One MLP of width `n_shared_experts · moe_intermediate_size`, unweighted.
    pub shared_experts: Option<Expert>,
}

/// What [`Moe::forward`] keeps for [`Moe::backward`].
pub struct MoeSaved {
    pub routing: Routing,
    gate: gate::GateSaved,
    /// Routed rows grouped by expert: token index of each row, and its `t·k + slot`.
    perm_tokens: Vec<u32>,
    perm_slots: Vec<u32>,
    offsets: Vec<usize>,
    /// The routing weights `[T, k]` in the activations' dtype.
    weights: Tensor,
    experts: RoutedSaved,
    shared: Option<ExpertSaved>,
    tokens: usize,
}

impl Moe {
    /// Random weights (N(0, std²)); zero bias.
    pub fn init(cfg: MoeConfig, std: f64, seed: u64, dt: DType, dev: &Device) -> Result<Moe> {
        cfg.validate()?;
        let (d, e) = (cfg.hidden_size, cfg.n_routed_experts);
        let experts = (0..e)
            .map(|i| Expert::init(d, cfg.moe_intermediate_size, std, seed * 1000 + 10 * i as u64 + 10, dt, dev))
            .collect::<Result<_>>()?;
        let shared_experts = (cfg.n_shared_experts > 0)
            .then(|| Expert::init(d, cfg.n_shared_experts * cfg.moe_intermediate_size, std, seed * 1000 + 1, dt, dev))
            .transpose()?;
        Ok(Moe {
            gate_weight: Tensor::randn(&[e, d], std, seed * 1000 + 2, dt, dev)?.into(),
            e_score_correction_bias: Tensor::zeros(&[e], DType::F32, dev)?,
            experts,
            shared_experts,
            cfg,
        })
    }

    /// Load `{prefix}.gate.weight`, `{prefix}.gate.e_score_correction_bias` (optional for
    /// softmax gates), `{prefix}.experts.E.*`, `{prefix}.shared_experts.*`.
    pub fn load(cfg: MoeConfig, p: &Params, prefix: &str) -> Result<Moe> {
        cfg.validate()?;
        let name = format!("{prefix}.gate.weight");
        let gate_weight = Param::new(p.get(&name).cloned().ok_or(MoeError::MissingWeight(name))?);
        let bname = format!("{prefix}.gate.e_score_correction_bias");
        let e_score_correction_bias = match p.get(&bname) {
            Some(b) => b.to_dtype(DType::F32)?,
            None if cfg.topk_method != TopkMethod::NoauxTc => {
                Tensor::zeros(&[cfg.n_routed_experts], DType::F32, gate_weight.device())?
            }
            None => return Err(MoeError::MissingWeight(bname)),
        };
        let experts = (0..cfg.n_routed_experts)
            .map(|e| Expert::load(p, &format!("{prefix}.experts.{e}")))
            .collect::<Result<_>>()?;
        let shared_experts =
            (cfg.n_shared_experts > 0).then(|| Expert::load(p, &format!("{prefix}.shared_experts"))).transpose()?;
        Ok(Moe { cfg, gate_weight, e_score_correction_bias, experts, shared_experts })
    }

    /// `(HF name suffix, parameter)` for every trainable weight, in the order of
    /// [`Moe::params_mut`] (the bias is not trained by gradients and is listed by
    /// [`Moe::buffers`]).
    pub fn params(&self) -> Vec<(String, &Param)> {
        let mut v = vec![("gate.weight".to_string(), &self.gate_weight)];
        for (e, ex) in self.experts.iter().enumerate() {
            v.extend(ex.params().map(|(n, t)| (format!("experts.{e}.{n}"), t)));
        }
        if let Some(s) = &self.shared_experts {
            v.extend(s.params().map(|(n, t)| (format!("shared_experts.{n}"), t)));
        }
        v
    }

    /// Every trainable weight, in the order of [`Moe::params`].
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = vec![&mut self.gate_weight];
        for ex in self.experts.iter_mut().chain(self.shared_experts.as_mut()) {
            v.extend(ex.params_mut());
        }
        v
    }

    /// Set the precision of every expert's projections, routed and shared (DeepSeek-V3 §3.3);
    /// the gate stays in f32.
    pub fn set_linear_precision(&mut self, p: LinearPrecision) {
        for e in self.experts.iter_mut().chain(self.shared_experts.as_mut()) {
            e.precision = p;
        }
    }

    /// Non-gradient state: `("gate.e_score_correction_bias", bias)`.
    pub fn buffers(&self) -> Vec<(String, &Tensor)> {
        vec![("gate.e_score_correction_bias".to_string(), &self.e_score_correction_bias)]
    }

    /// Whether the routed experts run as grouped GEMMs: on a GPU, with every expert's projections
    /// in plain (f32 / bf16) arithmetic.
    fn grouped(&self, x: &Tensor) -> bool {
        !x.device().is_cpu() && self.experts.iter().all(|e| e.precision == LinearPrecision::F32)
    }

    /// The routed experts' gate, up and down projection weights, in expert order.
    fn routed_weights(&self) -> [Vec<Tensor>; 3] {
        let pick = |f: fn(&Expert) -> &Param| self.experts.iter().map(|e| f(e).value.clone()).collect();
        [pick(|e| &e.gate_proj), pick(|e| &e.up_proj), pick(|e| &e.down_proj)]
    }

    /// `x [T, hidden]` (tokens of consecutive `seq_len`-long sequences, for the balance loss)
    /// → `[T, hidden]`.
    pub fn forward(&self, x: &Tensor, seq_len: usize) -> Result<(Tensor, MoeSaved)> {
        self.forward_docs(x, &balance::TokenDocs::rows(x.dim(0), seq_len))
    }

    /// [`Moe::forward`] for tokens of the documents `docs` (packed documents and padding: the
    /// balance loss is computed per document, padding counts in neither it nor the loads).
    pub fn forward_docs(&self, x: &Tensor, docs: &balance::TokenDocs) -> Result<(Tensor, MoeSaved)> {
        let t = x.dim(0);
        let k = self.cfg.num_experts_per_tok;
        let (routing, gsaved) = self.route(x, docs)?;
        // Dispatch: rows grouped by expert, in token order within an expert.
        let mut buckets: Vec<Vec<(u32, u32)>> = vec![Vec::new(); self.cfg.n_routed_experts];
        for (slot, &e) in routing.topk_idx.iter().enumerate() {
            buckets[e as usize].push(((slot / k) as u32, slot as u32));
        }
        let mut offsets = Vec::with_capacity(buckets.len() + 1);
        let (mut perm_tokens, mut perm_slots) = (Vec::with_capacity(t * k), Vec::with_capacity(t * k));
        for b in &buckets {
            offsets.push(perm_tokens.len());
            perm_tokens.extend(b.iter().map(|p| p.0));
            perm_slots.extend(b.iter().map(|p| p.1));
        }
        offsets.push(perm_tokens.len());
        let weights = routing.weights.to_dtype(x.dtype())?;
        let (mut y, esaved) = if self.grouped(x) {
            // All experts at once: rows padded per expert to the largest load, one batched GEMM
            // per projection, padded rows staying zero through SwiGLU.
            let x_perm = index_select(x, &perm_tokens)?;
            let m_max = offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0).max(1);
            let [gw, uw, dw] = self.routed_weights();
            let w = [stack(&gw)?, stack(&uw)?, stack(&dw)?];
            let xp = pad_groups(&x_perm, &offsets, m_max)?;
            let g = matmul(&xp, &w[0], false, true)?;
            let u = matmul(&xp, &w[1], false, true)?;
            let h = swiglu(&g, &u)?;
            let y_perm = unpad_groups(&matmul(&h, &w[2], false, true)?, &offsets)?;
            let w_perm = index_select(&weights.reshape(&[t * k, 1])?, &perm_slots)?;
            let y = index_add(t, &perm_tokens, &mul(&y_perm, &w_perm)?)?;
            (y, RoutedSaved::Grouped(Box::new(GroupedSaved { x: xp, g, u, h, w, m_max, y_perm, w_perm })))
        } else {
            // Each expert gathers its own rows; on the CPU the experts run concurrently (each a
            // few hundred rows: too small to keep both cores busy inside one GEMM). The outputs
            // are combined straight from the experts' buffers.
            let run = |e: usize| -> Result<(Tensor, Option<ExpertSaved>)> {
                let rows = &perm_tokens[offsets[e]..offsets[e + 1]];
                if rows.is_empty() {
                    return Ok((Tensor::zeros(&[0, x.dim(1)], x.dtype(), x.device())?, None));
                }
                let (y, s) = self.experts[e].forward(&index_select(x, rows)?)?;
                Ok((y, Some(s)))
            };
            let outs: Vec<(Tensor, Option<ExpertSaved>)> = if x.device().is_cpu() {
                (0..self.experts.len()).into_par_iter().map(run).collect::<Result<_>>()?
            } else {
                (0..self.experts.len()).map(run).collect::<Result<_>>()?
            };
            let (ys, experts): (Vec<Tensor>, Vec<Option<ExpertSaved>>) = outs.into_iter().unzip();
            let mut loc = vec![(0u32, 0u32); t * k];
            for e in 0..self.experts.len() {
                for (r, &slot) in perm_slots[offsets[e]..offsets[e + 1]].iter().enumerate() {
                    loc[slot as usize] = (e as u32, r as u32);
                }
            }
            let y = combine_rows(&ys, &loc, k, Some(&weights))?;
            (y, RoutedSaved::PerExpert(Box::new(PerExpertSaved { experts, ys, loc })))
        };
        let mut shared = None;
        if let Some(se) = &self.shared_experts {
            let (ys, s) = se.forward(x)?;
            y = add(&y, &ys)?;
            shared = Some(s);
        }
        let saved = MoeSaved {
            routing,
            gate: gsaved,
            perm_tokens,
            perm_slots,
            offsets,
            weights,
            experts: esaved,
            shared,
            tokens: t,
        };
        Ok((y, saved))
    }

    /// Backward of [`Moe::forward`]: gradients of every expert and the gate weight into their
    /// [`Param`]s, returns `dx`. The sequence-wise balance loss (α > 0) adds its own gradient
    /// (its value is in `saved.routing.balance_loss`).
    pub fn backward(&mut self, sv: &MoeSaved, dy: &Tensor) -> Result<Tensor> {
        let (t, k) = (sv.tokens, self.cfg.num_experts_per_tok);
        let (mut dx, dw) = match &sv.experts {
            RoutedSaved::Grouped(gs) => {
                let GroupedSaved { x, g, u, h, w, m_max, y_perm, w_perm } = gs.as_ref();
                let d_yw = index_select(dy, &sv.perm_tokens)?;
                // d w for each routed row = <dy_t, y_row>; gathered back to [T, k].
                let dw_perm = sum_dim(&mul(&d_yw, y_perm)?, 1)?.reshape(&[t * k, 1])?;
                let dw = index_add(t * k, &sv.perm_slots, &dw_perm)?.reshape(&[t, k])?;
                let d_y_perm = mul(&d_yw, w_perm)?;
                let dyp = pad_groups(&d_y_perm, &sv.offsets, *m_max)?;
                let dh = matmul(&dyp, &w[2], false, false)?;
                let d_down = matmul(&dyp, h, true, false)?;
                let (dg, du) = swiglu_backward(g, u, &dh)?;
                let dxp = add(&matmul(&dg, &w[0], false, false)?, &matmul(&du, &w[1], false, false)?)?;
                let d_gate = matmul(&dg, x, true, false)?;
                let d_up = matmul(&du, x, true, false)?;
                // Experts without rows get no gradient, as on the per-expert path.
                let keep: Vec<bool> = sv.offsets.windows(2).map(|o| o[1] > o[0]).collect();
                let (d_gate, d_up, d_down) =
                    (unstack(&d_gate, &keep)?, unstack(&d_up, &keep)?, unstack(&d_down, &keep)?);
                for (ex, ((dg, du), dd)) in self.experts.iter_mut().zip(d_gate.iter().zip(&d_up).zip(&d_down)) {
                    if let (Some(dg), Some(du), Some(dd)) = (dg, du, dd) {
                        ex.gate_proj.accumulate_grad(dg)?;
                        ex.up_proj.accumulate_grad(du)?;
                        ex.down_proj.accumulate_grad(dd)?;
                    }
                }
                (index_add(t, &sv.perm_tokens, &unpad_groups(&dxp, &sv.offsets)?)?, dw)
            }
            RoutedSaved::PerExpert(ps) => {
                let PerExpertSaved { experts, ys, loc } = ps.as_ref();
                // Each expert's output gradient (w · dy at its rows) and the weights' (<dy, y>).
                let (d_ys, dw) = combine_rows_backward(ys, loc, k, Some(&sv.weights), dy)?;
                let dw = dw.expect("weights were given");
                // Each expert writes its own parameters' gradients (concurrently on the CPU, as
                // in the forward).
                let run = |(e, ex): (usize, &mut Expert)| -> Result<Tensor> {
                    match &experts[e] {
                        Some(s) => ex.backward(s, &d_ys[e]),
                        None => Ok(d_ys[e].clone()),
                    }
                };
                let dxs: Vec<Tensor> = if dy.device().is_cpu() {
                    self.experts.par_iter_mut().enumerate().map(run).collect::<Result<_>>()?
                } else {
                    self.experts.iter_mut().enumerate().map(run).collect::<Result<_>>()?
                };
                (combine_rows(&dxs, loc, k, None)?, dw)
            }
        };
        if let (Some(se), Some(s)) = (&mut self.shared_experts, &sv.shared) {
            dx = add(&dx, &se.backward(s, dy)?)?;
        }
        let dx_gate = self.route_backward(&sv.routing, &sv.gate, &dw)?;
        Ok(add(&dx, &dx_gate.to_dtype(dx.dtype())?)?)
    }
}
