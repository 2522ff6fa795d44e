//! MoE layer forward+backward tokens/s for 8…64 routed experts and several top-k
//! (hidden 256, moe_intermediate 128, one shared expert, 1024 tokens, f32 CPU).
//! `cargo bench -p moe-router`

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use moe_router::{Moe, MoeConfig, ScoringFunc, TopkMethod};
use tensor::{DType, Device, Tensor};

fn bench(c: &mut Criterion) {
    let t = 1024;
    let x = Tensor::randn(&[t, 256], 1.0, 1, DType::F32, &Device::Cpu).unwrap();
    let mut g = c.benchmark_group("moe_fwd_bwd_1024_tokens");
    g.sample_size(10);
    g.throughput(Throughput::Elements(t as u64));
    for (e, k) in [(8, 2), (16, 4), (32, 4), (64, 6), (64, 8)] {
        let cfg = MoeConfig {
            hidden_size: 256,
            moe_intermediate_size: 128,
            n_routed_experts: e,
            n_shared_experts: 1,
            num_experts_per_tok: k,
            n_group: 4,
            topk_group: 2,
            norm_topk_prob: true,
            routed_scaling_factor: 2.5,
            scoring_func: ScoringFunc::Sigmoid,
            topk_method: TopkMethod::NoauxTc,
            seq_aux_alpha: 1e-4,
        };
        let mut m = Moe::init(cfg, 0.02, 0, DType::F32, &Device::Cpu).unwrap();
        g.bench_with_input(BenchmarkId::new(format!("e{e}_k{k}"), t), &t, |b, _| {
            b.iter(|| {
                let (y, s) = m.forward(&x, 256).unwrap();
                m.backward(&s, &y).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
