//! Block-scaled FP8 GEMM throughput on the GPU (cuBLASLt and the crate's own sm_90a kernel,
//! 1×128 activation + 128×128 weight scales) next to the bf16 cuBLASLt GEMM; one JSON line per shape.
//!
//! `cargo run --release -p fp8 --features cuda --example fp8_gemm_gpu [-- [--own-only | --sustain S] shapes...]`
//! where a shape is `n` (`n³`) or `MxNxK` (default 4096 8192). `--own-only` times the own kernel
//! alone (no cuBLASLt, no bf16 baseline), for quick iterations. `--sustain S` instead runs each
//! of the own kernel ([`Sm90Config::for_shape`]) and cuBLASLt (its heuristic's first algorithm)
//! back to back for S seconds per shape and prints, per window, its start and end (Unix
//! milliseconds, to match with a clock and power log such as `nvidia-smi -lms`) and the
//! throughput over the whole window.
//!
//! Own kernel (`own_*` fields): every compiled [`Sm90Config`] variant with column groups of 8 and
//! 16 cluster units (`R1_OWN_GROUPS=4,8,...` for others), timed with the protocol below in two
//! passes (each configuration keeps its faster median); "default" is [`Sm90Config::for_shape`],
//! "best" the fastest; `own_rel_err` the best one's error, measured like `rel_err`.
//!
//! Data: standard normal activations with row magnitudes 1…7 and weights ×0.02 with block-row
//! magnitudes 1…3, quantised by [`fp8::quantize_act`] / [`fp8::quantize_weight`]; the bf16 GEMM gets
//! the same f32 data rounded to bf16. Timing (every candidate, own kernel and cuBLASLt alike): at
//! least 3 warm-up products and at least `R1_HEAT_MS` milliseconds (default 250) of them back to
//! back, so that each candidate is timed at the clock the GPU's power limit sets under sustained
//! load rather than at the higher clock it reaches after an idle gap (the host work between two
//! candidates); then 20 products enqueued back to back with a CUDA event between each; the
//! median interval. `R1_HEAT_MS=0 R1_IDLE_MS=200` instead times each candidate as a burst after
//! 200 ms of idle GPU (3 warm-up products), the same for every candidate: the clock the GPU
//! reaches before its power limit acts. Every candidate algorithm of cuBLASLt's heuristic is timed; "default" is its
//! first choice, "best" the fastest. Errors are
//! ‖Δ‖/‖ref‖ over 32 sampled rows against f64 products: of the dequantised FP8 operands (`rel_err`),
//! of the f32 inputs (`rel_err_vs_f32_inputs`, the total FP8 error), and for bf16 of its inputs.
//!
//! Search (`search_*` fields, row-major bf16 output): with a [`SEARCH_WORKSPACE`] workspace, the
//! heuristic's candidates plus every configuration [`GemmPlan::enumerate`] finds, each timed with
//! the same protocol; the fastest one's error is checked like the others. `tune_*`: what
//! [`GemmPlan::tune`] (5 timed launches per candidate) selects from the same candidates.

use std::time::Instant;

use cudarc::driver::sys::CUevent_flags;
use fp8::cuda::{GemmPlan, GpuFp8, GpuGemm, OutLayout, OutType, Sm90Config, Sm90Gemm};
use fp8::{ScaleFormat, quantize_act, quantize_weight};
use half::bf16;
use tensor::{DType, Device, Tensor};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const WARMUP: usize = 3;
const REPS: usize = 20;
const SAMPLE_ROWS: usize = 32;
/// Workspace for the search (8× the default).
const SEARCH_WORKSPACE: usize = 256 << 20;
/// At most this many enumerated configurations are timed.
const SEARCH_LIMIT: usize = 1500;

/// Seconds of warm-up launches before each timed series (`R1_HEAT_MS`, default 250 ms).
fn heat_secs() -> f64 {
    std::env::var("R1_HEAT_MS").ok().and_then(|v| v.parse::<f64>().ok()).unwrap_or(250.0) / 1e3
}

/// Milliseconds of idle GPU before each timed series (`R1_IDLE_MS`, default 0).
fn idle_ms() -> u64 {
    std::env::var("R1_IDLE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Median seconds of one product: [`idle_ms`] of idle GPU, warm-up (at least `WARMUP` launches
/// and [`heat_secs`]), then `REPS` launches back to back, an event between each.
fn time(g: &GpuGemm, mut launch: impl FnMut() -> fp8::Result<()>) -> Res<f64> {
    g.synchronize()?;
    std::thread::sleep(std::time::Duration::from_millis(idle_ms()));
    let (t0, heat) = (Instant::now(), heat_secs());
    let mut n = 0;
    while n < WARMUP || t0.elapsed().as_secs_f64() < heat {
        launch()?;
        n += 1;
        if n % 10 == 0 {
            g.synchronize()?;
        }
    }
    g.synchronize()?;
    let ctx = g.stream().context();
    let events: Vec<_> =
        (0..=REPS).map(|_| ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))).collect::<Result<_, _>>()?;
    events[0].record(g.stream())?;
    for e in &events[1..] {
        launch()?;
        e.record(g.stream())?;
    }
    g.synchronize()?;
    let mut t: Vec<f64> =
        events.windows(2).map(|w| w[0].elapsed_ms(&w[1]).map(|ms| ms as f64 / 1e3)).collect::<Result<_, _>>()?;
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// Times every candidate of `plan`; returns (default seconds, best seconds, best index).
fn sweep(
    g: &GpuGemm,
    plan: &mut GemmPlan,
    mut launch: impl FnMut(&GemmPlan) -> fp8::Result<()>,
) -> Res<(f64, f64, usize)> {
    let mut best = (f64::INFINITY, 0);
    let mut first = f64::NAN;
    for i in 0..plan.candidates() {
        plan.select(i)?;
        let p = &*plan;
        let t = match time(g, || launch(p)) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("  candidate {i} failed: {e}");
                continue;
            }
        };
        let info = plan.algo_info(i);
        eprintln!("  candidate {i}: {:.1} TFLOP/s {info:?}", flops(plan) / t / 1e12);
        if i == 0 {
            first = t;
        }
        if t < best.0 {
            best = (t, i);
        }
    }
    plan.select(best.1)?;
    Ok((first, best.0, best.1))
}

/// The own kernel: every variant; returns the JSON fields.
fn own(g: &GpuGemm, kern: &Sm90Gemm, ga: &GpuFp8, gb: &GpuFp8, check: &dyn Fn(&[f32]) -> f64) -> Res<String> {
    let (m, n, k) = (ga.rows, gb.rows, ga.cols);
    let f = 2.0 * m as f64 * n as f64 * k as f64;
    let mut y = g.alloc_out(m, n, OutType::Bf16)?;
    let first = Sm90Config::for_shape(m, n, kern.sms());
    let mut configs = vec![first];
    let groups: Vec<u32> = match std::env::var("R1_OWN_GROUPS") {
        Ok(v) => v.split(',').map(str::parse).collect::<Result<_, _>>()?,
        Err(_) => vec![8, 16],
    };
    for group in groups {
        configs.extend(Sm90Config::all(group).into_iter().filter(|c| *c != first));
    }
    // Two passes over the configurations (the clocks drift with temperature); each keeps its
    // faster median.
    let mut times = vec![f64::INFINITY; configs.len()];
    for _ in 0..2 {
        for (i, &cfg) in configs.iter().enumerate() {
            times[i] = times[i].min(time(g, || kern.run(g, ga, gb, &mut y, cfg))?);
        }
    }
    for (cfg, t) in configs.iter().zip(&times) {
        eprintln!("  own {cfg:?} grid {:?}: {:.1} TFLOP/s", kern.grid(cfg), f / t / 1e12);
    }
    let t_default = times[0];
    let (i_best, _) = times.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).ok_or("no configuration")?;
    let best = (times[i_best], configs[i_best]);
    let mut yb = g.alloc_out(m, n, OutType::Bf16)?;
    kern.run(g, ga, gb, &mut yb, best.1)?;
    let err = check(&yb.to_host_f32(g.stream())?);
    Ok(format!(
        "\"own_default_tflops\":{:.0},\"own_best_tflops\":{:.0},\"own_best_cfg\":\"{:?}\",\"own_rel_err\":{err:.3e}",
        f / t_default / 1e12,
        f / best.0 / 1e12,
        best.1
    ))
}

fn flops(plan: &GemmPlan) -> f64 {
    let (m, n, k) = plan.dims();
    2.0 * m as f64 * n as f64 * k as f64
}

fn randn(n: usize, seed: u64) -> Res<Vec<f32>> {
    Ok(Tensor::randn(&[n], 1.0, seed, DType::F32, &Device::Cpu)?.to_vec::<f32>()?)
}

/// `‖y − ref‖/‖ref‖` on the sampled rows, `ref[r][j] = Σ_t a[r][t]·b[j][t]` in f64 (threads over rows).
fn rel_err(y: &[f32], rows: &[usize], n: usize, k: usize, a: &(dyn Fn(usize, usize) -> f64 + Sync), b: &[f32]) -> f64 {
    let parts: Vec<(f64, f64)> = std::thread::scope(|s| {
        let hs: Vec<_> = rows
            .iter()
            .map(|&r| {
                s.spawn(move || {
                    let arow: Vec<f64> = (0..k).map(|t| a(r, t)).collect();
                    let (mut num, mut den) = (0.0, 0.0);
                    for j in 0..n {
                        let bj = &b[j * k..(j + 1) * k];
                        let exact: f64 = arow.iter().zip(bj).map(|(&x, &w)| x * w as f64).sum();
                        num += (y[r * n + j] as f64 - exact).powi(2);
                        den += exact * exact;
                    }
                    (num, den)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (num, den) = parts.iter().fold((0.0, 0.0), |(x, y), (a, b)| (x + a, y + b));
    (num / den).sqrt()
}

/// The search: heuristic with a larger workspace, then every enumerated configuration. Returns
/// the JSON fields; leaves `g` with the search workspace.
fn search(g: &mut GpuGemm, ga: &GpuFp8, gb: &GpuFp8, check: &dyn Fn(&[f32]) -> f64) -> Res<String> {
    g.resize_workspace(SEARCH_WORKSPACE)?;
    let g = &*g;
    let (m, n) = (ga.rows, gb.rows);
    let mut y = g.alloc_out(m, n, OutType::Bf16)?;
    let mut plan = g.plan(ga, gb, OutType::Bf16)?;
    let heuristic = plan.candidates();
    eprintln!("search: heuristic with a {} MiB workspace ({heuristic} candidates)", SEARCH_WORKSPACE >> 20);
    let (t_heur, _, _) = sweep(g, &mut plan, |p| p.run(g, ga, gb, &mut y))?;
    let t0 = Instant::now();
    let added = plan.enumerate(g, SEARCH_LIMIT)?;
    eprintln!("search: {added} more configurations in {:.1} s; timing all", t0.elapsed().as_secs_f64());
    let mut times: Vec<(f64, usize)> = Vec::new();
    for i in 0..plan.candidates() {
        plan.select(i)?;
        let p = &plan;
        match time(g, || p.run(g, ga, gb, &mut y)) {
            Ok(t) => times.push((t, i)),
            Err(e) => eprintln!("  candidate {i} failed: {e}"),
        }
    }
    times.sort_by(|a, b| a.0.total_cmp(&b.0));
    for &(t, i) in times.iter().take(10) {
        eprintln!("  top: {:.1} TFLOP/s {:?}", flops(&plan) / t / 1e12, plan.algo_info(i));
    }
    let &(t_best, i_best) = times.first().ok_or("no candidate ran")?;
    plan.select(i_best)?;
    let mut yb = g.alloc_out(m, n, OutType::Bf16)?;
    plan.run(g, ga, gb, &mut yb)?;
    let err = check(&yb.to_host_f32(g.stream())?);
    let info = plan.algo_info(i_best);
    let (i_tune, t_tune) = plan.tune(g, ga, gb, &mut y, 5)?;
    let f = flops(&plan);
    Ok(format!(
        "\"search_heuristic_256mib_tflops\":{:.0},\"search_candidates\":{},\"search_best_tflops\":{:.0},\"search_best_algo\":\"{info:?}\",\"search_rel_err\":{err:.3e},\"tune_index\":{i_tune},\"tune_tflops\":{:.0}",
        f / t_heur / 1e12,
        times.len(),
        f / t_best / 1e12,
        f / t_tune / 1e12
    ))
}

/// Launches `launch` back to back (batches of 20, synchronised) for `secs` seconds; returns the
/// window's (start, end) in Unix milliseconds and the products per second over it.
fn sustain(g: &GpuGemm, secs: f64, mut launch: impl FnMut() -> fp8::Result<()>) -> Res<(u128, u128, f64)> {
    let unix_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis());
    let (start, t0) = (unix_ms()?, Instant::now());
    let mut n = 0usize;
    while t0.elapsed().as_secs_f64() < secs {
        for _ in 0..20 {
            launch()?;
        }
        n += 20;
        g.synchronize()?;
    }
    Ok((start, unix_ms()?, n as f64 / t0.elapsed().as_secs_f64()))
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let own_only = args.iter().any(|a| a == "--own-only");
    let sustain_secs: Option<f64> = match args.iter().position(|a| a == "--sustain") {
        Some(i) => Some(args.get(i + 1).ok_or("--sustain needs seconds")?.parse()?),
        None => None,
    };
    let mut shapes: Vec<(usize, usize, usize)> = Vec::new();
    let values: Vec<&String> =
        args.iter().enumerate().filter(|&(i, _)| i == 0 || args[i - 1] != "--sustain").map(|(_, a)| a).collect();
    for a in values.into_iter().filter(|a| !a.starts_with("--")) {
        let d: Vec<usize> = a.split('x').map(str::parse).collect::<Result<_, _>>()?;
        shapes.push(match d[..] {
            [n] => (n, n, n),
            [m, n, k] => (m, n, k),
            _ => return Err(format!("shape {a:?}: expected n or MxNxK").into()),
        });
    }
    if shapes.is_empty() {
        shapes = vec![(4096, 4096, 4096), (8192, 8192, 8192)];
    }
    let mut g = GpuGemm::new(0)?;
    eprintln!("{}", g.describe()?);
    let t0 = Instant::now();
    let kern = Sm90Gemm::new(&g)?;
    eprintln!("own kernel compiled (NVRTC, sm_90a) in {:.2} s", t0.elapsed().as_secs_f64());
    for (m, n, k) in shapes {
        let t0 = Instant::now();
        let x: Vec<f32> = randn(m * k, 1)?.iter().enumerate().map(|(i, v)| v * (1 + (i / k) % 7) as f32).collect();
        let w: Vec<f32> =
            randn(n * k, 2)?.iter().enumerate().map(|(i, v)| v * 0.02 * (1 + (i / (128 * k)) % 3) as f32).collect();
        let qx = quantize_act("x", &x, m, k, ScaleFormat::Fp32)?;
        let qw = quantize_weight("w", &w, n, k, ScaleFormat::Fp32)?;
        let (ga, gb): (GpuFp8, GpuFp8) = (g.upload_act(&qx)?, g.upload_weight(&qw)?);
        let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let (xd, wd) = (g.stream().clone_htod(&xb)?, g.stream().clone_htod(&wb)?);
        eprintln!("M={m} N={n} K={k}: data ready in {:.1} s", t0.elapsed().as_secs_f64());
        if let Some(secs) = sustain_secs {
            let f = 2.0 * m as f64 * n as f64 * k as f64;
            let cfg = Sm90Config::for_shape(m, n, kern.sms());
            let mut y = g.alloc_out(m, n, OutType::Bf16)?;
            let (s0, e0, own) = sustain(&g, secs, || kern.run(&g, &ga, &gb, &mut y, cfg))?;
            let plan = g.plan(&ga, &gb, OutType::Bf16)?;
            let (s1, e1, lt) = sustain(&g, secs, || plan.run(&g, &ga, &gb, &mut y))?;
            println!(
                "{{\"m\":{m},\"n\":{n},\"k\":{k},\"sustain_own_cfg\":\"{cfg:?}\",\"sustain_own_ms\":[{s0},{e0}],\"sustain_own_tflops\":{:.0},\"sustain_cublaslt_ms\":[{s1},{e1}],\"sustain_cublaslt_tflops\":{:.0}}}",
                own * f / 1e12,
                lt * f / 1e12
            );
            continue;
        }
        let rows: Vec<usize> = (0..SAMPLE_ROWS).map(|i| i * m / SAMPLE_ROWS + (i * 37) % (m / SAMPLE_ROWS)).collect();
        let (deq_x, deq_w) = (qx.dequantize(), qw.dequantize());
        let check = |y: &[f32]| rel_err(y, &rows, n, k, &|r, t| deq_x[r * k + t] as f64, &deq_w);
        let owned = own(&g, &kern, &ga, &gb, &check)?;
        if own_only {
            println!("{{\"m\":{m},\"n\":{n},\"k\":{k},{owned}}}");
            continue;
        }

        // FP8: both output types, both operand orders; every heuristic candidate. The row-major
        // bf16-output plan is required; the others are reported when cuBLASLt supports them.
        let mut fp8 = Vec::new();
        for (out, layout) in [
            (OutType::Bf16, OutLayout::RowMajor),
            (OutType::F32, OutLayout::RowMajor),
            (OutType::Bf16, OutLayout::Transposed),
        ] {
            eprintln!("fp8 {out:?} {layout:?}");
            let mut plan = match g.plan_with(&ga, &gb, out, layout) {
                Ok(p) => p,
                Err(e) if !fp8.is_empty() => {
                    eprintln!("  not available: {e}");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let mut y = g.alloc_out(m, n, out)?;
            let (t_def, t_best, i) = sweep(&g, &mut plan, |p| p.run(&g, &ga, &gb, &mut y))?;
            fp8.push((out, layout, flops(&plan) / t_def / 1e12, flops(&plan) / t_best / 1e12, plan.algo_info(i), plan));
        }
        // bf16 baseline.
        eprintln!("bf16");
        let mut bplan = g.plan_bf16(m, n, k)?;
        let mut yb = g.alloc_out(m, n, OutType::Bf16)?;
        let (tb_def, tb_best, _) = sweep(&g, &mut bplan, |p| p.run_bf16(&g, &xd, &wd, &mut yb))?;

        // Errors of the fastest row-major FP8 plans and of the bf16 GEMM, on sampled rows.
        let mut errs = Vec::new();
        for (out, layout, _, _, _, plan) in &fp8 {
            if *layout != OutLayout::RowMajor {
                continue;
            }
            let mut y = g.alloc_out(m, n, *out)?;
            plan.run(&g, &ga, &gb, &mut y)?;
            let yh = y.to_host_f32(g.stream())?;
            let tag = if *out == OutType::Bf16 { "" } else { "_f32out" };
            let e = rel_err(&yh, &rows, n, k, &|r, t| deq_x[r * k + t] as f64, &deq_w);
            errs.push(format!("\"rel_err{tag}\":{e:.3e}"));
            let e = rel_err(&yh, &rows, n, k, &|r, t| x[r * k + t] as f64, &w);
            errs.push(format!("\"rel_err_vs_f32_inputs{tag}\":{e:.3e}"));
        }
        let ybh = yb.to_host_f32(g.stream())?;
        let wbf: Vec<f32> = wb.iter().map(|v| v.to_f32()).collect();
        let e_bf16 = rel_err(&ybh, &rows, n, k, &|r, t| xb[r * k + t].to_f32() as f64, &wbf);
        let (_, _, _, fp8_best, fp8_info, _) = &fp8[0];
        let searched = search(&mut g, &ga, &gb, &check)?;
        g.resize_workspace(fp8::cuda::WORKSPACE_BYTES)?;

        let fields: Vec<String> = fp8
            .iter()
            .map(|(out, layout, d, b, _, _)| {
                let tag = format!(
                    "{}_{}",
                    if *out == OutType::Bf16 { "bf16out" } else { "f32out" },
                    if *layout == OutLayout::RowMajor { "y" } else { "yt" }
                );
                format!("\"fp8_{tag}_default_tflops\":{d:.0},\"fp8_{tag}_best_tflops\":{b:.0}")
            })
            .collect();
        println!(
            "{{\"m\":{m},\"n\":{n},\"k\":{k},\"fp8_block_tflops\":{fp8_best:.0},{},\"fp8_best_algo\":\"{fp8_info:?}\",\"bf16_default_tflops\":{:.0},\"bf16_best_tflops\":{:.0},{},\"bf16_rel_err\":{e_bf16:.3e},{searched},{owned}}}",
            fields.join(","),
            2.0 * m as f64 * n as f64 * k as f64 / tb_def / 1e12,
            2.0 * m as f64 * n as f64 * k as f64 / tb_best / 1e12,
            errs.join(","),
        );
    }
    Ok(())
}
