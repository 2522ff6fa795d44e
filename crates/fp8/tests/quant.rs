//! Quantisers, block GEMM, promotion experiment and FP8 linear (DeepSeek-V3 §3.3).

use fp8::quant::block_scale;
use fp8::{
    Accumulation, BlockQuant, Fp8Error, ScaleFormat, dequantize_weight, fp8_linear, fp8_linear_backward, gemm,
    promotion_experiment, quantize_act, quantize_blocks, quantize_weight,
};
use proptest::prelude::*;
use tensor::ops::matmul::matmul;
use tensor::{DType, Device, Tensor};

const U: f64 = 1.0 / 16.0; // half an E4M3 ulp, relative (3 fraction bits)
const F32_EPS: f64 = 1.0 / 16_777_216.0; // 2^-24

/// A-priori bound on |x − dequant(quant(x))| for an element of a block with scale `s`:
/// E4M3 rounding gives ≤ 2^-4·|q| (normal) or ≤ 2^-10 (subnormal spacing 2^-9), in units of `s`;
/// the division `x/s` and the product `q·s` each add one f32 rounding (≤ 2^-24 relative).
fn elem_bound(x: f32, s: f32) -> f64 {
    let (x, s) = (x.abs() as f64, s as f64);
    (U * x + s / 1024.0) * (1.0 + 4.0 * F32_EPS) + 2.0 * F32_EPS * x
}

fn values(len: usize) -> impl Strategy<Value = Vec<f32>> {
    (prop::collection::vec(-1.0f32..1.0, len), -12i32..12)
        .prop_map(|(v, e)| v.iter().map(|x| x * 2f32.powi(e)).collect())
}

fn check_round_trip(x: &[f32], q: &BlockQuant) -> Result<(), TestCaseError> {
    let d = q.dequantize();
    for r in 0..q.rows {
        for c in 0..q.cols {
            let i = r * q.cols + c;
            let s = q.scale_at(r, c);
            prop_assert_eq!(d[i], q.data[i].to_f32() * s);
            let err = (x[i] as f64 - d[i] as f64).abs();
            prop_assert!(err <= elem_bound(x[i], s), "({}, {}): x {} deq {} err {} s {}", r, c, x[i], d[i], err, s);
        }
    }
    Ok(())
}

/// Block max-abs recomputed by the test.
fn block_amax(x: &[f32], cols: usize, rows: std::ops::Range<usize>, cs: std::ops::Range<usize>) -> f32 {
    rows.flat_map(|r| cs.clone().map(move |c| r * cols + c)).map(|i| x[i].abs()).fold(0.0, f32::max)
}

proptest! {
    /// 1×128 activation tiles: every element dequantises within 2^-4 relative (+ half the
    /// subnormal spacing of its tile scale); each tile scale is max(amax, 1e-4)/448 and the tile's
    /// largest element lands on ±448.
    #[test]
    fn act_tiles_round_trip_within_e4m3_bound((rows, cols, x) in (1usize..4, 1usize..400).prop_flat_map(|(r, c)| (Just(r), Just(c), values(r * c)))) {
        let q = quantize_act("x", &x, rows, cols, ScaleFormat::Fp32).unwrap();
        prop_assert_eq!(q.scale_shape(), [rows, cols.div_ceil(128)]);
        check_round_trip(&x, &q)?;
        for r in 0..rows {
            for tj in 0..cols.div_ceil(128) {
                let cs = tj * 128..((tj + 1) * 128).min(cols);
                let amax = block_amax(&x, cols, r..r + 1, cs.clone());
                prop_assert_eq!(q.scale_inv[r * cols.div_ceil(128) + tj], amax.max(1e-4) / 448.0);
                let qmax = cs.map(|c| q.data[r * cols + c].to_f32().abs()).fold(0.0, f32::max);
                if amax >= 1e-4 {
                    prop_assert_eq!(qmax, 448.0);
                } else {
                    prop_assert!(qmax <= 448.0);
                }
            }
        }
    }

    /// 128×128 weight blocks with partial edge blocks: scale grid is [ceil(out/128), ceil(in/128)],
    /// each block scale comes from that block's max-abs, and every element round-trips within the
    /// E4M3 bound.
    #[test]
    fn weight_blocks_round_trip_with_partial_edges((out, inp, w) in (1usize..300, 1usize..300).prop_flat_map(|(r, c)| (Just(r), Just(c), values(r * c)))) {
        let q = quantize_weight("w", &w, out, inp, ScaleFormat::Fp32).unwrap();
        let [sr, sc] = q.scale_shape();
        prop_assert_eq!([sr, sc], [out.div_ceil(128), inp.div_ceil(128)]);
        prop_assert_eq!(q.scale_inv.len(), sr * sc);
        for bi in 0..sr {
            for bj in 0..sc {
                let amax = block_amax(&w, inp, bi * 128..((bi + 1) * 128).min(out), bj * 128..((bj + 1) * 128).min(inp));
                prop_assert_eq!(q.scale_inv[bi * sc + bj], amax.max(1e-4) / 448.0);
            }
        }
        check_round_trip(&w, &q)?;
    }

    /// ue8m0 scales are powers of two in [amax/448, 2·amax/448) (amax floored at 1e-4), so nothing
    /// saturates and the same round-trip bound holds.
    #[test]
    fn ue8m0_scales_are_powers_of_two((cols, x) in (1usize..400).prop_flat_map(|c| (Just(c), values(c)))) {
        let q = quantize_act("x", &x, 1, cols, ScaleFormat::Ue8m0).unwrap();
        for (tj, &s) in q.scale_inv.iter().enumerate() {
            let amax = block_amax(&x, cols, 0..1, tj * 128..((tj + 1) * 128).min(cols)).max(1e-4);
            prop_assert_eq!(s.to_bits() & 0x007F_FFFF, 0, "scale {} is not a power of two", s);
            prop_assert!(s >= amax / 448.0 && s < 2.0 * amax / 448.0, "scale {} for amax {}", s, amax);
        }
        check_round_trip(&x, &q)?;
    }

    /// The block GEMM with fp32 promotion equals the exact (f64) product of the dequantised
    /// operands up to fp32 summation error: |C − C_exact| ≤ (128 + #Kblocks + 3)·2^-24·Σ|a||b|.
    #[test]
    fn block_gemm_matches_dequantised_product((m, n, k, a, b) in (1usize..5, 1usize..140, 1usize..300).prop_flat_map(|(m, n, k)| (Just(m), Just(n), Just(k), values(m * k), values(n * k)))) {
        let qa = quantize_act("a", &a, m, k, ScaleFormat::Fp32).unwrap();
        let qb = quantize_weight("b", &b, n, k, ScaleFormat::Fp32).unwrap();
        let c = gemm(&qa, &qb, Accumulation::Fp32).unwrap();
        let (da, db) = (qa.dequantize(), qb.dequantize());
        let gamma = (128 + k.div_ceil(128) + 3) as f64 * F32_EPS;
        for i in 0..m {
            for j in 0..n {
                let exact: f64 = (0..k).map(|t| da[i * k + t] as f64 * db[j * k + t] as f64).sum();
                let absum: f64 = (0..k).map(|t| (da[i * k + t] as f64 * db[j * k + t] as f64).abs()).sum();
                let err = (c[i * n + j] as f64 - exact).abs();
                prop_assert!(err <= gamma * absum, "({}, {}): err {} bound {}", i, j, err, gamma * absum);
            }
        }
    }
}

#[test]
fn zero_tile_uses_the_amax_floor() {
    let q = quantize_act("x", &[0.0; 130], 1, 130, ScaleFormat::Fp32).unwrap();
    assert_eq!(q.scale_inv, vec![1e-4f32 / 448.0; 2]);
    assert!(q.data.iter().all(|v| v.to_f32() == 0.0));
    assert_eq!(block_scale(0.0, ScaleFormat::Ue8m0), 2f32.powi(-22), "2^-22 ≥ 1e-4/448 > 2^-23");
}

#[test]
fn quantiser_handles_extreme_magnitudes_without_nan() {
    // amax = f32::MAX: the scale stays finite and both extremes land exactly on ±448.
    let x = [f32::MAX, -f32::MAX, 1.0];
    for fmt in [ScaleFormat::Fp32, ScaleFormat::Ue8m0] {
        let q = quantize_act("x", &x, 1, 3, fmt).unwrap();
        assert!(q.scale_inv[0].is_finite(), "{fmt:?}: scale {}", q.scale_inv[0]);
        assert!(q.data.iter().all(|v| !v.is_nan()), "{fmt:?}");
        assert_eq!(q.data[1].to_f32(), -q.data[0].to_f32());
        assert!(q.data[0].to_f32() <= 448.0 && q.data[0].to_f32() >= 224.0, "{fmt:?}: {}", q.data[0].to_f32());
    }
}

#[test]
fn quantiser_errors_name_field_and_value() {
    let e = quantize_act("hidden", &[1.0, f32::NAN], 1, 2, ScaleFormat::Fp32).unwrap_err();
    assert!(matches!(e, Fp8Error::NonFinite { index: 1, .. }), "{e}");
    assert!(e.to_string().contains("hidden") && e.to_string().contains("NaN"), "{e}");
    let e = quantize_weight("wq", &[1.0; 5], 2, 3, ScaleFormat::Fp32).unwrap_err();
    assert!(e.to_string().contains("wq") && e.to_string().contains('5'), "{e}");
    let e = quantize_blocks("t", &[1.0; 4], 2, 2, (0, 128), ScaleFormat::Fp32).unwrap_err();
    assert!(e.to_string().contains("t.block"), "{e}");
}

#[test]
fn transpose_is_exact() {
    let w: Vec<f32> = (0..200 * 150).map(|i| ((i * 37 % 101) as f32 - 50.0) * (1.0 + (i / 150) as f32)).collect();
    let q = quantize_weight("w", &w, 200, 150, ScaleFormat::Fp32).unwrap();
    let (d, dt) = (q.dequantize(), q.transpose().dequantize());
    for r in 0..200 {
        for c in 0..150 {
            assert_eq!(d[r * 150 + c], dt[c * 200 + r]);
        }
    }
}

#[test]
fn gemm_rejects_mismatched_operands() {
    let a = quantize_act("a", &[1.0; 256], 2, 128, ScaleFormat::Fp32).unwrap();
    let b = quantize_act("b", &[1.0; 258], 2, 129, ScaleFormat::Fp32).unwrap();
    assert!(gemm(&a, &b, Accumulation::Fp32).unwrap_err().to_string().contains("gemm.b"));
    let b = quantize_blocks("b", &[1.0; 256], 2, 128, (1, 64), ScaleFormat::Fp32).unwrap();
    assert!(gemm(&a, &b, Accumulation::Fp32).unwrap_err().to_string().contains("gemm.b.block"));
    let e = gemm(&a, &a, Accumulation::Limited { mantissa_bits: 24, promote: true }).unwrap_err();
    assert!(e.to_string().contains("mantissa_bits") && e.to_string().contains("24"), "{e}");
}

/// The promotion experiment (K = 4096, also 1024 and 16384) with a 14-bit accumulator: promotion
/// every 128 elements must cut the accumulation error, and fp32 accumulation must beat both.
#[test]
fn promotion_reduces_limited_accumulator_error_at_k4096() {
    for (k, positive) in [(4096, false), (4096, true), (1024, false), (16384, false)] {
        let r = promotion_experiment(32, 32, k, 14, positive, 7).unwrap();
        println!(
            "K={} bits={} inputs={}: rel err fp32 {:.3e}, limited+promotion {:.3e}, limited no promotion {:.3e}; total FP8 vs f32 inputs {:.3e}",
            r.k,
            r.mantissa_bits,
            if positive { "U[0,1)" } else { "N(0,1)" },
            r.rel_fp32,
            r.rel_promoted,
            r.rel_unpromoted,
            r.rel_total_fp8
        );
        assert!(r.rel_promoted < r.rel_unpromoted, "{r:?}");
        assert!(r.rel_fp32 < r.rel_promoted, "{r:?}");
    }
}

fn f64_tensor(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape).unwrap().to_dtype(DType::F64).unwrap()
}

/// Asserts `c ≈ a · bᵀ` (a [m,k], b [n,k]) within the FP8 bound given the operands' quantisations.
fn assert_fp8_product(
    c: &[f32],
    a: &[f32],
    b: &[f32],
    qa: &BlockQuant,
    qb: &BlockQuant,
    (m, n, k): (usize, usize, usize),
) {
    let reference =
        matmul(&f64_tensor(a, &[m, k]), &f64_tensor(b, &[n, k]), false, true).unwrap().to_vec_f64().unwrap();
    let gamma = (128 + k.div_ceil(128) + 3) as f64 * F32_EPS;
    for i in 0..m {
        for j in 0..n {
            let (mut bound, mut absum) = (0.0, 0.0);
            for t in 0..k {
                let (x, y) = (a[i * k + t], b[j * k + t]);
                let (ex, ey) = (elem_bound(x, qa.scale_at(i, t)), elem_bound(y, qb.scale_at(j, t)));
                let (x, y) = (x.abs() as f64, y.abs() as f64);
                bound += ex * y + x * ey + ex * ey;
                absum += (x + ex) * (y + ey);
            }
            let err = (c[i * n + j] as f64 - reference[i * n + j]).abs();
            assert!(err <= bound + gamma * absum, "({i}, {j}): err {err} bound {}", bound + gamma * absum);
            assert!(err > 0.0 || bound == 0.0 || k < 2, "({i}, {j}) is exact: FP8 was not applied?");
        }
    }
}

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    Tensor::randn(&[n], 1.0, seed, DType::F32, &Device::Cpu).unwrap().to_vec::<f32>().unwrap()
}

fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols).flat_map(|c| (0..rows).map(move |r| x[r * cols + c])).collect()
}

#[test]
fn fp8_linear_and_backward_within_fp8_error_of_exact_linear() {
    let (m, k, n) = (9, 300, 140);
    let (x, w, dy) = (rand_vec(m * k, 1), rand_vec(n * k, 2), rand_vec(m * n, 3));
    let (xt, wt, dyt) = (
        Tensor::from_vec(x.clone(), &[m, k]).unwrap(),
        Tensor::from_vec(w.clone(), &[n, k]).unwrap(),
        Tensor::from_vec(dy.clone(), &[m, n]).unwrap(),
    );
    let y = fp8_linear(&xt, &wt).unwrap();
    assert_eq!(y.shape(), &vec![m, n]);
    let qx = quantize_act("x", &x, m, k, ScaleFormat::Fp32).unwrap();
    let qw = quantize_weight("w", &w, n, k, ScaleFormat::Fp32).unwrap();
    assert_fp8_product(&y.to_vec::<f32>().unwrap(), &x, &w, &qx, &qw, (m, n, k));

    let (dx, dw) = fp8_linear_backward(&xt, &wt, &dyt).unwrap();
    assert_eq!((dx.shape(), dw.shape()), (&vec![m, k], &vec![n, k]));
    // dx = dy · w  =  dy [m, n] · (wᵀ [k, n])ᵀ
    let qdy = quantize_act("dy", &dy, m, n, ScaleFormat::Fp32).unwrap();
    assert_fp8_product(&dx.to_vec::<f32>().unwrap(), &dy, &transpose(&w, n, k), &qdy, &qw.transpose(), (m, k, n));
    // dw = dyᵀ · x  =  dyᵀ [n, m] · (xᵀ [k, m])ᵀ
    let (dyt_v, xt_v) = (transpose(&dy, m, n), transpose(&x, m, k));
    let qdyt = quantize_act("dy", &dyt_v, n, m, ScaleFormat::Fp32).unwrap();
    let qxt = quantize_act("x", &xt_v, k, m, ScaleFormat::Fp32).unwrap();
    assert_fp8_product(&dw.to_vec::<f32>().unwrap(), &dyt_v, &xt_v, &qdyt, &qxt, (n, k, m));
}

#[test]
fn fp8_linear_rejects_bad_shapes() {
    let x = Tensor::zeros(&[2, 8], DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros(&[3, 7], DType::F32, &Device::Cpu).unwrap();
    assert!(fp8_linear(&x, &w).unwrap_err().to_string().contains("[3, 7]"));
    let w = Tensor::zeros(&[3, 8], DType::F32, &Device::Cpu).unwrap();
    let dy = Tensor::zeros(&[2, 4], DType::F32, &Device::Cpu).unwrap();
    assert!(fp8_linear_backward(&x, &w, &dy).unwrap_err().to_string().contains("dy"));
}

#[test]
fn dequantize_weight_matches_block_dequantiser_and_checks_shapes() {
    let (out, inp) = (200, 300);
    let w = rand_vec(out * inp, 5);
    let q = quantize_weight("w", &w, out, inp, ScaleFormat::Fp32).unwrap();
    let bytes: Vec<u8> = q.data.iter().map(|v| v.to_bits()).collect();
    let s = Tensor::from_vec(q.scale_inv.clone(), &[2, 3]).unwrap();
    let t = dequantize_weight("layers.0.self_attn.q_b_proj.weight", &bytes, [out, inp], &s).unwrap();
    assert_eq!(t.shape(), &vec![out, inp]);
    assert_eq!(t.to_vec::<f32>().unwrap(), q.dequantize());

    let bad = Tensor::from_vec(vec![1f32; 4], &[2, 2]).unwrap();
    let e = dequantize_weight("layers.0.mlp.up_proj.weight", &bytes, [out, inp], &bad).unwrap_err();
    assert!(e.to_string().contains("layers.0.mlp.up_proj.weight_scale_inv") && e.to_string().contains("[2, 3]"), "{e}");
    let e = dequantize_weight("layers.0.mlp.up_proj.weight", &bytes[1..], [out, inp], &s).unwrap_err();
    assert!(e.to_string().contains("layers.0.mlp.up_proj.weight") && e.to_string().contains("59999"), "{e}");
}

#[test]
fn overflowing_shapes_are_errors_not_panics() {
    let e = quantize_act("x", &[], usize::MAX, 2, ScaleFormat::Fp32).unwrap_err();
    assert!(e.to_string().contains("x") && e.to_string().contains("overflows"), "{e}");
    let s = Tensor::zeros(&[1, 1], DType::F32, &Device::Cpu).unwrap();
    let e = dequantize_weight("embed", &[], [usize::MAX, 3], &s).unwrap_err();
    assert!(e.to_string().contains("embed"), "{e}");
}
