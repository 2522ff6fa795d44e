//! Prompt templates as data (`templates/*.txt`, `templates/chat.json`), filled by placeholder.

use serde::Deserialize;

use crate::error::{Result, invalid};

/// The R1-Zero training template (R1 Table 1); `{prompt}` is the question.
pub const R1_ZERO: &str = include_str!("../templates/r1_zero.txt");

const CHAT_JSON: &str = include_str!("../templates/chat.json");

/// Replace `{prompt}` in `template`. A template without the placeholder is an error.
pub fn fill(template: &str, prompt: &str) -> Result<String> {
    if !template.contains("{prompt}") {
        return invalid("template", template.chars().take(40).collect::<String>(), "has no {prompt} placeholder");
    }
    Ok(template.replace("{prompt}", prompt))
}

/// The R1-Zero prompt for `question`.
pub fn r1_zero(question: &str) -> String {
    R1_ZERO.trim_end_matches('\n').replace("{prompt}", question)
}

/// A chat template: the strings that wrap each role's turn.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ChatTemplate {
    pub name: String,
    pub bos: String,
    pub system: String,
    pub user: String,
    pub assistant: String,
    /// Appended to open the assistant's turn for generation.
    pub generation_prompt: String,
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

impl ChatTemplate {
    /// Every chat template shipped in `templates/chat.json`.
    pub fn all() -> Result<Vec<ChatTemplate>> {
        Ok(serde_json::from_str(CHAT_JSON)?)
    }

    /// The template called `name`.
    pub fn named(name: &str) -> Result<ChatTemplate> {
        match Self::all()?.into_iter().find(|t| t.name == name) {
            Some(t) => Ok(t),
            None => invalid("name", name, "no such chat template"),
        }
    }

    /// Render messages (roles `system`, `user`, `assistant`), optionally opening an assistant turn.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let mut out = self.bos.clone();
        for m in messages {
            let t = match m.role {
                "system" => &self.system,
                "user" => &self.user,
                "assistant" => &self.assistant,
                other => return invalid("role", other, "must be system, user or assistant"),
            };
            out.push_str(&t.replace("{content}", m.content));
        }
        if add_generation_prompt {
            out.push_str(&self.generation_prompt);
        }
        Ok(out)
    }
}
