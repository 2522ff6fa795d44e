use data::jsonl::{Body, JsonlReader, Record, read_jsonl, train_test_split, write_jsonl};
use data::{DataError, Message, Role};

fn read_str(text: &str) -> Vec<data::Result<Record>> {
    JsonlReader::new(text.as_bytes(), "data/train.jsonl").collect()
}

#[test]
fn all_shapes_parse_and_round_trip() {
    let text = r#"{"prompt": "Q: 1+1\nA: ", "completion": "2", "answer": "2"}

{"prompt": "Q: 2+2\nA: "}
{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}]}
{"prompt": [{"role": "user", "content": "u"}], "completion": [{"role": "assistant", "content": "a"}]}
{"prompt": [{"role": "user", "content": "u"}], "id": 7}
{"problem": "1+2?", "solution": "1+2=3", "answer": "3"}
{"problem": "1+3?", "answer": "4"}
   
"#;
    let recs: Vec<Record> = read_str(text).into_iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(recs.len(), 7, "blank lines skipped");
    assert!(matches!(&recs[0].body, Body::PromptCompletion { completion, .. } if completion == "2"));
    assert_eq!(recs[0].extra["answer"], "2");
    assert!(matches!(&recs[1].body, Body::Prompt { .. }));
    assert!(
        matches!(&recs[2].body, Body::Messages { messages } if messages.len() == 3 && messages[0].role == Role::System)
    );
    assert!(matches!(&recs[3].body, Body::ChatPromptCompletion { .. }));
    assert!(matches!(&recs[4].body, Body::ChatPrompt { .. }));
    assert_eq!(recs[4].extra["id"], 7);
    assert!(matches!(&recs[5].body, Body::Problem { solution: Some(_), .. }));
    assert!(matches!(&recs[6].body, Body::Problem { solution: None, .. }));

    // Writer → reader gives the same records.
    let dir = std::env::temp_dir().join(format!("data-jsonl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("out.jsonl");
    write_jsonl(&path, &recs).unwrap();
    assert_eq!(read_jsonl(&path).unwrap(), recs);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sft_pairs_use_the_chat_template() {
    let conv = Record::new(Body::Messages {
        messages: vec![Message::user("1+1"), Message::assistant("2"), Message::user("2+2"), Message::assistant("4")],
    });
    let (p, c) = conv.sft_pair().unwrap();
    assert_eq!(p, "Q: 1+1\nA: 2<eos>Q: 2+2\nA: ");
    assert_eq!(c, "4");
    assert_eq!(conv.prompt_text(), p);
    let chat_pc = Record::new(Body::ChatPromptCompletion {
        prompt: vec![Message::system("s"), Message::user("u")],
        completion: vec![Message::assistant("a")],
    });
    assert_eq!(chat_pc.sft_pair().unwrap(), ("s\nQ: u\nA: ".to_string(), "a".to_string()));
    let prob = Record::new(Body::Problem { problem: "1+2".into(), solution: Some("3".into()), answer: "3".into() });
    assert_eq!(prob.sft_pair().unwrap(), ("Q: 1+2\nA: ".to_string(), "3".to_string()));
    let ends_with_user = Record::new(Body::Messages { messages: vec![Message::user("x")] });
    assert!(ends_with_user.sft_pair().is_none());
    assert!(Record::new(Body::Prompt { prompt: "x".into() }).sft_pair().is_none());
}

fn field_error(text: &str) -> (String, usize, String, String) {
    match read_str(text).into_iter().find_map(Result::err) {
        Some(DataError::Field { file, line, field, detail }) => (file, line, field, detail),
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn errors_name_file_line_and_field() {
    let text = "{\"prompt\": \"a\", \"completion\": \"b\"}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, {\"role\": \"assistant\", \"content\": \"y\"}, {\"role\": 3, \"content\": \"z\"}]}\n";
    let (file, line, field, detail) = field_error(text);
    assert_eq!((file.as_str(), line, field.as_str()), ("data/train.jsonl", 3, "messages[2].role"));
    assert_eq!(detail, "expected a string, got 3");
    let msg = read_str(text).into_iter().find_map(Result::err).unwrap().to_string();
    assert_eq!(msg, "data/train.jsonl:3: field \"messages[2].role\": expected a string, got 3");

    assert_eq!(field_error(r#"{"messages": [{"role": "bot", "content": "x"}]}"#).2, "messages[0].role");
    assert_eq!(field_error(r#"{"messages": [{"role": "user"}]}"#).2, "messages[0].content");
    assert_eq!(field_error(r#"{"messages": "hi"}"#).2, "messages");
    assert_eq!(field_error(r#"{"prompt": "a", "completion": 5}"#).2, "completion");
    assert_eq!(field_error(r#"{"prompt": [], "completion": "x"}"#).2, "completion");
    assert_eq!(field_error(r#"{"prompt": 1}"#).2, "prompt");
    assert_eq!(field_error(r#"{"problem": "p"}"#), ("data/train.jsonl".into(), 1, "answer".into(), "missing".into()));

    for (bad, want) in [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (r#"{"text": "x"}"#, "unknown record shape"),
    ] {
        let text = format!("{{\"prompt\": \"ok\"}}\n{bad}\n");
        match read_str(&text).into_iter().find_map(Result::err) {
            Some(DataError::Json { line, detail, .. }) => {
                assert_eq!(line, 2);
                assert!(detail.contains(want), "{detail}");
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    let missing = read_jsonl("/nonexistent/dir/x.jsonl").unwrap_err().to_string();
    assert!(missing.contains("/nonexistent/dir/x.jsonl"), "{missing}");
}

#[test]
fn split_is_deterministic_disjoint_and_seeded() {
    let recs: Vec<Record> = (0..2000).map(|i| Record::prompt_completion(format!("Q: {i}\nA: "), "x")).collect();
    let (train, test) = train_test_split(recs.clone(), 0.2, 7).unwrap();
    assert_eq!(train.len() + test.len(), recs.len());
    let prompts = |v: &[Record]| v.iter().map(Record::prompt_text).collect::<std::collections::HashSet<_>>();
    assert!(prompts(&train).is_disjoint(&prompts(&test)));
    assert!((300..500).contains(&test.len()), "about 20% held out, got {}", test.len());
    let (train2, test2) = train_test_split(recs.clone(), 0.2, 7).unwrap();
    assert_eq!((train2, &test2), (train, &test));
    let (_, test3) = train_test_split(recs.clone(), 0.2, 8).unwrap();
    assert_ne!(test3, test, "another seed gives another split");
    // Duplicated prompts land on the same side; order does not matter.
    let mut rev = recs.clone();
    rev.reverse();
    let (_, test_rev) = train_test_split(rev, 0.2, 7).unwrap();
    assert_eq!(prompts(&test_rev), prompts(&test));
    assert!(train_test_split(recs, 1.5, 0).is_err());
}
