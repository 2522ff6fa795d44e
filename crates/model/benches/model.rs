//! Criterion benches of the whole model on the CPU: the `cpu-small` training step's forward +
//! backward (batch 8 × 256, shared/docs/benchmarks.md) and one batched decode step over a
//! 256-token latent cache (absorbed MLA, batch 8).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mla::cache::DecodeMode;
use model::{DeepseekV3, DeepseekV3Config, lm_loss};
use tensor::ops::attention::AttnMask;
use tensor::{DType, Device};

#[path = "../examples/common/cpu_small.rs"]
mod cpu_small;
use cpu_small::{CPU_SMALL, stream};

fn forward_backward(c: &mut Criterion) {
    let cfg = DeepseekV3Config::from_json(CPU_SMALL, "cpu-small").unwrap();
    let mut m = DeepseekV3::init(cfg, 0.02, 0, DType::F32, &Device::Cpu).unwrap();
    let (b, s) = (8, 256);
    let (ids, targets) = stream(b, s);
    let pos: Vec<u32> = (0..b * s).map(|i| (i % s) as u32).collect();
    let mut g = c.benchmark_group("model_cpu_small");
    g.sample_size(10);
    g.throughput(Throughput::Elements((b * s) as u64));
    g.bench_function("forward_backward_8x256", |bch| {
        bch.iter(|| {
            let (logits, saved) = m.forward(&ids, b, s, &pos, &AttnMask::causal()).unwrap();
            let (loss, dl) = lm_loss(&logits, &targets, -100).unwrap();
            m.zero_grad();
            m.backward(&saved, &dl).unwrap();
            loss
        })
    });
    g.finish();
}

fn decode_step(c: &mut Criterion) {
    let cfg = DeepseekV3Config::from_json(CPU_SMALL, "cpu-small").unwrap();
    let m = DeepseekV3::init(cfg, 0.02, 0, DType::F32, &Device::Cpu).unwrap();
    let (b, ctx) = (8, 256);
    let (ids, _) = stream(b, ctx);
    let pos: Vec<u32> = (0..b * ctx).map(|i| (i % ctx) as u32).collect();
    // Caches preallocated for the context and the decoded token, absorbed weights split once.
    let mut prefilled = m.decode_state(ctx + 1).unwrap();
    m.decode_step_with(&ids, (b, ctx), &pos, &mut prefilled, None, DecodeMode::Naive).unwrap();
    let next: Vec<u32> = (0..b as u32).collect();
    let npos = vec![ctx as u32; b];
    let mut g = c.benchmark_group("model_cpu_small");
    g.sample_size(20);
    g.throughput(Throughput::Elements(b as u64));
    g.bench_function("decode_step_b8_ctx256", |bch| {
        bch.iter_batched(
            || prefilled.clone(),
            |mut st| m.decode_step_with(&next, (b, 1), &npos, &mut st, None, DecodeMode::Absorbed).unwrap(),
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, forward_backward, decode_step);
criterion_main!(benches);
