//! The crate's single error type.

use std::path::PathBuf;
use thiserror::Error;

/// Everything that can go wrong while reading data, tokenising, packing or building tasks.
#[derive(Debug, Error)]
pub enum DataError {
    /// A file could not be opened, read, written or renamed.
    #[error("{path}: {op} failed: {source}")]
    Io {
        /// What was being done (`open`, `read`, `write`, `rename`).
        op: &'static str,
        /// The file.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A tokenizer file could not be parsed or serialised.
    #[error("{path}: tokenizer: {detail}")]
    TokenizerFile {
        /// The tokenizer.json file.
        path: PathBuf,
        /// What the tokenizers library said.
        detail: String,
    },
    /// A tokenizer lacks a token the project needs (`<pad>`, `<eos>`).
    #[error("tokenizer has no `{token}` token")]
    MissingToken {
        /// The token text.
        token: String,
    },
    /// Text contains a character the vocabulary cannot represent.
    #[error("character {ch:?} at byte {offset} is not in the tokenizer's vocabulary (text starts {context:?})")]
    UnknownChar {
        /// The character.
        ch: char,
        /// Its byte offset in the text.
        offset: usize,
        /// The first characters of the text.
        context: String,
    },
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary (size {vocab_size})")]
    UnknownId {
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// The tokenizers library failed while encoding or decoding.
    #[error("tokenizer: {0}")]
    Tokenize(String),
    /// A JSONL line is not valid JSON or does not have a known shape.
    #[error("{file}:{line}: {detail}")]
    Json {
        /// The file (or `<input>` for a reader without a name).
        file: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong, from serde_json.
        detail: String,
    },
    /// A JSONL record field is missing or has the wrong type.
    #[error("{file}:{line}: field \"{field}\": {detail}")]
    Field {
        /// The file (or `<input>`).
        file: String,
        /// 1-based line number.
        line: usize,
        /// The field path, e.g. `messages[2].role`.
        field: String,
        /// What is wrong, e.g. `expected a string, got 3`.
        detail: String,
    },
    /// A parameter is out of range (its name, value and the rule).
    #[error("{name} = {value}: {rule}")]
    Invalid {
        /// The parameter.
        name: &'static str,
        /// Its value.
        value: String,
        /// What it must satisfy.
        rule: String,
    },
}

/// The crate's result type.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

pub(crate) fn invalid<T>(name: &'static str, value: impl ToString, rule: impl Into<String>) -> Result<T> {
    Err(DataError::Invalid { name, value: value.to_string(), rule: rule.into() })
}

pub(crate) fn io<'a>(op: &'static str, path: &'a std::path::Path) -> impl FnOnce(std::io::Error) -> DataError + 'a {
    move |source| DataError::Io { op, path: path.to_path_buf(), source }
}
