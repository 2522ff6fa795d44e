//! The crate's own Hopper FP8 GEMM kernel ([`Sm90Gemm`]) against the CPU reference (feature `cuda`).
//!
//! Without a GPU every test returns early; with `R1_EXPECT_CUDA=1` (the GPU run) a missing GPU is
//! a failure, so a GPU run cannot pass by skipping. Every compiled variant runs on every shape.
#![cfg(feature = "cuda")]

use fp8::cuda::{GpuGemm, OutType, Sm90Config, Sm90Gemm};
use fp8::{Accumulation, gemm};

mod common;
use common::*;

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

#[test]
fn own_kernel_matches_cpu_reference() {
    let Some((g, kern)) = gpu() else { return };
    // (M, N, K): square; K = 128 (one block) with M below one tile; M not a multiple of 128 and
    // N = 640 (an odd number of column blocks: the second CTA of an A-multicast cluster idles,
    // partial 192- and 256-row tiles); an odd number of row blocks; large K.
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
