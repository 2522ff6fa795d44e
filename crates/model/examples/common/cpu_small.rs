//! The `cpu-small` benchmark configuration (shared/docs/benchmarks.md) and the fixed synthetic
//! token stream the `smoke` and `fp8_gap` examples train on (included by both with `#[path]`).

/// cpu-small: 6,192,128 parameters.
pub const CPU_SMALL: &str = r#"{"vocab_size": 512, "hidden_size": 256, "intermediate_size": 512, "moe_intermediate_size": 128,
  "num_hidden_layers": 4, "num_attention_heads": 4, "n_shared_experts": 1, "n_routed_experts": 16,
  "routed_scaling_factor": 2.5, "kv_lora_rank": 64, "q_lora_rank": 128, "qk_rope_head_dim": 16, "v_head_dim": 32,
  "qk_nope_head_dim": 32, "n_group": 4, "topk_group": 2, "num_experts_per_tok": 4, "first_k_dense_replace": 1,
  "norm_topk_prob": true, "tie_word_embeddings": false, "rope_theta": 10000.0, "max_position_embeddings": 512}"#;

/// `b` rows of `s` tokens with learnable structure: row r follows t' = (5t + r + 1) mod 512, with a
/// deterministic "noise" token every 7th position. Returns `(ids, next-token targets)`, `[b·s]` each.
pub fn stream(b: usize, s: usize) -> (Vec<u32>, Vec<i64>) {
    let rows: Vec<Vec<u32>> = (0..b)
        .map(|r| {
            let mut t = (r * 37 % 512) as u32;
            (0..=s)
                .map(|i| {
                    let v = if i % 7 == 6 { ((i * 11 + r) % 512) as u32 } else { t };
                    t = (5 * t + r as u32 + 1) % 512;
                    v
                })
                .collect()
        })
        .collect();
    let ids = rows.iter().flat_map(|row| row[..s].to_vec()).collect();
    let targets = rows.iter().flat_map(|row| row[1..].iter().map(|&t| t as i64).collect::<Vec<_>>()).collect();
    (ids, targets)
}
