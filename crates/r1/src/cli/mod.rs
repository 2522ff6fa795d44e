//! Subcommand implementations.

pub mod rewards;
