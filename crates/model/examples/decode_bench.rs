//! Whole-model decode time per token against context length (issue 16, "Decode cost"): the
//! `cpu-small` model (shared/docs/benchmarks.md) with `max_position_embeddings` raised to 8,448,
//! batch 1. For each context length it prefills that many tokens (naive MLA, in chunks of 512 so
//! the attention probabilities stay small), then times single-token absorbed decode steps — the
//! steps of `DeepseekV3::generate` — and prints one JSON line with the median, minimum and maximum
//! step time.
//!
//! `cargo run --release -p model --example decode_bench [-- [--contexts 512,2048,8192] [--steps N]]`
//!
//! The decode calls live in `common/decode_api.rs` (preallocated caches, absorbed weights
//! prepared once); `common/decode_api_old.rs` makes the same program on commit 199f320's
//! concatenating caches (docs/PERF.md, "Whole-model decode per token vs context (CPU)").

use std::time::Instant;

use mla::cache::DecodeMode;
use model::{DeepseekV3, DeepseekV3Config};
use tensor::{DType, Device};

/// A retaining allocator, as the `r1` binary and the `smoke` example use.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "common/cpu_small.rs"]
#[allow(dead_code)]
mod cpu_small;

#[path = "common/decode_api.rs"]
mod api;

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h`, v2): −1 keeps freed pages.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Positions the model is built for: the longest context plus the decoded tokens, with room.
const MAX_POS: usize = 8448;
const PREFILL_CHUNK: usize = 512;
const WARMUP: usize = 2;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: sets a process-wide allocator option before any other thread runs.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let contexts: Vec<usize> = match arg("--contexts") {
        Some(s) => s.split(',').map(|c| c.trim().parse()).collect::<Result<_, _>>()?,
        None => vec![512, 2048, 8192],
    };
    let steps: usize = arg("--steps").map(|s| s.parse()).transpose()?.unwrap_or(32);
    let json = cpu_small::CPU_SMALL
        .replace("\"max_position_embeddings\": 512", &format!("\"max_position_embeddings\": {MAX_POS}"));
    let cfg = DeepseekV3Config::from_json(&json, "cpu-small-8k")?;
    if let Some(&c) = contexts.iter().find(|&&c| c + WARMUP + steps > MAX_POS || c == 0) {
        return Err(format!("context {c} + {} steps does not fit 1..{MAX_POS} positions", WARMUP + steps).into());
    }
    let m = DeepseekV3::init(cfg, 0.02, 0, DType::F32, &Device::Cpu)?;
    tensor::on_pool(|| {
        for &ctx in &contexts {
            let mut st = api::state(&m, ctx + WARMUP + steps);
            // A deterministic prompt; the token values do not change the cost.
            let prompt: Vec<u32> = (0..ctx).map(|i| ((5 * i + 1) % 512) as u32).collect();
            let t0 = Instant::now();
            let mut logits = None;
            for c0 in (0..ctx).step_by(PREFILL_CHUNK) {
                let c1 = (c0 + PREFILL_CHUNK).min(ctx);
                let pos: Vec<u32> = (c0 as u32..c1 as u32).collect();
                logits = Some(api::step(&m, &mut st, &prompt[c0..c1], &pos, DecodeMode::Naive));
            }
            let prefill_s = t0.elapsed().as_secs_f64();
            let mut tok = argmax(&logits.expect("ctx > 0").to_vec_f64().expect("logits"));
            let mut times = Vec::with_capacity(steps);
            for i in 0..WARMUP + steps {
                let t = Instant::now();
                let l = api::step(&m, &mut st, &[tok], &[(ctx + i) as u32], DecodeMode::Absorbed);
                let lv = l.to_vec_f64().expect("logits");
                if i >= WARMUP {
                    times.push(t.elapsed().as_secs_f64() * 1e3);
                }
                tok = argmax(&lv);
            }
            times.sort_by(f64::total_cmp);
            println!(
                "{{\"cache\": \"{}\", \"context\": {ctx}, \"steps\": {steps}, \"median_ms\": {:.3}, \"min_ms\": {:.3}, \"max_ms\": {:.3}, \"prefill_s\": {:.2}, \"threads\": {}}}",
                api::NAME,
                times[times.len() / 2],
                times[0],
                times[times.len() - 1],
                prefill_s,
                rayon::current_num_threads()
            );
        }
    });
    Ok(())
}

fn argmax(v: &[f64]) -> u32 {
    (0..v.len()).fold(0, |b, i| if v[i] > v[b] { i } else { b }) as u32
}
