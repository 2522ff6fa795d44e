//! Criterion benches of the CPU ops: GEMM at 256…2048, and the main model ops forward and
//! backward at `cpu-small` sizes (8 × 256 tokens, hidden 256, vocab 512, 4 heads).
//! `cargo bench -p tensor`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tensor::ops::{activation, attention, loss, matmul, norm, rope, softmax};
use tensor::{DType, Device, Tensor};

fn t(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, 1.0, seed, DType::F32, &Device::Cpu).unwrap()
}

fn gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm_f32");
    g.sample_size(10);
    for n in [256usize, 512, 1024, 2048] {
        let (a, b) = (t(&[n, n], 1), t(&[n, n], 2));
        g.throughput(Throughput::Elements((2 * n * n * n) as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |bch, _| {
            bch.iter(|| matmul::matmul(&a, &b, false, false).unwrap())
        });
    }
    g.finish();
}

fn model_ops(c: &mut Criterion) {
    let (tok, d, v, h, hd) = (8 * 256, 256, 512, 4, 48);
    let x = t(&[tok, d], 3);
    let w = t(&[d], 4);
    let mut g = c.benchmark_group("ops_cpu_small");
    g.sample_size(20);
    g.throughput(Throughput::Elements(tok as u64));
    g.bench_function("rms_norm_fwd_bwd", |b| {
        b.iter(|| {
            let (y, r) = norm::rms_norm(&x, &w, 1e-6).unwrap();
            norm::rms_norm_backward(&x, &w, &r, &y).unwrap()
        })
    });
    let up = t(&[tok, 512], 5);
    let gate = t(&[tok, 512], 6);
    g.bench_function("swiglu_fwd_bwd", |b| {
        b.iter(|| {
            let y = activation::swiglu(&gate, &up).unwrap();
            activation::swiglu_backward(&gate, &up, &y).unwrap()
        })
    });
    let logits = t(&[tok, v], 7);
    let targets: Vec<i64> = (0..tok as i64).map(|i| i % v as i64).collect();
    g.bench_function("cross_entropy_fwd_bwd", |b| {
        b.iter(|| {
            loss::cross_entropy(&logits, &targets, -100).unwrap();
            loss::cross_entropy_backward(&logits, &targets, -100, 1.0).unwrap()
        })
    });
    g.bench_function("softmax_fwd_bwd", |b| {
        b.iter(|| {
            let y = softmax::softmax(&logits).unwrap();
            softmax::softmax_backward(&y, &logits).unwrap()
        })
    });
    let (q, k, vv) = (t(&[8, h, 256, hd], 8), t(&[8, h, 256, hd], 9), t(&[8, h, 256, 32], 10));
    let mask = attention::AttnMask::causal();
    g.bench_function("attention_fwd_bwd", |b| {
        b.iter(|| {
            let (o, p) = attention::attention(&q, &k, &vv, 0.14, &mask).unwrap();
            attention::attention_backward(&q, &k, &vv, &p, 0.14, &o).unwrap()
        })
    });
    let table = rope::RopeTable::new(16, 10000.0, 256, None).unwrap();
    let pos: Vec<u32> = (0..tok as u32).map(|i| i % 256).collect();
    let xr = t(&[8, 256, h, 16], 11);
    g.bench_function("rope_fwd", |b| b.iter(|| rope::rope(&xr, &pos, &table).unwrap()));
    let wq = t(&[512, d], 12);
    g.bench_function("linear_fwd_bwd_2048x256x512", |b| {
        b.iter(|| {
            let y = matmul::linear(&x, &wq).unwrap();
            matmul::linear_backward(&x, &wq, &y).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, gemm, model_ops);
criterion_main!(benches);
