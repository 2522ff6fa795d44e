//! Stage 0 — pretraining the miniature "DeepSeek-V3-Base" (issue 9): a small DeepSeek-V3
//! architecture model (MLA, DeepSeekMoE with aux-loss-free balancing, MTP) trained from scratch on
//! the embedded bounded-chain corpus (`data::tasks`), then evaluated on held-out problems.
//!
//! Every batch is a pure function of `(seed, step)`, so a resumed run sees exactly the data the
//! uninterrupted run would have seen; checkpoints are atomic (`sft::checkpoint`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use data::tasks::{ChainTask, Corpus, CorpusMix, Problem};
use data::{Overflow, Packer, TokenDoc, Tokenizer};
use indicatif::{ProgressBar, ProgressStyle};
use model::{DeepseekV3, DeepseekV3Config, SamplingParams};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use sft::checkpoint::load_checkpoint;
use sft::{LmBatch, LmTrainer, StepStats, TrainConfig, init_scaled, latest_checkpoint, save_checkpoint};
use tensor::Device;

use super::plot::{Series, line_chart};

/// Everything a pretraining run is made of (a JSON file can override any field).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PretrainConfig {
    /// Seed of the initialisation, the data stream and the split.
    pub seed: u64,
    /// The model's `config.json` (the vocabulary size is set from the tokenizer).
    pub model: DeepseekV3Config,
    /// MTP depth (0 or 1).
    pub mtp_layers: usize,
    /// Standard deviation of the embedding initialisation.
    pub embed_std: f64,
    pub train: TrainConfig,
    /// Packed rows per step and tokens per row.
    pub rows: usize,
    pub seq_len: usize,
    /// Operands per chain (the task's level).
    pub level: usize,
    /// Share of expressions held out.
    pub test_fraction: f64,
    pub mix: CorpusMix,
    /// Write a metrics line every this many steps.
    pub log_every: usize,
    /// Held-out loss every this many steps.
    pub eval_every: usize,
    /// Atomic checkpoint every this many steps (and at the end).
    pub checkpoint_every: usize,
    pub keep_checkpoints: usize,
    /// Held-out documents for the loss and problems for answer accuracy.
    pub eval_docs: usize,
    pub eval_problems: usize,
    /// Token budget of a greedy answer.
    pub max_new_tokens: usize,
}

/// The miniature model: 4 layers (1 dense + 3 MoE with 8 routed experts, top-2 of 2 groups,
/// 1 shared), MLA with a 32-dim latent, RoPE 8 dims, YaRN off.
pub const MINI_MODEL: &str = r#"{"vocab_size": 64, "hidden_size": 64, "intermediate_size": 256,
  "moe_intermediate_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "n_shared_experts": 1,
  "n_routed_experts": 8, "routed_scaling_factor": 1.0, "kv_lora_rank": 32, "q_lora_rank": null,
  "qk_rope_head_dim": 8, "v_head_dim": 16, "qk_nope_head_dim": 16, "n_group": 2, "topk_group": 1,
  "num_experts_per_tok": 2, "first_k_dense_replace": 1, "norm_topk_prob": true, "rope_theta": 10000.0,
  "max_position_embeddings": 256, "aux_loss_alpha": 0.0001, "tie_word_embeddings": false}"#;

impl Default for PretrainConfig {
    fn default() -> Self {
        PretrainConfig {
            seed: 0,
            model: DeepseekV3Config::from_json(MINI_MODEL, "MINI_MODEL").expect("the embedded config is valid"),
            mtp_layers: 1,
            embed_std: 0.3,
            // AdamW 2e-3, β (0.9, 0.98), wd 0.01, warmup 50 → cosine to 10 %, clip 1, MTP λ 0.3, γ 0.001.
            train: TrainConfig { total_steps: 1200, ..TrainConfig::default() },
            rows: 8,
            seq_len: 128,
            level: 4,
            test_fraction: 0.1,
            mix: CorpusMix::default(),
            log_every: 10,
            eval_every: 200,
            checkpoint_every: 200,
            keep_checkpoints: 2,
            eval_docs: 256,
            eval_problems: 500,
            max_new_tokens: 48,
        }
    }
}

impl PretrainConfig {
    /// Read a JSON file of overrides.
    pub fn from_file(path: &Path) -> Result<PretrainConfig> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut c: PretrainConfig =
            serde_json::from_str(&text).with_context(|| format!("{}: not a pretraining config", path.display()))?;
        // The model block gets the checks of a config.json (rejected values name file and field).
        c.model =
            DeepseekV3Config::from_json(&serde_json::to_string(&c.model)?, &format!("{} (model)", path.display()))?;
        Ok(c)
    }

    fn validate(&self) -> Result<()> {
        for (field, v) in [
            ("rows", self.rows),
            ("seq_len", self.seq_len),
            ("log_every", self.log_every),
            ("eval_every", self.eval_every),
            ("checkpoint_every", self.checkpoint_every),
        ] {
            if v == 0 {
                bail!("pretraining config: field {field}: must be > 0");
            }
        }
        if !(self.embed_std > 0.0 && self.embed_std.is_finite()) {
            bail!("pretraining config: field embed_std: {} must be finite and > 0", self.embed_std);
        }
        if self.mtp_layers > 1 {
            bail!("pretraining config: field mtp_layers: {} (depth 0 or 1 is supported)", self.mtp_layers);
        }
        if self.seq_len > self.model.max_position_embeddings {
            bail!(
                "pretraining config: field seq_len: {} exceeds model.max_position_embeddings {}",
                self.seq_len,
                self.model.max_position_embeddings
            );
        }
        self.train.validate()?;
        Ok(())
    }
}

/// Where the artifacts go.
pub struct Paths {
    pub out: PathBuf,
}

impl Paths {
    pub fn metrics(&self) -> PathBuf {
        self.out.join("metrics.jsonl")
    }
    pub fn curve(&self) -> PathBuf {
        self.out.join("loss.png")
    }
    pub fn eval(&self) -> PathBuf {
        self.out.join("eval.json")
    }
    pub fn final_model(&self) -> PathBuf {
        self.out.join("final")
    }
    pub fn config(&self) -> PathBuf {
        self.out.join("run_config.json")
    }
}

/// Answer accuracy on held-out problems under one prompting mode.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Accuracy {
    /// What was appended to the prompt before greedy decoding.
    pub mode: String,
    pub forced_prefix: String,
    pub problems: usize,
    /// The integer inside `<answer>…</answer>` is right.
    pub strict: f64,
    /// The last integer of the completion is right.
    pub any_final_number: f64,
    /// Mean completion length in tokens.
    pub mean_tokens: f64,
    /// Three sample completions.
    pub samples: Vec<String>,
}

/// The held-out evaluation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Evaluation {
    pub step: usize,
    /// Mean next-token loss on held-out corpus documents.
    pub heldout_loss: f64,
    pub heldout_tokens: usize,
    pub accuracy: Vec<Accuracy>,
}

/// The pretraining data: the corpus over training problems, the tokenizer and the packer.
pub struct Stream {
    pub tok: Tokenizer,
    pub corpus: Corpus,
    seed: u64,
    rows: usize,
    seq_len: usize,
}

impl Stream {
    pub fn new(cfg: &PretrainConfig) -> Result<Stream> {
        let task = ChainTask::new(cfg.level)?.with_split(cfg.seed, cfg.test_fraction)?;
        Ok(Stream {
            tok: Tokenizer::project(),
            corpus: Corpus::new(task, cfg.mix.clone())?,
            seed: cfg.seed,
            rows: cfg.rows,
            seq_len: cfg.seq_len,
        })
    }

    fn pack(&self, docs: impl Iterator<Item = Result<Vec<u32>>>, rows: usize) -> Result<LmBatch> {
        let mut packer = Packer::new(self.seq_len, self.tok.pad_id(), Overflow::Truncate)?;
        let mut seqs = Vec::with_capacity(rows);
        for d in docs {
            seqs.extend(packer.push(&TokenDoc::new(d?))?);
            if seqs.len() >= rows {
                break;
            }
        }
        if seqs.len() < rows {
            seqs.extend(packer.flush());
        }
        seqs.truncate(rows);
        lm_batch(&seqs)
    }

    /// The batch of `step`: a pure function of `(seed, step)`.
    pub fn batch(&self, step: usize) -> Result<LmBatch> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ (step as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let docs = std::iter::from_fn(|| {
            Some(
                self.corpus
                    .document(&mut rng)
                    .map_err(anyhow::Error::from)
                    .and_then(|d| Ok(self.tok.encode(&d.text)?)),
            )
        });
        self.pack(docs, self.rows)
    }

    /// Held-out documents (the corpus mix over held-out problems), packed.
    pub fn heldout(&self, docs: usize) -> Result<Vec<LmBatch>> {
        let mut rng = StdRng::seed_from_u64(self.seed.wrapping_add(0xe7a1));
        let problems = self.corpus.task.test_problems(docs.min(self.max_test()), self.seed.wrapping_add(17))?;
        let texts: Vec<Vec<u32>> = problems
            .iter()
            .map(|p| {
                let kind = self.corpus.kind(&mut rng);
                let text = format!("{}{}{}", p.prompt, kind.completion(p, &mut rng), data::tokenizer::EOS);
                Ok(self.tok.encode(&text)?)
            })
            .collect::<Result<_>>()?;
        let mut packer = Packer::new(self.seq_len, self.tok.pad_id(), Overflow::Truncate)?;
        let mut seqs = Vec::new();
        for t in &texts {
            seqs.extend(packer.push(&TokenDoc::new(t.clone()))?);
        }
        seqs.extend(packer.flush());
        seqs.chunks(self.rows).map(lm_batch).collect()
    }

    /// How many distinct held-out problems to ask for at most: a level has 10·11^(L−1) chains
    /// (10 first digits, 11 `±d` choices per step), `test_fraction` of them held out; half of
    /// that keeps the distinct-rejection sampling of `test_problems` quick.
    fn max_test(&self) -> usize {
        let t = &self.corpus.task;
        let all = 10f64 * 11f64.powi(t.level as i32 - 1);
        (0.5 * all * t.test_fraction) as usize
    }
}

// `data` packs with the ignore index the trainer skips.
const _: () = assert!(data::IGNORE_INDEX == sft::trainer::IGNORE);

/// Packed sequences stacked into the trainer's batch.
fn lm_batch(seqs: &[data::Packed]) -> Result<LmBatch> {
    let b = data::Batch::stack(seqs)?;
    // Segment 0 is the packer's padding.
    let key_padding = Some(b.segment_ids.iter().map(|&s| s != 0).collect());
    Ok(LmBatch {
        ids: b.ids,
        targets: b.targets,
        positions: b.positions,
        segment_ids: Some(b.segment_ids),
        key_padding,
        b: b.batch,
        s: b.seq_len,
    })
}

/// Greedy answer accuracy of `model` on `problems` with `prefix` forced after the prompt.
pub fn answer_accuracy(
    model: &DeepseekV3,
    tok: &Tokenizer,
    problems: &[Problem],
    mode: &str,
    prefix: &str,
    max_new_tokens: usize,
) -> Result<Accuracy> {
    let sp = SamplingParams { temperature: 0.0, max_new_tokens, stop_tokens: vec![tok.eos_id()], ..Default::default() };
    let (mut strict, mut any, mut len) = (0usize, 0usize, 0usize);
    let mut samples = Vec::new();
    for chunk in problems.chunks(128) {
        let prompts: Vec<Vec<u32>> =
            chunk.iter().map(|p| tok.encode(&format!("{}{prefix}", p.prompt))).collect::<data::Result<_>>()?;
        let g = model.generate(&prompts, &sp)?;
        for (p, toks) in chunk.iter().zip(&g.tokens) {
            let body: Vec<u32> = toks.iter().copied().filter(|&t| t != tok.eos_id()).collect();
            let text = format!("{prefix}{}", tok.decode(&body)?);
            let g = p.grade(&text);
            strict += usize::from(g.strict);
            any += usize::from(g.any_final_number);
            len += toks.len();
            if samples.len() < 3 {
                samples.push(format!("{}{text}", p.prompt));
            }
        }
    }
    let n = problems.len().max(1) as f64;
    Ok(Accuracy {
        mode: mode.into(),
        forced_prefix: prefix.into(),
        problems: problems.len(),
        strict: strict as f64 / n,
        any_final_number: any as f64 / n,
        mean_tokens: len as f64 / n,
        samples,
    })
}

/// The three prompting modes of the evaluation: as the model likes, the answer forced at once
/// (no thinking), and thinking forced.
pub const MODES: [(&str, &str); 3] = [("free", ""), ("direct", "<answer>"), ("think", "<think>")];

/// Mean next-token loss over `batches` and the number of targets.
fn mean_heldout_loss(t: &LmTrainer, batches: &[LmBatch]) -> Result<(f64, usize)> {
    let (mut sum, mut n) = (0.0, 0);
    for b in batches {
        let (s, k) = t.eval_loss(b)?;
        sum += s;
        n += k;
    }
    Ok((sum / n.max(1) as f64, n))
}

/// One line of `metrics.jsonl`.
#[derive(Serialize)]
struct Metric {
    #[serde(flatten)]
    stats: StepStats,
    tokens_per_s: f64,
    /// Seconds since this process started training (restarts at 0 after a resume).
    elapsed_s: f64,
    heldout_loss: Option<f64>,
}

fn read_metrics(path: &Path, upto: usize) -> Result<Vec<serde_json::Value>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut v = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let Ok(m) = serde_json::from_str::<serde_json::Value>(line) else {
            // A line cut by a kill: everything after it is dropped too.
            eprintln!("{}:{}: unreadable metrics line dropped", path.display(), i + 1);
            break;
        };
        if m["step"].as_u64().is_some_and(|s| s as usize <= upto) {
            v.push(m);
        }
    }
    Ok(v)
}

fn write_curve(paths: &Paths, metrics: &[serde_json::Value]) -> Result<()> {
    let pts = |key: &str| -> Vec<(f64, f64)> {
        metrics.iter().filter_map(|m| Some((m["step"].as_f64()?, m.get(key)?.as_f64()?))).collect()
    };
    line_chart(
        &paths.curve(),
        "miniature DeepSeek-V3-Base pretraining",
        "step",
        "cross-entropy (nats/token)",
        &[
            Series {
                name: "train next-token loss",
                points: pts("loss"),
                color: plotters::style::RGBColor(31, 119, 180),
            },
            Series {
                name: "train MTP loss (λ-weighted)",
                points: pts("mtp_loss"),
                color: plotters::style::RGBColor(255, 127, 14),
            },
            Series {
                name: "held-out next-token loss",
                points: pts("heldout_loss"),
                color: plotters::style::RGBColor(44, 160, 44),
            },
        ],
    )
}

/// Run (or resume) pretraining into `out`; returns the final evaluation.
pub fn run(cfg: &PretrainConfig, out: &Path, device: &Device, fresh: bool) -> Result<Evaluation> {
    let mut cfg = cfg.clone();
    let stream = Stream::new(&cfg)?;
    cfg.model.vocab_size = stream.tok.vocab_size();
    cfg.validate()?;
    let paths = Paths { out: out.to_path_buf() };
    if fresh && out.exists() {
        // Only a run directory (or an empty one) is wiped: `--out ~ --fresh` must not delete a home.
        let empty = std::fs::read_dir(out).with_context(|| format!("reading {}", out.display()))?.next().is_none();
        if !empty && !paths.config().exists() {
            bail!(
                "--fresh: {} is not a training run directory (no run_config.json); refusing to delete it",
                out.display()
            );
        }
        std::fs::remove_dir_all(out).with_context(|| format!("removing {}", out.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let cfg_json = serde_json::to_value(&cfg)?;
    let cfg_text = serde_json::to_string_pretty(&cfg_json)?;
    let mut trainer = match latest_checkpoint(out)? {
        Some((step, dir)) => {
            let (t, extra) = load_checkpoint(&dir, device)?;
            // The checkpoint carries the whole run config: resuming under another one would mix runs.
            if extra.get("config") != Some(&cfg_json) {
                bail!(
                    "{} holds a run with a different configuration (see {}); pass --fresh to start over or use another --out",
                    out.display(),
                    dir.join("trainer_state.json").display()
                );
            }
            eprintln!("resuming from {} (step {step})", dir.display());
            t
        }
        None => {
            let m = init_scaled(&cfg.model, cfg.mtp_layers, cfg.embed_std, cfg.seed, device)?;
            LmTrainer::new(m, cfg.train.clone())?
        }
    };
    optim::atomic_write(&paths.config(), cfg_text.as_bytes())?;
    stream.tok.save(out.join("tokenizer.json"))?;
    let mut metrics = read_metrics(&paths.metrics(), trainer.step)?;
    {
        let mut text = String::new();
        for m in &metrics {
            text.push_str(&serde_json::to_string(m)?);
            text.push('\n');
        }
        optim::atomic_write(&paths.metrics(), text.as_bytes())?;
    }
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(paths.metrics())
        .with_context(|| format!("opening {}", paths.metrics().display()))?;
    let heldout = stream.heldout(cfg.eval_docs)?;
    let n_params: usize = trainer.model.params().iter().map(|(_, p)| p.numel()).sum();
    let total = cfg.train.total_steps;
    eprintln!(
        "pretraining: {n_params} parameters (MTP included), vocab {}, {} × {} tokens per step, steps {}..{total}",
        cfg.model.vocab_size, cfg.rows, cfg.seq_len, trainer.step
    );
    let bar = ProgressBar::new(total as u64).with_position(trainer.step as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg} (eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let t0 = Instant::now();
    let mut window_tokens = 0usize;
    let mut window_t = Instant::now();
    let save = |t: &LmTrainer| -> Result<()> {
        let tok = &stream.tok;
        save_checkpoint(t, out, serde_json::json!({ "config": cfg_json }), cfg.keep_checkpoints, |d| {
            tok.save(d.join("tokenizer.json"))
                .map_err(|e| sft::SftError::State { path: d.display().to_string(), detail: e.to_string() })
        })?;
        Ok(())
    };
    while trainer.step < total {
        let batch = stream.batch(trainer.step)?;
        let stats = trainer.step(&batch)?;
        window_tokens += batch.b * batch.s;
        let step = stats.step;
        let mut heldout_loss = None;
        if step % cfg.eval_every == 0 || step == total {
            heldout_loss = Some(mean_heldout_loss(&trainer, &heldout)?.0);
        }
        if step % cfg.log_every == 0 || heldout_loss.is_some() {
            let tps = window_tokens as f64 / window_t.elapsed().as_secs_f64();
            (window_tokens, window_t) = (0, Instant::now());
            let m =
                Metric { stats: stats.clone(), tokens_per_s: tps, elapsed_s: t0.elapsed().as_secs_f64(), heldout_loss };
            let v = serde_json::to_value(&m)?;
            writeln!(log, "{}", serde_json::to_string(&v)?)
                .with_context(|| format!("writing {}", paths.metrics().display()))?;
            metrics.push(v);
            bar.set_message(format!(
                "loss {:.3} mtp {:.3} maxvio {:.2} {:.0} tok/s{}",
                stats.loss,
                stats.mtp_loss,
                stats.max_vio,
                tps,
                heldout_loss.map(|h| format!(" held-out {h:.3}")).unwrap_or_default()
            ));
        }
        bar.set_position(step as u64);
        if step % cfg.checkpoint_every == 0 || step == total {
            save(&trainer)?;
            write_curve(&paths, &metrics)?;
        }
    }
    bar.finish();
    write_curve(&paths, &metrics)?;
    trainer.model.save_pretrained(&paths.final_model())?;
    stream.tok.save(paths.final_model().join("tokenizer.json"))?;
    // The held-out evaluation.
    let (loss, n) = mean_heldout_loss(&trainer, &heldout)?;
    let problems =
        stream.corpus.task.test_problems(cfg.eval_problems.min(stream.max_test()), cfg.seed.wrapping_add(29))?;
    let mut accuracy = Vec::new();
    for (mode, prefix) in MODES {
        accuracy.push(answer_accuracy(&trainer.model, &stream.tok, &problems, mode, prefix, cfg.max_new_tokens)?);
    }
    let ev = Evaluation { step: trainer.step, heldout_loss: loss, heldout_tokens: n, accuracy };
    optim::atomic_write(&paths.eval(), serde_json::to_string_pretty(&ev)?.as_bytes())?;
    Ok(ev)
}

/// Print the evaluation as a table.
pub fn print_evaluation(ev: &Evaluation, out: &Path) {
    println!(
        "\nheld-out evaluation at step {} ({} tokens): next-token loss {:.4}",
        ev.step, ev.heldout_tokens, ev.heldout_loss
    );
    println!("{:<8} {:<12} {:>8} {:>10} {:>8}", "mode", "forced", "strict", "any-number", "tokens");
    for a in &ev.accuracy {
        println!(
            "{:<8} {:<12} {:>7.1}% {:>9.1}% {:>8.1}",
            a.mode,
            format!("{:?}", a.forced_prefix),
            100.0 * a.strict,
            100.0 * a.any_final_number,
            a.mean_tokens
        );
    }
    if let Some(s) = ev.accuracy.iter().find(|a| a.mode == "think").and_then(|a| a.samples.first()) {
        println!("sample (think): {s:?}");
    }
    println!("artifacts: {}", out.display());
}
