//! # r1 — the facade
//!
//! Composes the workspace's crates into the R1 recipe's stages ([`pipeline`]) and hosts the `r1`
//! binary (one subcommand per stage: `train`, `generate`, `logits`, `rewards`).

pub mod pipeline;
