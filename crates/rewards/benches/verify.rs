//! Criterion benches: math verification per answer kind, the worst adversarial inputs (each built to reach
//! one verifier bound; goal: every one under 50 ms), and a whole completion through the default rewards.

#[path = "../tests/adversarial/math_cases.rs"]
mod math_cases;

use criterion::{Criterion, criterion_group, criterion_main};
use rewards::math::verify;
use rewards::{Sample, WeightedRewards};
use std::hint::black_box;

const PROSE: &str = "Let me think step by step. First, we compute the sum of the terms, then simplify. \
Checking the arithmetic again carefully gives the same value, so we are confident.\n";

fn cases() -> Vec<(&'static str, String)> {
    vec![
        ("integer", "7425000", format!("{PROSE}The answer is $\\boxed{{7,425,000}}$.")),
        ("fraction", "\\frac{14}{3}", format!("{PROSE}So $x = \\boxed{{\\dfrac{{28}}{{6}}}}$.")),
        ("sqrt", "2\\sqrt{2}", format!("{PROSE}Hence $\\boxed{{\\sqrt{{8}}}}$.")),
        ("polynomial", "(x+1)^2", format!("{PROSE}We get $\\boxed{{x^2+2x+1}}$.")),
        ("interval", "(-\\infty,1)\\cup(2,\\infty)", format!("{PROSE}$\\boxed{{(2,\\infty)\\cup(-\\infty,1)}}$")),
        ("prose", "42", format!("{PROSE}So there are 42 apples in total.")),
    ]
    .into_iter()
    .map(|(k, g, c)| (k, g.to_string() + "\u{0}" + &c))
    .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify");
    for (kind, pair) in cases() {
        let (gold, completion) = pair.split_once('\u{0}').expect("pair");
        assert!(verify(gold, completion).correct, "{kind}");
        g.bench_function(kind, |b| b.iter(|| verify(black_box(gold), black_box(completion))));
    }
    g.finish();
    let mut g = c.benchmark_group("adversarial");
    g.sample_size(20);
    for case in math_cases::cases() {
        let v = verify(&case.gold, &case.completion);
        assert!(v.bounds.contains(&case.bound), "{}: {:?}", case.name, v.bounds);
        assert_eq!(v.correct, case.correct, "{}", case.name);
        println!("{}: {} answer chars, bounds {:?}", case.name, math_cases::answer_chars(&case), v.bounds);
        g.bench_function(case.name, |b| b.iter(|| verify(black_box(&case.gold), black_box(&case.completion))));
    }
    g.finish();
    let set = WeightedRewards::from_specs(&["accuracy", "format", "tag_count", "language"]).expect("rewards");
    let mut s = Sample::new();
    s.insert("answer".into(), "4".into());
    let completion = format!("<think>\n{PROSE}\n</think>\n<answer>\n\\boxed{{4}}\n</answer>");
    c.bench_function("default_set_one_completion", |b| b.iter(|| set.score(black_box(&completion), &s)));
}

criterion_group!(benches, bench);
criterion_main!(benches);
