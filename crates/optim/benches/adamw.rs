//! AdamW step throughput on 1M f32 parameters (CPU).
use criterion::{Criterion, criterion_group, criterion_main};
use optim::{AdamW, AdamWConfig, Grads, Params};
use tensor::{DType, Device, Tensor};

fn bench(c: &mut Criterion) {
    let mut params = Params::default();
    params.insert("w", Tensor::randn(&[1 << 20], 1.0, 1, DType::F32, &Device::Cpu).unwrap()).unwrap();
    let mut grads = Grads::default();
    grads.accumulate("w", &Tensor::randn(&[1 << 20], 1.0, 2, DType::F32, &Device::Cpu).unwrap()).unwrap();
    let mut opt = AdamW::new(AdamWConfig::default());
    c.bench_function("adamw_step_1M", |b| b.iter(|| opt.step(&mut params, &grads, 1e-3).unwrap()));
}

criterion_group!(benches, bench);
criterion_main!(benches);
