//! The conformance table: every (gold, completion, verdict) row in `conformance.jsonl` must hold.

use rewards::math::verify;
use serde_json::Value;

#[test]
fn conformance_table_all_verdicts_correct() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/conformance.jsonl");
    let text = std::fs::read_to_string(path).expect("read conformance.jsonl");
    let mut failures = Vec::new();
    let mut n = 0;
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let row: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: {e}", i + 1));
        let field = |k: &str| row[k].as_str().unwrap_or_else(|| panic!("line {}: no string `{k}`", i + 1));
        let (gold, completion, kind) = (field("gold"), field("completion"), field("kind"));
        assert!(!field("source").is_empty(), "line {}: every case cites its source", i + 1);
        let want = row["correct"].as_bool().unwrap_or_else(|| panic!("line {}: no bool `correct`", i + 1));
        let got = verify(gold, completion);
        if got.correct != want {
            failures.push(format!(
                "line {} [{kind}] gold={gold:?} completion={completion:?}: want {want}, got {} (extracted {:?})",
                i + 1,
                got.correct,
                got.extracted
            ));
        }
        n += 1;
        *kinds.entry(kind.to_string()).or_default() += 1;
    }
    println!("conformance: {} / {n} verdicts correct; cases per kind: {kinds:?}", n - failures.len());
    assert!(n >= 150, "the table must hold at least 150 cases, has {n}");
    assert!(failures.is_empty(), "{} wrong verdicts:\n{}", failures.len(), failures.join("\n"));
}
