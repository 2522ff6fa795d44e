//! `r1 generate --model DIR (--prompt-ids FILE.json | --prompt TEXT…) [sampling flags]`
//!
//! FILE.json is a JSON array of token-id arrays (any lengths); `--prompt` takes text and needs
//! `DIR/tokenizer.json`. Prints one JSON line per prompt:
//! `{"tokens": [...], "logprobs": [...], "stopped": bool}`, plus `"text"` (the new tokens decoded)
//! when DIR has a tokenizer — whose end-of-sequence token then stops generation unless
//! `--stop-token` is given.

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
    #[arg(long, required_unless_present = "prompt", conflicts_with = "prompt")]
    prompt_ids: Option<PathBuf>,
    /// A text prompt (repeatable; needs DIR/tokenizer.json).
    #[arg(long)]
    prompt: Vec<String>,
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
    let tok_path = a.model.join("tokenizer.json");
    let tok = if tok_path.exists() { Some(data::Tokenizer::from_file(&tok_path)?) } else { None };
    let (prompts, origin): (Vec<Vec<u32>>, String) = match &a.prompt_ids {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
            let p = serde_json::from_str(&text)
                .with_context(|| format!("{}: expected a JSON array of token-id arrays", path.display()))?;
            (p, path.display().to_string())
        }
        None => {
            let t = tok.as_ref().with_context(|| {
                format!("--prompt needs a tokenizer: {} does not exist (use --prompt-ids)", tok_path.display())
            })?;
            let p = a.prompt.iter().map(|s| t.encode(s)).collect::<data::Result<_>>()?;
            (p, "--prompt".into())
        }
    };
    let stop_tokens = match (&tok, a.stop_tokens.is_empty()) {
        (Some(t), true) => vec![t.eos_id()],
        _ => a.stop_tokens,
    };
    let sp = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        seed: a.seed,
        max_new_tokens: a.max_new_tokens,
        stop_tokens,
    };
    let g = m.generate(&prompts, &sp).with_context(|| origin.clone())?;
    for r in 0..prompts.len() {
        let mut line = serde_json::json!({"tokens": g.tokens[r], "logprobs": g.logprobs[r], "stopped": g.stopped[r]});
        if let Some(t) = &tok {
            // The text of the new tokens, without the stop token that ended them.
            let n = g.tokens[r].len() - usize::from(g.stopped[r]);
            line["text"] = serde_json::Value::String(t.decode(&g.tokens[r][..n])?);
        }
        println!("{line}");
    }
    Ok(())
}
