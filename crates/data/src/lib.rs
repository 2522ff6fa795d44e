//! Data for the R1 recipe: the tokenizer and chat template, JSONL datasets, packing into training sequences,
//! and the embedded synthetic tasks with verifiable answers.
//!
//! ```
//! use data::{Tokenizer, pack::{pack, Overflow, TokenDoc}, tasks::{ChainTask, Corpus, CorpusMix}};
//! use rand::SeedableRng;
//!
//! let tok = Tokenizer::project();
//! let corpus = Corpus::new(ChainTask::new(4)?, CorpusMix::default())?;
//! let mut rng = rand::rngs::StdRng::seed_from_u64(0);
//! let docs = (0..8)
//!     .map(|_| Ok(TokenDoc::new(tok.encode(&corpus.document(&mut rng)?.text)?)))
//!     .collect::<data::Result<Vec<_>>>()?;
//! let seqs = pack(&docs, 64, tok.pad_id(), Overflow::Truncate)?;
//! assert!(seqs.iter().all(|s| s.ids.len() == 64));
//! # Ok::<(), data::DataError>(())
//! ```
//!
//! Modules: [`tokenizer`] (the project's character tokenizer over Hugging Face `tokenizers`), [`chat`] (messages
//! and the chat template), [`jsonl`] (datasets), [`pack`](mod@pack) (packing), [`tasks`] (the bounded chain, the
//! pretraining corpus, answer extractors), [`split`] (seeded stable hashing).

pub mod chat;
mod error;
pub mod jsonl;
pub mod pack;
pub mod split;
pub mod tasks;
pub mod tokenizer;

pub use chat::{Message, Role, apply_chat_template};
pub use error::{DataError, Result};
pub use jsonl::{Body, JsonlReader, JsonlWriter, Record, read_jsonl, train_test_split, write_jsonl};
pub use pack::{Batch, IGNORE_INDEX, Overflow, Packed, Packer, TokenDoc, pack};
pub use tokenizer::Tokenizer;
