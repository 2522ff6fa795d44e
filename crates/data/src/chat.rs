//! Chat messages and the project's chat template (R1 style, sized for a character tokenizer).
//!
//! ```text
//! system    → "{content}\n"
//! user      → "Q: {content}\n"
//! assistant → "A: {content}<eos>"
//! generation prompt → "A: "
//! ```
//!
//! One user turn with the generation prompt is exactly a task prompt: `Q: 7-3+2+0\nA: `.
//! [`CHAT_TEMPLATE_JINJA`] renders the same text in Hugging Face's `apply_chat_template`.

use serde::{Deserialize, Serialize};

use crate::tokenizer::EOS;

/// Who speaks a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The system prompt.
    System,
    /// The user.
    User,
    /// The model.
    Assistant,
}

impl Role {
    /// The role as written in JSON (`system`, `user`, `assistant`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }

    /// Parse a JSON role name; `None` for anything else.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        }
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The speaker.
    pub role: Role,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }
    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
    /// An assistant message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

/// What the template writes before the model's turn.
pub const GENERATION_PROMPT: &str = "A: ";

/// Render messages with the project template; `add_generation_prompt` appends `A: ` for the model to continue.
pub fn apply_chat_template(messages: &[Message], add_generation_prompt: bool) -> String {
    let mut out = String::new();
    for m in messages {
        match m.role {
            Role::System => {
                out.push_str(&m.content);
                out.push('\n');
            }
            Role::User => {
                out.push_str("Q: ");
                out.push_str(&m.content);
                out.push('\n');
            }
            Role::Assistant => {
                out.push_str(GENERATION_PROMPT);
                out.push_str(&m.content);
                out.push_str(EOS);
            }
        }
    }
    if add_generation_prompt {
        out.push_str(GENERATION_PROMPT);
    }
    out
}

/// The same template in Jinja, for `tokenizer_config.json` (`chat_template`).
pub const CHAT_TEMPLATE_JINJA: &str = "{%- for message in messages -%}\
{%- if message['role'] == 'system' -%}{{ message['content'] + '\\n' }}\
{%- elif message['role'] == 'user' -%}{{ 'Q: ' + message['content'] + '\\n' }}\
{%- elif message['role'] == 'assistant' -%}{{ 'A: ' + message['content'] + eos_token }}\
{%- endif -%}\
{%- endfor -%}\
{%- if add_generation_prompt -%}{{ 'A: ' }}{%- endif -%}";
