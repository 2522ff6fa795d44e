//! One training step (forward, MTP, backward, AdamW, bias update) of the miniature-size model on
//! a packed batch of 8 × 128 tokens. `cargo bench -p sft`
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use model::DeepseekV3Config;
use sft::{LmBatch, LmTrainer, TrainConfig, init_scaled};
use tensor::Device;

fn step(c: &mut Criterion) {
    let cfg = DeepseekV3Config::from_json(
        r#"{"vocab_size": 64, "hidden_size": 64, "intermediate_size": 256, "moe_intermediate_size": 64,
      "num_hidden_layers": 4, "num_attention_heads": 4, "n_shared_experts": 1, "n_routed_experts": 8,
      "routed_scaling_factor": 1.0, "kv_lora_rank": 32, "q_lora_rank": null, "qk_rope_head_dim": 8, "v_head_dim": 16,
      "qk_nope_head_dim": 16, "n_group": 2, "topk_group": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
      "rope_theta": 10000.0, "max_position_embeddings": 256, "aux_loss_alpha": 0.0001}"#,
        "bench",
    )
    .unwrap();
    let mut t = LmTrainer::new(init_scaled(&cfg, 1, 0.3, 0, &Device::Cpu).unwrap(), TrainConfig::default()).unwrap();
    let (rows, seq) = (8, 128);
    let ids: Vec<u32> = (0..rows * seq).map(|i| ((i * 7 + i / 13) % 64) as u32).collect();
    let targets = (0..rows * seq).map(|i| if i % 32 == 31 { -100 } else { ids[i + 1] as i64 }).collect();
    let batch = LmBatch {
        ids,
        targets,
        positions: (0..rows * seq).map(|i| (i % 32) as u32).collect(),
        segment_ids: Some((0..rows * seq).map(|i| (i / 32) as u32).collect()),
        key_padding: None,
        b: rows,
        s: seq,
    };
    let mut g = c.benchmark_group("sft");
    g.sample_size(10);
    g.throughput(Throughput::Elements((rows * seq) as u64));
    g.bench_function("train_step_d64_8x128", |b| b.iter(|| t.step(&batch).unwrap()));
    g.finish();
}

criterion_group!(benches, step);
criterion_main!(benches);
