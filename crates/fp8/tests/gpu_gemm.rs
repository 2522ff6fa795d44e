//! The cuBLASLt block-scaled FP8 GEMM against the CPU reference (feature `cuda`).
//!
//! Without a GPU every test returns early; with `R1_EXPECT_CUDA=1` (the GPU run) a missing GPU is
//! a failure, so a GPU run cannot pass by skipping.
#![cfg(feature = "cuda")]

use fp8::cuda::{GpuGemm, OutLayout, OutType};
use fp8::{Accumulation, ScaleFormat, gemm, quantize_act, quantize_weight};

mod common;
use common::*;

/// The GPU, or `None` (test skipped) when there is none and the run does not expect one.
fn gpu() -> Option<GpuGemm> {
    let g = GpuGemm::try_default();
    if g.is_none() {
        assert!(
            !std::env::var("R1_EXPECT_CUDA").is_ok_and(|v| v == "1"),
            "R1_EXPECT_CUDA=1 but no CUDA device / cuBLASLt was found"
        );
        eprintln!("no CUDA device: skipped");
    }
    g
}

#[test]
fn block_scaled_gemm_matches_cpu_reference() {
    let Some(g) = gpu() else { return };
    // (M, N, K): K/128 = 4, 3 (scale stride padded to 4), 5, 16; M = 48 is not a multiple of 128.
    for (i, &(m, n, k)) in [(256, 384, 512), (128, 256, 384), (48, 128, 640), (1024, 1024, 2048)].iter().enumerate() {
        let a = random_quant(m, k, (1, 128), 10 + i as u64);
        let b = random_quant(n, k, (128, 128), 20 + i as u64);
        let reference = gemm(&a, &b, Accumulation::Fp32).unwrap();
        let tol32 = accum_tol(&a, &b, &reference);
        let y32 = g.gemm_host(&a, &b, OutType::F32).unwrap();
        let y16 = g.gemm_host(&a, &b, OutType::Bf16).unwrap();
        let (e32, e16) = (rel(&y32, &reference), rel(&y16, &reference));
        eprintln!(
            "M={m} N={n} K={k}: rel f32 {e32:.2e} (tol {tol32:.2e}), bf16 {e16:.2e} (tol {:.2e})",
            BF16_ROUND + tol32
        );
        // A wrong scale layout (e.g. a transposed scale grid) is off by factors up to 2^12 per
        // block, far beyond these tolerances.
        assert!(e32 <= tol32.max(1e-6), "M={m} N={n} K={k}: f32 output rel error {e32:.3e} > {tol32:.3e}");
        assert!(e16 <= BF16_ROUND + tol32, "M={m} N={n} K={k}: bf16 output rel error {e16:.3e}");
    }
}

#[test]
fn transposed_output_matches_cpu_reference() {
    let Some(g) = gpu() else { return };
    let (m, n, k) = (256, 384, 512);
    let (a, b) = (random_quant(m, k, (1, 128), 31), random_quant(n, k, (128, 128), 32));
    let reference = gemm(&a, &b, Accumulation::Fp32).unwrap();
    let tol32 = accum_tol(&a, &b, &reference);
    let ref_t: Vec<f32> = (0..n * m).map(|ji| reference[(ji % m) * n + ji / m]).collect();
    let (ga, gb) = (g.upload_act(&a).unwrap(), g.upload_weight(&b).unwrap());
    for (out, tol) in [(OutType::F32, tol32.max(1e-6)), (OutType::Bf16, BF16_ROUND + tol32)] {
        let plan = g.plan_with(&ga, &gb, out, OutLayout::Transposed).unwrap();
        assert_eq!(plan.layout(), OutLayout::Transposed);
        let mut y = g.alloc_out(n, m, out).unwrap();
        plan.run(&g, &ga, &gb, &mut y).unwrap();
        let e = rel(&y.to_host_f32(g.stream()).unwrap(), &ref_t);
        eprintln!("Yᵀ {out:?}: rel {e:.2e} (tol {tol:.2e})");
        assert!(e <= tol, "Yᵀ {out:?}: rel error {e:.3e} > {tol:.3e}");
    }
}

/// Elementwise a-priori bound on |x − dequant(quant(x))| for an element of a block with scale `s`:
/// E4M3 rounding gives ≤ 2^-4·|x| (normal) or ≤ 2^-10·s (subnormal spacing 2^-9·s), plus f32 roundings.
fn elem_bound(x: f32, s: f32) -> f64 {
    let (x, s) = (x.abs() as f64, s as f64);
    (x / 16.0 + s / 1024.0) * (1.0 + 1e-6) + 1e-7 * x
}

#[test]
fn quantised_f32_product_within_fp8_error() {
    let Some(g) = gpu() else { return };
    let (m, n, k) = (128, 256, 1024);
    // Rows and blocks of different magnitudes, so the scales vary.
    let x: Vec<f32> = rand_vec(m * k, 1).iter().enumerate().map(|(i, v)| v * (1 + (i / k) % 7) as f32).collect();
    let w: Vec<f32> =
        rand_vec(n * k, 2).iter().enumerate().map(|(i, v)| v * 0.02 * (1 + (i / (128 * k)) % 3) as f32).collect();
    let qx = quantize_act("x", &x, m, k, ScaleFormat::Fp32).unwrap();
    let qw = quantize_weight("w", &w, n, k, ScaleFormat::Fp32).unwrap();
    let exact: Vec<f64> = (0..m * n)
        .map(|ij| {
            let (i, j) = (ij / n, ij % n);
            (0..k).map(|t| x[i * k + t] as f64 * w[j * k + t] as f64).sum()
        })
        .collect();
    let cpu = gemm(&qx, &qw, Accumulation::Fp32).unwrap();
    for out in [OutType::F32, OutType::Bf16] {
        let y = g.gemm_host(&qx, &qw, out).unwrap();
        for i in 0..m {
            for j in 0..n {
                let (mut bound, mut absum) = (0.0, 0.0);
                for t in 0..k {
                    let (a, b) = (x[i * k + t], w[j * k + t]);
                    let (ea, eb) = (elem_bound(a, qx.scale_at(i, t)), elem_bound(b, qw.scale_at(j, t)));
                    let (a, b) = (a.abs() as f64, b.abs() as f64);
                    bound += ea * b + a * eb + ea * eb;
                    absum += (a + ea) * (b + eb);
                }
                // Accumulator, worst case: each of the ≤ 4·33 terms of a block's four 32-product MMA
                // steps (with the running sum) loses < 2^-12 of the block's absolute sum, then fp32.
                let accum = absum * (132.0 / 4096.0 + 1e-6);
                let round =
                    if out == OutType::Bf16 { BF16_ROUND * (exact[i * n + j].abs() + bound + accum) } else { 0.0 };
                let err = (y[i * n + j] as f64 - exact[i * n + j]).abs();
                assert!(err <= bound + accum + round, "{out:?} ({i}, {j}): err {err} bound {}", bound + accum + round);
            }
        }
        // In norm the GPU's total FP8 error is the reference's, up to accumulation/output rounding.
        let exact32: Vec<f32> = exact.iter().map(|&v| v as f32).collect();
        let (eg, ec) = (rel(&y, &exact32), rel(&cpu, &exact32));
        let norm = |v: &[f32]| v.iter().map(|&z| (z as f64).powi(2)).sum::<f64>().sqrt();
        let extra = (if out == OutType::Bf16 { BF16_ROUND } else { 0.0 } + accum_tol(&qx, &qw, &cpu))
            * (norm(&cpu) / norm(&exact32));
        eprintln!("{out:?}: rel error vs f64 product {eg:.3e} (CPU reference {ec:.3e})");
        assert!(eg <= ec + extra, "{out:?}: {eg:.3e} vs CPU {ec:.3e} + {extra:.3e}");
        assert!(eg > 1e-3, "{out:?}: rel error {eg:.3e} is below any FP8 error: quantisation not applied?");
    }
}

#[test]
fn bad_shapes_are_errors() {
    // Shape checks happen before any device work, but need a handle: skip without a GPU.
    let Some(g) = gpu() else { return };
    let a = random_quant(64, 200, (1, 128), 1);
    let e = g.upload_act(&a).unwrap_err().to_string();
    assert!(e.contains("upload_act.K") && e.contains("200"), "{e}");
    let w = random_quant(100, 256, (128, 128), 2);
    let e = g.upload_weight(&w).unwrap_err().to_string();
    assert!(e.contains("upload_weight.N") && e.contains("100"), "{e}");
    let e = g.upload_act(&random_quant(20, 128, (1, 128), 3)).unwrap_err().to_string();
    assert!(e.contains("upload_act.M"), "{e}");
    let e = g.upload_weight(&random_quant(128, 128, (1, 128), 4)).unwrap_err().to_string();
    assert!(e.contains("block"), "{e}");
    let ga = g.upload_act(&random_quant(64, 256, (1, 128), 5)).unwrap();
    let gw = g.upload_weight(&random_quant(128, 384, (128, 128), 6)).unwrap();
    let e = g.plan(&ga, &gw, OutType::F32).err().expect("K mismatch must fail").to_string();
    assert!(e.contains("inner dimension K"), "{e}");
}
