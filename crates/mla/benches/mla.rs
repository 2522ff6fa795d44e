//! MLA benches at the `cpu-small` attention dims (hidden 256, 4 heads, q_lora 128, kv_lora 64,
//! nope 32, rope 16, v 32): training forward+backward tokens/s (batch 8 × 256), and one decode
//! step's latency through the latent cache, absorbed vs naive, at contexts 512, 2k, 8k.
//! `cargo bench -p mla`; with `--features cuda` and `R1_BENCH_DEVICE=cuda` the same benches run on
//! the GPU (each iteration ends with a device synchronisation).

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mla::cache::{DecodeMode, LatentCache};
use mla::{Mla, MlaConfig};
use tensor::ops::attention::AttnMask;
use tensor::{DType, Device, Tensor};

fn cfg() -> MlaConfig {
    MlaConfig {
        hidden_size: 256,
        num_attention_heads: 4,
        q_lora_rank: Some(128),
        kv_lora_rank: 64,
        qk_nope_head_dim: 32,
        qk_rope_head_dim: 16,
        v_head_dim: 32,
        rms_norm_eps: 1e-6,
        rope_theta: 10000.0,
        max_position_embeddings: 16384,
        yarn: None,
    }
}

/// The device the benches run on: the CPU, or the first GPU when `R1_BENCH_DEVICE=cuda`.
fn device() -> Device {
    if std::env::var("R1_BENCH_DEVICE").is_ok_and(|v| v == "cuda") {
        Device::all_available().into_iter().find(|d| !d.is_cpu()).expect("R1_BENCH_DEVICE=cuda but no GPU")
    } else {
        Device::Cpu
    }
}

fn train(c: &mut Criterion) {
    let dev = device();
    let mut m = Mla::init(cfg(), 0.02, 0, DType::F32, &dev).unwrap();
    let (b, s) = (8, 256);
    let x = Tensor::randn(&[b, s, 256], 1.0, 1, DType::F32, &dev).unwrap();
    let pos: Vec<u32> = (0..b * s).map(|i| (i % s) as u32).collect();
    let mut g = c.benchmark_group("mla_train");
    g.sample_size(10);
    g.throughput(Throughput::Elements((b * s) as u64));
    g.bench_function("fwd_bwd_8x256", |bch| {
        bch.iter(|| {
            let (y, saved) = m.forward(&x, &pos, &AttnMask::causal()).unwrap();
            let dx = m.backward(&saved, &y).unwrap();
            dev.synchronize().unwrap();
            dx
        })
    });
    g.finish();
}

fn decode(c: &mut Criterion) {
    let cf = cfg();
    let dev = device();
    let m = Mla::init(cf.clone(), 0.02, 0, DType::F32, &dev).unwrap();
    let x = Tensor::randn(&[1, 1, 256], 1.0, 2, DType::F32, &dev).unwrap();
    let mut g = c.benchmark_group("mla_decode_step");
    g.sample_size(10);
    for ctx in [512usize, 2048, 8192] {
        // A cache holding ctx random latents, with room for the decoded token.
        let mut cache = LatentCache::with_capacity(ctx + 1);
        cache
            .append(
                &Tensor::randn(&[1, ctx, cf.kv_lora_rank], 1.0, 3, DType::F32, &dev).unwrap(),
                &Tensor::randn(&[1, ctx, cf.qk_rope_head_dim], 1.0, 4, DType::F32, &dev).unwrap(),
            )
            .unwrap();
        let w = m.absorbed_weights().unwrap();
        for mode in [DecodeMode::Absorbed, DecodeMode::Naive] {
            g.bench_with_input(BenchmarkId::new(format!("{mode:?}"), ctx), &ctx, |bch, &ctx| {
                bch.iter_batched(
                    || cache.clone(),
                    |mut cc| {
                        let y = m.decode_with(&x, &[ctx as u32], &mut cc, None, mode, Some(&w)).unwrap();
                        dev.synchronize().unwrap();
                        y
                    },
                    BatchSize::LargeInput,
                )
            });
        }
    }
    g.finish();
}

criterion_group!(benches, train, decode);
criterion_main!(benches);
