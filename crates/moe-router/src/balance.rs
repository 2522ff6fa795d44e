//! Auxiliary-loss-free load balancing (Wang et al. 2024; DeepSeek-V3 §2.1.2): after each step
//! `b_i += γ · sign(mean_load − load_i)`; no gradient flows into the bias. MaxVio measures the
//! imbalance: `(max_i load_i − mean load) / mean load`.

use tensor::Tensor;

use crate::{Moe, Result};

/// `(max load − mean load) / mean load` (0 for an empty batch).
pub fn max_vio(load: &[usize]) -> f64 {
    let total: usize = load.iter().sum();
    if total == 0 || load.is_empty() {
        return 0.0;
    }
    let mean = total as f64 / load.len() as f64;
    (*load.iter().max().expect("non-empty") as f64 - mean) / mean
}

/// One bias update from a step's per-expert loads with speed `gamma`.
pub fn update_bias(moe: &mut Moe, load: &[usize], gamma: f64) -> Result<()> {
    let total: usize = load.iter().sum();
    let mean = total as f64 / load.len().max(1) as f64;
    let mut b = moe.e_score_correction_bias.to_vec::<f32>()?;
    for (bi, &l) in b.iter_mut().zip(load) {
        let diff = mean - l as f64;
        *bi += (gamma
            * if diff > 0.0 {
                1.0
            } else if diff < 0.0 {
                -1.0
            } else {
                0.0
            }) as f32;
    }
    let dev = moe.e_score_correction_bias.device().clone();
    moe.e_score_correction_bias = Tensor::from_vec(b, &[load.len()])?.to_device(&dev)?;
    Ok(())
}
