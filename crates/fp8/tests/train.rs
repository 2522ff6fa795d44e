//! FP8 training linear (DeepSeek-V3 §3.3): Fprop, Dgrad and Wgrad each run on E4M3 operands with
//! the paper's tiling, stay within E4M3's error of the f32 linear, and differ from it.
//!
//! Error budget. E4M3 keeps 3 mantissa bits, so rounding a value to it moves it by at most half
//! an ulp, 2⁻⁴ relative; with the rounding error spread uniformly over the half-ulp interval its
//! RMS is at most 2⁻⁴/√3 ≈ 3.6 % relative. A GEMM output is a sum of products each carrying
//! `r` independent roundings (r = 2 for Fprop and Dgrad; r = 3 for Wgrad, whose activation is
//! rounded once in 1×128 tiles by Fprop and again in 128×1 tiles), so for zero-mean data
//! `‖Δ‖/‖ref‖ ≤ √r · 2⁻⁴/√3`: 5.1 % (r = 2), 6.25 % (r = 3). The fp32 accumulation adds
//! ~1e-6. Each result must also be measurably off the f32 one (> 0.5 %), or nothing was quantised.

use fp8::{
    Accumulation, LinearPrecision, LinearSaved, ScaleFormat, fp8_linear_bwd, fp8_linear_fwd, gemm, gemm_promoted,
    linear_with, linear_with_backward, quantize_act, quantize_blocks, quantize_weight,
};
use tensor::ops::matmul::{linear, linear_backward};
use tensor::{DType, Device, Tensor};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 1.0, seed, DType::F32, &Device::Cpu).unwrap()
}

fn v(t: &Tensor) -> Vec<f32> {
    t.to_vec::<f32>().unwrap()
}

fn rel(a: &[f32], r: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(r).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum();
    let den: f64 = r.iter().map(|&y| (y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// `‖Δ‖/‖ref‖` bound for `r` independent E4M3 roundings per product term (module doc).
fn fp8_bound(r: u32) -> f64 {
    (r as f64).sqrt() * 2f64.powi(-4) / 3f64.sqrt()
}

/// `c [m, n]` equals `a · bᵀ` of the given (dequantised) operands up to fp32 accumulation:
/// `|c − exact| ≤ (128 + K/128 + 3)·ε_f32 · Σ|a||b|` per element.
fn assert_is_product(c: &[f32], a: &[f32], b: &[f32], (m, n, k): (usize, usize, usize)) {
    let gamma = (128 + k.div_ceil(128) + 3) as f64 * f32::EPSILON as f64;
    for i in 0..m {
        for j in 0..n {
            let (mut exact, mut absum) = (0f64, 0f64);
            for t in 0..k {
                let p = a[i * k + t] as f64 * b[j * k + t] as f64;
                exact += p;
                absum += p.abs();
            }
            let err = (c[i * n + j] as f64 - exact).abs();
            assert!(err <= gamma * absum + 1e-30, "({i}, {j}): {} vs exact {exact}", c[i * n + j]);
        }
    }
}

fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols).flat_map(|c| (0..rows).map(move |r| x[r * cols + c])).collect()
}

/// Shapes with partial tiles everywhere: M = 2·83 tokens, K = 300, N = 140.
const B: usize = 2;
const S: usize = 83;
const K: usize = 300;
const N: usize = 140;

#[test]
fn fprop_is_the_block_scaled_product_of_1x128_and_128x128_operands() {
    let (x, w) = (randn(&[B, S, K], 1), randn(&[N, K], 2));
    let (y, sv) = fp8_linear_fwd(&x, &w).unwrap();
    assert_eq!(y.shape(), &vec![B, S, N]);
    let m = B * S;
    assert_eq!((sv.activation().block, sv.weight().block), ((1, 128), (128, 128)));
    let qx = quantize_act("x", &v(&x), m, K, ScaleFormat::Fp32).unwrap();
    let qw = quantize_weight("w", &v(&w), N, K, ScaleFormat::Fp32).unwrap();
    assert_eq!((&sv.activation().scale_inv, &sv.weight().scale_inv), (&qx.scale_inv, &qw.scale_inv));
    assert_is_product(&v(&y), &qx.dequantize(), &qw.dequantize(), (m, N, K));

    let reference = v(&linear(&x, &w).unwrap());
    let e = rel(&v(&y), &reference);
    eprintln!("fprop: ‖Δ‖/‖ref‖ = {e:.4} (bound {:.4})", fp8_bound(2));
    assert!(e < fp8_bound(2) && e > 5e-3, "fprop relative error {e}");
}

#[test]
fn dgrad_uses_1x128_output_gradient_tiles_and_the_transposed_weight_blocks() {
    let (x, w, dy) = (randn(&[B, S, K], 3), randn(&[N, K], 4), randn(&[B, S, N], 5));
    let (_, sv) = fp8_linear_fwd(&x, &w).unwrap();
    let (dx, dw) = fp8_linear_bwd(&sv, &dy).unwrap();
    assert_eq!((dx.shape(), dw.shape()), (&vec![B, S, K], &vec![N, K]));
    let m = B * S;
    // dx [m, K] = dy [m, N] · (wᵀ [K, N])ᵀ: dy per token and 128 channels, w's own blocks.
    let qdy = quantize_blocks("dy", &v(&dy), m, N, (1, 128), ScaleFormat::Fp32).unwrap();
    let wq = sv.weight().dequantize();
    assert_is_product(&v(&dx), &qdy.dequantize(), &transpose(&wq, N, K), (m, K, N));

    let (dx_ref, _) = linear_backward(&x, &w, &dy).unwrap();
    let e = rel(&v(&dx), &v(&dx_ref));
    eprintln!("dgrad: ‖Δ‖/‖ref‖ = {e:.4} (bound {:.4})", fp8_bound(2));
    assert!(e < fp8_bound(2) && e > 5e-3, "dgrad relative error {e}");
}

#[test]
fn wgrad_reduces_over_tokens_with_128x1_tiles_of_dy_and_the_saved_fp8_activation() {
    let (x, w, dy) = (randn(&[B, S, K], 6), randn(&[N, K], 7), randn(&[B, S, N], 8));
    let (_, sv) = fp8_linear_fwd(&x, &w).unwrap();
    let (_, dw) = fp8_linear_bwd(&sv, &dy).unwrap();
    let m = B * S;
    // 128×1 tiles quantised in place (no transposes): per channel, 128 tokens.
    let qdy = quantize_blocks("dy", &v(&dy), m, N, (128, 1), ScaleFormat::Fp32).unwrap();
    let x_saved = sv.activation().dequantize();
    let qx = quantize_blocks("x", &x_saved, m, K, (128, 1), ScaleFormat::Fp32).unwrap();
    assert_is_product(&v(&dw), &transpose(&qdy.dequantize(), m, N), &transpose(&qx.dequantize(), m, K), (N, K, m));

    let (_, dw_ref) = linear_backward(&x, &w, &dy).unwrap();
    let e = rel(&v(&dw), &v(&dw_ref));
    eprintln!("wgrad: ‖Δ‖/‖ref‖ = {e:.4} (bound {:.4})", fp8_bound(3));
    assert!(e < fp8_bound(3) && e > 5e-3, "wgrad relative error {e}");
}

#[test]
fn straight_through_gradient_matches_the_f32_gradient_on_fp8_representable_inputs() {
    // Reference check of the backward: when x, w and dy are already E4M3 values with power-of-two
    // scales that every tiling reproduces, all quantisations are exact, and the FP8 backward must
    // equal the f32 linear's gradient up to fp32 accumulation order.
    // Values are multiples of 1/64 that E4M3 holds at scale 2⁻⁶ (x·64 ∈ {16, 32, 48, 64, 96,
    // 128, 192, 448}); a −7 (= 448·2⁻⁶) wherever 5 divides r + c puts the amax 7 in every tile
    // of every tiling (edge tiles are ≥ 5 wide), so every scale is exactly 7/448 = 2⁻⁶.
    let code = |i: usize| [0.5f32, -1.0, 1.5, -0.25, 2.0, -3.0, 0.75, 1.0][i % 8];
    let (m, k, n) = (140, 200, 133);
    let mk = |rows: usize, cols: usize, s: usize| -> Vec<f32> {
        (0..rows * cols).map(|i| if (i / cols + i % cols).is_multiple_of(5) { -7.0 } else { code(i * 3 + s) }).collect()
    };
    let (xv, wv, dyv) = (mk(m, k, 1), mk(n, k, 2), mk(m, n, 3));
    let x = Tensor::from_vec(xv, &[m, k]).unwrap();
    let w = Tensor::from_vec(wv, &[n, k]).unwrap();
    let dy = Tensor::from_vec(dyv, &[m, n]).unwrap();
    let (y, sv) = fp8_linear_fwd(&x, &w).unwrap();
    assert_eq!(sv.activation().dequantize(), v(&x), "x must be exactly representable");
    let (dx, dw) = fp8_linear_bwd(&sv, &dy).unwrap();
    let (dx_ref, dw_ref) = linear_backward(&x, &w, &dy).unwrap();
    assert!(rel(&v(&y), &v(&linear(&x, &w).unwrap())) < 1e-6);
    assert!(rel(&v(&dx), &v(&dx_ref)) < 1e-6, "dx {}", rel(&v(&dx), &v(&dx_ref)));
    assert!(rel(&v(&dw), &v(&dw_ref)) < 1e-6, "dw {}", rel(&v(&dw), &v(&dw_ref)));
}

#[test]
fn f32_precision_is_the_tensor_engine_bit_for_bit() {
    let (x, w, dy) = (randn(&[3, 5, 40], 9), randn(&[24, 40], 10), randn(&[3, 5, 24], 11));
    let (y, sv) = linear_with(LinearPrecision::F32, &x, &w).unwrap();
    assert!(matches!(sv, LinearSaved::F32));
    assert_eq!(v(&y), v(&linear(&x, &w).unwrap()));
    let (dx, dw) = linear_with_backward(&x, &w, &sv, &dy).unwrap();
    let (dx_ref, dw_ref) = linear_backward(&x, &w, &dy).unwrap();
    assert_eq!((v(&dx), v(&dw)), (v(&dx_ref), v(&dw_ref)));
    assert_eq!(LinearPrecision::default(), LinearPrecision::F32);

    let (y8, sv8) = linear_with(LinearPrecision::Fp8, &x, &w).unwrap();
    assert!(matches!(sv8, LinearSaved::Fp8(_)));
    assert_eq!(v(&y8), v(&fp8_linear_fwd(&x, &w).unwrap().0));
    let (dx8, dw8) = linear_with_backward(&x, &w, &sv8, &dy).unwrap();
    let LinearSaved::Fp8(s) = &sv8 else { unreachable!() };
    let (dx_b, dw_b) = fp8_linear_bwd(s, &dy).unwrap();
    assert_eq!((v(&dx8), v(&dw8)), (v(&dx_b), v(&dw_b)));
}

#[test]
fn fp8_linear_keeps_dtype_and_rejects_bad_shapes() {
    let x = randn(&[4, 130], 12).to_dtype(DType::BF16).unwrap();
    let w = randn(&[7, 130], 13).to_dtype(DType::BF16).unwrap();
    let (y, sv) = fp8_linear_fwd(&x, &w).unwrap();
    assert_eq!((y.dtype(), y.shape()), (DType::BF16, &vec![4, 7]));
    let (dx, dw) = fp8_linear_bwd(&sv, &randn(&[4, 7], 14).to_dtype(DType::BF16).unwrap()).unwrap();
    assert_eq!((dx.dtype(), dw.dtype()), (DType::BF16, DType::BF16));

    let e = fp8_linear_fwd(&randn(&[4, 129], 1), &randn(&[7, 130], 2)).unwrap_err().to_string();
    assert!(e.contains("x") && e.contains("[4, 129]"), "{e}");
    let e = fp8_linear_fwd(&randn(&[130], 1), &randn(&[7, 130], 2)).unwrap_err().to_string();
    assert!(e.contains("[130]"), "{e}");
    let e = fp8_linear_bwd(&sv, &randn(&[4, 8], 3)).unwrap_err().to_string();
    assert!(e.contains("dy") && e.contains("[4, 7]"), "{e}");
    let e = fp8_linear_fwd(&randn(&[4, 130], 1), &randn(&[7, 2, 65], 2)).unwrap_err().to_string();
    assert!(e.contains("rank-2"), "{e}");
}

#[test]
fn gemm_promoted_agrees_with_the_scalar_reference() {
    for (m, n, k) in [(1, 1, 1), (5, 130, 300), (129, 7, 256), (33, 200, 1000)] {
        let a = v(&randn(&[m, k], (m + k) as u64));
        let b = v(&randn(&[n, k], (n + k) as u64));
        let qa = quantize_act("a", &a, m, k, ScaleFormat::Fp32).unwrap();
        let qb = quantize_weight("b", &b, n, k, ScaleFormat::Fp32).unwrap();
        let fast = gemm_promoted(&qa, &qb).unwrap();
        let slow = gemm(&qa, &qb, Accumulation::Fp32).unwrap();
        assert_is_product(&fast, &qa.dequantize(), &qb.dequantize(), (m, n, k));
        assert!(rel(&fast, &slow) < 1e-6, "({m}, {n}, {k}): {}", rel(&fast, &slow));
    }
    let qa = quantize_act("a", &[1.0; 6], 2, 3, ScaleFormat::Fp32).unwrap();
    let qb = quantize_act("b", &[1.0; 8], 2, 4, ScaleFormat::Fp32).unwrap();
    assert!(gemm_promoted(&qa, &qb).unwrap_err().to_string().contains("inner dimension"));
}
