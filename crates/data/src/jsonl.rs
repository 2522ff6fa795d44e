//! JSONL datasets in the shapes TRL and open-r1 use, a streaming reader whose errors name file, line and
//! field, a writer, and a seeded train/test split.
//!
//! Shapes (one JSON object a line; other fields are kept in [`Record::extra`]):
//!
//! | fields | [`Body`] |
//! |---|---|
//! | `{"prompt": "…", "completion": "…"}` | [`Body::PromptCompletion`] |
//! | `{"prompt": "…"}` | [`Body::Prompt`] |
//! | `{"messages": [{"role", "content"}, …]}` | [`Body::Messages`] |
//! | `{"prompt": [messages], "completion": [messages]}` | [`Body::ChatPromptCompletion`] |
//! | `{"prompt": [messages]}` | [`Body::ChatPrompt`] |
//! | `{"problem": "…", "solution": "…", "answer": "…"}` (`solution` optional) | [`Body::Problem`] |

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use serde_json::{Map, Value};

use crate::chat::{Message, Role, apply_chat_template};
use crate::error::{DataError, Result, io};
use crate::split::is_test;

/// The content of one dataset line.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// Standard prompt/completion text.
    PromptCompletion {
        /// Prompt text.
        prompt: String,
        /// Completion text.
        completion: String,
    },
    /// Prompt only (GRPO datasets; the answer lives in `extra`).
    Prompt {
        /// Prompt text.
        prompt: String,
    },
    /// A conversation.
    Messages {
        /// The turns.
        messages: Vec<Message>,
    },
    /// Conversational prompt/completion.
    ChatPromptCompletion {
        /// Prompt turns.
        prompt: Vec<Message>,
        /// Completion turns.
        completion: Vec<Message>,
    },
    /// Conversational prompt only.
    ChatPrompt {
        /// Prompt turns.
        prompt: Vec<Message>,
    },
    /// A math problem (open-r1 style).
    Problem {
        /// The question.
        problem: String,
        /// A worked solution, if given.
        solution: Option<String>,
        /// The final answer.
        answer: String,
    },
}

/// One dataset line: its shape and every other field.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The recognised fields.
    pub body: Body,
    /// Fields not part of the shape (e.g. `answer` of a GRPO prompt), kept verbatim.
    pub extra: Map<String, Value>,
}

impl Record {
    /// A record without extra fields.
    pub fn new(body: Body) -> Self {
        Self { body, extra: Map::new() }
    }

    /// A prompt/completion record.
    pub fn prompt_completion(prompt: impl Into<String>, completion: impl Into<String>) -> Self {
        Self::new(Body::PromptCompletion { prompt: prompt.into(), completion: completion.into() })
    }

    /// Add an extra field.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// Parse one JSON value; `file` and `line` go into errors.
    pub fn from_json(value: Value, file: &str, line: usize) -> Result<Self> {
        let cx = Cx { file, line };
        let Value::Object(mut obj) = value else {
            return Err(cx.json(format!("expected a JSON object, got {}", show(&value))));
        };
        let body = if obj.contains_key("messages") {
            Body::Messages { messages: cx.messages(obj.remove("messages"), "messages")? }
        } else if obj.contains_key("prompt") {
            let prompt = obj.remove("prompt");
            let completion = obj.remove("completion");
            match (prompt, completion) {
                (Some(Value::String(p)), None) => Body::Prompt { prompt: p },
                (Some(Value::String(p)), c @ Some(_)) => {
                    Body::PromptCompletion { prompt: p, completion: cx.string(c, "completion")? }
                }
                (p @ Some(Value::Array(_)), None) => Body::ChatPrompt { prompt: cx.messages(p, "prompt")? },
                (p @ Some(Value::Array(_)), c) => Body::ChatPromptCompletion {
                    prompt: cx.messages(p, "prompt")?,
                    completion: cx.messages(c, "completion")?,
                },
                (Some(p), _) => {
                    return Err(
                        cx.field("prompt", format!("expected a string or a list of messages, got {}", show(&p)))
                    );
                }
                (None, _) => unreachable!("checked by contains_key"),
            }
        } else if obj.contains_key("problem") {
            let problem = cx.string(obj.remove("problem"), "problem")?;
            let solution = match obj.remove("solution") {
                None | Some(Value::Null) => None,
                s => Some(cx.string(s, "solution")?),
            };
            let answer = cx.string(obj.remove("answer"), "answer")?;
            Body::Problem { problem, solution, answer }
        } else {
            let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            return Err(cx.json(format!(
                "unknown record shape: expected a \"messages\", \"prompt\" or \"problem\" field, found [{}]",
                keys.join(", ")
            )));
        };
        Ok(Self { body, extra: obj })
    }

    /// The record as one JSON object (the inverse of [`from_json`](Self::from_json)).
    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        let msgs = |m: &[Message]| serde_json::to_value(m).expect("messages serialise");
        match &self.body {
            Body::PromptCompletion { prompt, completion } => {
                obj.insert("prompt".into(), prompt.clone().into());
                obj.insert("completion".into(), completion.clone().into());
            }
            Body::Prompt { prompt } => {
                obj.insert("prompt".into(), prompt.clone().into());
            }
            Body::Messages { messages } => {
                obj.insert("messages".into(), msgs(messages));
            }
            Body::ChatPromptCompletion { prompt, completion } => {
                obj.insert("prompt".into(), msgs(prompt));
                obj.insert("completion".into(), msgs(completion));
            }
            Body::ChatPrompt { prompt } => {
                obj.insert("prompt".into(), msgs(prompt));
            }
            Body::Problem { problem, solution, answer } => {
                obj.insert("problem".into(), problem.clone().into());
                if let Some(s) = solution {
                    obj.insert("solution".into(), s.clone().into());
                }
                obj.insert("answer".into(), answer.clone().into());
            }
        }
        for (k, v) in &self.extra {
            obj.insert(k.clone(), v.clone());
        }
        Value::Object(obj)
    }

    /// The prompt as the model sees it (chat template with the generation prompt for chat shapes and problems;
    /// plain prompts verbatim).
    pub fn prompt_text(&self) -> String {
        match &self.body {
            Body::PromptCompletion { prompt, .. } | Body::Prompt { prompt } => prompt.clone(),
            Body::ChatPromptCompletion { prompt, .. } | Body::ChatPrompt { prompt } => {
                apply_chat_template(prompt, true)
            }
            Body::Messages { messages } => {
                let n = last_assistant_split(messages);
                apply_chat_template(&messages[..n], true)
            }
            Body::Problem { problem, .. } => apply_chat_template(&[Message::user(problem.clone())], true),
        }
    }

    /// `(prompt text, completion text)` for SFT, the completion without `<eos>` (the packer's caller appends it).
    ///
    /// Conversations train on their final assistant turn; problems on `solution`. `None` when there is nothing to
    /// train on (prompt-only shapes, a conversation not ending with the assistant, a problem without solution).
    pub fn sft_pair(&self) -> Option<(String, String)> {
        match &self.body {
            Body::PromptCompletion { prompt, completion } => Some((prompt.clone(), completion.clone())),
            Body::ChatPromptCompletion { prompt, completion } => {
                let (last, before) = completion.split_last()?;
                if last.role != Role::Assistant {
                    return None;
                }
                let mut text = apply_chat_template(prompt, false);
                text.push_str(&apply_chat_template(before, false));
                text.push_str(crate::chat::GENERATION_PROMPT);
                Some((text, last.content.clone()))
            }
            Body::Messages { messages } => {
                let (last, before) = messages.split_last()?;
                (last.role == Role::Assistant).then(|| (apply_chat_template(before, true), last.content.clone()))
            }
            Body::Problem { solution: Some(s), .. } => Some((self.prompt_text(), s.clone())),
            Body::Prompt { .. } | Body::ChatPrompt { .. } | Body::Problem { solution: None, .. } => None,
        }
    }
}

fn last_assistant_split(messages: &[Message]) -> usize {
    match messages.last() {
        Some(m) if m.role == Role::Assistant => messages.len() - 1,
        _ => messages.len(),
    }
}

/// Short JSON text of a value for error messages.
fn show(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 { format!("{}…", s.chars().take(60).collect::<String>()) } else { s }
}

struct Cx<'a> {
    file: &'a str,
    line: usize,
}

impl Cx<'_> {
    fn json(&self, detail: String) -> DataError {
        DataError::Json { file: self.file.into(), line: self.line, detail }
    }
    fn field(&self, field: &str, detail: String) -> DataError {
        DataError::Field { file: self.file.into(), line: self.line, field: field.into(), detail }
    }
    fn string(&self, v: Option<Value>, field: &str) -> Result<String> {
        match v {
            Some(Value::String(s)) => Ok(s),
            Some(v) => Err(self.field(field, format!("expected a string, got {}", show(&v)))),
            None => Err(self.field(field, "missing".into())),
        }
    }
    fn messages(&self, v: Option<Value>, field: &str) -> Result<Vec<Message>> {
        let items = match v {
            Some(Value::Array(a)) => a,
            Some(v) => return Err(self.field(field, format!("expected a list of messages, got {}", show(&v)))),
            None => return Err(self.field(field, "missing".into())),
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let path = format!("{field}[{i}]");
            let Value::Object(mut m) = item else {
                return Err(self.field(&path, format!("expected a message object, got {}", show(&item))));
            };
            let role_path = format!("{path}.role");
            let role = self.string(m.remove("role"), &role_path)?;
            let role = Role::parse(&role).ok_or_else(|| {
                self.field(&role_path, format!("expected \"system\", \"user\" or \"assistant\", got {role:?}"))
            })?;
            let content = self.string(m.remove("content"), &format!("{path}.content"))?;
            out.push(Message { role, content });
        }
        Ok(out)
    }
}

/// Streams [`Record`]s from JSONL, one line at a time; blank lines are skipped.
pub struct JsonlReader<R> {
    reader: R,
    file: String,
    line: usize,
    buf: String,
    done: bool,
}

impl JsonlReader<BufReader<File>> {
    /// Open a JSONL file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let f = File::open(path).map_err(io("open", path))?;
        Ok(Self::new(BufReader::new(f), path.display().to_string()))
    }
}

impl<R: BufRead> JsonlReader<R> {
    /// Read from any `BufRead`; `name` stands for the file in errors.
    pub fn new(reader: R, name: impl Into<String>) -> Self {
        Self { reader, file: name.into(), line: 0, buf: String::new(), done: false }
    }
}

impl<R: BufRead> Iterator for JsonlReader<R> {
    type Item = Result<Record>;

    fn next(&mut self) -> Option<Result<Record>> {
        while !self.done {
            self.buf.clear();
            self.line += 1;
            match self.reader.read_line(&mut self.buf) {
                Ok(0) => self.done = true,
                Ok(_) => {
                    let text = self.buf.trim();
                    if text.is_empty() {
                        continue;
                    }
                    let cx = Cx { file: &self.file, line: self.line };
                    return Some(match serde_json::from_str::<Value>(text) {
                        Ok(v) => Record::from_json(v, &self.file, self.line),
                        Err(e) => Err(cx.json(format!("invalid JSON: {e}"))),
                    });
                }
                Err(source) => {
                    self.done = true;
                    return Some(Err(DataError::Io { op: "read", path: self.file.clone().into(), source }));
                }
            }
        }
        None
    }
}

/// Read a whole JSONL file; the first bad line is the error.
pub fn read_jsonl(path: impl AsRef<Path>) -> Result<Vec<Record>> {
    JsonlReader::open(path)?.collect()
}

/// Writes [`Record`]s as JSONL.
pub struct JsonlWriter<W: Write> {
    out: W,
}

impl<W: Write> JsonlWriter<W> {
    /// Write to any `Write`.
    pub fn new(out: W) -> Self {
        Self { out }
    }
    /// Write one record as one line.
    pub fn write(&mut self, record: &Record) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, &record.to_json())?;
        self.out.write_all(b"\n")
    }
    /// Flush and return the inner writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Write records to a JSONL file atomically (temporary file, then rename).
pub fn write_jsonl(path: impl AsRef<Path>, records: &[Record]) -> Result<()> {
    let path = path.as_ref();
    let mut w = JsonlWriter::new(BufWriter::new(Vec::new()));
    for r in records {
        w.write(r).map_err(io("write", path))?;
    }
    let bytes = w.finish().map_err(io("write", path))?.into_inner().map_err(|e| DataError::Io {
        op: "write",
        path: path.into(),
        source: e.into_error(),
    })?;
    crate::tokenizer::write_atomic(path, &bytes)
}

/// Split records into `(train, test)` by a seeded hash of each record's prompt text: deterministic, disjoint,
/// and records with the same prompt always land on the same side. About `test_fraction` of prompts go to test.
pub fn train_test_split(records: Vec<Record>, test_fraction: f64, seed: u64) -> Result<(Vec<Record>, Vec<Record>)> {
    if !(0.0..=1.0).contains(&test_fraction) {
        return crate::error::invalid("test_fraction", test_fraction, "must be in [0, 1]");
    }
    Ok(records.into_iter().partition(|r| !is_test(&r.prompt_text(), seed, test_fraction)))
}
