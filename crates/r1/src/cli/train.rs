//! `r1 train`: run the recipe's stages. Today: pretraining the miniature base model.

use std::path::PathBuf;

use clap::Args;
use r1::pipeline::pretrain::{PretrainConfig, print_evaluation, run as pretrain};
use tensor::Device;

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A JSON file overriding fields of the pretraining config (see `--print-config`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Output directory (checkpoints, metrics.jsonl, loss.png, eval.json, final/).
    #[arg(long, default_value = "runs/pretrain")]
    pub out: PathBuf,
    /// Override the number of optimisation steps.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Override the seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// `cpu`, or `cuda` / `cuda:N` (needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Train the linear layers in FP8 (DeepSeek-V3 §3.3; sets `train.fp8`).
    #[arg(long)]
    pub fp8: bool,
    /// Start over even if `--out` holds checkpoints (default: resume from the newest).
    #[arg(long)]
    pub fresh: bool,
    /// Print the effective config as JSON and exit.
    #[arg(long)]
    pub print_config: bool,
}

pub fn device(name: &str) -> anyhow::Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        #[cfg(feature = "cuda")]
        d if d == "cuda" || d.starts_with("cuda:") => {
            let n = d
                .strip_prefix("cuda:")
                .map(str::parse)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--device {d:?}: {e} (expected cuda or cuda:N)"))?
                .unwrap_or(0);
            if tensor::cuda::CudaBackend::try_default().is_none() {
                anyhow::bail!("--device {d}: no CUDA driver on this machine");
            }
            Ok(Device::Cuda(tensor::cuda::CudaBackend::new(n)?))
        }
        d => anyhow::bail!(
            "--device {d:?}: expected cpu{}",
            if cfg!(feature = "cuda") {
                " or cuda[:N]"
            } else {
                " (this build has no CUDA; build with --features cuda)"
            }
        ),
    }
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let mut cfg = match &args.config {
        Some(p) => PretrainConfig::from_file(p)?,
        None => PretrainConfig::default(),
    };
    if let Some(s) = args.steps {
        cfg.train.total_steps = s;
    }
    if let Some(s) = args.seed {
        cfg.seed = s;
    }
    if args.fp8 {
        cfg.train.fp8 = true;
    }
    if args.print_config {
        cfg.model.vocab_size = data::Tokenizer::project().vocab_size();
        println!("{}", serde_json::to_string_pretty(&cfg)?);
        return Ok(());
    }
    let dev = device(&args.device)?;
    let ev = pretrain(&cfg, &args.out, &dev, args.fresh)?;
    print_evaluation(&ev, &args.out);
    Ok(())
}
