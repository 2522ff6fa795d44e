use data::chat::{CHAT_TEMPLATE_JINJA, GENERATION_PROMPT};
use data::tasks::{ChainTask, Corpus, CorpusMix};
use data::tokenizer::{ALPHABET, SPECIAL_TOKENS};
use data::{DataError, Message, Tokenizer, apply_chat_template};
use proptest::prelude::*;

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("data-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn project_vocabulary_is_small_and_ordered() {
    let tok = Tokenizer::project();
    assert_eq!(tok.vocab_size(), SPECIAL_TOKENS.len() + ALPHABET.chars().count());
    assert!((60..=100).contains(&tok.vocab_size()), "vocab {}", tok.vocab_size());
    assert_eq!(tok.pad_id(), 0);
    assert_eq!(tok.eos_id(), 1);
    for (i, t) in SPECIAL_TOKENS.iter().enumerate() {
        assert_eq!(tok.token_id(t), Some(i as u32), "{t}");
        assert_eq!(tok.encode(t).unwrap(), vec![i as u32], "{t} is one token");
    }
    // Every character is one distinct token.
    let mut seen = std::collections::HashSet::new();
    for c in ALPHABET.chars() {
        let ids = tok.encode(&c.to_string()).unwrap();
        assert_eq!(ids.len(), 1, "{c:?}");
        assert!(ids[0] >= SPECIAL_TOKENS.len() as u32);
        assert!(seen.insert(ids[0]));
        assert_eq!(tok.id_token(ids[0]).as_deref(), Some(c.to_string().as_str()));
    }
}

#[test]
fn specials_in_text_are_single_tokens_and_decode_keeps_them() {
    let tok = Tokenizer::project();
    let s = "Q: 1+2\nA: <think>\n1+2=3\n</think>\n<answer>\n3\n</answer><eos>";
    let ids = tok.encode(s).unwrap();
    let count = |t: &str| ids.iter().filter(|&&i| Some(i) == tok.token_id(t)).count();
    for t in SPECIAL_TOKENS.iter().filter(|t| **t != "<pad>") {
        assert_eq!(count(t), 1, "{t}");
    }
    assert_eq!(ids.len(), s.chars().count() - (7 + 8 + 8 + 9 + 5) + 5);
    assert_eq!(tok.decode(&ids).unwrap(), s);
}

#[test]
fn unknown_character_is_an_error_naming_it() {
    let tok = Tokenizer::project();
    for (text, ch, offset) in [("7+2=9 ≠ 8", '≠', 6), ("é", 'é', 0), ("ab#", '#', 2)] {
        match tok.encode(text) {
            Err(DataError::UnknownChar { ch: c, offset: o, .. }) => assert_eq!((c, o), (ch, offset), "{text}"),
            other => panic!("{text}: expected UnknownChar, got {other:?}"),
        }
    }
    let msg = tok.encode("x~").unwrap_err().to_string();
    assert!(msg.contains("'~'"), "{msg}");
}

#[test]
fn decode_rejects_out_of_range_ids() {
    let tok = Tokenizer::project();
    let bad = tok.vocab_size() as u32;
    assert!(matches!(tok.decode(&[5, bad]), Err(DataError::UnknownId { id, .. }) if id == bad));
}

#[test]
fn save_and_load_round_trip_with_config() {
    let dir = tmpdir("save");
    let path = dir.join("tokenizer.json");
    let tok = Tokenizer::project();
    tok.save(&path).unwrap();
    let back = Tokenizer::from_file(&path).unwrap();
    assert_eq!(back.vocab_size(), tok.vocab_size());
    let s = "Q: 9-9+0\nA: <think>\n9-9=0\n</think>\n<answer>\n0\n</answer><eos>";
    assert_eq!(back.encode(s).unwrap(), tok.encode(s).unwrap());
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(json["decoder"]["type"], "Fuse");
    assert_eq!(json["added_tokens"].as_array().unwrap().len(), SPECIAL_TOKENS.len());
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer_config.json")).unwrap()).unwrap();
    assert_eq!(cfg["eos_token"], "<eos>");
    assert_eq!(cfg["pad_token"], "<pad>");
    assert_eq!(cfg["chat_template"], CHAT_TEMPLATE_JINJA);
    // No temporary file left behind.
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn load_errors_name_the_file() {
    let dir = tmpdir("bad");
    let missing = dir.join("nope.json");
    let msg = Tokenizer::from_file(&missing).unwrap_err().to_string();
    assert!(msg.contains("nope.json"), "{msg}");
    let bad = dir.join("broken.json");
    std::fs::write(&bad, "{ not json").unwrap();
    let msg = Tokenizer::from_file(&bad).unwrap_err().to_string();
    assert!(msg.contains("broken.json"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn chat_template_multi_turn() {
    let msgs = vec![
        Message::system("Answer briefly."),
        Message::user("1+1"),
        Message::assistant("<answer>2</answer>"),
        Message::user("2+2"),
    ];
    assert_eq!(apply_chat_template(&msgs, true), "Answer briefly.\nQ: 1+1\nA: <answer>2</answer><eos>Q: 2+2\nA: ");
    assert_eq!(apply_chat_template(&msgs[1..2], false), "Q: 1+1\n");
    assert!(apply_chat_template(&msgs, true).ends_with(GENERATION_PROMPT));
    // The task prompt is one user turn with the generation prompt.
    let p = ChainTask::new(4).unwrap().sample(&mut <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3));
    assert_eq!(apply_chat_template(&[Message::user(p.expr.clone())], true), p.prompt);
    // Rendered chats tokenise and round-trip.
    let tok = Tokenizer::project();
    let text = apply_chat_template(&msgs, true);
    assert_eq!(tok.decode(&tok.encode(&text).unwrap()).unwrap(), text);
}

/// Hugging Face renders `chat_template` with Jinja2; when python3 with jinja2 is present, render there and
/// compare (skipped, with a note, when it is not installed).
#[test]
fn jinja_template_matches_renderer() {
    let msgs = vec![
        Message::system("Be terse."),
        Message::user("3-1"),
        Message::assistant("2"),
        Message::user("4+5"),
        Message::assistant("<think>\n4+5=9\n</think>\n<answer>\n9\n</answer>"),
        Message::user("0+0"),
    ];
    let script = "import sys, json, jinja2\nd = json.load(sys.stdin)\n\
t = jinja2.Environment().from_string(d['t'])\n\
for g in (False, True):\n    sys.stdout.write(json.dumps(t.render(messages=d['m'], add_generation_prompt=g, eos_token='<eos>')) + '\\n')\n";
    let input = serde_json::json!({ "t": CHAT_TEMPLATE_JINJA, "m": msgs });
    let child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("python3 not found: Jinja comparison skipped");
        return;
    };
    use std::io::Write;
    child.stdin.take().unwrap().write_all(input.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("No module named 'jinja2'"), "python failed: {err}");
        eprintln!("jinja2 not installed: Jinja comparison skipped");
        return;
    }
    let lines: Vec<String> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines, vec![apply_chat_template(&msgs, false), apply_chat_template(&msgs, true)]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn corpus_documents_round_trip(seed in any::<u64>(), level in 2usize..=6) {
        let tok = Tokenizer::project();
        let corpus = Corpus::new(ChainTask::new(level).unwrap(), CorpusMix::default()).unwrap();
        for d in corpus.documents(8, seed).unwrap() {
            let ids = tok.encode(&d.text).unwrap();
            prop_assert_eq!(tok.decode(&ids).unwrap(), d.text.clone());
            prop_assert_eq!(*ids.last().unwrap(), tok.eos_id());
        }
    }

    #[test]
    fn alphabet_strings_round_trip(s in proptest::collection::vec(
        prop_oneof![
            proptest::sample::select(ALPHABET.chars().map(String::from).collect::<Vec<_>>()),
            proptest::sample::select(SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        ], 0..60)) {
        let tok = Tokenizer::project();
        let text = s.concat();
        let ids = tok.encode(&text).unwrap();
        prop_assert_eq!(ids.len(), s.len());
        prop_assert_eq!(tok.decode(&ids).unwrap(), text);
    }
}
