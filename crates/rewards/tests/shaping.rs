//! Format, tag count, reasoning steps, language, cosine, repetition and overlong rewards.

use rewards::shaping::*;
use rewards::{Reward, Sample, WeightedRewards, reward_by_name, stats};

fn sample(pairs: &[(&str, serde_json::Value)]) -> Sample {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

#[test]
fn strict_format() {
    let ok = "<think>\nreason\n</think>\n<answer>\n42\n</answer>";
    assert!(format_check(ok).is_ok());
    assert!(format_check(&format!("{ok}\n")).is_ok(), "trailing newline is allowed");
    // open-r1's MULTILINE hole: text after </answer> (reference doc, "Format and shaping rewards").
    assert!(format_check(&format!("{ok}\nextra text")).is_err());
    assert!(format_check("<think>\n\n</think>\n<answer>\n42\n</answer>").is_err(), "empty think");
    assert!(format_check("<think>\nr\n</think>\n<answer>\n \n</answer>").is_err(), "empty answer");
    assert!(format_check("<think>\na\n</think>\n<think>\nb\n</think>\n<answer>\n1\n</answer>").is_err());
    assert!(format_check("preamble <think>\nr\n</think>\n<answer>\n1\n</answer>").is_err());
    assert!(format_check("<answer>\n1\n</answer>").is_err());
}

#[test]
fn tag_count_quarters() {
    let s = Sample::new();
    let full = TagCount.score("<think>\nr\n</think>\n<answer>\n1\n</answer>", &s).expect("score");
    assert_eq!(full.value, 1.0);
    let half = TagCount.score("<think>\nr\n</think>\nno answer tags", &s).expect("score");
    assert_eq!(half.value, 0.5);
    let dup = TagCount.score("<think>\n<think>\nr\n</think>\n", &s).expect("score");
    assert_eq!(dup.value, 0.25, "a duplicated tag earns nothing");
}

#[test]
fn reasoning_steps_saturates_at_three() {
    let s = Sample::new();
    assert_eq!(ReasoningSteps.score("just 4", &s).expect("score").value, 0.0);
    let two = ReasoningSteps.score("Step 1: a\nStep 2: b", &s).expect("score").value;
    assert!((two - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(ReasoningSteps.score("1. a\n2. b\n3. c\n4. d\n5. e", &s).expect("score").value, 1.0);
}

#[test]
fn language_share_by_script() {
    assert_eq!(language_share("the sum is 42", "en"), Some(1.0));
    // 3 English words, 2 CJK characters (each a word) → 3/5.
    let mixed = language_share("so the answer 是 对", "en").expect("known");
    assert!((mixed - 3.0 / 5.0).abs() < 1e-12, "{mixed}");
    assert_eq!(language_share("答案是", "zh"), Some(1.0));
    // Digits and math are neutral.
    assert_eq!(language_share("答案 = 42 + 7", "zh"), Some(1.0));
    assert_eq!(language_share("$\\frac{1}{2}$ 答案", "zh"), Some(1.0));
    assert_eq!(language_share("x", "klingon"), None);
    let r = LanguageConsistency;
    let s = sample(&[("language", "zh".into())]);
    let v = r.score("<think>\n答案 is\n</think>\n<answer>\n1\n</answer>", &s).expect("score").value;
    assert!((v - 2.0 / 3.0).abs() < 1e-12, "{v}");
    assert!(r.score("x", &sample(&[("language", 3.into())])).is_err());
}

#[test]
fn cosine_is_clamped_and_monotone() {
    let c = CosineLength { max_len: 100.0, ..CosineLength::default() };
    assert!((c.value(0.0, true) - 1.0).abs() < 1e-12);
    assert!((c.value(100.0, true) - 0.5).abs() < 1e-12);
    assert!((c.value(0.0, false) + 1.0).abs() < 1e-12);
    assert!((c.value(100.0, false) + 0.5).abs() < 1e-12);
    // open-r1 wraps past 2×max_len; clamped, it stays at the end value.
    assert_eq!(c.value(250.0, true), c.value(100.0, true));
    assert_eq!(c.value(250.0, false), c.value(100.0, false));
    let mut prev = f64::INFINITY;
    for l in 0..=100 {
        let v = c.value(l as f64, true);
        assert!(v <= prev + 1e-12);
        prev = v;
    }
    let s = sample(&[("answer", "4".into()), ("completion_tokens", 0.into())]);
    assert!((CosineLength::default().score("\\boxed{4}", &s).expect("score").value - 1.0).abs() < 1e-12);
    assert!((CosineLength::default().score("\\boxed{5}", &s).expect("score").value + 1.0).abs() < 1e-12);
}

#[test]
fn repetition_penalty() {
    let r = RepetitionPenalty { n: 2, max_penalty: -1.0 };
    assert_eq!(r.value("a b c d"), 0.0);
    // "a a a a a": 4 bigrams, 1 unique → (1 − 1/4)·(−1) = −0.75.
    assert!((r.value("a a a a a") + 0.75).abs() < 1e-12);
    assert_eq!(r.value("a"), 0.0);
}

#[test]
fn dapo_overlong() {
    let o = OverlongPunishment { max_len: 100.0, cache: 20.0 };
    assert_eq!(o.value(80.0), 0.0);
    assert!((o.value(90.0) + 0.5).abs() < 1e-12);
    assert!((o.value(100.0) + 1.0).abs() < 1e-12);
    assert_eq!(o.value(101.0), -1.0);
}

#[test]
fn weighted_sum_batch_and_stats() {
    let w = WeightedRewards::from_specs(&["accuracy=2", "format"]).expect("specs");
    assert_eq!(w.names(), vec!["accuracy", "format"]);
    let good = "<think>\n2+2\n</think>\n<answer>\n\\boxed{4}\n</answer>".to_string();
    let bad = "it is 5".to_string();
    let s = sample(&[("answer", "4".into())]);
    let batch = vec![(good, s.clone()), (bad, s.clone()), ("x".to_string(), Sample::new())];
    let res = w.score_batch(&batch);
    assert_eq!(res[0].as_ref().expect("ok").total, 3.0);
    assert_eq!(res[1].as_ref().expect("ok").total, 0.0);
    assert!(res[2].as_ref().is_err_and(|e| e.to_string().contains("answer")));
    let st = stats(&res);
    assert_eq!(st[0].name, "accuracy");
    assert_eq!(st[0].count, 2);
    assert_eq!(st[0].mean, 0.5);
    assert_eq!(st[0].std, 0.5);
    assert!(WeightedRewards::from_specs(&["nope"]).is_err());
    assert!(WeightedRewards::from_specs(&["accuracy=abc"]).is_err());
    assert!(WeightedRewards::from_specs(&["accuracy=inf"]).is_err());
    assert!(reward_by_name("overlong").is_ok());
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Property: on arbitrary text every shaping reward returns a value inside its documented range.
        #[test]
        fn shaping_rewards_stay_in_range(text in ".{0,400}", lang in prop::sample::select(vec!["en", "zh", "ja", "ru"]), len in 0.0f64..1e6) {
            let s = sample(&[("answer", "1".into()), ("language", lang.into()), ("completion_tokens", len.into())]);
            let in_range = |name: &str, lo: f64, hi: f64| {
                let v = reward_by_name(name).expect("known").score(&text, &s).expect("score").value;
                (lo..=hi).contains(&v)
            };
            prop_assert!(in_range("format", 0.0, 1.0));
            prop_assert!(in_range("tag_count", 0.0, 1.0));
            prop_assert!(in_range("reasoning_steps", 0.0, 1.0));
            prop_assert!(in_range("language", 0.0, 1.0));
            prop_assert!(in_range("cosine", -1.0, 1.0));
            prop_assert!(in_range("repetition", -1.0, 0.0));
            prop_assert!(in_range("overlong", -1.0, 0.0));
            prop_assert!(in_range("accuracy", 0.0, 1.0));
        }

        /// Property: the overlong punishment never increases with length.
        #[test]
        fn overlong_is_monotone(a in 0.0f64..30000.0, b in 0.0f64..30000.0) {
            let o = OverlongPunishment::default();
            let (short, long) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(o.value(long) <= o.value(short));
        }
    }
}
