//! `r1 rewards score --input IN.jsonl --output OUT.jsonl [--reward NAME[=WEIGHT]]...`
//!
//! Each input line is a JSON object with `completion` (plus `answer`, `tests`, `language`, … as the chosen
//! rewards need). Each output line is that object plus `rewards: {name: score}` and `reward` (the weighted sum).

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use rewards::{DEFAULT_REWARDS, Sample, WeightedRewards, stats};
use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

/// `r1 rewards …`
#[derive(Debug, Args)]
pub struct RewardsArgs {
    #[command(subcommand)]
    command: RewardsCommand,
}

#[derive(Debug, Subcommand)]
enum RewardsCommand {
    /// Score a JSONL file of completions.
    Score(ScoreArgs),
}

#[derive(Debug, Args)]
struct ScoreArgs {
    /// Input JSONL: one object per line with `completion` and the fields the rewards need.
    #[arg(long)]
    input: PathBuf,
    /// Output JSONL: the input lines plus `rewards` and `reward`.
    #[arg(long)]
    output: PathBuf,
    /// A reward as NAME or NAME=WEIGHT; repeat for several (default: accuracy, format with weight 1).
    #[arg(long = "reward", value_name = "NAME[=WEIGHT]")]
    rewards: Vec<String>,
    /// Also write `reward_reasons: {name: reason}`.
    #[arg(long)]
    reasons: bool,
}

/// Dispatch `r1 rewards …`.
pub fn run(args: RewardsArgs) -> Result<()> {
    match args.command {
        RewardsCommand::Score(a) => score(a),
    }
}

fn score(a: ScoreArgs) -> Result<()> {
    let specs: Vec<String> =
        if a.rewards.is_empty() { DEFAULT_REWARDS.iter().map(|s| s.to_string()).collect() } else { a.rewards };
    let set = WeightedRewards::from_specs(&specs)?;
    let file = std::fs::File::open(&a.input).with_context(|| format!("open {}", a.input.display()))?;
    let mut rows: Vec<(String, Sample)> = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}: read", a.input.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("{}:{}: not JSON", a.input.display(), i + 1))?;
        let serde_json::Value::Object(obj) = v else {
            bail!(
                "{}:{}: expected a JSON object, got {}",
                a.input.display(),
                i + 1,
                line.chars().take(80).collect::<String>()
            );
        };
        let Some(c) = obj.get("completion").and_then(|c| c.as_str()) else {
            bail!("{}:{}: field `completion` is missing or not a string", a.input.display(), i + 1);
        };
        rows.push((c.to_string(), obj));
    }
    let t = std::time::Instant::now();
    let results = set.score_batch(&rows);
    let elapsed = t.elapsed();
    let out = std::fs::File::create(&a.output).with_context(|| format!("create {}", a.output.display()))?;
    let mut w = BufWriter::new(out);
    for (i, ((_, mut obj), r)) in rows.into_iter().zip(&results).enumerate() {
        let scored = r.as_ref().map_err(|e| anyhow::anyhow!("{}: record {}: {e}", a.input.display(), i + 1))?;
        let per: serde_json::Map<String, serde_json::Value> =
            scored.parts.iter().map(|(n, s)| (n.clone(), s.value.into())).collect();
        obj.insert("rewards".into(), per.into());
        obj.insert("reward".into(), scored.total.into());
        if a.reasons {
            let why: serde_json::Map<String, serde_json::Value> =
                scored.parts.iter().map(|(n, s)| (n.clone(), s.reason.clone().into())).collect();
            obj.insert("reward_reasons".into(), why.into());
        }
        serde_json::to_writer(&mut w, &obj)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    for s in stats(&results) {
        eprintln!("{:16} n={} mean={:.4} std={:.4} min={:.4} max={:.4}", s.name, s.count, s.mean, s.std, s.min, s.max);
    }
    let n = results.len();
    eprintln!(
        "scored {n} records in {:.3}s ({:.0}/s)",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    Ok(())
}
