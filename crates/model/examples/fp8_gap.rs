//! FP8 training vs f32 on `cpu-small` (DeepSeek-V3 §3.3: the paper reports a relative loss gap
//! below 0.25 % at scale). Trains the configuration of the `smoke` example — same config, same
//! fixed synthetic stream, batch 8 × 256, AdamW lr 1e-3 — twice from the same initialisation:
//! once with f32 linears, once with every MLA projection and expert in FP8 (E4M3 Fprop, Dgrad
//! and Wgrad with 1×128 / 128×128 / 128×1 scaling, CPU reference GEMM with fp32 promotion).
//! Prints both loss curves every 10 steps, then `(loss_fp8 − loss_f32) / loss_f32` for the final
//! step and for the mean over the last 10 steps.
//! `cargo run --release -p model --example fp8_gap [-- STEPS]` (default 100)

use std::time::Instant;

use model::{DeepseekV3, DeepseekV3Config, LinearPrecision, lm_loss};
use optim::{AdamW, AdamWConfig};
use tensor::ops::attention::AttnMask;
use tensor::{DType, Device};

#[path = "common/cpu_small.rs"]
mod cpu_small;
use cpu_small::{CPU_SMALL, stream};

const B: usize = 8;
const S: usize = 256;

/// Train `steps` steps in precision `p`; returns the loss of every step and the seconds per step.
fn train(
    cfg: &DeepseekV3Config,
    p: LinearPrecision,
    steps: usize,
) -> Result<(Vec<f64>, f64), Box<dyn std::error::Error>> {
    let (ids, targets) = stream(B, S);
    let pos: Vec<u32> = (0..B * S).map(|i| (i % S) as u32).collect();
    let mut m = DeepseekV3::init(cfg.clone(), 0.02, 0, DType::F32, &Device::Cpu)?;
    let names: Vec<String> = m.params().into_iter().map(|(n, _)| n).collect();
    let mut opt = AdamW::new(AdamWConfig::default(), &names);
    m.set_linear_precision(p);
    let mut losses = Vec::with_capacity(steps);
    let t0 = Instant::now();
    for step in 0..steps {
        let (logits, saved) = m.forward(&ids, B, S, &pos, &AttnMask::causal())?;
        let (loss, dl) = lm_loss(&logits, &targets, -100)?;
        m.zero_grad();
        m.backward(&saved, &dl)?;
        drop(saved);
        opt.step(&mut m.params_mut(), 1e-3)?;
        losses.push(loss);
        if step % 10 == 0 || step + 1 == steps {
            eprintln!(
                "  {p:?} step {step:>4}  loss {loss:.4}  {:.2} s/step",
                t0.elapsed().as_secs_f64() / (step + 1) as f64
            );
        }
    }
    Ok((losses, t0.elapsed().as_secs_f64() / steps as f64))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let steps: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(100);
    if steps == 0 {
        return Err("STEPS must be > 0".into());
    }
    let cfg = DeepseekV3Config::from_json(CPU_SMALL, "cpu-small")?;
    println!("cpu-small, batch {B}×{S}, AdamW lr 1e-3, {steps} steps, same init (seed 0)");
    let (l32, t32) = train(&cfg, LinearPrecision::F32, steps)?;
    let (l8, t8) = train(&cfg, LinearPrecision::Fp8, steps)?;
    println!("{:>6}  {:>10}  {:>10}  {:>9}", "step", "f32", "fp8", "rel gap");
    for i in (0..steps).filter(|&i| i % 10 == 0 || i + 1 == steps) {
        println!("{i:>6}  {:>10.4}  {:>10.4}  {:>+8.3}%", l32[i], l8[i], 100.0 * (l8[i] - l32[i]) / l32[i]);
    }
    let last = steps.min(10);
    let mean = |l: &[f64]| l[steps - last..].iter().sum::<f64>() / last as f64;
    let (f32_end, fp8_end) = (l32[steps - 1], l8[steps - 1]);
    let (m32, m8) = (mean(&l32), mean(&l8));
    println!(
        "final loss: f32 {f32_end:.4}  fp8 {fp8_end:.4}  relative gap {:+.3}%",
        100.0 * (fp8_end - f32_end) / f32_end
    );
    println!(
        "mean of the last {last} steps: f32 {m32:.4}  fp8 {m8:.4}  relative gap {:+.3}%",
        100.0 * (m8 - m32) / m32
    );
    println!("time per step: f32 {t32:.2} s, fp8 {t8:.2} s");
    Ok(())
}
