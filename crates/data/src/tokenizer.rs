//! The tokenizer: a thin wrapper over a Hugging Face `tokenizers::Tokenizer`, plus the project's own
//! character-level tokenizer ([`Tokenizer::project`]) and `tokenizer_config.json` with the chat template.

use std::io::Write;
use std::path::{Path, PathBuf};

use tokenizers::decoders::fuse::Fuse;
use tokenizers::models::bpe::BPE;
use tokenizers::{AddedToken, DecoderWrapper};

use crate::chat::CHAT_TEMPLATE_JINJA;
use crate::error::{DataError, Result, io};

/// Padding.
pub const PAD: &str = "<pad>";
/// End of sequence: ends every document and every assistant turn.
pub const EOS: &str = "<eos>";
/// Opens the reasoning block.
pub const THINK: &str = "<think>";
/// Closes the reasoning block.
pub const THINK_END: &str = "</think>";
/// Opens the answer block.
pub const ANSWER: &str = "<answer>";
/// Closes the answer block.
pub const ANSWER_END: &str = "</answer>";
/// The special tokens of the project tokenizer, in id order (`<pad>` = 0, `<eos>` = 1, …).
pub const SPECIAL_TOKENS: [&str; 6] = [PAD, EOS, THINK, THINK_END, ANSWER, ANSWER_END];
/// The characters of the project tokenizer, in id order after the special tokens.
pub const ALPHABET: &str = " \n0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+-*/=.,:;?!'()";

/// A tokenizer with the ids the trainer needs (`<pad>`, `<eos>`).
///
/// Encoding recognises special tokens written in the text (`"<think>"` → one id) and refuses characters the
/// vocabulary cannot represent ([`DataError::UnknownChar`]) instead of dropping them (checked for tokenizers
/// whose tokens are literal pieces of the text, as the project tokenizer's are). Decoding keeps special
/// tokens, so `decode(encode(s)) == s` for every text of the project's alphabet.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pad: u32,
    eos: u32,
    vocab_size: usize,
    /// Token texts by id when every token is a literal piece of the input (no normalizer, no pre-tokenizer,
    /// `Fuse` decoder): encoding is then checked to cover the whole text.
    literal: Option<Vec<String>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("pad", &self.pad)
            .field("eos", &self.eos)
            .finish()
    }
}

impl Tokenizer {
    /// The project tokenizer: one token per character of [`ALPHABET`] plus [`SPECIAL_TOKENS`] (84 ids).
    ///
    /// It is a real `tokenizers` BPE model without merges (so every character is a token), a `Fuse` decoder and
    /// the special tokens as added tokens: the file [`save`](Self::save) writes loads in Hugging Face as is.
    pub fn project() -> Self {
        let mut vocab: Vec<(String, u32)> = Vec::new();
        for t in SPECIAL_TOKENS.iter().map(|s| s.to_string()).chain(ALPHABET.chars().map(String::from)) {
            let id = vocab.len() as u32;
            vocab.push((t, id));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab.into_iter().collect::<tokenizers::models::bpe::Vocab>(), vec![])
            .build()
            .expect("a merge-free BPE over a fixed alphabet is valid");
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_decoder(Some(DecoderWrapper::Fuse(Fuse::new())));
        let specials: Vec<AddedToken> = SPECIAL_TOKENS.iter().map(|t| AddedToken::from(*t, true)).collect();
        inner.add_special_tokens(&specials);
        Self::wrap(inner).expect("the project tokenizer has <pad> and <eos>")
    }

    /// Wrap a loaded `tokenizers::Tokenizer`; it must have `<pad>` and `<eos>` tokens.
    pub fn wrap(inner: tokenizers::Tokenizer) -> Result<Self> {
        let id = |t: &str| inner.token_to_id(t).ok_or_else(|| DataError::MissingToken { token: t.into() });
        let (pad, eos) = (id(PAD)?, id(EOS)?);
        let vocab_size = inner.get_vocab_size(true);
        let is_literal = inner.get_normalizer().is_none()
            && inner.get_pre_tokenizer().is_none()
            && matches!(inner.get_decoder(), Some(DecoderWrapper::Fuse(_)));
        let literal = is_literal.then(|| {
            let mut table = vec![String::new(); vocab_size];
            for (t, id) in inner.get_vocab(true) {
                if let Some(slot) = table.get_mut(id as usize) {
                    *slot = t;
                }
            }
            table
        });
        Ok(Self { inner, pad, eos, vocab_size, literal })
    }

    /// Load a `tokenizer.json`; errors name the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(io("read", path))?;
        let inner: tokenizers::Tokenizer = text
            .parse()
            .map_err(|e: tokenizers::Error| DataError::TokenizerFile { path: path.into(), detail: e.to_string() })?;
        Self::wrap(inner).map_err(|e| DataError::TokenizerFile { path: path.into(), detail: e.to_string() })
    }

    /// Write `tokenizer.json` at `path` and `tokenizer_config.json` beside it (eos/pad tokens and the Jinja chat
    /// template), each atomically (temporary file, then rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let json = self
            .inner
            .to_string(true)
            .map_err(|e| DataError::TokenizerFile { path: path.into(), detail: e.to_string() })?;
        write_atomic(path, json.as_bytes())?;
        let config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": null,
            "eos_token": EOS,
            "pad_token": PAD,
            "unk_token": null,
            "clean_up_tokenization_spaces": false,
            "chat_template": CHAT_TEMPLATE_JINJA,
        });
        let config_path = path.with_file_name("tokenizer_config.json");
        let text = serde_json::to_string_pretty(&config).expect("a JSON value serialises");
        write_atomic(&config_path, text.as_bytes())
    }

    /// Token ids of `text`; special tokens written in the text are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| DataError::Tokenize(e.to_string()))?;
        let ids = enc.get_ids();
        // The model silently drops a character it cannot represent: walk the token texts along the input.
        if let Some(table) = &self.literal {
            let mut pos = 0;
            for &id in ids {
                let piece = table.get(id as usize).map_or("", String::as_str);
                if piece.is_empty() || !text[pos..].starts_with(piece) {
                    return Err(unknown_char(text, pos));
                }
                pos += piece.len();
            }
            if pos < text.len() {
                return Err(unknown_char(text, pos));
            }
        }
        Ok(ids.to_vec())
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            return Err(DataError::UnknownId { id, vocab_size: self.vocab_size });
        }
        self.inner.decode(ids, false).map_err(|e| DataError::Tokenize(e.to_string()))
    }

    /// Number of ids (added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The id of a token (a character or a special token), if any.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The text of a token id, if any.
    pub fn id_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The `<pad>` id.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The `<eos>` id.
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// The wrapped Hugging Face tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

fn unknown_char(text: &str, offset: usize) -> DataError {
    let ch = text[offset..].chars().next().unwrap_or('\u{fffd}');
    DataError::UnknownChar { ch, offset, context: text.chars().take(40).collect() }
}

/// Write `bytes` to `path` through a temporary file in the same directory and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = PathBuf::from(path);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    tmp.set_file_name(format!(".{name}.tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("sync", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io("rename", path))
}
