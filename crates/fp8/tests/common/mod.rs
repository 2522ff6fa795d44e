//! Helpers shared by the GPU GEMM tests: random block-quantised operands, the relative error,
//! and the tolerances (bf16 output rounding; the tensor core's limited accumulator per K block).
#![allow(dead_code)]

use fp8::{Accumulation, BlockQuant, F8E4M3, gemm};
use tensor::{DType, Device, Tensor};

pub fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    Tensor::randn(&[n], 1.0, seed, DType::F32, &Device::Cpu).unwrap().to_vec::<f32>().unwrap()
}

/// Random E4M3 codes (never zero, never NaN) with scales varying over ~2^±6 across blocks.
pub fn random_quant(rows: usize, cols: usize, block: (usize, usize), seed: u64) -> BlockQuant {
    let v = rand_vec(rows * cols, seed);
    let data = v
        .iter()
        .map(|&x| {
            let q = F8E4M3::from_f32((x * 120.0).clamp(-448.0, 448.0));
            if q.to_f32() == 0.0 { F8E4M3::from_f32(if x < 0.0 { -0.5 } else { 0.5 }) } else { q }
        })
        .collect();
    let (sr, sc) = (rows.div_ceil(block.0), cols.div_ceil(block.1));
    let s = rand_vec(sr * sc, seed ^ 0x5eed);
    let scale_inv = s.iter().map(|&z| 2f32.powf(z * 2.0).clamp(2f32.powi(-6), 2f32.powi(6)) / 448.0).collect();
    BlockQuant { rows, cols, block, data, scale_inv }
}

/// ‖x − r‖_F / ‖r‖_F in f64.
pub fn rel(x: &[f32], r: &[f32]) -> f64 {
    assert_eq!(x.len(), r.len());
    assert!(x.iter().all(|v| v.is_finite()), "non-finite GPU output");
    let num: f64 = x.iter().zip(r).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
    let den: f64 = r.iter().map(|&b| (b as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// Unit roundoff of bf16 (8 significant bits): rounding the fp32 accumulator to a bf16 output
/// moves each element by at most 2^-8 of its magnitude, so the Frobenius norm by at most 2^-8.
pub const BF16_ROUND: f64 = 1.0 / 256.0;

/// Accumulation tolerance (relative, Frobenius) for an f32 output. The reference sums each 128-wide
/// K block in fp32 and promotes; cuBLAS must also promote per block (the scales change every block),
/// and within a block the tensor core keeps ~14 fraction bits (DeepSeek-V3 §3.3.2), aligning each
/// 32-product MMA step to its largest exponent. We model that as the crate's emulated accumulator
/// with promotion at 12 fraction bits (13, less one for the alignment to the largest term rather
/// than the running sum), computed on the same operands, and allow ×2 for ordering effects.
pub fn accum_tol(a: &BlockQuant, b: &BlockQuant, reference: &[f32]) -> f64 {
    let lim = gemm(a, b, Accumulation::Limited { mantissa_bits: 12, promote: true }).unwrap();
    2.0 * rel(&lim, reference)
}
