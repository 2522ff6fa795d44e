//! Training-step throughput on the `gpu-medium` configuration (shared/docs/benchmarks.md): full
//! steps — forward, [`lm_loss`], backward, AdamW — on random tokens; one JSON line with the median
//! step time and tokens/s after warm-up, plus the median of each phase.
//!
//! `cargo run --release -p model --features cuda --example step_bench -- DEVICE DTYPE BATCH SEQ [STEPS] [--layers N]`
//!
//! DEVICE `cpu` or `cuda` (device 0 through [`tensor::cuda::CudaBackend::try_default`], needs the
//! `cuda` feature), DTYPE `f32` or `bf16` (weights and activations; AdamW moments stay f32),
//! BATCH × SEQ tokens per step, STEPS timed steps (default 3) after one warm-up step. `--layers N`
//! shrinks the model to N layers (a quick check of the example, not a benchmark figure).

use std::time::Instant;

use model::{DeepseekV3, DeepseekV3Config, lm_loss};
use optim::{AdamW, AdamWConfig};
use tensor::ops::attention::AttnMask;
use tensor::{DType, Device};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const GPU_MEDIUM: &str = r#"{"vocab_size": 32000, "hidden_size": 1024, "intermediate_size": 2816,
  "moe_intermediate_size": 256, "num_hidden_layers": 12, "num_attention_heads": 16, "n_shared_experts": 2,
  "n_routed_experts": 64, "routed_scaling_factor": 2.5, "kv_lora_rank": 256, "q_lora_rank": 384,
  "qk_rope_head_dim": 32, "v_head_dim": 64, "qk_nope_head_dim": 64, "n_group": 8, "topk_group": 4,
  "num_experts_per_tok": 6, "first_k_dense_replace": 1, "norm_topk_prob": true, "tie_word_embeddings": false,
  "rope_theta": 10000.0, "max_position_embeddings": 4096}"#;

const WARMUP: usize = 1;

fn usage() -> String {
    "usage: step_bench cpu|cuda f32|bf16 BATCH SEQ [STEPS] [--layers N]".into()
}

fn device(name: &str) -> Res<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::Cuda(tensor::cuda::CudaBackend::try_default().ok_or("no CUDA device")?)),
        #[cfg(not(feature = "cuda"))]
        "cuda" => Err("built without the `cuda` feature".into()),
        other => Err(format!("device {other:?}: {}", usage()).into()),
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let layers = args.iter().position(|a| a == "--layers").map(|i| args.get(i + 1).and_then(|v| v.parse().ok()));
    let pos_args: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.starts_with("--") && (*i == 0 || args[i - 1] != "--layers"))
        .map(|(_, a)| a)
        .collect();
    if pos_args.len() < 4 {
        return Err(usage().into());
    }
    let dev = device(pos_args[0])?;
    let dt = match pos_args[1].as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        other => return Err(format!("dtype {other:?}: {}", usage()).into()),
    };
    let (b, s): (usize, usize) = (pos_args[2].parse()?, pos_args[3].parse()?);
    let steps: usize = pos_args.get(4).map(|v| v.parse()).transpose()?.unwrap_or(3).max(1);

    let mut cfg = DeepseekV3Config::from_json(GPU_MEDIUM, "gpu-medium")?;
    if let Some(l) = layers {
        cfg.num_hidden_layers = l.ok_or("--layers N")?;
    }
    let t0 = Instant::now();
    let mut m = DeepseekV3::init(cfg.clone(), 0.02, 0, dt, &dev)?;
    let n_params: usize = m.params().iter().map(|(_, p)| p.numel()).sum();
    eprintln!(
        "gpu-medium ({} layers): {n_params} parameters on {dev:?} in {dt:?}, init {:.1} s",
        cfg.num_hidden_layers,
        t0.elapsed().as_secs_f64()
    );

    // Random tokens (a fixed LCG), each row's targets the next token.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let stream: Vec<u32> = (0..b * (s + 1))
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) % cfg.vocab_size as u64) as u32
        })
        .collect();
    let ids: Vec<u32> = (0..b).flat_map(|r| stream[r * (s + 1)..r * (s + 1) + s].to_vec()).collect();
    let targets: Vec<i64> =
        (0..b).flat_map(|r| stream[r * (s + 1) + 1..(r + 1) * (s + 1)].iter().map(|&t| t as i64)).collect();
    let pos: Vec<u32> = (0..b * s).map(|i| (i % s) as u32).collect();

    let names: Vec<String> = m.params().into_iter().map(|(n, _)| n).collect();
    let mut opt = AdamW::new(AdamWConfig::default(), &names);
    let (mut step_t, mut fwd_t, mut loss_t, mut bwd_t, mut opt_t, mut other_t) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut loss = f64::NAN;
    for step in 0..WARMUP + steps {
        #[cfg(feature = "cuda")]
        if step == WARMUP {
            // With R1_CUDA_PROFILE=1, profile the timed steps only.
            let _ = tensor::cuda::profile_report();
        }
        let ts = Instant::now();
        let (logits, saved) = m.forward(&ids, b, s, &pos, &AttnMask::causal())?;
        dev.synchronize()?;
        let t_fwd = ts.elapsed().as_secs_f64();
        let (l, dl) = lm_loss(&logits, &targets, -100)?;
        loss = l;
        let t_loss = ts.elapsed().as_secs_f64();
        m.backward(&saved, &dl)?;
        drop(saved);
        dev.synchronize()?;
        let t_bwd = ts.elapsed().as_secs_f64();
        // Parameters are handles: AdamW updates them in place, nothing is rebuilt.
        opt.step(&mut m.params_mut(), 1e-4)?;
        dev.synchronize()?;
        let t_opt = ts.elapsed().as_secs_f64();
        m.zero_grad();
        let t_step = ts.elapsed().as_secs_f64();
        eprintln!(
            "step {step}: {t_step:.3} s (forward {t_fwd:.3}, loss {:.3}, backward {:.3}, AdamW {:.3}), loss {loss:.4}",
            t_loss - t_fwd,
            t_bwd - t_loss,
            t_step - t_bwd
        );
        if step >= WARMUP {
            step_t.push(t_step);
            fwd_t.push(t_fwd);
            loss_t.push(t_loss - t_fwd);
            bwd_t.push(t_bwd - t_loss);
            opt_t.push(t_opt - t_bwd);
            other_t.push(t_step - t_opt);
        }
    }
    #[cfg(feature = "cuda")]
    {
        let prof = tensor::cuda::profile_report();
        if !prof.is_empty() {
            let total: f64 = prof.iter().map(|p| p.2).sum();
            eprintln!("R1_CUDA_PROFILE over {steps} steps: {total:.3} s in kernels / GEMMs (synchronised)");
            for (name, n, secs) in prof.iter().take(30) {
                eprintln!("{secs:>9.4} s {n:>8} calls  {name}");
            }
        }
    }
    let med = median(&step_t);
    println!(
        "{{\"who\": \"r1\", \"config\": \"gpu-medium\", \"layers\": {}, \"device\": \"{}\", \"dtype\": \"{}\", \"batch\": {b}, \"seq\": {s}, \"params\": {n_params}, \"steps\": {steps}, \"step_s\": {med:.4}, \"tokens_per_s\": {:.1}, \"forward_s\": {:.4}, \"loss_s\": {:.4}, \"backward_s\": {:.4}, \"adamw_s\": {:.4}, \"other_s\": {:.4}, \"loss\": {loss:.4}}}",
        cfg.num_hidden_layers,
        pos_args[0],
        pos_args[1],
        (b * s) as f64 / med,
        median(&fwd_t),
        median(&loss_t),
        median(&bwd_t),
        median(&opt_t),
        median(&other_t),
    );
    Ok(())
}
