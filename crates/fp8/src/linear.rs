//! Tensor-level FP8 pieces (DeepSeek-V3 §3.3): checkpoint weight dequantisation, an FP8
//! linear layer `y = x · wᵀ` with a straight-through backward, and the FP8 training linear.
//!
//! FP8 training (§3.3, Figure 6): the three GEMMs of a linear layer run on E4M3 operands with
//! fine-grained scales and fp32 promotion every 128 products ([`gemm_promoted`]); the master
//! weight, its gradient and the layer's input/output stay f32.
//!
//! ```text
//! Fprop  y  [M,N] = x  [M,K] · wᵀ      x: 1×128 tiles (per token)   w: 128×128 blocks
//! Dgrad  dx [M,K] = dy [M,N] · w       dy: 1×128 tiles (per token)  w: the same blocks, transposed
//! Wgrad  dw [N,K] = dyᵀ [N,M] · x      dy and x: 128×1 tiles (per channel, 128 tokens) —
//!                                      x is the FP8 activation saved by Fprop, dequantised and
//!                                      re-tiled (§3.5.2, "transposed GEMM operations")
//! ```
//! [`LinearPrecision`] switches a model's linear layers between the f32 engine and this path
//! through [`linear_with`] / [`linear_with_backward`].

use crate::gemm::{Accumulation, gemm, gemm_promoted};
use crate::quant::{BlockQuant, ScaleFormat, quantize_act, quantize_weight};
use crate::{BLOCK, Fp8Error, Result};
use float8::F8E4M3;
use tensor::ops::matmul::{linear, linear_backward};
use tensor::{DType, Device, Tensor};

/// Dequantise a released-checkpoint weight: `fp8` holds the E4M3 bytes of `name`, row-major
/// `shape = [out, in]`; `scale_inv` (`<name>_scale_inv`, f32 or bf16) is
/// `[ceil(out/128), ceil(in/128)]`. Returns the f32 CPU tensor `fp8 · scale_inv`.
pub fn dequantize_weight(name: &str, fp8: &[u8], shape: [usize; 2], scale_inv: &Tensor) -> Result<Tensor> {
    let [out, inp] = shape;
    let n = crate::quant::checked_numel(name, out, inp)?;
    if fp8.len() != n {
        return Err(Fp8Error::Len { field: name.into(), shape: shape.to_vec(), expected: n, got: fp8.len() });
    }
    let want = vec![out.div_ceil(BLOCK), inp.div_ceil(BLOCK)];
    if scale_inv.shape() != &want {
        return Err(Fp8Error::Shape {
            field: format!("{name}_scale_inv"),
            expected: want,
            got: scale_inv.shape().clone(),
        });
    }
    let s = scale_inv.to_vec::<f32>()?;
    let sc = want[1];
    let mut w = Vec::with_capacity(out * inp);
    for r in 0..out {
        let srow = &s[(r / BLOCK) * sc..(r / BLOCK + 1) * sc];
        for (c, &b) in fp8[r * inp..(r + 1) * inp].iter().enumerate() {
            w.push(F8E4M3::from_bits(b).to_f32() * srow[c / BLOCK]);
        }
    }
    Ok(Tensor::from_vec(w, &[out, inp])?)
}

fn dims2(field: &str, t: &Tensor) -> Result<(usize, usize)> {
    match t.shape().as_slice() {
        &[r, c] => Ok((r, c)),
        s => Err(Fp8Error::Arg {
            field: field.into(),
            value: format!("shape {s:?}"),
            detail: "expected a rank-2 tensor".into(),
        }),
    }
}

fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    // 32×32 tiles keep both the reads and the writes in cache.
    const T: usize = 32;
    let mut t = vec![0f32; x.len()];
    for r0 in (0..rows).step_by(T) {
        for c0 in (0..cols).step_by(T) {
            for r in r0..(r0 + T).min(rows) {
                for c in c0..(c0 + T).min(cols) {
                    t[c * rows + r] = x[r * cols + c];
                }
            }
        }
    }
    t
}

/// FP8 linear `y [M, N] = x [M, K] · w [N, K]ᵀ`: `x` in 1×128 tiles, `w` in 128×128 blocks, block
/// GEMM with fp32 promotion. Returns an f32 CPU tensor.
pub fn fp8_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let ((m, k), (n, kw)) = (dims2("x", x)?, dims2("w", w)?);
    if k != kw {
        return Err(Fp8Error::Shape { field: "w".into(), expected: vec![n, k], got: vec![n, kw] });
    }
    let qx = quantize_act("x", &x.to_vec::<f32>()?, m, k, ScaleFormat::Fp32)?;
    let qw = quantize_weight("w", &w.to_vec::<f32>()?, n, k, ScaleFormat::Fp32)?;
    Ok(Tensor::from_vec(gemm(&qx, &qw, Accumulation::Fp32)?, &[m, n])?)
}

/// Straight-through backward of [`fp8_linear`] (quantisation treated as identity), both GEMMs on
/// E4M3 operands as in DeepSeek-V3 §3.3:
/// `dx = dy · w` (dy in 1×128 tiles along N, w's 128×128 blocks transposed) and
/// `dw = dyᵀ · x` (dyᵀ and xᵀ in 1×128 tiles along the token dimension). Returns `(dx, dw)`.
pub fn fp8_linear_backward(x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let ((m, k), (n, kw)) = (dims2("x", x)?, dims2("w", w)?);
    if k != kw {
        return Err(Fp8Error::Shape { field: "w".into(), expected: vec![n, k], got: vec![n, kw] });
    }
    if dy.shape().as_slice() != [m, n] {
        return Err(Fp8Error::Shape { field: "dy".into(), expected: vec![m, n], got: dy.shape().clone() });
    }
    let (xv, wv, dyv) = (x.to_vec::<f32>()?, w.to_vec::<f32>()?, dy.to_vec::<f32>()?);
    let qdy = quantize_act("dy", &dyv, m, n, ScaleFormat::Fp32)?;
    let qwt = quantize_weight("w", &wv, n, k, ScaleFormat::Fp32)?.transpose();
    let dx = gemm(&qdy, &qwt, Accumulation::Fp32)?;
    let qdyt = quantize_act("dy", &transpose(&dyv, m, n), n, m, ScaleFormat::Fp32)?;
    let qxt = quantize_act("x", &transpose(&xv, m, k), k, m, ScaleFormat::Fp32)?;
    let dw = gemm(&qdyt, &qxt, Accumulation::Fp32)?;
    Ok((Tensor::from_vec(dx, &[m, k])?, Tensor::from_vec(dw, &[n, k])?))
}

/// The arithmetic of a model's linear layers (DeepSeek-V3 §3.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LinearPrecision {
    /// The tensor engine's f32 `linear` / `linear_backward`, unchanged.
    #[default]
    F32,
    /// Fprop, Dgrad and Wgrad on E4M3 operands with fine-grained scales and fp32 promotion
    /// ([`fp8_linear_fwd`], [`fp8_linear_bwd`]); weights and gradients stay f32.
    Fp8,
}

/// What [`fp8_linear_fwd`] keeps for [`fp8_linear_bwd`]: the input in FP8 (1×128 tiles, as §3.3
/// caches activations for the backward) and the quantised weight (128×128 blocks), reused by
/// Dgrad through its exact block transpose.
#[derive(Clone, Debug)]
pub struct Fp8LinearSaved {
    qx: BlockQuant,
    qw: BlockQuant,
    x_shape: Vec<usize>,
    x_meta: (DType, Device),
    w_meta: (DType, Device),
}

impl Fp8LinearSaved {
    /// The saved activation `[M, K]` (M = tokens), E4M3 in 1×128 tiles.
    pub fn activation(&self) -> &BlockQuant {
        &self.qx
    }

    /// The quantised weight `[N, K]`, E4M3 in 128×128 blocks.
    pub fn weight(&self) -> &BlockQuant {
        &self.qw
    }
}

/// A tensor `[.., K]` of rank ≥ 2 as `(M, K)` rows, checked against `k`.
fn rows_of(field: &str, t: &Tensor, k: usize) -> Result<usize> {
    if t.rank() < 2 || t.dim(-1) != k {
        let mut expected = t.shape().clone();
        if let Some(last) = expected.last_mut() {
            *last = k;
        }
        return Err(Fp8Error::Shape { field: field.into(), expected, got: t.shape().clone() });
    }
    Ok(t.shape()[..t.rank() - 1].iter().product())
}

/// Row-major `[rows, cols]` f32 as a tensor of `shape` with `meta`'s dtype and device.
fn to_tensor(v: Vec<f32>, shape: &[usize], meta: &(DType, Device)) -> Result<Tensor> {
    Ok(Tensor::from_vec(v, shape)?.to_dtype(meta.0)?.to_device(&meta.1)?)
}

/// FP8 training linear, forward (DeepSeek-V3 §3.3 Fprop): `y [.., N] = x [.., K] · w [N, K]ᵀ`
/// with `x` quantised in 1×128 tiles, `w` in 128×128 blocks, and the block-scaled GEMM with
/// fp32 promotion. `y` has `x`'s dtype and device. Returns what [`fp8_linear_bwd`] needs.
pub fn fp8_linear_fwd(x: &Tensor, w: &Tensor) -> Result<(Tensor, Fp8LinearSaved)> {
    let (n, k) = dims2("w", w)?;
    let m = rows_of("x", x, k)?;
    let qx = quantize_act("x", &x.to_vec::<f32>()?, m, k, ScaleFormat::Fp32)?;
    let qw = quantize_weight("w", &w.to_vec::<f32>()?, n, k, ScaleFormat::Fp32)?;
    let mut shape = x.shape().clone();
    *shape.last_mut().expect("rank >= 2") = n;
    let x_meta = (x.dtype(), x.device().clone());
    let y = to_tensor(gemm_promoted(&qx, &qw)?, &shape, &x_meta)?;
    let saved = Fp8LinearSaved { qx, qw, x_shape: x.shape().clone(), x_meta, w_meta: (w.dtype(), w.device().clone()) };
    Ok((y, saved))
}

/// FP8 training linear, backward (DeepSeek-V3 §3.3 Dgrad and Wgrad), straight-through (the
/// quantisers count as identity): returns `(dx [.., K], dw [N, K])`.
///
/// Dgrad `dx = dy · w`: `dy` in 1×128 tiles along N, the forward's weight blocks transposed.
/// Wgrad `dw = dyᵀ · x`: the reduction runs over tokens, so `dy` and the saved FP8 activation
/// are quantised in 128×1 tiles (per channel, 128 tokens); the activation is dequantised from
/// its 1×128 tiles and re-quantised (the "transposed GEMM" re-tiling of §3.5.2).
pub fn fp8_linear_bwd(sv: &Fp8LinearSaved, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let (m, k, n) = (sv.qx.rows, sv.qx.cols, sv.qw.rows);
    let mut want = sv.x_shape.clone();
    *want.last_mut().expect("rank >= 2") = n;
    if dy.shape() != &want {
        return Err(Fp8Error::Shape { field: "dy".into(), expected: want, got: dy.shape().clone() });
    }
    let dyv = dy.to_vec::<f32>()?;
    let qdy = quantize_act("dy", &dyv, m, n, ScaleFormat::Fp32)?;
    let dx = gemm_promoted(&qdy, &sv.qw.transpose())?;
    let qdyt = quantize_act("dy (128x1 tiles)", &transpose(&dyv, m, n), n, m, ScaleFormat::Fp32)?;
    let qxt = quantize_act("x (128x1 tiles)", &transpose(&sv.qx.dequantize(), m, k), k, m, ScaleFormat::Fp32)?;
    let dw = gemm_promoted(&qdyt, &qxt)?;
    Ok((to_tensor(dx, &sv.x_shape, &sv.x_meta)?, to_tensor(dw, &[n, k], &sv.w_meta)?))
}

/// What [`linear_with`] saved beyond its inputs: nothing in f32, the FP8 operands in FP8.
#[derive(Clone, Debug)]
pub enum LinearSaved {
    /// [`LinearPrecision::F32`]: the backward reads the caller's `x` and `w`.
    F32,
    /// [`LinearPrecision::Fp8`]: the forward's quantised operands.
    Fp8(Box<Fp8LinearSaved>),
}

/// `y = x · wᵀ` (`w` is `[out, in]`) in precision `p`: the tensor engine's `linear` for
/// [`LinearPrecision::F32`], [`fp8_linear_fwd`] for [`LinearPrecision::Fp8`] (§3.3).
pub fn linear_with(p: LinearPrecision, x: &Tensor, w: &Tensor) -> Result<(Tensor, LinearSaved)> {
    match p {
        LinearPrecision::F32 => Ok((linear(x, w)?, LinearSaved::F32)),
        LinearPrecision::Fp8 => {
            let (y, s) = fp8_linear_fwd(x, w)?;
            Ok((y, LinearSaved::Fp8(Box::new(s))))
        }
    }
}

/// Backward of [`linear_with`]: `(dx, dw)` — `linear_backward` after an f32 forward,
/// [`fp8_linear_bwd`] after an FP8 one (`x` and `w` are then not read).
pub fn linear_with_backward(x: &Tensor, w: &Tensor, saved: &LinearSaved, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    match saved {
        LinearSaved::F32 => Ok(linear_backward(x, w, dy)?),
        LinearSaved::Fp8(s) => fp8_linear_bwd(s, dy),
    }
}
