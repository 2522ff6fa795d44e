//! `decode_api.rs` on the API of commit 199f320: caches grown by concatenation each token, the
//! absorbed weights split from `kv_b_proj` in every step. Not compiled in this tree; copied over
//! `common/decode_api.rs` in a worktree of that commit (docs/PERF.md gives the commands).

use mla::cache::{DecodeMode, LatentCache};
use model::DeepseekV3;
use tensor::Tensor;

pub const NAME: &str = "concatenating (199f320)";

pub type State = Vec<LatentCache>;

/// Empty caches (the capacity is not used: they grow per token).
pub fn state(m: &DeepseekV3, _capacity: usize) -> State {
    vec![LatentCache::default(); m.layers.len()]
}

/// One decode call of `ids` (batch 1) at `positions`.
pub fn step(m: &DeepseekV3, st: &mut State, ids: &[u32], positions: &[u32], mode: DecodeMode) -> Tensor {
    m.decode_step(ids, (1, ids.len()), positions, st, None, mode).expect("decode step")
}
