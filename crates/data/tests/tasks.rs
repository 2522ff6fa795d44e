use data::Tokenizer;
use data::tasks::chain::{MAX_LEVEL, MIN_LEVEL};
use data::tasks::{
    ChainTask, Corpus, CorpusMix, DocKind, Problem, any_final_number, cold_start_records, strict_answer,
};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rewards::{Sample, WeightedRewards};
use std::collections::{HashMap, HashSet};

fn eval(expr: &str) -> i64 {
    // Independent left-to-right evaluation.
    let mut chars = expr.chars();
    let mut v = chars.next().unwrap().to_digit(10).unwrap() as i64;
    let rest: Vec<char> = chars.collect();
    for pair in rest.chunks(2) {
        let d = pair[1].to_digit(10).unwrap() as i64;
        v = if pair[0] == '+' { v + d } else { v - d };
    }
    v
}

#[test]
fn example_from_the_brief() {
    let p = Problem::parse("7-3+2+0").unwrap();
    assert_eq!(p.prompt, "Q: 7-3+2+0\nA: ");
    assert_eq!(p.answer, "6");
    assert_eq!(p.cot, "<think>\n7-3=4\n4+2=6\n6+0=6\n</think>\n<answer>\n6\n</answer>");
    assert_eq!(p.completion(), format!("{}<eos>", p.cot));
    assert_eq!(p.level, 4);
    for bad in ["7-8", "5+5", "7*3", "7-", "", "12+1"] {
        assert!(Problem::parse(bad).is_err(), "{bad}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn sampled_chains_are_bounded_and_correct(seed in any::<u64>(), level in MIN_LEVEL..=MAX_LEVEL) {
        let task = ChainTask::new(level).unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        for _ in 0..20 {
            let p = task.sample(&mut rng);
            prop_assert_eq!(p.level, level);
            prop_assert_eq!(p.expr.len(), 2 * level - 1);
            let mut v = 0i64;
            for k in 1..=level {
                v = eval(&p.expr[..2 * k - 1]);
                prop_assert!((0..=9).contains(&v), "running value {} in {}", v, p.expr);
            }
            prop_assert_eq!(p.answer.parse::<i64>().unwrap(), v);
            prop_assert_eq!(p.value(), v);
            prop_assert_eq!(Problem::parse(&p.expr).unwrap(), p.clone());
        }
    }
}

#[test]
fn sampling_is_deterministic_and_covers_both_ops() {
    let task = ChainTask::new(4).unwrap();
    assert_eq!(task.train_problems(50, 1).unwrap(), task.train_problems(50, 1).unwrap());
    assert_ne!(task.train_problems(50, 1).unwrap(), task.train_problems(50, 2).unwrap());
    let ps = task.train_problems(500, 3).unwrap();
    let plus = ps.iter().flat_map(|p| &p.ops).filter(|&&o| o == '+').count();
    assert!((600..900).contains(&plus), "about half of 1500 ops are +: {plus}");
    let answers: HashSet<_> = ps.iter().map(|p| p.answer.clone()).collect();
    assert_eq!(answers.len(), 10, "every answer 0-9 occurs");
    assert!(ChainTask::new(1).is_err() && ChainTask::new(MAX_LEVEL + 1).is_err());
    assert!(ChainTask::new(4).unwrap().with_split(0, 0.0).is_err());
}

#[test]
fn held_out_prompts_never_appear_in_training() {
    for level in [2, 3, 4, 6] {
        let task = ChainTask::new(level).unwrap().with_split(11, 0.2).unwrap();
        let n_test = if level == 2 { 10 } else { 200 };
        let test = task.test_problems(n_test, 5).unwrap();
        let test_prompts: HashSet<_> = test.iter().map(|p| p.prompt.clone()).collect();
        assert_eq!(test_prompts.len(), n_test, "distinct");
        assert!(test.iter().all(|p| task.is_test(p)));
        let train = task.train_problems(3000, 6).unwrap();
        assert!(train.iter().all(|p| !test_prompts.contains(&p.prompt)), "level {level}");
        let corpus = Corpus::new(task.clone(), CorpusMix::default()).unwrap();
        for d in corpus.documents(2000, 7).unwrap() {
            let prompt = &d.text[..d.text.find("A: ").unwrap() + 3];
            assert!(!test_prompts.contains(prompt), "{prompt:?} is held out");
        }
        // Both sides are substantial.
        let all = task.train_problems(0, 0).unwrap();
        assert!(all.is_empty());
    }
    // Too many distinct held-out problems for the level is an error, not a hang.
    assert!(ChainTask::new(2).unwrap().test_problems(200, 0).is_err());
}

#[test]
fn clean_completion_gets_full_reward_and_wrong_answer_none() {
    let rewards = WeightedRewards::from_specs(&["accuracy", "format"]).unwrap();
    for level in MIN_LEVEL..=6 {
        let task = ChainTask::new(level).unwrap();
        for p in task.train_problems(100, level as u64).unwrap() {
            let mut s = Sample::new();
            s.insert("answer".into(), p.answer.clone().into());
            let scored = rewards.score(&p.cot, &s).unwrap();
            assert_eq!(scored.total, 2.0, "{}: {:?}", p.cot, scored.parts);
            let wrong = (p.value() + 1) % 10;
            let bad = p.cot.replace(&format!("<answer>\n{}\n", p.answer), &format!("<answer>\n{wrong}\n"));
            let scored = rewards.score(&bad, &s).unwrap();
            assert_eq!(scored.parts[0].1.value, 0.0, "{bad}");
            assert_eq!(strict_answer(&p.cot), Some(p.value()));
            assert_eq!(any_final_number(&p.cot), Some(p.value()));
        }
    }
}

#[test]
fn extractors() {
    assert_eq!(strict_answer("<think>x</think><answer>6</answer>"), Some(6));
    assert_eq!(strict_answer("<answer>\n 12 \n</answer>"), Some(12));
    assert_eq!(strict_answer("<answer>-3</answer>"), Some(-3));
    assert_eq!(strict_answer("<answer>6 apples</answer>"), None);
    assert_eq!(strict_answer("<answer>6"), None);
    assert_eq!(strict_answer("6"), None);
    assert_eq!(strict_answer("<answer></answer>"), None);
    assert_eq!(any_final_number("7-3=4, 4+2=6, 6+0=6, so 6"), Some(6));
    assert_eq!(any_final_number("9-9"), Some(9));
    assert_eq!(any_final_number("the answer is -2."), Some(-2));
    assert_eq!(any_final_number("4 6 6 = 7<eos>"), Some(7));
    assert_eq!(any_final_number("no digits"), None);
    assert_eq!(any_final_number("x1y23z"), Some(23));
}

#[test]
fn corpus_mix_follows_the_defaults() {
    let corpus = Corpus::new(ChainTask::new(4).unwrap(), CorpusMix::default()).unwrap();
    let n = 20_000;
    let docs = corpus.documents(n, 42).unwrap();
    let mut counts: HashMap<DocKind, usize> = HashMap::new();
    for d in &docs {
        *counts.entry(d.kind).or_default() += 1;
    }
    let share = |k: DocKind| counts.get(&k).copied().unwrap_or(0) as f64 / n as f64;
    let expect = [
        (DocKind::DirectBare, 0.4),
        (DocKind::DirectSentence, 0.05),
        (DocKind::DirectTagged, 0.05),
        (DocKind::TaggedCot, 0.05),
        (DocKind::MessyCommas, 0.09),
        (DocKind::MessyThen, 0.09),
        (DocKind::MessyLines, 0.09),
        (DocKind::MessyFirst, 0.09),
        (DocKind::MessyTerse, 0.09),
    ];
    for (k, e) in expect {
        assert!((share(k) - e).abs() < 0.015, "{k:?}: {} vs {e}", share(k));
    }
    let tok = Tokenizer::project();
    let mean = docs.iter().map(|d| tok.encode(&d.text).unwrap().len()).sum::<usize>() as f64 / n as f64;
    assert!((15.0..40.0).contains(&mean), "mean document length {mean} tokens");
    // A custom mix: messy only, terse only.
    let mix = CorpusMix {
        direct: 0.0,
        tagged_cot: 0.0,
        messy_cot: 1.0,
        direct_styles: [1.0, 0.0, 0.0],
        messy_styles: [0.0, 0.0, 0.0, 0.0, 1.0],
    };
    let only = Corpus::new(ChainTask::new(4).unwrap(), mix).unwrap();
    assert!(only.documents(200, 1).unwrap().iter().all(|d| d.kind == DocKind::MessyTerse));
    let bad = CorpusMix { direct: -1.0, ..CorpusMix::default() };
    assert!(Corpus::new(ChainTask::new(4).unwrap(), bad).is_err());
    let zero = CorpusMix { messy_styles: [0.0; 5], ..CorpusMix::default() };
    assert!(Corpus::new(ChainTask::new(4).unwrap(), zero).is_err());
    // Serde: a partial config keeps the other defaults; unknown fields are refused.
    let m: CorpusMix = serde_json::from_str(r#"{"direct": 0.3}"#).unwrap();
    assert_eq!((m.direct, m.messy_cot), (0.3, 0.45));
    assert!(serde_json::from_str::<CorpusMix>(r#"{"directt": 0.3}"#).is_err());
}

#[test]
fn every_style_matches_miniature_and_is_never_strict_format() {
    let p = Problem::parse("7-3+2+0").unwrap();
    let mut rng = StdRng::seed_from_u64(0);
    let want = [
        (DocKind::DirectBare, "6"),
        (DocKind::DirectSentence, "the answer is 6"),
        (DocKind::DirectTagged, "<answer>6</answer>"),
        (DocKind::MessyCommas, "7-3=4, 4+2=6, 6+0=6, so 6"),
        (DocKind::MessyThen, "7-3=4 then 4+2=6 then 6+0=6. answer: 6"),
        (DocKind::MessyLines, "\n7-3=4\n4+2=6\n6+0=6\nso the answer is 6"),
        (DocKind::MessyFirst, "first 7-3=4, then 4+2=6, then 6+0=6, so 6"),
        (DocKind::MessyTerse, "4 6 6 = 6"),
    ];
    for (k, w) in want {
        assert_eq!(k.completion(&p, &mut rng), w, "{k:?}");
    }
    let mut seps = HashSet::new();
    for _ in 0..200 {
        let c = DocKind::TaggedCot.completion(&p, &mut rng);
        assert!(c.starts_with("<think>7-3=4") && c.ends_with("<answer>6</answer>"), "{c:?}");
        assert_eq!(strict_answer(&c), Some(6));
        seps.insert(c);
    }
    assert!(seps.len() >= 6, "separators vary: {seps:?}");
    let tok = Tokenizer::project();
    let corpus = Corpus::new(ChainTask::new(4).unwrap(), CorpusMix::default()).unwrap();
    for d in corpus.documents(3000, 9).unwrap() {
        assert!(d.text.ends_with("<eos>") && d.text.starts_with("Q: "));
        let completion = &d.text[d.text.find("A: ").unwrap() + 3..d.text.len() - 5];
        assert!(rewards::shaping::format_check(completion).is_err(), "{completion:?}");
        assert!(any_final_number(completion).is_some());
        assert!(tok.encode(&d.text).is_ok());
    }
}

#[test]
fn cold_start_records_are_clean_training_problems() {
    let task = ChainTask::new(4).unwrap();
    let recs = cold_start_records(&task, 300, 0).unwrap();
    assert_eq!(recs.len(), 300);
    let test: HashSet<_> = task.test_problems(300, 1).unwrap().into_iter().map(|p| p.prompt).collect();
    for r in &recs {
        let (prompt, completion) = r.sft_pair().unwrap();
        assert!(!test.contains(&prompt));
        let p = Problem::parse(&prompt[3..prompt.len() - 4]).unwrap();
        assert_eq!(completion, p.cot);
        assert_eq!(r.extra["answer"], p.answer);
    }
}

#[test]
fn grade_and_fields() {
    let p = Problem::parse("7-3+2+0").unwrap();
    let full = |strict, any| data::tasks::Grade { strict, any_final_number: any };
    assert_eq!(p.grade(&p.completion()), full(true, true));
    assert_eq!(p.grade("7-3=4, 4+2=6, 6+0=6, so 6<eos>"), full(false, true));
    assert_eq!(p.grade("<answer>6</answer> or 5"), full(true, false));
    assert_eq!(p.grade("<answer>5</answer>"), full(false, false));
    let f = p.fields();
    assert_eq!(f["answer"], "6");
    // The fields are a rewards::Sample.
    let set = WeightedRewards::from_specs(&["accuracy"]).unwrap();
    assert_eq!(set.score(&p.cot, &f).unwrap().total, 1.0);
    assert_eq!(set.score("<answer>\n5\n</answer>", &f).unwrap().total, 0.0);
}

#[test]
fn corpus_batch_packs_whole_documents() {
    let tok = Tokenizer::project();
    let corpus = Corpus::new(ChainTask::new(4).unwrap(), CorpusMix::default()).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let b = corpus.batch(&tok, &mut rng, 4, 128).unwrap();
    assert_eq!((b.batch, b.seq_len, b.ids.len()), (4, 128, 512));
    let mut rng2 = StdRng::seed_from_u64(3);
    assert_eq!(corpus.batch(&tok, &mut rng2, 4, 128).unwrap(), b, "deterministic");
    for row in 0..4 {
        let r = row * 128..(row + 1) * 128;
        let (ids, segs) = (&b.ids[r.clone()], &b.segment_ids[r]);
        let n_seg = *segs.iter().max().unwrap();
        assert!(n_seg >= 2, "several documents per sequence");
        // Every segment decodes to one whole document: a prompt through <eos>.
        for s in 1..=n_seg {
            let doc: Vec<u32> = ids.iter().zip(segs).filter(|(_, g)| **g == s).map(|(i, _)| *i).collect();
            let text = tok.decode(&doc).unwrap();
            assert!(text.starts_with("Q: ") && text.ends_with("<eos>"), "{text:?}");
            assert_eq!(text.matches("<eos>").count(), 1);
        }
    }
    assert!(corpus.batch(&tok, &mut rng, 0, 128).is_err());
}
