//! Every bound of the verifier is reachable by an answer under the length cap, is reported, and leaves a
//! deterministic verdict; evaluations are cached within one verification.

#[path = "adversarial/math_cases.rs"]
mod math_cases;

use math_cases::{answer_chars, cases};
use rewards::math::{Bound, MAX_ANSWER_CHARS, MAX_STEPS, MAX_WORK, verify};

#[test]
fn each_adversarial_case_reaches_its_bound_under_the_length_cap() {
    let all = cases();
    for b in [Bound::Length, Bound::Depth, Bound::Steps, Bound::Bits, Bound::Work] {
        assert!(all.iter().any(|c| c.bound == b), "no case for {b:?}");
    }
    for c in &all {
        let n = answer_chars(c);
        if c.bound == Bound::Length {
            assert!(n > MAX_ANSWER_CHARS, "{}: {n} chars", c.name);
        } else {
            assert!(n <= MAX_ANSWER_CHARS, "{}: {n} chars is over the cap", c.name);
        }
        let v = verify(&c.gold, &c.completion);
        println!("{:32} {n:4} chars  bounds={:?} steps={} work={}", c.name, v.bounds, v.steps, v.work);
        assert!(v.bounds.contains(&c.bound), "{}: wanted {:?}, reached {:?}", c.name, c.bound, v.bounds);
        assert_eq!(v.correct, c.correct, "{}", c.name);
        assert!(v.steps <= MAX_STEPS && v.work <= MAX_WORK, "{}: {} steps, {} work", c.name, v.steps, v.work);
        // Deterministic: the same work is counted and the same verdict reached every time.
        let again = verify(&c.gold, &c.completion);
        assert_eq!((again.correct, again.steps, again.work, &again.bounds), (v.correct, v.steps, v.work, &v.bounds));
    }
}

#[test]
fn ordinary_answers_reach_no_bound() {
    for (gold, completion) in [
        ("\\frac{1}{2004!}", "\\boxed{\\frac{1}{2004!}}"),
        ("2^{1000}", "\\boxed{2^{1000}}"),
        ("(x+1)^2", "\\boxed{x^2+2x+1}"),
        ("\\{1, 2, 3\\}", "\\boxed{3, 2, 1}"),
        ("3 \\pm \\sqrt{2}", "\\boxed{3+\\sqrt{2}, 3-\\sqrt{2}}"),
    ] {
        let v = verify(gold, completion);
        assert!(v.correct, "{gold} vs {completion}");
        assert!(v.bounds.is_empty(), "{gold}: {:?}", v.bounds);
    }
}

#[test]
fn exact_values_stay_exact_below_the_caps() {
    // 1/2004! and 1/2006! differ (exactly; both underflow f64), even after the caps.
    assert!(!verify("\\frac{1}{2004!}", "\\boxed{\\frac{1}{2006!}}").correct);
    assert!(verify("\\frac{2006!}{2004!}", "\\boxed{2006 \\cdot 2005}").correct);
    // A bit over the 10¹⁵⁰⁰⁰ mark still exact: 2^{40000} + 1 is not 2^{40000}.
    let v = verify("2^{40000}+1", "\\boxed{2^{40000}}");
    assert!(!v.correct && v.bounds.is_empty(), "{v:?}");
}

#[test]
fn past_the_work_budget_identical_answers_still_match_and_different_ones_do_not() {
    let sum = (0..28).map(|i| format!("\\frac{{1}}{{{}^{{3000}}}}", [3, 5, 7, 11, 13, 17, 19][i % 7] + 30 * (i / 7)));
    let sum = sum.collect::<Vec<_>>().join("+");
    let same = verify(&sum, &format!("\\boxed{{{sum}}}"));
    assert!(same.correct, "{same:?}");
    let other = verify(&sum, &format!("\\boxed{{{sum}+1}}"));
    assert!(!other.correct);
    assert!(other.bounds.contains(&Bound::Work), "{other:?}");
}

#[test]
fn list_items_are_evaluated_once_per_verification() {
    // 40 closed-form items against a permutation: without the cache every pair would be evaluated
    // (dedup and matching: about 3 × 40² / 2 pairs × 2 sides × 7 nodes ≈ 33,000 visits); with it, each item
    // once.
    let items: Vec<String> = (1..=40).map(|i| format!("\\frac{{{i}}}{{7}}+\\sqrt{{{i}}}")).collect();
    let mut rev = items.clone();
    rev.reverse();
    let v = verify(&format!("\\{{{}\\}}", items.join(",")), &format!("\\boxed{{{}}}", rev.join(",")));
    assert!(v.correct, "{v:?}");
    let nodes_per_item = 7;
    assert!(v.steps <= 2 * 40 * nodes_per_item, "{} node visits for 80 items", v.steps);
}
