//! `cargo xtask <command>`: the project's task runner.
//!
//! - `kernels`: compile every CUDA kernel (`crates/tensor/kernels/*.cu`) to PTX for sm_90 with
//!   nvcc 13.0 from NVIDIA's pinned Python wheels (installed into `.venv-nvcc` on first use; no
//!   GPU or CUDA toolkit needed). The tensor crate embeds the PTX. The fp8 crate's Hopper
//!   kernels (`crates/fp8/kernels/*.cu`, NVRTC at run time) are compiled for sm_90a as a check.
//! - `test`: everything CI checks — rustfmt, clippy (with and without `cuda`), the kernels,
//!   the workspace tests (with `cuda` compiled in; GPU tests skip without a GPU), the rewards
//!   wheel built and its Python tests run (`python/ci.sh`), rustdoc.
//! - `bench gemm`: our CPU GEMM next to OpenBLAS (numpy) on the same sizes, with the ratio.
//! - `bench cpu-small`: our `cpu-small` training step next to PyTorch + transformers, with the ratio.
//! - `gpu-bundle`: build the CUDA test binaries and the GEMM examples (tensor bf16/f32, fp8
//!   block-scaled) into `.gpu/` for the GPU machine.
//! - `fp8-gap`: FP8 vs f32 training of the cpu-small model on the chain corpus (loss gap).
//! - `train`: the main job (the R1 pipeline in miniature; today: pretraining the base model).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "r1 task runner")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Compile the CUDA kernels to PTX (sm_90) with nvcc 13.0 from pinned wheels.
    Kernels,
    /// Run every check CI runs.
    Test,
    /// Side-by-side benchmarks.
    Bench {
        /// What to compare: `gemm` or `cpu-small`.
        what: String,
    },
    /// Build CUDA test binaries and examples into .gpu/ for the GPU machine.
    GpuBundle,
    /// FP8 vs f32 training on the cpu-small model over the chain corpus: the loss gap.
    Fp8Gap {
        /// Steps per run.
        #[arg(long, default_value_t = 200)]
        steps: usize,
        /// Seed of both runs (initialisation and data).
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Run the training pipeline.
    Train {
        /// Extra arguments for the trainer.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the workspace").to_path_buf()
}

/// Where cargo puts build outputs: `CARGO_TARGET_DIR` when set (relative to the workspace),
/// else `target/` in the workspace.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => root().join(d),
        _ => root().join("target"),
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("$ {cmd:?}");
    let st = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !st.success() {
        bail!("command failed ({st}): {cmd:?}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// The pinned nvcc wheels (see shared/docs/gpu.md: newer nvvm emits PTX the 580 driver rejects).
const NVCC_WHEELS: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.*",
    "nvidia-cuda-runtime==13.0.*",
    "nvidia-cuda-crt==13.0.*",
    "nvidia-cuda-cccl==13.0.*",
    "nvidia-nvvm==13.0.*",
];

fn nvcc() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("R1_NVCC") {
        return Ok(PathBuf::from(p));
    }
    let venv = root().join(".venv-nvcc");
    let find = |venv: &Path| -> Option<PathBuf> {
        let lib = venv.join("lib");
        std::fs::read_dir(&lib).ok()?.flatten().find_map(|py| {
            let p = py.path().join("site-packages/nvidia/cu13/bin/nvcc");
            p.exists().then_some(p)
        })
    };
    if let Some(p) = find(&venv) {
        return Ok(p);
    }
    eprintln!("installing nvcc 13.0 from NVIDIA's wheels into {} (~330 MB, once)", venv.display());
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip")).args(["install", "--quiet"]).args(NVCC_WHEELS))?;
    find(&venv).context("nvcc not found in the installed wheels")
}

fn kernels() -> Result<()> {
    let nvcc = nvcc()?;
    let dir = root().join("crates/tensor/kernels");
    let out = dir.join("ptx");
    std::fs::create_dir_all(&out)?;
    let mut srcs: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    srcs.sort();
    for src in &srcs {
        let stem = src.file_stem().and_then(|s| s.to_str()).context("kernel file name")?;
        let ptx = out.join(format!("{stem}.ptx"));
        run(Command::new(&nvcc)
            .args(["-ptx", "-arch=sm_90", "-O3", "-Werror", "all-warnings", "-I"])
            .arg(&dir)
            .arg(src)
            .arg("-o")
            .arg(&ptx))?;
    }
    eprintln!("compiled {} kernel sources to PTX (sm_90) in {}", srcs.len(), out.display());
    // The fp8 crate compiles its wgmma/TMA kernels with NVRTC at run time; compile them here too
    // (cubin for sm_90a, discarded) so that an error shows without a GPU.
    let fp8 = root().join("crates/fp8/kernels");
    let mut fp8_srcs: Vec<PathBuf> = std::fs::read_dir(&fp8)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    fp8_srcs.sort();
    let scratch = std::env::temp_dir().join(format!("r1-fp8-kernel-check-{}.cubin", std::process::id()));
    for src in &fp8_srcs {
        run(Command::new(&nvcc)
            .args(["-cubin", "-gencode=arch=compute_90a,code=sm_90a", "-std=c++17", "-O3", "-Werror", "all-warnings"])
            .arg(src)
            .arg("-o")
            .arg(&scratch))?;
    }
    let _ = std::fs::remove_file(&scratch);
    eprintln!("compiled {} fp8 kernel sources for sm_90a (check only)", fp8_srcs.len());
    Ok(())
}

fn test() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--all-features", "--", "-D", "warnings"]))?;
    kernels()?;
    run(cargo().args(["test", "--workspace", "--all-features"]))?;
    // The rewards wheel (`python/`, its own pinned workspace): build, install, Python tests.
    run(Command::new("bash").arg(root().join("python/ci.sh")))?;
    run(cargo().args(["doc", "--workspace", "--no-deps", "--all-features"]).env("RUSTDOCFLAGS", "-D warnings"))?;
    eprintln!("xtask test: all checks passed");
    Ok(())
}

fn bench(what: &str) -> Result<()> {
    match what {
        "gemm" => {
            run(cargo().args(["build", "--release", "-p", "tensor", "--example", "gemm"]))?;
            let venv = bench_venv(&["numpy"])?;
            let ours = Command::new(target_dir().join("release/examples/gemm")).output()?;
            let peer = Command::new(venv.join("bin/python")).arg(root().join("benches/gemm_numpy.py")).output()?;
            if !ours.status.success() || !peer.status.success() {
                bail!(
                    "bench failed: {}{}",
                    String::from_utf8_lossy(&ours.stderr),
                    String::from_utf8_lossy(&peer.stderr)
                );
            }
            let parse = |o: &[u8]| -> Vec<(usize, f64)> {
                String::from_utf8_lossy(o)
                    .lines()
                    .filter_map(|l| {
                        let mut it = l.split_whitespace();
                        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
                    })
                    .collect()
            };
            let (a, b) = (parse(&ours.stdout), parse(&peer.stdout));
            println!(
                "f32 GEMM n×n×n on {} threads (GFLOP/s, best of repeats)",
                std::thread::available_parallelism().map_or(0, |n| n.get())
            );
            println!("{:>6} {:>10} {:>14} {:>7}", "n", "r1", "numpy/OpenBLAS", "ratio");
            for ((n, x), (_, y)) in a.iter().zip(&b) {
                println!("{n:>6} {x:>10.1} {y:>14.1} {:>7.2}", x / y);
            }
            Ok(())
        }
        "cpu-small" => cpu_small(),
        other => bail!("unknown bench {other:?} (known: gemm, cpu-small)"),
    }
}

/// A Python environment for the peers (numpy; torch + transformers for the model benches).
fn bench_venv(packages: &[&str]) -> Result<PathBuf> {
    let venv = root().join(".venv-bench");
    if !venv.join("bin/python").exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new(venv.join("bin/python"))
                .args(["-c", &format!("import {p}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .collect();
    if !missing.is_empty() {
        eprintln!("installing {missing:?} into {} (torch is large)", venv.display());
        run(Command::new(venv.join("bin/pip")).args(["install", "--quiet"]).args(&missing))?;
    }
    Ok(venv)
}

/// The `cpu-small` training step (benchmarks.md): ours (`model` example `smoke --bench`) and
/// PyTorch + transformers' `DeepseekV3ForCausalLM` (benches/cpu_small_peer.py) in one run.
fn cpu_small() -> Result<()> {
    run(cargo().args(["build", "--release", "-p", "model", "--example", "smoke"]))?;
    let venv = bench_venv(&["torch", "transformers"])?;
    let json = |o: &std::process::Output, who: &str| -> Result<serde_json::Value> {
        if !o.status.success() {
            bail!("{who} failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        let text = String::from_utf8_lossy(&o.stdout);
        let line = text.lines().rev().find(|l| l.starts_with('{')).context("no JSON line")?;
        Ok(serde_json::from_str(line)?)
    };
    let ours = json(&Command::new(target_dir().join("release/examples/smoke")).args(["--bench", "5"]).output()?, "r1")?;
    let peer = json(
        &Command::new(venv.join("bin/python")).arg(root().join("benches/cpu_small_peer.py")).args(["5"]).output()?,
        "peer",
    )?;
    let (a, b) = (ours["tokens_per_s"].as_f64().unwrap_or(0.0), peer["tokens_per_s"].as_f64().unwrap_or(0.0));
    println!("cpu-small training step (batch 8 × 256, AdamW, f32), median of 5 steps after 2 warm-up");
    println!("r1:   {ours}");
    println!("peer: {peer}");
    println!("{:>12} {:>12} {:>7}", "r1 tok/s", "peer tok/s", "ratio");
    println!("{a:>12.0} {b:>12.0} {:>7.2}", a / b);
    Ok(())
}

fn gpu_bundle() -> Result<()> {
    kernels()?;
    let out = root().join(".gpu");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    let o = cargo().args(["test", "--workspace", "--all-features", "--no-run", "--message-format=json"]).output()?;
    if !o.status.success() {
        bail!("build failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let mut n = 0;
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        if let (Some(exe), true) = (json_str(line, "\"executable\":\""), line.contains("\"test\":true")) {
            let name = Path::new(&exe).file_name().context("exe name")?.to_owned();
            std::fs::copy(&exe, out.join(&name))?;
            // Debug info would push the bundle past the GPU machine's transfer limit.
            let _ = Command::new("strip").arg(out.join(&name)).status();
            n += 1;
        }
    }
    for (pkg, example) in [("tensor", "gemm"), ("fp8", "fp8_gemm_gpu")] {
        run(cargo().args(["build", "--release", "-p", pkg, "--features", "cuda", "--example", example]))?;
        std::fs::copy(target_dir().join("release/examples").join(example), out.join(example))?;
        let _ = Command::new("strip").arg(out.join(example)).status();
    }
    eprintln!("bundled {n} test binaries and the gemm / fp8_gemm_gpu examples into {}", out.display());
    Ok(())
}

/// The string value following `key` in one line of cargo's JSON output.
fn json_str(line: &str, key: &str) -> Option<String> {
    let i = line.find(key)? + key.len();
    let j = line[i..].find('"')?;
    Some(line[i..i + j].to_string())
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Kernels => kernels(),
        Cmd::Test => test(),
        Cmd::Bench { what } => bench(&what),
        Cmd::GpuBundle => gpu_bundle(),
        Cmd::Fp8Gap { steps, seed } => fp8_gap(steps, seed),
        Cmd::Train { args } => train(&args),
    }
}

/// Train `configs/fp8-gap-cpu-small.json` twice from the same seed — f32, then FP8 linears —
/// and print the training-loss curves and the held-out loss of each, with the relative gaps.
fn fp8_gap(steps: usize, seed: u64) -> Result<()> {
    run(cargo().args(["build", "--release", "-p", "r1"]))?;
    let cfg = root().join("configs/fp8-gap-cpu-small.json");
    let mut res = Vec::new();
    for (name, extra) in [("f32", None), ("fp8", Some("--fp8"))] {
        let out = root().join(format!("runs/fp8-gap-{name}-seed{seed}"));
        let mut c = Command::new(target_dir().join("release/r1"));
        c.arg("train").arg("--config").arg(&cfg).arg("--out").arg(&out).args(["--fresh", "--steps"]);
        c.arg(steps.to_string()).arg("--seed").arg(seed.to_string()).args(extra);
        let t0 = std::time::Instant::now();
        run(&mut c)?;
        let secs = t0.elapsed().as_secs_f64();
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl"))?;
        let curve: Vec<(u64, f64)> = metrics
            .lines()
            .filter_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                Some((v["step"].as_u64()?, v["loss"].as_f64()?))
            })
            .collect();
        let ev: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval.json"))?)?;
        res.push((name, curve, ev["heldout_loss"].as_f64().unwrap_or(f64::NAN), secs));
    }
    let gap = |a: f64, b: f64| 100.0 * (b - a) / a;
    println!("cpu-small model on the chain corpus, {steps} steps, batch 8 × 128, seed {seed} for both runs");
    println!("{:>6} {:>10} {:>10} {:>9}", "step", "f32", "fp8", "gap %");
    for ((s, a), (_, b)) in res[0].1.iter().zip(&res[1].1) {
        if s % 20 == 0 || *s as usize == steps {
            println!("{s:>6} {a:>10.4} {b:>10.4} {:>+9.3}", gap(*a, *b));
        }
    }
    let tail = |c: &[(u64, f64)]| {
        let k = c.len().min(5);
        c[c.len() - k..].iter().map(|x| x.1).sum::<f64>() / k as f64
    };
    let (ta, tb) = (tail(&res[0].1), tail(&res[1].1));
    println!("mean train loss over the last 5 logged steps: f32 {ta:.4}  fp8 {tb:.4}  gap {:+.3}%", gap(ta, tb));
    println!(
        "held-out next-token loss: f32 {:.4}  fp8 {:.4}  gap {:+.3}%",
        res[0].2,
        res[1].2,
        gap(res[0].2, res[1].2)
    );
    println!("wall time: f32 {:.0} s, fp8 {:.0} s", res[0].3, res[1].3);
    Ok(())
}

/// The main job: build the `r1` binary (release; with CUDA when `--device cuda…` is asked for)
/// and run `r1 train` with the given arguments (default output `runs/pretrain`).
fn train(args: &[String]) -> Result<()> {
    let cuda = args.windows(2).any(|w| w[0] == "--device" && w[1].starts_with("cuda"))
        || args.iter().any(|a| a.starts_with("--device=cuda"));
    let mut build = cargo();
    build.args(["build", "--release", "-p", "r1"]);
    if cuda {
        build.args(["--features", "cuda"]);
    }
    run(&mut build)?;
    run(Command::new(target_dir().join("release/r1")).arg("train").args(args).current_dir(root()))
}
