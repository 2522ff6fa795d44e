//! Every forward op against an independent naive reference (plain loops in f64), on every
//! device present. On a GPU machine these are the CPU-vs-CUDA parity tests: the same body runs
//! on each device against the same reference.

// Naive references read best as index loops.
#![allow(clippy::needless_range_loop)]

mod common;
use common::*;
use tensor::ops::{activation, attention, elementwise, index, loss, matmul, norm, reduce, rope, shape, softmax};
use tensor::{DType, Device, Tensor};

fn naive_mm(a: &[f64], b: &[f64], m: usize, n: usize, k: usize, ta: bool, tb: bool) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            for p in 0..k {
                let av = if ta { a[p * m + i] } else { a[i * k + p] };
                let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                c[i * n + j] += av * bv;
            }
        }
    }
    c
}

#[test]
fn matmul_all_transposes_batched_and_shared() {
    for dev in devices() {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let (batch, m, n, k) = (3, 17, 33, 65);
            let ash = if ta { [batch, k, m] } else { [batch, m, k] };
            let bsh = if tb { [batch, n, k] } else { [batch, k, n] };
            let (a, av) = rand_on(&ash, 1, &dev);
            let (b, bv) = rand_on(&bsh, 2, &dev);
            let c = matmul::matmul(&a, &b, ta, tb).unwrap();
            assert_eq!(c.shape(), &vec![batch, m, n]);
            let cv = c.to_vec_f64().unwrap();
            let mut want = vec![];
            for i in 0..batch {
                want.extend(naive_mm(&av[i * m * k..], &bv[i * n * k..], m, n, k, ta, tb));
            }
            assert!(rel_err(&cv, &want) < tol(&dev), "{dev:?} ta={ta} tb={tb}");
            // Shared (2-D) B.
            let (b2, b2v) = rand_on(&bsh[1..], 3, &dev);
            let c2 = matmul::matmul(&a, &b2, ta, tb).unwrap().to_vec_f64().unwrap();
            let mut want2 = vec![];
            for i in 0..batch {
                want2.extend(naive_mm(&av[i * m * k..], &b2v, m, n, k, ta, tb));
            }
            assert!(rel_err(&c2, &want2) < tol(&dev), "{dev:?} shared ta={ta} tb={tb}");
        }
    }
}

#[test]
fn matmul_bf16_accumulates_in_f32() {
    for dev in devices() {
        let (m, n, k) = (32, 48, 256);
        let (a, _) = rand_on(&[m, k], 4, &dev);
        let (b, _) = rand_on(&[n, k], 5, &dev);
        let (a16, b16) = (a.to_dtype(DType::BF16).unwrap(), b.to_dtype(DType::BF16).unwrap());
        let c = matmul::linear(&a16, &b16).unwrap();
        assert_eq!(c.dtype(), DType::BF16);
        let (ar, br) = (a16.to_vec_f64().unwrap(), b16.to_vec_f64().unwrap());
        let want = naive_mm(&ar, &br, m, n, k, false, true);
        // Inputs exact in bf16; only the output rounding (2^-9 relative) remains.
        let e = rel_err(&c.to_vec_f64().unwrap(), &want);
        assert!(e < 4e-3, "{dev:?} bf16 err {e}");
    }
}

fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut ix = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        ix[d] = i % shape[d];
        i /= shape[d];
    }
    ix
}

fn bcast_index(ix: &[usize], shape: &[usize]) -> usize {
    let off = ix.len() - shape.len();
    let mut f = 0;
    for (d, &s) in shape.iter().enumerate() {
        f = f * s + if s == 1 { 0 } else { ix[off + d] };
    }
    f
}

#[test]
fn binary_ops_broadcast() {
    for dev in devices() {
        for (sa, sb) in [
            (vec![4, 5, 6], vec![4, 5, 6]),
            (vec![4, 5, 6], vec![6]),
            (vec![4, 5, 6], vec![5, 1]),
            (vec![4, 1, 6], vec![3, 1]),
        ] {
            let (a, av) = rand_on(&sa, 6, &dev);
            let (b, bv) = rand_on(&sb, 7, &dev);
            let out_shape = elementwise::broadcast_shape("t", &sa, &sb).unwrap();
            for (name, f) in [
                ("add", (|x: f64, y: f64| x + y) as fn(f64, f64) -> f64),
                ("sub", |x, y| x - y),
                ("mul", |x, y| x * y),
                ("div", |x, y| x / y),
            ] {
                let y = match name {
                    "add" => elementwise::add(&a, &b),
                    "sub" => elementwise::sub(&a, &b),
                    "div" => elementwise::div(&a, &b),
                    _ => elementwise::mul(&a, &b),
                }
                .unwrap();
                assert_eq!(y.shape(), &out_shape);
                let want: Vec<f64> = (0..tensor::numel(&out_shape))
                    .map(|i| {
                        let ix = unravel(i, &out_shape);
                        f(av[bcast_index(&ix, &sa)], bv[bcast_index(&ix, &sb)])
                    })
                    .collect();
                assert!(rel_err(&y.to_vec_f64().unwrap(), &want) < tol(&dev), "{dev:?} {name} {sa:?} {sb:?}");
            }
        }
        let (x, xv) = rand_on(&[7, 9], 8, &dev);
        let y = elementwise::affine(&x, -1.5, 0.25).unwrap().to_vec_f64().unwrap();
        let want: Vec<f64> = xv.iter().map(|v| -1.5 * v + 0.25).collect();
        assert!(rel_err(&y, &want) < tol(&dev));
    }
}

#[test]
fn activations() {
    for dev in devices() {
        let (x, xv) = rand_on(&[5, 130], 9, &dev);
        let (u, uv) = rand_on(&[5, 130], 10, &dev);
        let s = |v: f64| 1.0 / (1.0 + (-v).exp());
        let cases: Vec<(&str, Tensor, Vec<f64>)> = vec![
            ("silu", activation::silu(&x).unwrap(), xv.iter().map(|&v| v * s(v)).collect()),
            ("sigmoid", activation::sigmoid(&x).unwrap(), xv.iter().map(|&v| s(v)).collect()),
            ("swiglu", activation::swiglu(&x, &u).unwrap(), xv.iter().zip(&uv).map(|(&g, &w)| g * s(g) * w).collect()),
        ];
        for (name, y, want) in cases {
            assert!(rel_err(&y.to_vec_f64().unwrap(), &want) < tol(&dev), "{dev:?} {name}");
        }
    }
}

#[test]
fn rms_norm_forward() {
    for dev in devices() {
        let (rows, d) = (6, 200);
        let (x, xv) = rand_on(&[2, 3, d], 11, &dev);
        let (w, wv) = rand_on(&[d], 12, &dev);
        let (y, rstd) = norm::rms_norm(&x, &w, 1e-6).unwrap();
        assert_eq!(rstd.shape(), &vec![2, 3]);
        let mut want = vec![0.0; rows * d];
        for r in 0..rows {
            let ms = xv[r * d..(r + 1) * d].iter().map(|v| v * v).sum::<f64>() / d as f64;
            for j in 0..d {
                want[r * d + j] = xv[r * d + j] / (ms + 1e-6).sqrt() * wv[j];
            }
        }
        assert!(rel_err(&y.to_vec_f64().unwrap(), &want) < tol(&dev), "{dev:?}");
    }
}

#[test]
fn softmax_and_log_softmax() {
    for dev in devices() {
        let (rows, d) = (7, 300);
        let (x, xv) = rand_on(&[rows, d], 13, &dev);
        let x = elementwise::scale(&x, 5.0).unwrap();
        let mut sm = vec![0.0; rows * d];
        let mut lsm = vec![0.0; rows * d];
        for r in 0..rows {
            let row: Vec<f64> = xv[r * d..(r + 1) * d].iter().map(|v| v * 5.0).collect();
            let z: f64 = row.iter().map(|v| v.exp()).sum();
            for j in 0..d {
                sm[r * d + j] = row[j].exp() / z;
                lsm[r * d + j] = row[j] - z.ln();
            }
        }
        assert!(rel_err(&softmax::softmax(&x).unwrap().to_vec_f64().unwrap(), &sm) < tol(&dev), "{dev:?}");
        assert!(rel_err(&softmax::log_softmax(&x).unwrap().to_vec_f64().unwrap(), &lsm) < tol(&dev), "{dev:?}");
    }
}

/// Attention under causal, padding and segment masks against a direct f64 evaluation, at a size
/// inside one row block and at sizes spanning several blocks (the kernel skips, per block of
/// query rows, the keys no row of the block may see).
#[test]
fn attention_masks() {
    attention_masks_at(2, 3, 4, 6, 8, 5);
    attention_masks_at(1, 2, 75, 75, 12, 7);
    attention_masks_at(1, 2, 40, 75, 12, 7);
    // More queries than keys (no causal mask: absorbed decoding), where query i sits at key
    // min(i, T − 1) for the segment comparison.
    attention_masks_at(1, 2, 9, 5, 6, 4);
}

fn attention_masks_at(b: usize, h: usize, s: usize, t: usize, dk: usize, dv: usize) {
    for dev in devices() {
        let (q, qv) = rand_on(&[b, h, s, dk], 14, &dev);
        let (k, kv) = rand_on(&[b, h, t, dk], 15, &dev);
        let (v, vv) = rand_on(&[b, h, t, dv], 16, &dev);
        let pad: Vec<bool> = (0..b * t).map(|i| i != 1 && i != t + 4).collect();
        let seg: Vec<u32> = (0..b * t).map(|i| if i % t < t / 2 { 0 } else { 1 }).collect();
        // Key 0 of the first sequence padded: with S = T its first causal query sees no key
        // (a fully masked row, whose output is zero).
        let pad0: Vec<bool> = (0..b * t).map(|i| i != 0).collect();
        for mask in [
            attention::AttnMask { causal: true, key_padding: Some(pad0.clone()), segment_ids: None },
            attention::AttnMask::causal(),
            attention::AttnMask { causal: true, key_padding: Some(pad.clone()), segment_ids: None },
            attention::AttnMask { causal: true, key_padding: None, segment_ids: Some(seg.clone()) },
            attention::AttnMask { causal: false, key_padding: Some(pad.clone()), segment_ids: Some(seg.clone()) },
        ] {
            if mask.causal && s > t {
                continue;
            }
            let scale = 0.37;
            let (o, _) = attention::attention(&q, &k, &v, scale, &mask).unwrap();
            let mut want = vec![0.0; b * h * s * dv];
            for bi in 0..b {
                for hi in 0..h {
                    let bh = bi * h + hi;
                    for i in 0..s {
                        let qp = if t >= s { i + t - s } else { i.min(t - 1) };
                        let vis: Vec<usize> = (0..t)
                            .filter(|&j| {
                                (!mask.causal || j <= qp)
                                    && mask.key_padding.as_ref().is_none_or(|p| p[bi * t + j])
                                    && mask.segment_ids.as_ref().is_none_or(|sg| sg[bi * t + j] == sg[bi * t + qp])
                            })
                            .collect();
                        let sc: Vec<f64> = vis
                            .iter()
                            .map(|&j| {
                                (0..dk).map(|d| qv[(bh * s + i) * dk + d] * kv[(bh * t + j) * dk + d]).sum::<f64>()
                                    * scale
                            })
                            .collect();
                        let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                        let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                        for (n, &j) in vis.iter().enumerate() {
                            let p = (sc[n] - m).exp() / z;
                            for d in 0..dv {
                                want[(bh * s + i) * dv + d] += p * vv[(bh * t + j) * dv + d];
                            }
                        }
                    }
                }
            }
            assert!(rel_err(&o.to_vec_f64().unwrap(), &want) < tol(&dev), "{dev:?} {mask:?}");
        }
    }
}

#[test]
fn rope_interleaved_rotation() {
    for dev in devices() {
        let (b, s, h, d) = (2, 5, 3, 8);
        let (x, xv) = rand_on(&[b, s, h, d], 17, &dev);
        let table = rope::RopeTable::new(d, 10000.0, 64, None).unwrap();
        let pos: Vec<u32> = (0..b * s).map(|i| (i * 7 % 64) as u32).collect();
        let y = rope::rope(&x, &pos, &table).unwrap().to_vec_f64().unwrap();
        let mut want = vec![0.0; xv.len()];
        for bs in 0..b * s {
            for hh in 0..h {
                for i in 0..d / 2 {
                    let ang = pos[bs] as f64 * 10000f64.powf(-(2.0 * i as f64) / d as f64);
                    let o = (bs * h + hh) * d + 2 * i;
                    want[o] = xv[o] * ang.cos() - xv[o + 1] * ang.sin();
                    want[o + 1] = xv[o] * ang.sin() + xv[o + 1] * ang.cos();
                }
            }
        }
        assert!(rel_err(&y, &want) < tol(&dev), "{dev:?}");
    }
}

#[test]
fn yarn_frequencies_blend_by_wavelength() {
    let yarn = rope::Yarn {
        factor: 40.0,
        original_max_position_embeddings: 4096,
        beta_fast: 32.0,
        beta_slow: 1.0,
        mscale: Some(1.0),
        mscale_all_dim: Some(1.0),
        attention_factor: None,
        truncate: true,
    };
    let (d, theta) = (64, 10000.0);
    let base = rope::inv_freq(d, theta, None);
    let y = rope::inv_freq(d, theta, Some(&yarn));
    // Fast-rotating dims (many turns within the original context) keep their frequency ...
    let turns = |f: f64| 4096.0 * f / (2.0 * std::f64::consts::PI);
    for i in 0..d / 2 {
        if turns(base[i]) > 32.0 + 1e-9 && i + 1 < d / 2 && turns(base[i + 1]) > 32.0 {
            assert!((y[i] - base[i]).abs() <= 1e-12 * base[i], "dim {i} should be kept");
        }
        // ... slow ones (under one turn) are interpolated by the full factor.
        if turns(base[i]) < 1.0 && i > 0 && turns(base[i - 1]) < 1.0 {
            assert!((y[i] - base[i] / 40.0).abs() <= 1e-12 * base[i], "dim {i} should be divided");
        }
        assert!(y[i] <= base[i] + 1e-15 && y[i] >= base[i] / 40.0 - 1e-15);
    }
    // mscale = mscale_all_dim → cos/sin unscaled; softmax scale × (0.1 ln 40 + 1)².
    assert!((yarn.attention_factor() - 1.0).abs() < 1e-15);
    let m = 0.1 * 40f64.ln() + 1.0;
    assert!((yarn.softmax_scale_factor() - m * m).abs() < 1e-12);
    let mut y2 = yarn.clone();
    y2.mscale_all_dim = None;
    assert!((y2.attention_factor() - m).abs() < 1e-12);
}

#[test]
fn embedding_index_gather_scatter_topk() {
    for dev in devices() {
        let (v, d) = (11, 6);
        let (tab, tv) = rand_on(&[v, d], 18, &dev);
        let ids = [3u32, 0, 10, 3, 7];
        let e = index::embedding(&ids, &tab).unwrap().to_vec_f64().unwrap();
        let want: Vec<f64> = ids.iter().flat_map(|&i| tv[i as usize * d..(i as usize + 1) * d].to_vec()).collect();
        assert_eq!(e, want, "{dev:?}");
        let (src, sv) = rand_on(&[5, d], 19, &dev);
        let acc = index::index_add(v, &ids, &src).unwrap().to_vec_f64().unwrap();
        let mut want = vec![0.0; v * d];
        for (n, &i) in ids.iter().enumerate() {
            for j in 0..d {
                want[i as usize * d + j] += sv[n * d + j];
            }
        }
        assert!(rel_err(&acc, &want) < 1e-7);
        // top-k over rows, then gather/scatter by the same indices.
        let (x, xv) = rand_on(&[4, 9], 20, &dev);
        let (vals, idx) = index::topk(&x, 3).unwrap();
        for r in 0..4 {
            let mut row: Vec<(f64, usize)> = (0..9).map(|j| (xv[r * 9 + j], j)).collect();
            row.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
            let got: Vec<usize> = idx[r * 3..r * 3 + 3].iter().map(|&i| i as usize).collect();
            assert_eq!(got, row[..3].iter().map(|p| p.1).collect::<Vec<_>>(), "{dev:?} row {r}");
        }
        let g = index::gather_last(&x, &idx, 3).unwrap().to_vec_f64().unwrap();
        assert_eq!(g, vals.to_vec_f64().unwrap());
        let sc = index::scatter_last(&vals, &idx, 9).unwrap().to_vec_f64().unwrap();
        for r in 0..4 {
            for j in 0..9 {
                let picked = idx[r * 3..r * 3 + 3].contains(&(j as u32));
                assert_eq!(sc[r * 9 + j], if picked { xv[r * 9 + j] } else { 0.0 });
            }
        }
        assert!(index::index_select(&tab, &[11]).is_err());
    }
}

#[test]
fn cross_entropy_ignores_index() {
    for dev in devices() {
        let (n, v) = (6, 13);
        let (lg, lv) = rand_on(&[n, v], 21, &dev);
        let tg = [3i64, -100, 12, 0, -100, 5];
        let (l, count) = loss::cross_entropy(&lg, &tg, loss::IGNORE_INDEX).unwrap();
        assert_eq!(count, 4);
        let mut want = 0.0;
        for (r, &t) in tg.iter().enumerate() {
            if t >= 0 {
                let row = &lv[r * v..(r + 1) * v];
                let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
                want += lse - row[t as usize];
            }
        }
        want /= 4.0;
        assert!((l.item().unwrap() - want).abs() < 1e-5 * want.abs(), "{dev:?}");
        assert!(loss::cross_entropy(&lg, &[13, 0, 0, 0, 0, 0], -100).is_err());
    }
}

#[test]
fn reductions_and_shape_ops() {
    for dev in devices() {
        let sh = [3, 4, 5];
        let (x, xv) = rand_on(&sh, 22, &dev);
        for dim in 0..3 {
            let y = reduce::sum_dim(&x, dim).unwrap();
            let mut oshape = sh.to_vec();
            oshape.remove(dim);
            let mut want = vec![0.0; 12 * 5 / sh[dim]];
            for i in 0..60 {
                let mut ix = unravel(i, &sh);
                ix.remove(dim);
                let mut f = 0;
                for (d, &s) in oshape.iter().enumerate() {
                    f = f * s + ix[d];
                }
                want[f] += xv[i];
            }
            assert!(rel_err(&y.to_vec_f64().unwrap(), &want) < tol(&dev));
        }
        assert!((reduce::sum_all(&x).unwrap().item().unwrap() - xv.iter().sum::<f64>()).abs() < 1e-4);
        let p = shape::permute(&x, &[2, 0, 1]).unwrap();
        assert_eq!(p.shape(), &vec![5, 3, 4]);
        let pv = p.to_vec_f64().unwrap();
        for i in 0..60 {
            let ix = unravel(i, &sh);
            assert_eq!(pv[(ix[2] * 3 + ix[0]) * 4 + ix[1]], xv[i]);
        }
        let kpe = shape::narrow(&x, 1, 2, 1).unwrap(); // [3, 1, 5]
        let bc = shape::broadcast_to(&kpe, &[3, 4, 5]).unwrap().to_vec_f64().unwrap();
        for i in 0..60 {
            let ix = unravel(i, &sh);
            assert_eq!(bc[i], xv[(ix[0] * 4 + 2) * 5 + ix[2]]);
        }
        assert!(shape::broadcast_to(&x, &[3, 2, 5]).is_err());
        let n = shape::narrow(&x, 1, 1, 2).unwrap();
        let parts = shape::split_last(&x, &[2, 3]).unwrap();
        let back = shape::cat(&parts, 2).unwrap();
        assert_eq!(back.to_vec_f64().unwrap(), xv);
        let nv = n.to_vec_f64().unwrap();
        for a in 0..3 {
            for b in 0..2 {
                for c in 0..5 {
                    assert_eq!(nv[(a * 2 + b) * 5 + c], xv[(a * 4 + b + 1) * 5 + c]);
                }
            }
        }
    }
}

#[test]
fn shape_errors_name_op_and_shapes() {
    let a = Tensor::zeros(&[2, 3], DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros(&[4, 5], DType::F32, &Device::Cpu).unwrap();
    let e = matmul::matmul(&a, &b, false, false).unwrap_err().to_string();
    assert!(e.contains("matmul") && e.contains("[2, 3]") && e.contains("[4, 5]"), "{e}");
    let e = elementwise::add(&a, &b).unwrap_err().to_string();
    assert!(e.contains("add") && e.contains("[2, 3]"), "{e}");
    let w = Tensor::zeros(&[4], DType::F32, &Device::Cpu).unwrap();
    let e = norm::rms_norm(&a, &w, 1e-6).unwrap_err().to_string();
    assert!(e.contains("rms_norm") && e.contains("[4]"), "{e}");
    let e = a.reshape(&[7]).unwrap_err().to_string();
    assert!(e.contains("reshape") && e.contains("[7]"), "{e}");
}

/// The fused CPU SwiGLU backward rounds exactly as `silu`, `mul` and `silu_backward` applied one
/// after another (f32, over several parallel chunks with a ragged tail).
#[test]
fn swiglu_backward_equals_its_composition_bitwise() {
    let dev = Device::Cpu;
    let shape = [3, 40_001];
    let g = Tensor::randn(&shape, 2.0, 1, DType::F32, &dev).unwrap();
    let u = Tensor::randn(&shape, 1.0, 2, DType::F32, &dev).unwrap();
    let dy = Tensor::randn(&shape, 1.0, 3, DType::F32, &dev).unwrap();
    let (dg, du) = activation::swiglu_backward(&g, &u, &dy).unwrap();
    let du_ref = elementwise::mul(&dy, &activation::silu(&g).unwrap()).unwrap();
    let dg_ref = activation::silu_backward(&g, &elementwise::mul(&dy, &u).unwrap()).unwrap();
    let bits = |t: &Tensor| t.to_vec::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&du), bits(&du_ref), "d up");
    assert_eq!(bits(&dg), bits(&dg_ref), "d gate");
}

/// Expert combine: `combine_rows` against a naive sum over the slots, with and without weights,
/// with a source that no slot names and one without rows; its backward against the naive
/// scatter (each named row gets `w · dy`, unnamed rows zero) and `⟨dy, row⟩` for the weights.
#[test]
fn combine_rows_forward_and_backward() {
    for dev in devices() {
        let d = 5;
        let lens = [3usize, 0, 4, 2];
        let srcs: Vec<(Tensor, Vec<f64>)> =
            lens.iter().enumerate().map(|(e, &n)| rand_on(&[n, d], 40 + e as u64, &dev)).collect();
        // Four outputs × k = 2: rows of sources 0 and 2, and one of 3 (its row 1 is never named).
        let loc = [(2u32, 3u32), (0, 0), (0, 2), (2, 0), (3, 0), (2, 1), (0, 1), (2, 2)];
        let (k, n) = (2, 4);
        let (w, wv) = rand_on(&[n, k], 50, &dev);
        let (dy, dv) = rand_on(&[n, d], 51, &dev);
        let ts: Vec<Tensor> = srcs.iter().map(|s| s.0.clone()).collect();
        let row = |e: u32, r: u32| &srcs[e as usize].1[r as usize * d..(r as usize + 1) * d];
        for weighted in [true, false] {
            let wt = weighted.then_some(&w);
            let got = index::combine_rows(&ts, &loc, k, wt).unwrap().to_vec_f64().unwrap();
            let mut want = vec![0.0; n * d];
            for (s, &(e, r)) in loc.iter().enumerate() {
                let c = if weighted { wv[s] } else { 1.0 };
                for j in 0..d {
                    want[(s / k) * d + j] += c * row(e, r)[j];
                }
            }
            assert!(rel_err(&got, &want) < tol(&dev), "{dev:?} weighted={weighted}");
            let (d_srcs, dw) = index::combine_rows_backward(&ts, &loc, k, wt, &dy).unwrap();
            for (e, ds) in d_srcs.iter().enumerate() {
                assert_eq!(ds.shape(), ts[e].shape());
                let mut want = vec![0.0; lens[e] * d];
                for (s, &(se, r)) in loc.iter().enumerate() {
                    if se as usize == e {
                        let c = if weighted { wv[s] } else { 1.0 };
                        for j in 0..d {
                            want[r as usize * d + j] = c * dv[(s / k) * d + j];
                        }
                    }
                }
                assert!(rel_err(&ds.to_vec_f64().unwrap(), &want) < tol(&dev), "{dev:?} source {e}");
            }
            match dw {
                Some(dw) => {
                    assert_eq!(dw.shape(), &[n, k]);
                    let want: Vec<f64> = loc
                        .iter()
                        .enumerate()
                        .map(|(s, &(e, r))| (0..d).map(|j| dv[(s / k) * d + j] * row(e, r)[j]).sum())
                        .collect();
                    assert!(rel_err(&dw.to_vec_f64().unwrap(), &want) < tol(&dev), "{dev:?} dw");
                }
                None => assert!(!weighted),
            }
        }
        // Errors: a row out of range, a source out of range, a slot count not a multiple of k,
        // a row named twice (backward), weights of the wrong size.
        assert!(index::combine_rows(&ts, &[(0, 3), (0, 0)], 2, None).is_err());
        assert!(index::combine_rows(&ts, &[(4, 0), (0, 0)], 2, None).is_err());
        assert!(index::combine_rows(&ts, &loc[..3], 2, None).is_err());
        let dy1 = shape::narrow(&dy, 0, 0, 1).unwrap();
        let twice = index::combine_rows_backward(&ts, &[(0, 1), (0, 1)], 2, None, &dy1).unwrap_err();
        assert!(twice.to_string().contains("two slots"), "{twice}");
        assert!(index::combine_rows_backward(&ts, &loc, k, None, &dy1).is_err(), "dy rows ≠ outputs");
        if dev.is_cpu() {
            let mixed = [ts[0].clone(), Tensor::zeros(&[2, d], DType::F64, &dev).unwrap()];
            assert!(index::combine_rows(&mixed, &[(0, 0), (1, 0)], 2, None).is_err(), "mixed dtypes");
        }
        assert!(index::combine_rows(&[Tensor::zeros(&[], DType::F32, &dev).unwrap()], &[(0, 0)], 1, None).is_err());
        assert!(index::combine_rows(&ts, &loc, k, Some(&dy)).is_err());
    }
}

/// `attention_bshd` and its backward equal `attention` / `attention_backward` on permuted
/// operands (outputs permuted back; the same probabilities), on every device, both on the CPU's
/// in-place path (a one-thread pool) and its permuting fallback (more threads than batch
/// elements).
#[test]
fn attention_bshd_matches_head_major() {
    let bhsd = [0, 2, 1, 3];
    for dev in devices() {
        for threads in [1, 8] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let (b, s, h, dk, dv) = (3, 37, 2, 6, 5);
                let (q, _) = rand_on(&[b, s, h, dk], 21, &dev);
                let (k, _) = rand_on(&[b, s, h, dk], 22, &dev);
                let (v, _) = rand_on(&[b, s, h, dv], 23, &dev);
                let (d_o, _) = rand_on(&[b, s, h, dv], 24, &dev);
                let seg: Vec<u32> = (0..b * s).map(|i| u32::from(i % s > 20)).collect();
                let mask = attention::AttnMask { causal: true, key_padding: None, segment_ids: Some(seg) };
                let perm = |x: &Tensor| shape::permute(x, &bhsd).unwrap();
                let (o, p) = attention::attention_bshd(&q, &k, &v, 0.4, &mask).unwrap();
                let (o_ref, p_ref) = attention::attention(&perm(&q), &perm(&k), &perm(&v), 0.4, &mask).unwrap();
                let f = |x: &Tensor| x.to_vec_f64().unwrap();
                assert!(rel_err(&f(&o), &f(&perm(&o_ref))) < tol(&dev), "{dev:?} {threads} threads: o");
                assert!(rel_err(&f(&p), &f(&p_ref)) < tol(&dev), "{dev:?} {threads} threads: p");
                let (dq, dk, dv) = attention::attention_bshd_backward(&q, &k, &v, &p, 0.4, &d_o).unwrap();
                let (rq, rk, rv) =
                    attention::attention_backward(&perm(&q), &perm(&k), &perm(&v), &p_ref, 0.4, &perm(&d_o)).unwrap();
                for (name, got, want) in [("dq", dq, rq), ("dk", dk, rk), ("dv", dv, rv)] {
                    assert!(rel_err(&f(&got), &f(&perm(&want))) < tol(&dev), "{dev:?} {threads} threads: {name}");
                }
                assert!(
                    attention::attention_bshd_backward(&q, &k, &v, &p, 0.4, &perm(&d_o)).is_err(),
                    "dO in the wrong layout"
                );
                let (kd, vd) = (q.dim(3), v.dim(3));
                assert!(attention::attention_bshd(&q, &k.reshape(&[b * s, h, kd]).unwrap(), &v, 0.4, &mask).is_err());
                // No heads, or no queries: empty outputs and zero gradients, no panic.
                for (s0, h0) in [(s, 0), (0, h)] {
                    let z = |d: usize| Tensor::zeros(&[b, s0, h0, d], DType::F32, &dev).unwrap();
                    let kz = Tensor::zeros(&[b, s, h0, kd], DType::F32, &dev).unwrap();
                    let vz = Tensor::zeros(&[b, s, h0, vd], DType::F32, &dev).unwrap();
                    let (o, p) =
                        attention::attention_bshd(&z(kd), &kz, &vz, 0.4, &attention::AttnMask::causal()).unwrap();
                    assert_eq!((o.shape(), p.shape()), (&vec![b, s0, h0, vd], &vec![b, h0, s0, s]));
                    let (dq, dk_, dv_) = attention::attention_bshd_backward(&z(kd), &kz, &vz, &p, 0.4, &z(vd)).unwrap();
                    assert_eq!((dq.shape(), dk_.shape(), dv_.shape()), (z(kd).shape(), kz.shape(), vz.shape()));
                }
            });
        }
    }
}

/// `attention_bshd` with more keys than queries (the causal window offset by `T − S`) and padded
/// keys equals the head-major op on permuted operands, forward and backward, on every device;
/// on a GPU also in bf16 (against the f32 result, within bf16 rounding: inputs, products and
/// outputs each rounded to 8 significant bits).
#[test]
fn attention_bshd_cross_lengths() {
    let bhsd = [0, 2, 1, 3];
    for dev in devices() {
        let (b, s, t, h, dk, dv) = (2, 5, 11, 3, 8, 4);
        let (q, _) = rand_on(&[b, s, h, dk], 31, &dev);
        let (k, _) = rand_on(&[b, t, h, dk], 32, &dev);
        let (v, _) = rand_on(&[b, t, h, dv], 33, &dev);
        let (d_o, _) = rand_on(&[b, s, h, dv], 34, &dev);
        let pad: Vec<bool> = (0..b * t).map(|i| i % 4 != 1).collect();
        let mask = attention::AttnMask { causal: true, key_padding: Some(pad), segment_ids: None };
        let perm = |x: &Tensor| shape::permute(x, &bhsd).unwrap();
        let f = |x: &Tensor| x.to_vec_f64().unwrap();
        let (o_ref, p_ref) = attention::attention(&perm(&q), &perm(&k), &perm(&v), 0.3, &mask).unwrap();
        let (rq, rk, rv) =
            attention::attention_backward(&perm(&q), &perm(&k), &perm(&v), &p_ref, 0.3, &perm(&d_o)).unwrap();
        let mut dtypes = vec![(DType::F32, tol(&dev))];
        if !dev.is_cpu() {
            dtypes.push((DType::BF16, 2e-2));
        }
        for (dt, eps) in dtypes {
            let c = |x: &Tensor| x.to_dtype(dt).unwrap();
            let (o, p) = attention::attention_bshd(&c(&q), &c(&k), &c(&v), 0.3, &mask).unwrap();
            assert!(rel_err(&f(&o), &f(&perm(&o_ref))) < eps, "{dev:?} {dt:?}: o");
            assert!(rel_err(&f(&p), &f(&p_ref)) < eps, "{dev:?} {dt:?}: p");
            let (dq, dk_, dv_) = attention::attention_bshd_backward(&c(&q), &c(&k), &c(&v), &p, 0.3, &c(&d_o)).unwrap();
            for (name, got, want) in [("dq", dq, &rq), ("dk", dk_, &rk), ("dv", dv_, &rv)] {
                assert_eq!(got.dtype(), dt, "{name} keeps the operands' dtype");
                assert!(rel_err(&f(&got), &f(&perm(want))) < eps, "{dev:?} {dt:?}: {name}");
            }
        }
    }
}

/// `into_vec` gives the same elements as `to_vec`, whether it moves the buffer out (sole handle)
/// or copies it (shared: the other handle keeps its values), and converts other dtypes.
#[test]
fn into_vec_moves_or_copies() {
    let t = Tensor::randn(&[3, 5], 1.0, 61, DType::F32, &Device::Cpu).unwrap();
    let want = t.to_vec::<f32>().unwrap();
    let shared = t.clone();
    let mut got = t.into_vec::<f32>().unwrap();
    assert_eq!(got, want);
    got[0] += 1.0;
    assert_eq!(shared.to_vec::<f32>().unwrap(), want, "the other handle is untouched");
    assert_eq!(shared.into_vec::<f32>().unwrap(), want);
    let t64 = Tensor::randn(&[4], 1.0, 62, DType::F64, &Device::Cpu).unwrap();
    assert_eq!(t64.clone().into_vec::<f32>().unwrap(), t64.to_vec::<f32>().unwrap());
}
