//! The R1 recipe's stages, composed from the lower crates. Today: stage 0, pretraining the
//! miniature base model ([`pretrain`]).

pub mod plot;
pub mod pretrain;
