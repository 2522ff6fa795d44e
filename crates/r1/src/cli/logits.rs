//! `r1 logits --model DIR --input-ids FILE.json --output OUT.safetensors`
//!
//! FILE.json is a JSON array of token-id arrays of equal length; OUT holds one f32 tensor
//! `logits` shaped `[batch, seq, vocab]` (causal attention, positions 0..seq per row).

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use model::DeepseekV3;
use safetensors::tensor::{Dtype, TensorView};
use tensor::ops::attention::AttnMask;
use tensor::{DType, Device};

/// `r1 logits …`
#[derive(Debug, Args)]
pub struct LogitsArgs {
    /// Checkpoint directory (HF layout: config.json + model.safetensors or shards).
    #[arg(long)]
    model: PathBuf,
    /// JSON array of token-id arrays of equal length.
    #[arg(long)]
    input_ids: PathBuf,
    /// Output safetensors file with the tensor `logits` (f32, [batch, seq, vocab]).
    #[arg(long)]
    output: PathBuf,
}

/// Parse the id batch, naming the file and the offending row.
pub fn read_ids(path: &std::path::Path, vocab: usize) -> Result<(Vec<u32>, usize, usize)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let rows: Vec<Vec<i64>> = serde_json::from_str(&text)
        .with_context(|| format!("{}: expected a JSON array of token-id arrays", path.display()))?;
    let s = rows.first().map_or(0, Vec::len);
    if rows.is_empty() || s == 0 {
        bail!("{}: empty batch", path.display());
    }
    let mut ids = Vec::with_capacity(rows.len() * s);
    for (r, row) in rows.iter().enumerate() {
        if row.len() != s {
            bail!("{}: row {r} has {} ids, row 0 has {s} (rows must be of equal length)", path.display(), row.len());
        }
        for (j, &t) in row.iter().enumerate() {
            if t < 0 || t as usize >= vocab {
                bail!("{}: row {r}, position {j}: token id {t} outside the vocabulary (0..{vocab})", path.display());
            }
            ids.push(t as u32);
        }
    }
    Ok((ids, rows.len(), s))
}

/// Run the command.
pub fn run(a: LogitsArgs) -> Result<()> {
    let m = DeepseekV3::from_pretrained(&a.model, DType::F32, &Device::Cpu)?;
    let (ids, b, s) = read_ids(&a.input_ids, m.cfg.vocab_size)?;
    if s > m.cfg.max_position_embeddings {
        bail!(
            "{}: sequence length {s} exceeds max_position_embeddings {}",
            a.input_ids.display(),
            m.cfg.max_position_embeddings
        );
    }
    let pos: Vec<u32> = (0..b * s).map(|i| (i % s) as u32).collect();
    let (logits, _) = m.forward(&ids, b, s, &pos, &AttnMask::causal())?;
    let bytes: Vec<u8> = logits.to_vec::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect();
    let view = TensorView::new(Dtype::F32, logits.shape().clone(), &bytes)?;
    let out = safetensors::serialize([("logits".to_string(), view)], Some(HashMap::new()))?;
    optim::atomic_write(&a.output, &out)?;
    eprintln!("wrote logits {:?} to {}", logits.shape(), a.output.display());
    Ok(())
}
