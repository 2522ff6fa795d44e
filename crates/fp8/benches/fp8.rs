//! FP8 (DeepSeek-V3 §3.3) CPU throughput: 1×128 activation quantise, 128×128 weight quantise,
//! dequantise, and the reference block-scaled GEMM (fp32 promotion and the emulated 14-bit
//! accumulator), and the FP8 training linear (Fprop, then Fprop + Dgrad + Wgrad) next to the f32
//! linear at a cpu-small shape. `cargo bench -p fp8`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fp8::{Accumulation, ScaleFormat, fp8_linear_bwd, fp8_linear_fwd, gemm, quantize_act, quantize_weight};
use std::hint::black_box;
use tensor::ops::matmul::{linear, linear_backward};
use tensor::{DType, Device, Tensor};

fn randn(n: usize, seed: u64) -> Vec<f32> {
    Tensor::randn(&[n], 1.0, seed, DType::F32, &Device::Cpu).unwrap().to_vec::<f32>().unwrap()
}

fn bench(c: &mut Criterion) {
    let (rows, cols) = (1024, 4096);
    let x = randn(rows * cols, 1);
    let mut g = c.benchmark_group("fp8_quant_1024x4096");
    g.sample_size(10);
    g.throughput(Throughput::Elements((rows * cols) as u64));
    g.bench_function("act_1x128", |b| {
        b.iter(|| quantize_act("x", black_box(&x), rows, cols, ScaleFormat::Fp32).unwrap())
    });
    g.bench_function("act_1x128_ue8m0", |b| {
        b.iter(|| quantize_act("x", black_box(&x), rows, cols, ScaleFormat::Ue8m0).unwrap())
    });
    g.bench_function("weight_128x128", |b| {
        b.iter(|| quantize_weight("w", black_box(&x), rows, cols, ScaleFormat::Fp32).unwrap())
    });
    let q = quantize_weight("w", &x, rows, cols, ScaleFormat::Fp32).unwrap();
    g.bench_function("dequant_weight_128x128", |b| b.iter(|| black_box(&q).dequantize()));
    g.finish();

    let (m, n, k) = (128, 128, 4096);
    let qa = quantize_act("a", &randn(m * k, 2), m, k, ScaleFormat::Fp32).unwrap();
    let qb = quantize_weight("b", &randn(n * k, 3), n, k, ScaleFormat::Fp32).unwrap();
    let mut g = c.benchmark_group("fp8_gemm_128x128x4096");
    g.sample_size(10);
    g.throughput(Throughput::Elements((2 * m * n * k) as u64));
    for (name, acc) in [
        ("fp32_promoted", Accumulation::Fp32),
        ("limited14_promoted", Accumulation::Limited { mantissa_bits: 14, promote: true }),
        ("limited14_unpromoted", Accumulation::Limited { mantissa_bits: 14, promote: false }),
    ] {
        g.bench_function(name, |b| b.iter(|| gemm(black_box(&qa), black_box(&qb), acc).unwrap()));
    }
    g.finish();
}

/// DeepSeek-V3 §3.3 training linear at the cpu-small dense-MLP shape: 2048 tokens, 256 → 512.
fn bench_linear(c: &mut Criterion) {
    let (m, k, n) = (2048, 256, 512);
    let x = Tensor::randn(&[m, k], 1.0, 4, DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::randn(&[n, k], 0.05, 5, DType::F32, &Device::Cpu).unwrap();
    let dy = Tensor::randn(&[m, n], 1.0, 6, DType::F32, &Device::Cpu).unwrap();
    let mut g = c.benchmark_group("linear_train_2048x256x512");
    g.sample_size(10);
    g.throughput(Throughput::Elements((2 * m * n * k) as u64));
    g.bench_function("fp8_fwd", |b| b.iter(|| fp8_linear_fwd(black_box(&x), black_box(&w)).unwrap()));
    g.bench_function("fp8_fwd_bwd", |b| {
        b.iter(|| {
            let (y, sv) = fp8_linear_fwd(black_box(&x), black_box(&w)).unwrap();
            (y, fp8_linear_bwd(&sv, black_box(&dy)).unwrap())
        })
    });
    g.bench_function("f32_fwd_bwd", |b| {
        b.iter(|| (linear(black_box(&x), &w).unwrap(), linear_backward(&x, &w, black_box(&dy)).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench, bench_linear);
criterion_main!(benches);
