//! `r1`: the command-line facade. One subcommand per pipeline stage; each lives in its own module under
//! `cli/` (`train`, `generate`, `logits`, `rewards`).

mod cli;

/// A retaining allocator: training steps reuse their large activation buffers instead of
/// returning them to the OS and page-faulting them back in every step.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (`mimalloc.h`, v2): −1 keeps freed pages instead of returning
/// them to the OS after 10 ms, so a step's activations do not page-fault back in every step.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

use clap::{Parser, Subcommand};

/// DeepSeek-R1 recipe tools.
#[derive(Debug, Parser)]
#[command(name = "r1", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Rule-based rewards.
    Rewards(cli::rewards::RewardsArgs),
    /// Logits of a checkpoint for a batch of token ids.
    Logits(cli::logits::LogitsArgs),
    /// Sample continuations of token-id prompts over the latent KV cache.
    Generate(cli::generate::GenerateArgs),
    /// Run the recipe: pretrain the miniature base model (later: the R1 stages).
    Train(cli::train::TrainArgs),
}

fn main() -> anyhow::Result<()> {
    // SAFETY: sets a process-wide allocator option before any other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    let command = Cli::parse().command;
    // On the CPU thread pool: the tensor ops fork and join there instead of waking it per op.
    tensor::on_pool(|| match command {
        Command::Rewards(args) => cli::rewards::run(args),
        Command::Logits(args) => cli::logits::run(args),
        Command::Generate(args) => cli::generate::run(args),
        Command::Train(args) => cli::train::run(args),
    })
}
