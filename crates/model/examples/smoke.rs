//! Training smoke on the `cpu-small` configuration (shared/docs/benchmarks.md): a fixed synthetic
//! token stream, batch 8 × 256, AdamW lr 1e-3, 100 steps; prints the loss every 10 steps and the
//! training throughput. `cargo run --release -p model --example smoke [-- STEPS]`;
//! `-- --bench N` instead prints one JSON line with the median step time of N steps after two
//! warm-up steps (the r1 side of `cargo xtask bench cpu-small`).

use std::time::Instant;

use model::{DeepseekV3, DeepseekV3Config, lm_loss};
use optim::{AdamW, AdamWConfig};
use tensor::ops::attention::AttnMask;
use tensor::{DType, Device};

/// A retaining allocator: the step's large activations are reused instead of being returned
/// to the OS and page-faulted back in every step (as the `r1` binary does).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "common/cpu_small.rs"]
mod cpu_small;
use cpu_small::{CPU_SMALL, stream};

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h`, v2): −1 keeps freed pages instead of returning
/// them to the OS after 10 ms, so a step's activations do not page-fault back in every step.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: sets a process-wide allocator option; no allocation is in flight on other threads.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.first().is_some_and(|a| a == "--bench");
    let steps: usize = args.iter().find_map(|s| s.parse().ok()).unwrap_or(if bench { 5 } else { 100 });
    let cfg = DeepseekV3Config::from_json(CPU_SMALL, "cpu-small")?;
    let mut m = DeepseekV3::init(cfg.clone(), 0.02, 0, DType::F32, &Device::Cpu)?;
    let n_params: usize = m.params().iter().map(|(_, p)| p.numel()).sum();
    if !bench {
        println!("cpu-small: {n_params} parameters");
    }
    let (b, s) = (8, 256);
    let (ids, targets) = stream(b, s);
    let pos: Vec<u32> = (0..b * s).map(|i| (i % s) as u32).collect();
    let names: Vec<String> = m.params().into_iter().map(|(n, _)| n).collect();
    let mut opt = AdamW::new(AdamWConfig::default(), &names);
    let t0 = Instant::now();
    let mut times = Vec::new();
    // Per-phase times (forward + loss, backward, optimizer, other) of the timed steps.
    let mut phases: [Vec<f64>; 4] = Default::default();
    let total = if bench { steps + 2 } else { steps };
    // The loop runs on the thread pool: its ops fork and join there instead of waking it up.
    let res: Result<(), Box<dyn std::error::Error + Send + Sync>> = tensor::on_pool(|| {
        for step in 0..total {
            if step == 2 {
                tensor::ops::matmul::gemm_profile_reset();
            }
            let ts = Instant::now();
            let (logits, saved) = m.forward(&ids, b, s, &pos, &AttnMask::causal())?;
            let (loss, dl) = lm_loss(&logits, &targets, -100)?;
            let t_fwd = ts.elapsed().as_secs_f64();
            m.backward(&saved, &dl)?;
            drop(saved);
            let t_bwd = ts.elapsed().as_secs_f64();
            // Parameters are handles: AdamW updates them in place, nothing is rebuilt.
            opt.step(&mut m.params_mut(), 1e-3)?;
            let t_opt = ts.elapsed().as_secs_f64();
            m.zero_grad();
            if bench {
                if step >= 2 {
                    let t = ts.elapsed().as_secs_f64();
                    times.push(t);
                    for (v, x) in phases.iter_mut().zip([t_fwd, t_bwd - t_fwd, t_opt - t_bwd, t - t_opt]) {
                        v.push(x);
                    }
                }
                if step + 1 == total {
                    let median = |v: &mut Vec<f64>| {
                        v.sort_by(f64::total_cmp);
                        v[v.len() / 2]
                    };
                    let med = median(&mut times);
                    let [f, bw, o, other] = phases.each_mut().map(median);
                    println!(
                        "{{\"who\": \"r1\", \"threads\": {}, \"params\": {n_params}, \"step_s\": {med:.4}, \"tokens_per_s\": {:.1}, \"loss\": {loss:.4}, \"forward_s\": {f:.4}, \"backward_s\": {bw:.4}, \"optimizer_s\": {o:.4}, \"other_s\": {other:.4}}}",
                        rayon::current_num_threads(),
                        (b * s) as f64 / med
                    );
                }
                continue;
            }
            if step % 10 == 0 || step + 1 == steps {
                let el = t0.elapsed().as_secs_f64();
                println!("step {step:>4}  loss {loss:.4}  {:.0} tokens/s", ((step + 1) * b * s) as f64 / el);
            }
        }
        Ok(())
    });
    res.map_err(|e| e.to_string())?;
    // With R1_GEMM_PROFILE=1: the timed steps' GEMMs by shape.
    eprint!("{}", tensor::ops::matmul::gemm_profile_report());
    Ok(())
}
