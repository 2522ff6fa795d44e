//! Subcommand implementations.

pub mod generate;
pub mod logits;
pub mod rewards;
pub mod train;
