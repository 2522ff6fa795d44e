//! Tensor-level FP8 pieces (DeepSeek-V3 §3.3): checkpoint weight dequantisation and an FP8
//! linear layer `y = x · wᵀ` with a straight-through backward.

use crate::gemm::{Accumulation, gemm};
use crate::quant::{ScaleFormat, quantize_act, quantize_weight};
use crate::{BLOCK, Fp8Error, Result};
use float8::F8E4M3;
use tensor::Tensor;

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
    let mut t = vec![0f32; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = x[r * cols + c];
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
