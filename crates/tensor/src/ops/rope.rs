//! Rotary position embedding with **interleaved** pairs (adjacent elements `(x[2i], x[2i+1])`
//! form one complex number, DeepSeek-V3 `rope_interleave`), and the frequency tables, including
//! YaRN (DeepSeek-V3 §4.3; transformers `_compute_yarn_parameters`).

use rayon::prelude::*;

use super::{host, out, sl, with_float};
use crate::error::shape_err;
use crate::{Float, Result, Tensor, TensorError};

/// YaRN context-extension parameters (the `rope_scaling` / `rope_parameters` block).
#[derive(Clone, Debug, PartialEq)]
pub struct Yarn {
    /// Context extension factor `s`.
    pub factor: f64,
    /// The pre-extension context length.
    pub original_max_position_embeddings: usize,
    pub beta_fast: f64,
    pub beta_slow: f64,
    pub mscale: Option<f64>,
    pub mscale_all_dim: Option<f64>,
    /// Overrides the cos/sin scaling when given.
    pub attention_factor: Option<f64>,
    /// Floor/ceil the correction range (transformers `truncate`, default true).
    pub truncate: bool,
}

/// `0.1·m·ln(s) + 1` for `s > 1`, else 1 (YaRN's magnitude correction).
pub fn yarn_get_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 { 1.0 } else { 0.1 * mscale * scale.ln() + 1.0 }
}

impl Yarn {
    /// The factor multiplied into cos and sin.
    pub fn attention_factor(&self) -> f64 {
        if let Some(a) = self.attention_factor {
            return a;
        }
        match (self.mscale, self.mscale_all_dim) {
            (Some(m), Some(a)) if m != 0.0 && a != 0.0 => {
                yarn_get_mscale(self.factor, m) / yarn_get_mscale(self.factor, a)
            }
            _ => yarn_get_mscale(self.factor, 1.0),
        }
    }

    /// The factor multiplied into the softmax scale: `mscale(s, mscale_all_dim)²`.
    pub fn softmax_scale_factor(&self) -> f64 {
        match self.mscale_all_dim {
            Some(a) if a != 0.0 => {
                let m = yarn_get_mscale(self.factor, a);
                m * m
            }
            _ => 1.0,
        }
    }
}

/// Inverse frequencies `θ^(−2i/d)` for `i < d/2`, blended under YaRN:
/// `ramp_i = clamp((i − low)/(high − low), 0, 1)`, `f'_i = f_i/s·ramp_i + f_i·(1 − ramp_i)`.
pub fn inv_freq(dim: usize, theta: f64, yarn: Option<&Yarn>) -> Vec<f64> {
    let half = dim / 2;
    let base: Vec<f64> = (0..half).map(|i| 1.0 / theta.powf((2 * i) as f64 / dim as f64)).collect();
    let Some(y) = yarn else { return base };
    let corr = |rot: f64| {
        dim as f64 * (y.original_max_position_embeddings as f64 / (rot * 2.0 * std::f64::consts::PI)).ln()
            / (2.0 * theta.ln())
    };
    let (mut low, mut high) = (corr(y.beta_fast), corr(y.beta_slow));
    if y.truncate {
        low = low.floor();
        high = high.ceil();
    }
    let low = low.max(0.0);
    let mut high = high.min(dim as f64 - 1.0);
    if low == high {
        high += 0.001;
    }
    base.iter()
        .enumerate()
        .map(|(i, &f)| {
            let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            f / y.factor * ramp + f * (1.0 - ramp)
        })
        .collect()
}

/// cos/sin of `position · inv_freq`, scaled by the YaRN attention factor, for positions
/// `0..max_positions`.
#[derive(Clone, Debug)]
pub struct RopeTable {
    /// Rotary dimension `d` (even).
    pub dim: usize,
    pub max_positions: usize,
    /// `[max_positions, d/2]`.
    pub cos: Vec<f64>,
    /// `[max_positions, d/2]`.
    pub sin: Vec<f64>,
    /// f32 copies of `cos` / `sin` per CUDA device, uploaded on first use (shared by clones; the
    /// table is immutable once built).
    #[cfg(feature = "cuda")]
    pub(crate) device: std::sync::Arc<crate::cuda::DeviceTables>,
}

impl RopeTable {
    /// Tables for rotary dimension `dim`, base `theta`, optional YaRN.
    pub fn new(dim: usize, theta: f64, max_positions: usize, yarn: Option<&Yarn>) -> Result<RopeTable> {
        if dim == 0 || !dim.is_multiple_of(2) {
            return Err(TensorError::Arg {
                op: "RopeTable::new",
                detail: format!("rotary dim must be even and > 0, got {dim}"),
            });
        }
        let f = inv_freq(dim, theta, yarn);
        let a = yarn.map_or(1.0, Yarn::attention_factor);
        let mut cos = Vec::with_capacity(max_positions * dim / 2);
        let mut sin = Vec::with_capacity(max_positions * dim / 2);
        for p in 0..max_positions {
            for &fi in &f {
                let ang = p as f64 * fi;
                cos.push(ang.cos() * a);
                sin.push(ang.sin() * a);
            }
        }
        Ok(RopeTable {
            dim,
            max_positions,
            cos,
            sin,
            #[cfg(feature = "cuda")]
            device: Default::default(),
        })
    }
}

fn apply(x: &Tensor, positions: &[u32], table: &RopeTable, sign: f64, op: &'static str) -> Result<Tensor> {
    // x: [B, S, H, D]; positions: B·S entries.
    if x.rank() != 4 || x.dim(-1) != table.dim {
        return Err(shape_err(op, format!("x must be [B, S, H, {}]", table.dim), &[x.shape()]));
    }
    let (b, s, h, d) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    if positions.len() != b * s {
        return Err(shape_err(op, format!("{} positions for B·S = {}", positions.len(), b * s), &[x.shape()]));
    }
    if let Some(&p) = positions.iter().find(|&&p| p as usize >= table.max_positions) {
        return Err(TensorError::Index { op, index: p as usize, size: table.max_positions });
    }
    #[cfg(feature = "cuda")]
    if let crate::Device::Cuda(be) = x.device() {
        return be.rope(x, positions, table, sign);
    }
    let hx = host(x)?;
    with_float!(x.dtype(), T, {
        let xs = sl::<T>(&hx);
        let mut y = vec![T::zero(); xs.len()];
        let half = d / 2;
        y.par_chunks_mut(h * d).zip(xs.par_chunks(h * d)).zip(positions.par_iter()).for_each(|((yo, xi), &p)| {
            let c = &table.cos[p as usize * half..(p as usize + 1) * half];
            let sn = &table.sin[p as usize * half..(p as usize + 1) * half];
            for (yh, xh) in yo.chunks_mut(d).zip(xi.chunks(d)) {
                for i in 0..half {
                    let (co, si) = (T::c(c[i]), T::c(sign * sn[i]));
                    let (a, bb) = (xh[2 * i], xh[2 * i + 1]);
                    yh[2 * i] = a * co - bb * si;
                    yh[2 * i + 1] = a * si + bb * co;
                }
            }
        });
        out(y, x.shape(), x.dtype(), x.device())
    })
}

/// Rotate `x [B, S, H, D]` (H may be 1, e.g. the shared `k_pe`) at `positions` (B·S entries):
/// `(a, b) → (a·cos − b·sin, a·sin + b·cos)` per interleaved pair.
pub fn rope(x: &Tensor, positions: &[u32], table: &RopeTable) -> Result<Tensor> {
    apply(x, positions, table, 1.0, "rope")
}

/// Backward of [`rope`]: the transpose of a rotation is the rotation by −angle
/// (with the YaRN attention factor kept, since cos and sin both carry it).
pub fn rope_backward(dy: &Tensor, positions: &[u32], table: &RopeTable) -> Result<Tensor> {
    apply(dy, positions, table, -1.0, "rope_backward")
}
