//! The crate's own Hopper FP8 GEMM kernel ([`Sm90Gemm`]) against the CPU reference (feature `cuda`).
//!
//! Without a GPU every test returns early; with `R1_EXPECT_CUDA=1` (the GPU run) a missing GPU is
//! a failure, so a GPU run cannot pass by skipping. Every compiled variant runs on every shape.
#![cfg(feature = "cuda")]

use fp8::cuda::{GpuGemm, OutType, Sm90Config, Sm90Gemm};
use fp8::{Accumulation, BlockQuant, F8E4M3, gemm};
use tensor::{DType, Device, Tensor};

/// The GPU and the compiled kernel, or `None` (test skipped) when there is no GPU and the run
/// does not expect one.
fn gpu() -> Option<(GpuGemm, Sm90Gemm)> {
    let g = GpuGemm::try_default();
    let Some(g) = g else {
        assert!(
            !std::env::var("R1_EXPECT_CUDA").is_ok_and(|v| v == "1"),
            "R1_EXPECT_CUDA=1 but no CUDA device / cuBLASLt was found"
        );
        eprintln!("no CUDA device: skipped");
        return None;
    };
    // The kernel needs Hopper (sm_90a); another GPU skips unless the run expects this one.
    match Sm90Gemm::new(&g) {
        Ok(k) => Some((g, k)),
        Err(e) if !std::env::var("R1_EXPECT_CUDA").is_ok_and(|v| v == "1") => {
            eprintln!("sm_90a kernel unavailable on this GPU ({e}): skipped");
            None
        }
        Err(e) => panic!("compiling / loading the sm_90a kernel: {e}"),
    }
}

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    Tensor::randn(&[n], 1.0, seed, DType::F32, &Device::Cpu).unwrap().to_vec::<f32>().unwrap()
}

/// Random E4M3 codes (never zero, never NaN) with scales varying over ~2^±6 across blocks.
fn random_quant(rows: usize, cols: usize, block: (usize, usize), seed: u64) -> BlockQuant {
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
fn rel(x: &[f32], r: &[f32]) -> f64 {
    assert_eq!(x.len(), r.len());
    assert!(x.iter().all(|v| v.is_finite()), "non-finite GPU output");
    let num: f64 = x.iter().zip(r).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
    let den: f64 = r.iter().map(|&b| (b as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// Unit roundoff of bf16 (8 significant bits): rounding the fp32 accumulator to a bf16 output
/// moves each element by at most 2^-8 of its magnitude, so the Frobenius norm by at most 2^-8.
const BF16_ROUND: f64 = 1.0 / 256.0;

/// Accumulation tolerance: within one 128-wide K block the tensor core keeps ~14 fraction bits
/// (DeepSeek-V3 §3.3.2) before the kernel promotes the block into fp32; modelled as the crate's
/// emulated accumulator with promotion at 12 fraction bits, ×2 for ordering effects (the same
/// bound the cuBLASLt test uses).
fn accum_tol(a: &BlockQuant, b: &BlockQuant, reference: &[f32]) -> f64 {
    let lim = gemm(a, b, Accumulation::Limited { mantissa_bits: 12, promote: true }).unwrap();
    2.0 * rel(&lim, reference)
}

#[test]
fn own_kernel_matches_cpu_reference() {
    let Some((g, kern)) = gpu() else { return };
    // (M, N, K): square; K = 128 (one block) with M below one tile; M not a multiple of 128 and
    // N = 640 (partial 192- and 160-wide tiles, tiles starting 32/64/96 columns into a weight
    // block); an odd number of row blocks (the second CTA of a cluster idles); large K.
    let shapes = [(256, 256, 256), (48, 128, 128), (272, 640, 1152), (384, 384, 640), (256, 512, 4096)];
    for (i, &(m, n, k)) in shapes.iter().enumerate() {
        let a = random_quant(m, k, (1, 128), 40 + i as u64);
        let b = random_quant(n, k, (128, 128), 50 + i as u64);
        let reference = gemm(&a, &b, Accumulation::Fp32).unwrap();
        let tol = BF16_ROUND + accum_tol(&a, &b, &reference);
        let (ga, gb) = (g.upload_act(&a).unwrap(), g.upload_weight(&b).unwrap());
        for cfg in Sm90Config::all(1).into_iter().chain(Sm90Config::all(16)) {
            let mut y = g.alloc_out(m, n, OutType::Bf16).unwrap();
            kern.run(&g, &ga, &gb, &mut y, cfg).unwrap();
            let e = rel(&y.to_host_f32(g.stream()).unwrap(), &reference);
            eprintln!("M={m} N={n} K={k} {cfg:?}: rel {e:.2e} (tol {tol:.2e})");
            assert!(e <= tol, "M={m} N={n} K={k} {cfg:?}: bf16 rel error {e:.3e} > {tol:.3e}");
        }
        // The default configuration through the convenience call.
        let y = kern.gemm(&g, &ga, &gb).unwrap().to_host_f32(g.stream()).unwrap();
        assert!(rel(&y, &reference) <= tol);
    }
}

#[test]
fn own_kernel_rejects_bad_arguments() {
    let Some((g, kern)) = gpu() else { return };
    let ga = g.upload_act(&random_quant(64, 256, (1, 128), 5)).unwrap();
    let gb = g.upload_weight(&random_quant(128, 256, (128, 128), 6)).unwrap();
    let mut y32 = g.alloc_out(64, 128, OutType::F32).unwrap();
    let e = kern.run(&g, &ga, &gb, &mut y32, Sm90Config::default()).unwrap_err().to_string();
    assert!(e.contains("bf16"), "{e}");
    let mut y = g.alloc_out(64, 128, OutType::Bf16).unwrap();
    let bad = Sm90Config { block_n: 256, ..Sm90Config::default() };
    let e = kern.run(&g, &ga, &gb, &mut y, bad).unwrap_err().to_string();
    assert!(e.contains("block_n: 256"), "{e}");
    let mut small = g.alloc_out(64, 64, OutType::Bf16).unwrap();
    let e = kern.run(&g, &ga, &gb, &mut small, Sm90Config::default()).unwrap_err().to_string();
    assert!(e.contains("Sm90Gemm output"), "{e}");
    let gk = g.upload_weight(&random_quant(128, 384, (128, 128), 7)).unwrap();
    let e = kern.run(&g, &ga, &gk, &mut y, Sm90Config::default()).unwrap_err().to_string();
    assert!(e.contains("inner dimension K"), "{e}");
}
