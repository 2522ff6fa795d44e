//! Initialisation for training small models from scratch: linear weights `N(0, 1/fan_in)`
//! (fan-in scaled, so activations keep unit scale at any width), embeddings `N(0, σ_emb²)`, norm
//! weights 1, MoE biases 0. (GPT-2's fixed 0.02 does not learn to copy tokens at widths 64–128;
//! see the project's miniature notes.)

use model::{DeepseekV3, DeepseekV3Config};
use optim::Params;
use tensor::{DType, Device, Tensor};

use crate::Result;

fn name_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a over the name, mixed with the seed: one independent stream per parameter.
    name.bytes().fold(0xcbf2_9ce4_8422_2325 ^ seed, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// A fresh model (with `mtp_layers` MTP modules, which share its embedding and head) with
/// fan-in scaled weights and embeddings of standard deviation `embed_std`.
pub fn init_scaled(
    cfg: &DeepseekV3Config,
    mtp_layers: usize,
    embed_std: f64,
    seed: u64,
    dev: &Device,
) -> Result<DeepseekV3> {
    let mut cfg = cfg.clone();
    cfg.num_nextn_predict_layers = mtp_layers;
    let m = DeepseekV3::init(cfg.clone(), 1.0, seed, DType::F32, dev)?;
    let mut p = Params::default();
    for (name, t) in m.state_dict() {
        let fresh = if name.ends_with("e_score_correction_bias") {
            Tensor::zeros(t.shape(), DType::F32, dev)?
        } else if t.shape().len() == 1 {
            Tensor::full(t.shape(), 1.0, DType::F32, dev)?
        } else if name.ends_with("embed_tokens.weight") {
            Tensor::randn(t.shape(), embed_std, name_seed(seed, &name), DType::F32, dev)?
        } else {
            let fan_in = t.dim(-1) as f64;
            Tensor::randn(t.shape(), fan_in.powf(-0.5), name_seed(seed, &name), DType::F32, dev)?
        };
        p.insert(name, fresh)?;
    }
    Ok(DeepseekV3::load(cfg, &p)?)
}
