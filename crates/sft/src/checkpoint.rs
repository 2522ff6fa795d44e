//! Resumable checkpoints: `OUT/checkpoint-NNNNNN/` holds the model in the Hugging Face layout
//! (`config.json`, `model.safetensors`, MTP included), `optimizer.safetensors` and
//! `trainer_state.json`, plus whatever the caller adds (a tokenizer). The directory is written
//! under a temporary name and renamed, so a checkpoint either exists whole or not at all; a run
//! killed at any moment resumes from the newest complete one.

use std::path::{Path, PathBuf};

use model::lm::CausalLm;
use serde::{Deserialize, Serialize};
use tensor::{DType, Device};

use crate::trainer::{LmTrainer, TrainConfig};
use crate::{Result, SftError, io};

const PREFIX: &str = "checkpoint-";

/// The trainer's own state beside the weights.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrainerState {
    pub step: usize,
    /// Steps the non-finite guard skipped.
    #[serde(default)]
    pub skipped: usize,
    pub train: TrainConfig,
    /// Caller state (data position, seeds, metrics so far …).
    pub extra: serde_json::Value,
}

/// The checkpoint directories under `out`, oldest first, as `(step, path)`.
pub fn list_checkpoints(out: &Path) -> Result<Vec<(usize, PathBuf)>> {
    if !out.exists() {
        return Ok(Vec::new());
    }
    let mut v = Vec::new();
    for e in std::fs::read_dir(out).map_err(io(out))? {
        let e = e.map_err(io(out))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(step) = name.strip_prefix(PREFIX).and_then(|n| n.parse::<usize>().ok())
            && e.path().join("trainer_state.json").exists()
        {
            v.push((step, e.path()));
        }
    }
    v.sort();
    Ok(v)
}

/// The newest complete checkpoint under `out`.
pub fn latest_checkpoint(out: &Path) -> Result<Option<(usize, PathBuf)>> {
    Ok(list_checkpoints(out)?.pop())
}

/// Write `trainer` (and `extra`, and the files `write_more` adds to the directory) as
/// `out/checkpoint-{step}`, atomically; keep the newest `keep` checkpoints. A parameter holding a
/// non-finite value is an error, and nothing is written.
pub fn save_checkpoint<M: CausalLm>(
    trainer: &LmTrainer<M>,
    out: &Path,
    extra: serde_json::Value,
    keep: usize,
    write_more: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let dst = out.join(format!("{PREFIX}{:06}", trainer.step));
    check_finite(&trainer.model, &dst)?;
    let tmp = out.join(format!(".tmp-{PREFIX}{:06}", trainer.step));
    std::fs::create_dir_all(out).map_err(io(out))?;
    // Half-written checkpoints of a killed run are never resumed from: clear them.
    for e in std::fs::read_dir(out).map_err(io(out))? {
        let p = e.map_err(io(out))?.path();
        if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&format!(".tmp-{PREFIX}"))) {
            std::fs::remove_dir_all(&p).map_err(io(&p))?;
        }
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    trainer.model.save_pretrained(&tmp)?;
    trainer.opt.save(&tmp.join("optimizer.safetensors"))?;
    write_more(&tmp)?;
    let state = TrainerState { step: trainer.step, skipped: trainer.skipped, train: trainer.cfg.clone(), extra };
    let text = serde_json::to_string_pretty(&state).map_err(|e| state_err(&tmp, e))?;
    optim::atomic_write(&tmp.join("trainer_state.json"), text.as_bytes())?;
    if dst.exists() {
        std::fs::remove_dir_all(&dst).map_err(io(&dst))?;
    }
    std::fs::rename(&tmp, &dst).map_err(io(&dst))?;
    let all = list_checkpoints(out)?;
    for (_, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        std::fs::remove_dir_all(old).map_err(io(old))?;
    }
    Ok(dst)
}

/// Every parameter of `model` finite? (Else the error names the first that is not.)
pub fn check_finite<M: CausalLm>(model: &M, path: &Path) -> Result<()> {
    for (name, p) in model.params() {
        if p.value.to_vec_f64()?.iter().any(|x| !x.is_finite()) {
            return Err(SftError::NonFiniteParam { path: path.display().to_string(), name });
        }
    }
    Ok(())
}

fn state_err(path: &Path, e: impl std::fmt::Display) -> SftError {
    SftError::State { path: path.display().to_string(), detail: e.to_string() }
}

/// Rebuild a trainer from a checkpoint directory: weights (MTP included), optimizer state, step.
/// Returns the caller's `extra` state too.
pub fn load_checkpoint<M: CausalLm>(dir: &Path, device: &Device) -> Result<(LmTrainer<M>, serde_json::Value)> {
    let path = dir.join("trainer_state.json");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    let state: TrainerState = serde_json::from_str(&text).map_err(|e| state_err(&path, e))?;
    let model = M::from_pretrained(dir, DType::F32, device)?;
    let mut t = LmTrainer::new(model, state.train)?;
    {
        let params: Vec<&tensor::Param> = t.model.params().into_iter().map(|(_, p)| p).collect();
        t.opt.load(&dir.join("optimizer.safetensors"), &params)?;
    }
    t.step = state.step;
    t.skipped = state.skipped;
    Ok((t, state.extra))
}
