//! `r1 generate --model DIR --prompt-ids FILE.json [sampling flags]`
//!
//! FILE.json is a JSON array of token-id arrays (any lengths). Prints one JSON line per prompt:
//! `{"tokens": [...], "logprobs": [...], "stopped": bool}`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use model::{DeepseekV3, SamplingParams};
use tensor::{DType, Device};

/// `r1 generate …`
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Checkpoint directory (HF layout).
    #[arg(long)]
    model: PathBuf,
    /// JSON array of token-id arrays (the prompts).
    #[arg(long)]
    prompt_ids: PathBuf,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Keep the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling threshold (1 = off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Maximum new tokens per prompt.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// A token id that ends a sequence (repeatable).
    #[arg(long = "stop-token")]
    stop_tokens: Vec<u32>,
}

/// Run the command.
pub fn run(a: GenerateArgs) -> Result<()> {
    let m = DeepseekV3::from_pretrained(&a.model, DType::F32, &Device::Cpu)?;
    let text =
        std::fs::read_to_string(&a.prompt_ids).with_context(|| format!("{}: cannot read", a.prompt_ids.display()))?;
    let prompts: Vec<Vec<u32>> = serde_json::from_str(&text)
        .with_context(|| format!("{}: expected a JSON array of token-id arrays", a.prompt_ids.display()))?;
    let sp = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        max_new_tokens: a.max_new_tokens,
        stop_tokens: a.stop_tokens,
    };
    let g = m.generate(&prompts, &sp).with_context(|| format!("{}", a.prompt_ids.display()))?;
    for r in 0..prompts.len() {
        println!("{}", serde_json::json!({"tokens": g.tokens[r], "logprobs": g.logprobs[r], "stopped": g.stopped[r]}));
    }
    Ok(())
}
