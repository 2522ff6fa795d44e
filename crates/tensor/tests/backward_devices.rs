//! Backward passes on every device present against the CPU f64 backward (which `grad.rs`
//! proves by finite differences), in f32 and bf16. On a GPU machine these are the CPU-vs-CUDA
//! parity tests for the backward kernels (RMSNorm, softmax, log-softmax, SiLU, SwiGLU, GEMM) and for
//! the device paths of attention, RoPE, indexing, broadcasting, reductions, layout ops and the
//! cross-entropy.

mod common;
use common::*;
use tensor::ops::{activation, attention, elementwise, index, loss, matmul, norm, reduce, rope, shape, softmax};
use tensor::{DType, Device, Result, Tensor};

/// Run `f` on `dev` in `dt` and on the CPU in f64; compare every output.
fn parity(what: &str, dev: &Device, dt: DType, shapes: &[&[usize]], f: impl Fn(&[Tensor]) -> Result<Vec<Tensor>>) {
    let ins64: Vec<Tensor> = shapes.iter().enumerate().map(|(i, s)| rand64(s, 100 + i as u64)).collect();
    // Round the inputs to `dt` first so both sides see identical values.
    let ins64: Vec<Tensor> = ins64.iter().map(|t| t.to_dtype(dt).unwrap().to_dtype(DType::F64).unwrap()).collect();
    let ins_dev: Vec<Tensor> = ins64.iter().map(|t| t.to_dtype(dt).unwrap().to_device(dev).unwrap()).collect();
    let want = f(&ins64).unwrap();
    let got = f(&ins_dev).unwrap();
    let tol = match dt {
        DType::BF16 => 1.5e-2,
        _ => 1e-5,
    };
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.shape(), w.shape(), "{what} output {i} shape on {dev:?}");
        let e = rel_err(&g.to_vec_f64().unwrap(), &w.to_vec_f64().unwrap());
        assert!(e < tol, "{what} output {i} on {dev:?} {dt:?}: rel err {e:e} (tol {tol:e})");
    }
}

#[test]
fn backward_parity_on_every_device() {
    for dev in devices() {
        for dt in [DType::F32, DType::BF16] {
            parity("rms_norm", &dev, dt, &[&[33, 257], &[257], &[33, 257]], |x| {
                let (y, rstd) = norm::rms_norm(&x[0], &x[1], 1e-6)?;
                let (dx, dw) = norm::rms_norm_backward(&x[0], &x[1], &rstd, &x[2])?;
                Ok(vec![y, dx, dw])
            });
            parity("softmax", &dev, dt, &[&[17, 1000], &[17, 1000]], |x| {
                let y = softmax::softmax(&x[0])?;
                let dx = softmax::softmax_backward(&y, &x[1])?;
                Ok(vec![y, dx])
            });
            parity("log_softmax", &dev, dt, &[&[17, 1000], &[17, 1000]], |x| {
                let y = softmax::log_softmax(&x[0])?;
                let dx = softmax::log_softmax_backward(&y, &x[1])?;
                Ok(vec![y, dx])
            });
            parity("silu/swiglu", &dev, dt, &[&[5000], &[5000], &[5000]], |x| {
                let (dg, du) = activation::swiglu_backward(&x[0], &x[1], &x[2])?;
                Ok(vec![
                    activation::silu(&x[0])?,
                    activation::silu_backward(&x[0], &x[2])?,
                    activation::swiglu(&x[0], &x[1])?,
                    dg,
                    du,
                ])
            });
            parity("binary", &dev, dt, &[&[40, 64], &[40, 64], &[64]], |x| {
                Ok(vec![
                    elementwise::add(&x[0], &x[1])?,
                    elementwise::sub(&x[0], &x[2])?,
                    elementwise::mul(&x[0], &x[2])?,
                    elementwise::affine(&x[0], 0.5, -2.0)?,
                ])
            });
            parity("broadcast binary + reduce_to", &dev, dt, &[&[6, 1, 40], &[5, 1], &[6, 5, 40]], |x| {
                let (da, db) = elementwise::mul_backward(&x[0], &x[1], &x[2])?;
                Ok(vec![
                    elementwise::mul(&x[0], &x[1])?,
                    elementwise::div(&x[0], &elementwise::affine(&elementwise::mul(&x[1], &x[1])?, 1.0, 0.5)?)?,
                    da,
                    db,
                    reduce::sum_dim(&x[2], 1)?,
                    reduce::sum_dim_backward(&x[1], 0, 3)?,
                ])
            });
            parity("layout", &dev, dt, &[&[3, 4, 5, 6], &[3, 4, 2, 6]], |x| {
                Ok(vec![
                    shape::permute(&x[0], &[2, 0, 3, 1])?,
                    shape::narrow(&x[0], 2, 1, 3)?,
                    shape::cat(&[x[0].clone(), x[1].clone()], 2)?,
                    shape::narrow_backward(&x[1], &[3, 4, 7, 6], 2, 4)?,
                    shape::broadcast_to(&shape::narrow(&x[0], 1, 0, 1)?, &[3, 4, 5, 6])?,
                    // Contiguous runs (a device memcpy on CUDA): along dim 0, and behind size-1 dims.
                    shape::narrow(&x[0], 0, 1, 2)?,
                    shape::cat(&[x[0].clone(), x[1].clone(), x[0].clone()], 2)?,
                    shape::cat(&[x[0].clone(), x[0].clone()], 0)?,
                    shape::narrow(&x[0].reshape(&[1, 12, 5, 6])?, 1, 3, 4)?,
                    shape::cat(&[x[1].reshape(&[1, 24, 6])?, x[0].reshape(&[1, 60, 6])?], 1)?,
                ])
            });
            parity("index ops", &dev, dt, &[&[10, 24], &[13, 24], &[13, 3]], |x| {
                let idx: Vec<u32> = (0..13).map(|i| (i * 7 % 10) as u32).collect();
                // Repeated indices within a row: the scatter must add, not overwrite.
                let idx3: Vec<u32> = (0..39).map(|i| ((i / 2) * 7 % 24) as u32).collect();
                Ok(vec![
                    index::index_select(&x[0], &idx)?,
                    index::index_add(10, &idx, &x[1])?,
                    index::gather_last(&x[1], &idx3, 3)?,
                    index::scatter_last(&x[2], &idx3, 24)?,
                ])
            });
            // Grouped linear (the experts' projections) with an empty group: on CUDA one grouped GEMM.
            parity("grouped linear fwd+bwd", &dev, dt, &[&[13, 24], &[10, 24], &[10, 24], &[10, 24], &[13, 10]], |x| {
                let offsets = [0, 5, 5, 13];
                let ws = [x[1].clone(), x[2].clone(), x[3].clone()];
                let y = matmul::grouped_linear(&x[0], &ws, &offsets)?;
                let (dx, dws) = matmul::grouped_linear_backward(&x[0], &ws, &offsets, &x[4])?;
                assert!(dws[1].is_none(), "an empty group has no weight gradient");
                // The padded layout the MoE's batched path uses, and its inverse.
                let padded = matmul::pad_groups(&x[0], &offsets, 9)?;
                let round_trip = matmul::unpad_groups(&padded, &offsets)?;
                let stacked = matmul::stack(&ws)?;
                let parts = matmul::unstack(&stacked, &[true, false, true])?;
                assert!(parts[1].is_none(), "unstack keeps only the flagged matrices");
                Ok(vec![
                    y,
                    dx,
                    dws[0].clone().unwrap(),
                    dws[2].clone().unwrap(),
                    padded,
                    round_trip,
                    stacked,
                    parts[0].clone().unwrap(),
                    parts[2].clone().unwrap(),
                ])
            });
            let table = rope::RopeTable::new(8, 10000.0, 64, None).unwrap();
            parity("rope fwd+bwd", &dev, dt, &[&[2, 5, 3, 8]], |x| {
                let pos: Vec<u32> = (0..10).map(|i| (i * 7 % 64) as u32).collect();
                Ok(vec![rope::rope(&x[0], &pos, &table)?, rope::rope_backward(&x[0], &pos, &table)?])
            });
            parity("cross-entropy fwd+bwd", &dev, dt, &[&[9, 50]], |x| {
                let tg: Vec<i64> = (0..9).map(|i| if i == 4 { -100 } else { (i * 11 % 50) as i64 }).collect();
                let (l, _) = loss::cross_entropy(&x[0], &tg, -100)?;
                Ok(vec![l, loss::cross_entropy_backward(&x[0], &tg, -100, 0.7)?])
            });
            for (s, t) in [(40, 40), (24, 40)] {
                let (b, h) = (2, 3);
                let mask = attention::AttnMask {
                    causal: true,
                    // Key 0 padded: with S = T the first query row sees no key (all zeros).
                    key_padding: Some((0..b * t).map(|i| i % 9 != 4 && i != 0).collect()),
                    segment_ids: Some((0..b * t).map(|i| u32::from(i % t >= t / 3)).collect()),
                };
                parity(
                    "attention fwd+bwd",
                    &dev,
                    dt,
                    &[&[b, h, s, 16], &[b, h, t, 16], &[b, h, t, 8], &[b, h, s, 8]],
                    |x| {
                        let (o, p) = attention::attention(&x[0], &x[1], &x[2], 0.3, &mask)?;
                        let (dq, dk, dv) = attention::attention_backward(&x[0], &x[1], &x[2], &p, 0.3, &x[3])?;
                        Ok(vec![o, p, dq, dk, dv])
                    },
                );
            }
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let (m, n, k, b) = (37, 29, 70, 3);
                let ash: Vec<usize> = if ta { vec![b, k, m] } else { vec![b, m, k] };
                let bsh: Vec<usize> = if tb { vec![n, k] } else { vec![k, n] };
                parity("matmul shared-B fwd+bwd", &dev, dt, &[&ash, &bsh, &[b, m, n]], |x| {
                    let c = matmul::matmul(&x[0], &x[1], ta, tb)?;
                    let (da, db) = matmul::matmul_backward(&x[0], &x[1], ta, tb, &x[2])?;
                    Ok(vec![c, da, db])
                });
            }
        }
    }
}

#[test]
fn dtype_round_trip_on_every_device() {
    for dev in devices() {
        let x = Tensor::randn(&[1000], 3.0, 7, DType::F32, &dev).unwrap();
        let host = x.to_vec::<f32>().unwrap();
        let b = x.to_dtype(DType::BF16).unwrap();
        assert_eq!(b.device().is_cpu(), dev.is_cpu());
        let back = b.to_vec::<half::bf16>().unwrap();
        for (h, r) in host.iter().zip(&back) {
            assert_eq!(*r, half::bf16::from_f32(*h), "{dev:?}: bf16 rounding must be round-to-nearest-even");
        }
    }
}

/// Lists the devices the tests ran on. With `R1_EXPECT_CUDA=1` (the GPU run) a missing CUDA
/// device is a failure, so a GPU run cannot pass by skipping.
#[test]
fn devices_present() {
    let devs = devices();
    eprintln!("devices: {devs:?}");
    if std::env::var("R1_EXPECT_CUDA").is_ok_and(|v| v == "1") {
        assert!(devs.iter().any(|d| !d.is_cpu()), "R1_EXPECT_CUDA=1 but no CUDA device was found");
    }
}
