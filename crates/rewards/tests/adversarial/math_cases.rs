//! Adversarial verifier inputs, each built to reach one bound of the verifier while staying within the
//! 1,000-character answer cap (except the one that tests the cap itself). Shared by
//! `tests/verifier_bounds.rs` and `benches/verify.rs`.

use rewards::math::Bound;

/// One adversarial case: a name, the gold answer, the completion, the bound it must reach, the verdict.
pub struct Case {
    pub name: &'static str,
    pub gold: String,
    pub completion: String,
    pub bound: Bound,
    pub correct: bool,
}

const PRIMES: [u32; 34] = [
    3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97, 101, 103, 107, 109,
    113, 127, 131, 137, 139, 149,
];

fn boxed(s: &str) -> String {
    format!("\\boxed{{{s}}}")
}

fn join(parts: impl Iterator<Item = String>, sep: &str) -> String {
    parts.collect::<Vec<_>>().join(sep)
}

/// The content of the answer (what the 1,000-character cap applies to).
pub fn answer_chars(c: &Case) -> usize {
    let s = c.completion.trim_start_matches("\\boxed{");
    s.strip_suffix('}').unwrap_or(s).chars().count()
}

pub fn cases() -> Vec<Case> {
    // The attack: a few dozen fractions with large powers in their denominators; every sum is a
    // cross-multiplication plus a gcd over ever larger coprime denominators.
    let frac_sum = |e: u32, k: usize| join(PRIMES[..k].iter().map(|p| format!("\\frac{{1}}{{{p}^{{{e}}}}}")), "+");
    let pm_group = format!("({})", ["x^2 y"; 23].join("+"));
    vec![
        Case {
            name: "fraction_sum_e3000",
            gold: "1".into(),
            completion: boxed(&frac_sum(3000, 28)),
            bound: Bound::Work,
            correct: false,
        },
        Case {
            name: "fraction_sum_e200",
            gold: "1".into(),
            completion: boxed(&frac_sum(200, 34)),
            bound: Bound::Work,
            correct: false,
        },
        Case {
            name: "fraction_sum_both_sides",
            gold: frac_sum(1500, 25),
            completion: boxed(&frac_sum(1500, 25).replace("101^", "103^")),
            bound: Bound::Work,
            correct: false,
        },
        Case {
            name: "percent_of_fraction_sum",
            gold: "1".into(),
            completion: boxed(&join(PRIMES[..25].iter().map(|p| format!("\\frac{{1}}{{{p}^{{1500}}}}\\%")), "+")),
            bound: Bound::Work,
            correct: false,
        },
        Case {
            name: "factorial_reciprocals",
            gold: "1".into(),
            completion: boxed(&join((0..60).map(|i| format!("\\frac{{1}}{{{}!}}", 4000 + i)), "+")),
            bound: Bound::Work,
            correct: false,
        },
        Case {
            name: "sqrt_of_powers",
            gold: "1".into(),
            completion: boxed(&join(PRIMES[..34].iter().map(|p| format!("\\sqrt{{{p}^{{6000}}}}")), "+")),
            bound: Bound::Work,
            correct: false,
        },
        Case {
            name: "huge_binomials",
            gold: "1".into(),
            completion: boxed(&join((0..30).map(|i| format!("\\binom{{1000000}}{{{}}}", 5000 - i)), "+")),
            bound: Bound::Work,
            correct: false,
        },
        Case {
            name: "power_over_bit_cap",
            gold: "1".into(),
            completion: boxed("2^{70000}+3^{50000}"),
            bound: Bound::Bits,
            correct: false,
        },
        Case {
            name: "power_tower",
            gold: "1".into(),
            completion: boxed("2^{2^{2^{2^{2^{2}}}}}"),
            bound: Bound::Bits,
            correct: false,
        },
        Case {
            name: "factorial_quotient_over_bit_cap",
            gold: "5000".into(),
            completion: boxed("\\frac{5000!}{4999!}"),
            bound: Bound::Bits,
            correct: false,
        },
        Case {
            name: "plus_minus_polynomials",
            gold: [pm_group.as_str(); 5].join("\\pm "),
            completion: boxed(&format!("{}+0", [pm_group.as_str(); 5].join("\\pm "))),
            bound: Bound::Steps,
            correct: false,
        },
        Case {
            name: "nested_parentheses",
            gold: "1".into(),
            completion: boxed(&format!("{}1{}", "(".repeat(201), ")".repeat(201))),
            bound: Bound::Depth,
            correct: false,
        },
        Case {
            name: "nested_fractions",
            gold: "1".into(),
            completion: boxed(&format!("{}1{}", "\\frac1{".repeat(110), "}".repeat(110))),
            bound: Bound::Depth,
            correct: false,
        },
        Case {
            name: "over_length_cap",
            gold: "1".into(),
            completion: boxed(&format!("{}1", "1+".repeat(500))),
            bound: Bound::Length,
            correct: false,
        },
    ]
}
