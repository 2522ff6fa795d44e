//! The decode calls of the `decode_bench` example, on the current API: fixed-capacity latent
//! caches and absorbed weights prepared once ([`DecodeState`]). `decode_api_old.rs` is the
//! same on the API of commit 199f320 (concatenating caches, weights split per step), copied over
//! this file in a worktree of that commit for the before figures.

use mla::cache::DecodeMode;
use model::DeepseekV3;
use model::generate::DecodeState;
use tensor::Tensor;

pub const NAME: &str = "preallocated";

pub type State = DecodeState;

/// A state for `capacity` tokens per sequence.
pub fn state(m: &DeepseekV3, capacity: usize) -> State {
    m.decode_state(capacity).expect("decode state")
}

/// One decode call of `ids` (batch 1) at `positions`.
pub fn step(m: &DeepseekV3, st: &mut State, ids: &[u32], positions: &[u32], mode: DecodeMode) -> Tensor {
    m.decode_step_with(ids, (1, ids.len()), positions, st, None, mode).expect("decode step").0
}
