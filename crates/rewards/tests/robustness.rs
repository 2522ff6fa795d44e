//! The verifier never panics or hangs, whatever the text, and its bounds hold.

use proptest::prelude::*;
use rewards::math::{answers_equivalent, verify};
use std::time::{Duration, Instant};

/// Fragments that exercise the lexer/parser paths (commands, brackets, operators, numbers).
fn latexish() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "\\frac",
        "\\sqrt",
        "\\boxed{",
        "{",
        "}",
        "(",
        ")",
        "[",
        "]",
        "\\{",
        "\\}",
        "^",
        "_",
        "!",
        "%",
        "\\%",
        "\\pm",
        "\\cup",
        "\\infty",
        "\\pi",
        "e",
        "x",
        "y",
        "1",
        "23",
        "0.5",
        "1,000",
        ",",
        "=",
        "<",
        "\\le",
        "+",
        "-",
        "*",
        "/",
        "|",
        "\\left(",
        "\\right)",
        "\\begin{pmatrix}",
        "\\end{pmatrix}",
        "&",
        "\\\\",
        "\\text{cm}",
        "\\binom",
        "\\sin",
        "\\log_",
        "$",
        " ",
        "Answer:",
        "<answer>",
        "</answer>",
        "**",
        "\\in",
        "10^{",
        "9999",
    ]);
    prop::collection::vec(atoms, 0..60).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Property: for arbitrary Unicode strings, verification returns (no panic) within a time bound.
    #[test]
    fn arbitrary_text_never_panics(gold in ".{0,80}", completion in ".{0,300}") {
        let t = Instant::now();
        let _ = verify(&gold, &completion);
        prop_assert!(t.elapsed() < Duration::from_secs(1));
    }

    /// Property: for LaTeX-like fragment soups (deep, unbalanced, huge numbers), no panic and bounded time.
    #[test]
    fn latex_soup_never_panics(gold in latexish(), pred in latexish()) {
        let t = Instant::now();
        let _ = answers_equivalent(&gold, &pred);
        let _ = verify(&gold, &format!("\\boxed{{{pred}}}"));
        prop_assert!(t.elapsed() < Duration::from_secs(1));
    }

    /// Property: equivalence is reflexive on well-formed rationals p/q and their decimal-free fraction forms.
    #[test]
    fn fraction_matches_itself_and_its_scaling(p in -1000i64..1000, q in 1i64..1000, k in 1i64..50) {
        let gold = format!("\\frac{{{p}}}{{{q}}}");
        let scaled = format!("\\frac{{{}}}{{{}}}", p * k, q * k);
        prop_assert!(answers_equivalent(&gold, &scaled));
        let other = format!("\\frac{{{}}}{{{q}}}", p + 1);
        prop_assert!(!answers_equivalent(&gold, &other));
    }
}

#[test]
fn bounds_refuse_without_hanging() {
    let cases = [
        ("1", format!("\\boxed{{{}1{}}}", "(".repeat(5000), ")".repeat(5000))),
        ("1", "\\boxed{2^{2^{2^{2^{2^{2^{2^{2}}}}}}}}".to_string()),
        ("1", "\\boxed{100000!}".to_string()),
        ("1", "\\boxed{\\binom{1000000000}{500000000}}".to_string()),
        ("1", format!("\\boxed{{{}}}", "1+".repeat(20000) + "1")),
        ("1", format!("\\boxed{{{}}}", "9".repeat(100_000))),
        ("1", "\\boxed{(1\\pm 1)(1\\pm 2)(1\\pm 3)(1 \\pm 4)(1\\pm 5)(1\\pm 6)}".to_string()),
        ("x", "\\boxed{a+b+c+d+e+f+g+h+i+j+k+l}".to_string()),
    ];
    for (gold, completion) in cases {
        let t = Instant::now();
        let v = verify(gold, &completion);
        assert!(!v.correct, "{completion:.60}");
        assert!(t.elapsed() < Duration::from_secs(1), "{completion:.60} took {:?}", t.elapsed());
    }
}
