//! Runs the built `r1` binary on a small JSONL file.

use std::process::Command;

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("r1-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("mkdir");
    d.join(name)
}

#[test]
fn rewards_score_adds_rewards_and_weighted_sum() {
    let input = tmp("in.jsonl");
    let output = tmp("out.jsonl");
    let lines = [
        r#"{"id": 1, "completion": "<think>\n2+2\n</think>\n<answer>\n\\boxed{4}\n</answer>", "answer": "4"}"#,
        r#"{"id": 2, "completion": "The answer is $\\frac{1}{2}$", "answer": "0.5"}"#,
        r#"{"id": 3, "completion": "<think>\nhm\n</think>\n<answer>\n5\n</answer>", "answer": "4"}"#,
    ];
    std::fs::write(&input, lines.join("\n") + "\n").expect("write input");
    let st = Command::new(env!("CARGO_BIN_EXE_r1"))
        .args(["rewards", "score", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .args(["--reward", "accuracy=2", "--reward", "format=0.5"])
        .status()
        .expect("run r1");
    assert!(st.success());
    let out: Vec<serde_json::Value> = std::fs::read_to_string(&output)
        .expect("read output")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(out.len(), 3);
    let want = [(1.0, 1.0, 2.5), (1.0, 0.0, 2.0), (0.0, 1.0, 0.5)];
    for (o, (acc, fmt, total)) in out.iter().zip(want) {
        assert_eq!(o["rewards"]["accuracy"], acc, "{o}");
        assert_eq!(o["rewards"]["format"], fmt, "{o}");
        assert_eq!(o["reward"], total, "{o}");
    }
    assert_eq!(out[1]["id"], 2, "input fields are kept");

    // Default set includes `accuracy`.
    let st = Command::new(env!("CARGO_BIN_EXE_r1"))
        .args(["rewards", "score", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .status()
        .expect("run r1");
    assert!(st.success());
    let first: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&output).expect("read").lines().next().expect("line"))
            .expect("json");
    assert_eq!(first["rewards"]["accuracy"], 1.0);

    // Bad input names the file and line; unknown reward names the reward.
    std::fs::write(&input, "{\"answer\": \"1\"}\n").expect("write");
    let o = Command::new(env!("CARGO_BIN_EXE_r1"))
        .args(["rewards", "score", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .expect("run r1");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("in.jsonl:1") && err.contains("completion"), "{err}");
    let o = Command::new(env!("CARGO_BIN_EXE_r1"))
        .args(["rewards", "score", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .args(["--reward", "nope"])
        .output()
        .expect("run r1");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown reward `nope`"));
}
