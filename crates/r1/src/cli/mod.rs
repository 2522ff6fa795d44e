//! Subcommand implementations.

pub mod logits;
pub mod rewards;
