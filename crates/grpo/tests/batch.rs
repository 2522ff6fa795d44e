//! Batch shaping: zero-variance filtering with refill, truncation masking, overlong punishment,
//! truncated importance sampling; and the templates.

use grpo::batch::{OverlongPunishment, Refill, informative_groups, mask_truncated, truncated_is};
use grpo::templates::{ChatTemplate, Message, R1_ZERO, fill, r1_zero};

#[test]
fn zero_variance_groups_are_dropped_and_refilled() {
    let r = [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.5, f64::NAN];
    assert_eq!(informative_groups(&r, 2).unwrap(), vec![false, true, false, false]);
    let mut refill = Refill::new(2);
    // Round 1: one informative group of three.
    for (i, g) in r.chunks(2).take(3).enumerate() {
        refill.offer(i, g);
    }
    assert_eq!(refill.needed(), 1);
    // Round 2 (refill): the first informative group fills it, the next is not kept.
    assert!(refill.offer(10, &[0.0, 1.0]));
    assert!(!refill.offer(11, &[1.0, 0.0]));
    assert!(refill.is_full());
    assert_eq!((refill.offered, refill.dropped), (5, 2));
    assert!((refill.zero_std_fraction() - 0.4).abs() < 1e-15);
    assert_eq!(refill.into_kept(), vec![1, 10]);
    assert!(informative_groups(&r, 3).unwrap_err().to_string().contains("group_size = 3"));
}

#[test]
fn truncated_rows_are_masked() {
    let mut mask = vec![true, true, false, true, true, true, true, false, false];
    assert_eq!(mask_truncated(&mut mask, 3, &[false, true, false]).unwrap(), 1);
    assert_eq!(mask, vec![true, true, false, false, false, false, true, false, false]);
    assert!(mask_truncated(&mut mask, 3, &[true]).unwrap_err().to_string().contains("truncated has length 1"));
}

#[test]
fn overlong_punishment_matches_dapo_eq_13() {
    let o = OverlongPunishment { max_len: 20, cache: 4 };
    let want = [(0, 0.0), (16, 0.0), (17, -0.25), (18, -0.5), (20, -1.0), (21, -1.0), (100, -1.0)];
    for (len, p) in want {
        assert_eq!(o.penalty(len).unwrap(), p, "L = {len}");
    }
    let bad = OverlongPunishment { max_len: 4, cache: 5 };
    assert!(bad.penalty(1).unwrap_err().to_string().contains("cache = 5"));
}

#[test]
fn truncated_is_weights_and_metrics() {
    let ln2 = 2f64.ln();
    let train = [0.0, ln2, -ln2, 5.0, 0.0];
    let sample = [0.0, 0.0, 0.0, 0.0, 0.0];
    let mask = [true, true, true, true, false];
    let (w, s) = truncated_is(&train, &sample, &mask, 3.0).unwrap();
    // ratios 1, 2, 0.5, e^5 (capped at 3); the padding position keeps weight 1.
    assert_eq!(w, vec![1.0, 2.0, 0.5, 3.0, 1.0]);
    assert_eq!(s.tokens, 4);
    assert!((s.ratio_mean - (3.5 + 5f64.exp()) / 4.0).abs() < 1e-12);
    assert_eq!((s.ratio_min, s.ratio_max, s.capped_frac), (0.5, 5f64.exp(), 0.25));
    assert!((s.mismatch_kl - (-5.0 / 4.0)).abs() < 1e-15);
    assert!(truncated_is(&train, &sample, &mask, 0.0).unwrap_err().to_string().contains("cap = 0"));
}

#[test]
fn templates_are_data() {
    assert!(R1_ZERO.contains("<think> reasoning process here </think> <answer> answer here </answer>"));
    let p = r1_zero("What is 2 + 3?");
    assert!(p.starts_with("A conversation between User and Assistant."));
    assert!(p.ends_with("User: What is 2 + 3?. Assistant:"), "{p}");
    assert!(fill("no placeholder", "x").unwrap_err().to_string().contains("template = no placeholder"));
    let names: Vec<String> = ChatTemplate::all().unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["deepseek-v3", "deepseek-r1", "chatml"]);
    let t = ChatTemplate::named("deepseek-r1").unwrap();
    let msgs = [Message { role: "user", content: "2+3?" }];
    assert_eq!(t.render(&msgs, true).unwrap(), "<｜begin▁of▁sentence｜><｜User｜>2+3?<｜Assistant｜><think>\n");
    let chatml = ChatTemplate::named("chatml").unwrap();
    let two = [Message { role: "system", content: "be brief" }, Message { role: "user", content: "hi" }];
    assert_eq!(
        chatml.render(&two, false).unwrap(),
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
    );
    assert!(t.render(&[Message { role: "tool", content: "" }], false).unwrap_err().to_string().contains("role = tool"));
    assert!(ChatTemplate::named("nope").unwrap_err().to_string().contains("name = nope"));
}
