//! Generation over the latent cache: greedy decoding with left-padded prompts of different
//! lengths equals greedy decoding by repeated full forwards of each prompt alone, with the same
//! per-token log-probabilities; sampling is reproducible by seed; top-k = 1 is greedy; stop tokens
//! finish a sequence.

use model::{DeepseekV3, DeepseekV3Config, SamplingParams};
use tensor::ops::attention::AttnMask;
use tensor::{DType, Device};

fn model() -> DeepseekV3 {
    let cfg = DeepseekV3Config::from_json(
        r#"{"vocab_size": 17, "hidden_size": 16, "intermediate_size": 24, "moe_intermediate_size": 8,
        "num_hidden_layers": 2, "num_attention_heads": 2, "n_shared_experts": 1, "n_routed_experts": 4,
        "routed_scaling_factor": 2.5, "kv_lora_rank": 8, "q_lora_rank": 12, "qk_rope_head_dim": 4,
        "v_head_dim": 4, "qk_nope_head_dim": 4, "n_group": 2, "topk_group": 1, "num_experts_per_tok": 2,
        "first_k_dense_replace": 1, "max_position_embeddings": 64}"#,
        "test",
    )
    .unwrap();
    DeepseekV3::init(cfg, 0.5, 11, DType::F64, &Device::Cpu).unwrap()
}

/// Greedy continuation and logprobs of one prompt by full forwards over the growing sequence.
fn greedy_by_forward(m: &DeepseekV3, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<f64>) {
    let mut seq = prompt.to_vec();
    let (mut toks, mut lps) = (vec![], vec![]);
    let v = m.cfg.vocab_size;
    for _ in 0..n {
        let s = seq.len();
        let pos: Vec<u32> = (0..s as u32).collect();
        let (logits, _) = m.forward(&seq, 1, s, &pos, &AttnMask::causal()).unwrap();
        let l = logits.to_vec_f64().unwrap();
        let row = &l[(s - 1) * v..s * v];
        let best = (0..v).fold(0, |b, i| if row[i] > row[b] { i } else { b });
        let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = mx + row.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
        toks.push(best as u32);
        lps.push(row[best] - lse);
        seq.push(best as u32);
    }
    (toks, lps)
}

#[test]
fn greedy_through_the_cache_equals_full_forwards() {
    let m = model();
    let prompts = vec![vec![3, 1, 4, 1, 5], vec![9, 2], vec![6, 5, 3]];
    let sp = SamplingParams { temperature: 0.0, max_new_tokens: 6, ..Default::default() };
    let g = m.generate(&prompts, &sp).unwrap();
    for (r, p) in prompts.iter().enumerate() {
        let (toks, lps) = greedy_by_forward(&m, p, 6);
        assert_eq!(g.tokens[r], toks, "row {r}");
        for (a, b) in g.logprobs[r].iter().zip(&lps) {
            assert!((a - b).abs() < 1e-9, "row {r}: logprob {a} vs {b}");
        }
        assert!(!g.stopped[r]);
    }
}

#[test]
fn sampling_is_seeded_top_k_one_is_greedy_and_stops_finish() {
    let m = model();
    let prompts = vec![vec![1, 2, 3], vec![4, 5, 6]];
    let sp = SamplingParams { temperature: 1.0, top_p: 0.9, seed: 7, max_new_tokens: 8, ..Default::default() };
    let a = m.generate(&prompts, &sp).unwrap();
    assert_eq!(a, m.generate(&prompts, &sp).unwrap(), "same seed, same samples");
    let other = m.generate(&prompts, &SamplingParams { seed: 8, ..sp.clone() }).unwrap();
    assert_ne!(a.tokens, other.tokens, "another seed samples differently");
    for lp in a.logprobs.iter().flatten() {
        assert!(*lp <= 0.0 && lp.is_finite());
    }
    let greedy = m.generate(&prompts, &SamplingParams { temperature: 0.0, ..sp.clone() }).unwrap();
    let k1 = m.generate(&prompts, &SamplingParams { top_k: 1, ..sp.clone() }).unwrap();
    assert_eq!(k1.tokens, greedy.tokens);
    // Stop on the first greedy token of row 0: row 0 ends after one token, row 1 runs on.
    let stop = greedy.tokens[0][0];
    let s = m.generate(&prompts, &SamplingParams { temperature: 0.0, stop_tokens: vec![stop], ..sp.clone() }).unwrap();
    assert_eq!(s.tokens[0], vec![stop]);
    assert!(s.stopped[0]);
    if !greedy.tokens[1].contains(&stop) {
        assert_eq!(s.tokens[1].len(), 8);
    }
    assert!(m.generate(&[vec![99]], &sp).unwrap_err().to_string().contains("99"));
}

/// A decode state holds one fixed-capacity buffer per layer, allocated once: decoding through it
/// matches the per-step path (growing caches, weights split every step) exactly, and one token
/// past the capacity is an error naming it.
#[test]
fn decode_state_is_preallocated_and_bounded() {
    use mla::cache::{DecodeMode, LatentCache};
    let m = model();
    let (prompt, n) = (vec![3u32, 1, 4, 1, 5], 4);
    let p = prompt.len();
    let mut st = m.decode_state(p + n).unwrap();
    let mut caches = vec![LatentCache::default(); m.layers.len()];
    let pos: Vec<u32> = (0..p as u32).collect();
    let (a, _) = m.decode_step_with(&prompt, (1, p), &pos, &mut st, None, DecodeMode::Naive).unwrap();
    let b = m.decode_step(&prompt, (1, p), &pos, &mut caches, None, DecodeMode::Naive).unwrap();
    assert_eq!(a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap());
    for i in 0..n {
        let (tok, at) = ([(7 + i) as u32], [(p + i) as u32]);
        let (a, _) = m.decode_step_with(&tok, (1, 1), &at, &mut st, None, DecodeMode::Absorbed).unwrap();
        let b = m.decode_step(&tok, (1, 1), &at, &mut caches, None, DecodeMode::Absorbed).unwrap();
        assert_eq!(a.to_vec_f64().unwrap(), b.to_vec_f64().unwrap(), "step {i}");
    }
    for c in &st.caches {
        assert_eq!((c.len(), c.capacity(), c.allocations()), (p + n, p + n, 1));
    }
    let e = m
        .decode_step_with(&[1], (1, 1), &[(p + n) as u32], &mut st, None, DecodeMode::Absorbed)
        .unwrap_err()
        .to_string();
    assert!(e.contains("exceed the 9 reserved"), "{e}");
    // The wrong number of caches is refused rather than silently skipping layers.
    let mut short = vec![LatentCache::default()];
    assert!(m.decode_step(&prompt, (1, p), &pos, &mut short, None, DecodeMode::Naive).is_err());
}
