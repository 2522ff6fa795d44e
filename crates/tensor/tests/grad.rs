//! Finite-difference gradient checks (f64) of every op's backward, over random shapes drawn by
//! proptest. Property checked for each op: for the loss L = Σ op(x) ⊙ R with random R, the
//! backward's gradients equal the central differences of L (rtol 1e-5).

mod common;
use common::*;
use proptest::prelude::*;
use tensor::gradcheck::{GradCheck, check, project};
use tensor::ops::{activation, attention, elementwise, index, loss, matmul, norm, reduce, rope, shape, softmax};
use tensor::{Result, Tensor};

fn cfg() -> ProptestConfig {
    ProptestConfig { cases: 10, ..ProptestConfig::default() }
}

/// Check `backward(inputs, R)` against differences of `Σ forward(inputs) ⊙ R`.
fn gc(
    what: &str,
    inputs: Vec<Tensor>,
    seed: u64,
    forward: impl Fn(&[Tensor]) -> Result<Tensor>,
    backward: impl Fn(&[Tensor], &Tensor) -> Result<Vec<Tensor>>,
) {
    let y = forward(&inputs).unwrap();
    let r = rand64(y.shape(), seed ^ 0xabcdef);
    let grads = backward(&inputs, &r).unwrap();
    let rep = check(|xs| project(&forward(xs)?, &r), &inputs, &grads, &GradCheck::default()).unwrap();
    rep.assert_ok(what);
}

/// The attention backward at sizes spanning several row blocks, where each block's products stop
/// at its last non-zero probability: causal with packed segments and padding, decoding-style
/// (fewer queries than keys), and the first 35 keys padded so that a whole block of query rows
/// sees no key (zero gradients, a block with no products).
#[test]
fn attention_grad_across_row_blocks() {
    for (s, t, first_visible) in [(70, 70, 0), (40, 70, 0), (70, 70, 35)] {
        let (b, h, dk, dv) = (1, 2, 4, 3);
        let mask = attention::AttnMask {
            causal: true,
            key_padding: Some((0..b * t).map(|i| i % 11 != 5 && i % t >= first_visible).collect()),
            segment_ids: Some((0..b * t).map(|i| u32::from(i % t >= t / 3)).collect()),
        };
        let ins = vec![rand64(&[b, h, s, dk], 7), rand64(&[b, h, t, dk], 8), rand64(&[b, h, t, dv], 9)];
        let m2 = mask.clone();
        gc(
            "attention (row blocks)",
            ins,
            7,
            move |x| Ok(attention::attention(&x[0], &x[1], &x[2], 0.8, &mask)?.0),
            move |x, r| {
                let (_, p) = attention::attention(&x[0], &x[1], &x[2], 0.8, &m2)?;
                let (dq, dk, dv) = attention::attention_backward(&x[0], &x[1], &x[2], &p, 0.8, r)?;
                Ok(vec![dq, dk, dv])
            },
        );
    }
}

/// The `[B, S, H, D]`-layout attention's backward (heads read and written in place), in a
/// one-thread pool so the in-place path runs even for one batch element; causal, packed segments
/// and padding, over two row blocks.
#[test]
fn attention_bshd_grad() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    pool.install(|| {
        let (b, h, s, dk, dv) = (2, 3, 40, 4, 3);
        let mask = attention::AttnMask {
            causal: true,
            key_padding: Some((0..b * s).map(|i| i % 13 != 6).collect()),
            segment_ids: Some((0..b * s).map(|i| u32::from(i % s >= s / 3)).collect()),
        };
        let ins = vec![rand64(&[b, s, h, dk], 17), rand64(&[b, s, h, dk], 18), rand64(&[b, s, h, dv], 19)];
        let m2 = mask.clone();
        gc(
            "attention_bshd",
            ins,
            17,
            move |x| Ok(attention::attention_bshd(&x[0], &x[1], &x[2], 0.7, &mask)?.0),
            move |x, r| {
                let (_, p) = attention::attention_bshd(&x[0], &x[1], &x[2], 0.7, &m2)?;
                let (dq, dk, dv) = attention::attention_bshd_backward(&x[0], &x[1], &x[2], &p, 0.7, r)?;
                Ok(vec![dq, dk, dv])
            },
        );
    });
}

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn matmul_grad(batch in 1usize..3, m in 1usize..6, n in 1usize..6, k in 1usize..6,
                   ta: bool, tb: bool, shared: bool, seed in 0u64..1000) {
        let ash = if ta { vec![batch, k, m] } else { vec![batch, m, k] };
        let mut bsh = if tb { vec![batch, n, k] } else { vec![batch, k, n] };
        if shared { bsh.remove(0); }
        gc("matmul", vec![rand64(&ash, seed), rand64(&bsh, seed + 1)], seed,
           |x| matmul::matmul(&x[0], &x[1], ta, tb),
           |x, r| { let (a, b) = matmul::matmul_backward(&x[0], &x[1], ta, tb, r)?; Ok(vec![a, b]) });
    }

    #[test]
    fn binary_grad(rows in 1usize..5, cols in 1usize..6, bcast in 0usize..3, seed in 0u64..1000) {
        let sb = match bcast { 0 => vec![rows, cols], 1 => vec![cols], _ => vec![rows, 1] };
        let ins = vec![rand64(&[rows, cols], seed), rand64(&sb, seed + 1)];
        gc("add", ins.clone(), seed, |x| elementwise::add(&x[0], &x[1]),
           |x, r| { let (a, b) = elementwise::add_backward(x[0].shape(), x[1].shape(), r)?; Ok(vec![a, b]) });
        gc("sub", ins.clone(), seed, |x| elementwise::sub(&x[0], &x[1]),
           |x, r| { let (a, b) = elementwise::sub_backward(x[0].shape(), x[1].shape(), r)?; Ok(vec![a, b]) });
        gc("mul", ins.clone(), seed, |x| elementwise::mul(&x[0], &x[1]),
           |x, r| { let (a, b) = elementwise::mul_backward(&x[0], &x[1], r)?; Ok(vec![a, b]) });
        let pos = vec![ins[0].clone(), elementwise::affine(&elementwise::mul(&ins[1], &ins[1]).unwrap(), 1.0, 0.5).unwrap()];
        gc("div", pos, seed, |x| elementwise::div(&x[0], &x[1]),
           |x, r| { let (a, b) = elementwise::div_backward(&x[0], &x[1], r)?; Ok(vec![a, b]) });
        gc("scale", vec![ins[0].clone()], seed, |x| elementwise::scale(&x[0], -0.7),
           |_, r| Ok(vec![elementwise::scale_backward(r, -0.7)?]));
    }

    #[test]
    fn activation_grad(n in 1usize..40, seed in 0u64..1000) {
        let ins = vec![rand64(&[n], seed), rand64(&[n], seed + 1)];
        gc("silu", vec![ins[0].clone()], seed, |x| activation::silu(&x[0]),
           |x, r| Ok(vec![activation::silu_backward(&x[0], r)?]));
        gc("sigmoid", vec![ins[0].clone()], seed, |x| activation::sigmoid(&x[0]),
           |x, r| Ok(vec![activation::sigmoid_backward(&activation::sigmoid(&x[0])?, r)?]));
        gc("swiglu", ins, seed, |x| activation::swiglu(&x[0], &x[1]),
           |x, r| { let (g, u) = activation::swiglu_backward(&x[0], &x[1], r)?; Ok(vec![g, u]) });
    }

    #[test]
    fn rms_norm_grad(rows in 1usize..4, d in 1usize..12, seed in 0u64..1000) {
        gc("rms_norm", vec![rand64(&[rows, d], seed), rand64(&[d], seed + 1)], seed,
           |x| Ok(norm::rms_norm(&x[0], &x[1], 1e-6)?.0),
           |x, r| {
               let (_, rstd) = norm::rms_norm(&x[0], &x[1], 1e-6)?;
               let (dx, dw) = norm::rms_norm_backward(&x[0], &x[1], &rstd, r)?;
               Ok(vec![dx, dw])
           });
    }

    #[test]
    fn softmax_grad(rows in 1usize..4, d in 1usize..12, seed in 0u64..1000) {
        let ins = vec![rand64(&[rows, d], seed)];
        gc("softmax", ins.clone(), seed, |x| softmax::softmax(&x[0]),
           |x, r| Ok(vec![softmax::softmax_backward(&softmax::softmax(&x[0])?, r)?]));
        gc("log_softmax", ins, seed, |x| softmax::log_softmax(&x[0]),
           |x, r| Ok(vec![softmax::log_softmax_backward(&softmax::log_softmax(&x[0])?, r)?]));
    }

    #[test]
    fn attention_grad(b in 1usize..3, h in 1usize..3, s in 1usize..5, extra in 0usize..3,
                      dk in 1usize..5, dv in 1usize..5, masked: bool, seed in 0u64..1000) {
        let t = s + extra;
        let mask = attention::AttnMask {
            causal: true,
            key_padding: masked.then(|| (0..b * t).map(|i| i % t != t - 1 || t == 1).collect()),
            segment_ids: masked.then(|| (0..b * t).map(|i| u32::from(i % t >= t / 2)).collect()),
        };
        let ins = vec![rand64(&[b, h, s, dk], seed), rand64(&[b, h, t, dk], seed + 1), rand64(&[b, h, t, dv], seed + 2)];
        let m2 = mask.clone();
        gc("attention", ins, seed,
           move |x| Ok(attention::attention(&x[0], &x[1], &x[2], 0.8, &mask)?.0),
           move |x, r| {
               let (_, p) = attention::attention(&x[0], &x[1], &x[2], 0.8, &m2)?;
               let (dq, dk, dv) = attention::attention_backward(&x[0], &x[1], &x[2], &p, 0.8, r)?;
               Ok(vec![dq, dk, dv])
           });
    }

    #[test]
    fn rope_grad(b in 1usize..3, s in 1usize..4, h in 1usize..3, half in 1usize..5, yarn: bool, seed in 0u64..1000) {
        let d = 2 * half;
        let y = rope::Yarn { factor: 4.0, original_max_position_embeddings: 8, beta_fast: 32.0, beta_slow: 1.0,
                             mscale: Some(0.707), mscale_all_dim: Some(1.0), attention_factor: None, truncate: true };
        let table = rope::RopeTable::new(d, 10000.0, 32, yarn.then_some(&y)).unwrap();
        let pos: Vec<u32> = (0..b * s).map(|i| ((i as u64 * 5 + seed) % 32) as u32).collect();
        let (t2, p2) = (table.clone(), pos.clone());
        gc("rope", vec![rand64(&[b, s, h, d], seed)], seed,
           move |x| rope::rope(&x[0], &pos, &table),
           move |_, r| Ok(vec![rope::rope_backward(r, &p2, &t2)?]));
    }

    #[test]
    fn index_grad(v in 1usize..8, d in 1usize..5, n in 1usize..8, k in 1usize..4, seed in 0u64..1000) {
        let ids: Vec<u32> = (0..n).map(|i| ((i as u64 * 3 + seed) % v as u64) as u32).collect();
        let (i1, i2) = (ids.clone(), ids.clone());
        gc("embedding", vec![rand64(&[v, d], seed)], seed,
           move |x| index::embedding(&i1, &x[0]),
           move |_, r| Ok(vec![index::embedding_backward(&i2, v, r)?]));
        let (i3, i4) = (ids.clone(), ids.clone());
        gc("index_add", vec![rand64(&[n, d], seed)], seed,
           move |x| index::index_add(v, &i3, &x[0]),
           move |_, r| Ok(vec![index::index_select(r, &i4)?]));
        let e = k + v;
        gc("topk", vec![rand64(&[n, e], seed)], seed,
           move |x| Ok(index::topk(&x[0], k)?.0),
           move |x, r| { let (_, idx) = index::topk(&x[0], k)?; Ok(vec![index::topk_backward(r, &idx, e)?]) });
    }

    /// Expert combine: gradients of every source and of the weights (each source row named by at
    /// most one slot; some rows by none).
    #[test]
    fn combine_rows_grad(n in 1usize..5, k in 1usize..4, d in 1usize..5, seed in 0u64..1000) {
        // Slot s names row s / 3 of source s % 3 (each row once); every source has one more row
        // that no slot names.
        let slots = n * k;
        let loc: Vec<(u32, u32)> = (0..slots).map(|s| ((s % 3) as u32, (s / 3) as u32)).collect();
        let rows = |e: usize| (0..slots).filter(|s| s % 3 == e).count() + 1;
        let mut inputs: Vec<Tensor> = (0..3).map(|e| rand64(&[rows(e), d], seed + e as u64)).collect();
        inputs.push(rand64(&[n, k], seed + 7));
        let (l1, l2) = (loc.clone(), loc.clone());
        gc("combine_rows", inputs, seed,
           move |x| index::combine_rows(&x[..3], &l1, k, Some(&x[3])),
           move |x, r| {
               let (mut g, dw) = index::combine_rows_backward(&x[..3], &l2, k, Some(&x[3]), r)?;
               g.push(dw.expect("weighted"));
               Ok(g)
           });
    }

    #[test]
    fn cross_entropy_grad(n in 1usize..6, v in 2usize..9, seed in 0u64..1000) {
        let tg: Vec<i64> = (0..n).map(|i| if (i as u64 + seed).is_multiple_of(4) { -100 } else { ((i as u64 * 7 + seed) % v as u64) as i64 }).collect();
        let (t1, t2) = (tg.clone(), tg.clone());
        let x = rand64(&[n, v], seed);
        let f = move |x: &[Tensor]| loss::cross_entropy(&x[0], &t1, -100).and_then(|(l, _)| l.item());
        let g = loss::cross_entropy_backward(&x, &t2, -100, 1.0).unwrap();
        check(f, &[x], &[g], &GradCheck::default()).unwrap().assert_ok("cross_entropy");
    }

    #[test]
    fn reduce_and_shape_grad(a in 1usize..4, b in 1usize..4, c in 1usize..4, dim in 0usize..3, seed in 0u64..1000) {
        let x = rand64(&[a, b, c], seed);
        let sh = [a, b, c];
        gc("sum_dim", vec![x.clone()], seed, move |x| reduce::sum_dim(&x[0], dim),
           move |_, r| Ok(vec![reduce::sum_dim_backward(r, dim, sh[dim])?]));
        gc("mean_dim", vec![x.clone()], seed, move |x| reduce::mean_dim(&x[0], dim),
           move |_, r| Ok(vec![reduce::mean_dim_backward(r, dim, sh[dim])?]));
        let perm = [[0, 1, 2], [2, 0, 1], [1, 2, 0]][dim];
        gc("permute", vec![x.clone()], seed, move |x| shape::permute(&x[0], &perm),
           move |_, r| Ok(vec![shape::permute_backward(r, &perm)?]));
        let len = sh[dim].div_ceil(2);
        gc("narrow", vec![x.clone()], seed, move |x| shape::narrow(&x[0], dim, sh[dim] - len, len),
           move |_, r| Ok(vec![shape::narrow_backward(r, &sh, dim, sh[dim] - len)?]));
        let mut big = sh.to_vec();
        big[dim] += 2;
        let mut small = sh.to_vec();
        small[dim] = 1;
        gc("broadcast_to", vec![rand64(&small, seed)], seed, move |x| shape::broadcast_to(&x[0], &big),
           move |_, r| Ok(vec![shape::broadcast_to_backward(r, &small)?]));
        let y = rand64(&[a, b, c], seed + 9);
        gc("cat", vec![x.clone(), y], seed, move |x| shape::cat(x, dim),
           move |_, r| shape::cat_backward(r, &[sh[dim], sh[dim]], dim));
        let f = |x: &[Tensor]| reduce::sum_all(&x[0])?.item();
        let g = reduce::sum_all_backward(1.0, x.shape(), &x).unwrap();
        check(f, &[x], &[g], &GradCheck::default()).unwrap().assert_ok("sum_all");
    }
}

/// The checker itself must reject a wrong gradient (a check that cannot fail proves nothing).
#[test]
fn gradcheck_rejects_wrong_gradient() {
    let x = rand64(&[3, 4], 1);
    let r = rand64(&[3, 4], 2);
    let wrong = activation::silu(&r).unwrap(); // not d/dx Σ silu(x)⊙r
    let rep = check(|xs| project(&activation::silu(&xs[0])?, &r), &[x], &[wrong], &GradCheck::default()).unwrap();
    assert!(!rep.ok());
}
