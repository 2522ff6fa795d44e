//! `r1 train` end to end on a tiny configuration: the artifacts, kill -9 and resume (the resumed
//! run continues exactly where the uninterrupted one goes), a mismatched config refused, and
//! the held-out evaluation.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TINY: &str = r#"{
  "model": {"vocab_size": 1, "hidden_size": 32, "intermediate_size": 64, "moe_intermediate_size": 16,
    "num_hidden_layers": 2, "num_attention_heads": 2, "n_shared_experts": 1, "n_routed_experts": 4,
    "routed_scaling_factor": 1.0, "kv_lora_rank": 16, "q_lora_rank": null, "qk_rope_head_dim": 8,
    "v_head_dim": 8, "qk_nope_head_dim": 8, "n_group": 2, "topk_group": 1, "num_experts_per_tok": 2,
    "first_k_dense_replace": 1, "rope_theta": 10000.0, "max_position_embeddings": 128, "aux_loss_alpha": 0.0001},
  "rows": 4, "seq_len": 64, "log_every": 1, "eval_every": 10, "checkpoint_every": 4, "keep_checkpoints": 2,
  "eval_docs": 16, "eval_problems": 12, "max_new_tokens": 24,
  "train": {"lr": 0.003, "warmup_steps": 5, "total_steps": 40}
}"#;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("r1-train-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn train(cfg: &Path, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_r1"));
    c.args(["train", "--config"]).arg(cfg).arg("--out").arg(out);
    c
}

fn losses(out: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

#[test]
fn train_writes_artifacts_and_resumes_after_kill_9() {
    let base = dir("cfg");
    let cfg = base.join("tiny.json");
    std::fs::write(&cfg, TINY).unwrap();

    // The uninterrupted run.
    let a = dir("straight");
    let o = train(&cfg, &a).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("held-out evaluation at step 40"), "{stdout}");
    for mode in ["free", "direct", "think"] {
        assert!(stdout.lines().any(|l| l.starts_with(mode)), "{stdout}");
    }
    for f in ["metrics.jsonl", "loss.png", "eval.json", "tokenizer.json", "run_config.json", "final/config.json"] {
        assert!(a.join(f).exists(), "{f} missing");
    }
    let png = std::fs::read(a.join("loss.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let ev: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(a.join("eval.json")).unwrap()).unwrap();
    assert_eq!(ev["accuracy"].as_array().unwrap().len(), 3);
    assert!(ev["heldout_loss"].as_f64().unwrap() > 0.0);
    let straight = losses(&a);
    assert_eq!(straight.len(), 40);
    assert!(straight[39].1 < 0.7 * straight[0].1, "loss {:?} → {:?}", straight[0], straight[39]);
    // The final directory is a loadable HF checkpoint with its MTP module and tokenizer.
    let fin = a.join("final");
    let cfg_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fin.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg_json["num_nextn_predict_layers"], 1);
    assert!(fin.join("tokenizer.json").exists());
    // `r1 generate` on the saved checkpoint takes text and prints text (the tokenizer is there).
    let o = Command::new(env!("CARGO_BIN_EXE_r1"))
        .args(["generate", "--model"])
        .arg(&fin)
        .args(["--prompt", "Q: 1+2+3-4\nA: ", "--prompt", "Q: 9-9\nA: <think>", "--temperature", "0"])
        .args(["--max-new-tokens", "12"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        let n = l["tokens"].as_array().unwrap().len();
        assert!((1..=12).contains(&n));
        assert!(l["text"].as_str().is_some_and(|t| !t.is_empty()), "{l}");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_r1"))
        .args(["generate", "--model"])
        .arg(&fin)
        .args(["--prompt", "Q: 1+2\nA: €"])
        .output()
        .unwrap();
    assert!(!o.status.success(), "a character outside the vocabulary is an error");

    // The interrupted run: SIGKILL once the first checkpoint exists, then run again.
    let b = dir("killed");
    let mut child = train(&cfg, &b).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    while !b.join("checkpoint-000004").exists() {
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done_before = losses(&b).len();
    assert!(done_before < 40, "the run was killed before it finished ({done_before} steps logged)");
    let o = train(&cfg, &b).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("resuming from"), "{}", String::from_utf8_lossy(&o.stderr));
    let resumed = losses(&b);
    assert_eq!(resumed.len(), 40, "one metrics line per step, none duplicated");
    for ((s1, l1), (s2, l2)) in straight.iter().zip(&resumed) {
        assert_eq!(s1, s2);
        assert_eq!(l1, l2, "step {s1}: uninterrupted vs resumed");
    }

    // Resuming into a directory that holds a different run is refused.
    let other = base.join("other.json");
    std::fs::write(&other, TINY.replace("\"lr\": 0.003", "\"lr\": 0.002")).unwrap();
    let o = train(&other, &b).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("different configuration"));
    // --fresh refuses to wipe a directory that is not a run.
    let not_a_run = dir("not-a-run");
    std::fs::write(not_a_run.join("precious.txt"), "x").unwrap();
    let o = train(&cfg, &not_a_run).arg("--fresh").output().unwrap();
    assert!(!o.status.success());
    assert!(not_a_run.join("precious.txt").exists());
    // A malformed config names the problem.
    std::fs::write(&other, r#"{"rows": 0}"#).unwrap();
    let o = train(&other, &dir("bad")).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("field rows"), "{}", String::from_utf8_lossy(&o.stderr));
    // The model block gets a config.json's checks: a value transformers would run differently
    // (a biased attention) is refused, naming the file and the field.
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
    v["model"]["attention_bias"] = serde_json::Value::Bool(true);
    std::fs::write(&other, v.to_string()).unwrap();
    let o = train(&other, &dir("bad-model")).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("attention_bias") && err.contains("(model)"), "{err}");
    for d in [base, a, b] {
        let _ = std::fs::remove_dir_all(d);
    }
}
