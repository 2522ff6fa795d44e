//! CPU reference block-scaled FP8 GEMM (DeepSeek-V3 §3.3, "increasing accumulation precision").
//!
//! `C[M,N] = A[M,K] · B[N,K]ᵀ` on [`BlockQuant`] operands whose blocks are `bk` wide along K
//! (128 in the paper). Per K block the E4M3 products are summed, then promoted:
//! `acc_fp32 += partial · s_a[row, kb] · s_b[col-block, kb]`.
//!
//! [`Accumulation::Limited`] emulates a tensor-core accumulator that keeps only a few mantissa
//! bits (the paper measures ~14 on H800): after every addition the running sum is truncated
//! (rounded toward zero) to `mantissa_bits` fraction bits. With `promote: true` that limited
//! sum only ever covers one K block (N_C = 128) before it is added into fp32; with
//! `promote: false` one limited accumulator runs over the whole K dimension (the scaled
//! products are added to it directly). [`promotion_experiment`] measures both.

use crate::convert::e4m3_table;
use crate::quant::{BlockQuant, ScaleFormat, quantize_act, quantize_weight};
use crate::{Fp8Error, Result};
use tensor::ops::matmul::matmul;
use tensor::{DType, Device, Tensor};

/// How partial sums are accumulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accumulation {
    /// fp32 sums within each K block, promoted into an fp32 accumulator (the reference).
    Fp32,
    /// Emulated limited-precision accumulator keeping `mantissa_bits` fraction bits (1..=23).
    Limited {
        /// Fraction bits kept after every addition (f32 keeps 23).
        mantissa_bits: u32,
        /// Promote to fp32 at the end of every K block (`true`) or never (`false`).
        promote: bool,
    },
}

/// Round `x` toward zero to `bits` fraction bits.
#[inline]
fn truncate_mantissa(x: f32, bits: u32) -> f32 {
    let drop = 23 - bits;
    f32::from_bits(x.to_bits() & !((1u32 << drop) - 1))
}

/// fp32 dot product with 8 independent lanes (still fp32 accumulation, vectorisable).
#[inline]
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    let mut s = lanes.iter().sum::<f32>();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// The operands of `C = A · Bᵀ` share K and the block width along K.
fn check_operands(a: &BlockQuant, b: &BlockQuant) -> Result<()> {
    if a.cols != b.cols {
        return Err(Fp8Error::Shape {
            field: "gemm.b (inner dimension K)".into(),
            expected: vec![b.rows, a.cols],
            got: vec![b.rows, b.cols],
        });
    }
    if a.block.1 != b.block.1 {
        return Err(Fp8Error::Arg {
            field: "gemm.b.block".into(),
            value: format!("{:?}", b.block),
            detail: format!("K block width must match gemm.a.block {:?}", a.block),
        });
    }
    Ok(())
}

/// Block-scaled FP8 GEMM `C = A · Bᵀ` (row-major `[a.rows, b.rows]`); both operands are `[*, K]`
/// and must use the same block width along K.
pub fn gemm(a: &BlockQuant, b: &BlockQuant, acc: Accumulation) -> Result<Vec<f32>> {
    check_operands(a, b)?;
    if let Accumulation::Limited { mantissa_bits, .. } = acc
        && !(1..=23).contains(&mantissa_bits)
    {
        return Err(Fp8Error::Arg {
            field: "mantissa_bits".into(),
            value: mantissa_bits.to_string(),
            detail: "must be in 1..=23".into(),
        });
    }
    let (m, n, k, bk) = (a.rows, b.rows, a.cols, a.block.1);
    let lut = e4m3_table();
    let af: Vec<f32> = a.data.iter().map(|q| lut[q.to_bits() as usize]).collect();
    let bf: Vec<f32> = b.data.iter().map(|q| lut[q.to_bits() as usize]).collect();
    let nkb = k.div_ceil(bk);
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        let arow = &af[i * k..(i + 1) * k];
        for j in 0..n {
            let brow = &bf[j * k..(j + 1) * k];
            let mut acc32 = 0f32;
            let mut lim = 0f32;
            for kb in 0..nkb {
                let (k0, k1) = (kb * bk, ((kb + 1) * bk).min(k));
                let s = a.scale_at(i, k0) * b.scale_at(j, k0);
                match acc {
                    Accumulation::Fp32 => acc32 += dot_f32(&arow[k0..k1], &brow[k0..k1]) * s,
                    Accumulation::Limited { mantissa_bits, promote: true } => {
                        let mut p = 0f32;
                        for t in k0..k1 {
                            p = truncate_mantissa(p + arow[t] * brow[t], mantissa_bits);
                        }
                        acc32 += p * s;
                    }
                    Accumulation::Limited { mantissa_bits, promote: false } => {
                        for t in k0..k1 {
                            lim = truncate_mantissa(lim + arow[t] * brow[t] * s, mantissa_bits);
                        }
                    }
                }
            }
            c[i * n + j] = if matches!(acc, Accumulation::Limited { promote: false, .. }) { lim } else { acc32 };
        }
    }
    Ok(c)
}

/// The same product as [`gemm`] with [`Accumulation::Fp32`], organised for speed: per 128-wide
/// K block, the decoded E4M3 operands go through the tensor engine's f32 GEMM (products of two
/// E4M3 values are exact in f32; the in-block sum is fp32), then the block's partial product is
/// promoted, `C += P_kb · s_a · s_b`, into the fp32 accumulator (DeepSeek-V3 §3.3). Only the order
/// of the fp32 additions inside a block differs from the scalar reference, so the two agree to
/// f32 rounding. This is the GEMM of [`crate::linear::fp8_linear_fwd`] and its backward.
pub fn gemm_promoted(a: &BlockQuant, b: &BlockQuant) -> Result<Vec<f32>> {
    check_operands(a, b)?;
    let (m, n, k, bk) = (a.rows, b.rows, a.cols, a.block.1);
    let mut c = vec![0f32; m * n];
    if m == 0 || n == 0 {
        return Ok(c);
    }
    let lut = e4m3_table();
    let block_of = |q: &BlockQuant, rows: usize, k0: usize, k1: usize| -> Vec<f32> {
        let mut v = Vec::with_capacity(rows * (k1 - k0));
        for r in 0..rows {
            v.extend(q.data[r * k + k0..r * k + k1].iter().map(|x| lut[x.to_bits() as usize]));
        }
        v
    };
    for kb in 0..k.div_ceil(bk) {
        let (k0, k1) = (kb * bk, ((kb + 1) * bk).min(k));
        let pa = Tensor::from_vec(block_of(a, m, k0, k1), &[m, k1 - k0])?;
        let pb = Tensor::from_vec(block_of(b, n, k0, k1), &[n, k1 - k0])?;
        let p = matmul(&pa, &pb, false, true)?;
        let p = p.cpu_slice::<f32>().ok_or_else(|| Fp8Error::Arg {
            field: "gemm_promoted.partial".into(),
            value: format!("{:?}", p.dtype()),
            detail: "expected an f32 CPU tensor".into(),
        })?;
        let sb: Vec<f32> = (0..n).map(|j| b.scale_at(j, k0)).collect();
        for (i, (crow, prow)) in c.chunks_exact_mut(n).zip(p.chunks_exact(n)).enumerate() {
            let sa = a.scale_at(i, k0);
            for ((cv, &pv), &sbj) in crow.iter_mut().zip(prow).zip(&sb) {
                *cv += pv * (sa * sbj);
            }
        }
    }
    Ok(c)
}

/// Relative errors of one promotion experiment: `‖C − C_exact‖_F / ‖C_exact‖_F`, where
/// `C_exact` is the f64 product of the dequantised operands (so only accumulation error counts),
/// plus the total FP8 error of the reference GEMM against the f64 product of the unquantised inputs.
#[derive(Clone, Copy, Debug)]
pub struct PromotionReport {
    /// Inner dimension.
    pub k: usize,
    /// Fraction bits of the emulated accumulator.
    pub mantissa_bits: u32,
    /// fp32 accumulation with promotion ([`Accumulation::Fp32`]).
    pub rel_fp32: f64,
    /// Limited accumulator, promoted to fp32 every 128 elements.
    pub rel_promoted: f64,
    /// Limited accumulator over all of K.
    pub rel_unpromoted: f64,
    /// [`Accumulation::Fp32`] against the f64 product of the original (unquantised) inputs.
    pub rel_total_fp8: f64,
}

fn rel_fro(c: &[f32], r: &[f64]) -> f64 {
    let num: f64 = c.iter().zip(r).map(|(&x, &y)| (x as f64 - y).powi(2)).sum();
    let den: f64 = r.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

fn matmul_nt_f64(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|t| a[i * k + t] as f64 * b[j * k + t] as f64).sum();
        }
    }
    c
}

/// The promotion experiment: `A [m, k]` (1×128 tiles) times `B [n, k]` (128×128 blocks), inputs
/// standard normal (`positive = false`) or uniform in [0, 1) (`positive = true`), seeded.
pub fn promotion_experiment(
    m: usize,
    n: usize,
    k: usize,
    mantissa_bits: u32,
    positive: bool,
    seed: u64,
) -> Result<PromotionReport> {
    let gen_ = |rows: usize, s: u64| -> Result<Vec<f32>> {
        let t = if positive {
            Tensor::rand_uniform(&[rows, k], 0.0, 1.0, s, DType::F32, &Device::Cpu)?
        } else {
            Tensor::randn(&[rows, k], 1.0, s, DType::F32, &Device::Cpu)?
        };
        Ok(t.to_vec::<f32>()?)
    };
    let (x, w) = (gen_(m, seed)?, gen_(n, seed.wrapping_add(1))?);
    let qa = quantize_act("a", &x, m, k, ScaleFormat::Fp32)?;
    let qb = quantize_weight("b", &w, n, k, ScaleFormat::Fp32)?;
    let exact = matmul_nt_f64(&qa.dequantize(), &qb.dequantize(), m, n, k);
    let orig = matmul_nt_f64(&x, &w, m, n, k);
    let c32 = gemm(&qa, &qb, Accumulation::Fp32)?;
    let cp = gemm(&qa, &qb, Accumulation::Limited { mantissa_bits, promote: true })?;
    let cu = gemm(&qa, &qb, Accumulation::Limited { mantissa_bits, promote: false })?;
    Ok(PromotionReport {
        k,
        mantissa_bits,
        rel_fp32: rel_fro(&c32, &exact),
        rel_promoted: rel_fro(&cp, &exact),
        rel_unpromoted: rel_fro(&cu, &exact),
        rel_total_fp8: rel_fro(&c32, &orig),
    })
}
