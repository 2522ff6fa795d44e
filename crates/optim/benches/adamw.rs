//! AdamW step throughput on 1M f32 parameters (CPU).
use criterion::{Criterion, criterion_group, criterion_main};
use optim::{AdamW, AdamWConfig};
use tensor::{DType, Device, Param, Tensor};

fn bench(c: &mut Criterion) {
    let mut w = Param::new(Tensor::randn(&[1 << 20], 1.0, 1, DType::F32, &Device::Cpu).unwrap());
    w.accumulate_grad(&Tensor::randn(&[1 << 20], 1.0, 2, DType::F32, &Device::Cpu).unwrap()).unwrap();
    let mut opt = AdamW::new(AdamWConfig::default(), &["w"]);
    c.bench_function("adamw_step_1M", |b| b.iter(|| opt.step(&mut [&mut w], 1e-3).unwrap()));
}

criterion_group!(benches, bench);
criterion_main!(benches);
