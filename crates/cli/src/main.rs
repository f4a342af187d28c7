//! The `strata` command-line tool.
//!
//! This file only parses arguments and dispatches: each subcommand lives in
//! its own module with an `Args` struct (clap derive) and a `run` function.
//! To add one, add a module, a variant to [`Commands`] and a match arm.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod chat;
mod common;
mod embedding;
mod generate;
mod inspect;
mod logits;
mod perplexity;
mod quantize;
mod serve;
mod template;
mod tokenize;

/// Run LLaMA-family GGUF models on CPU and GPU.
#[derive(Parser)]
#[command(name = "strata", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

/// The subcommands.
#[derive(Subcommand)]
enum Commands {
    /// Continue a prompt, streaming the text (timings on stderr).
    Generate(generate::Args),
    /// Chat with the model (one user message per line when stdin is not a terminal).
    Chat(chat::Args),
    /// Print one token's embedding row and its RMS.
    Embedding(embedding::Args),
    /// Measure prompt processing (pp) and generation (tg) speed, like llama-bench.
    Bench(bench::Args),
    /// Print a GGUF file's metadata and tensor table.
    Inspect(inspect::Args),
    /// Write every position's logits of a token sequence (f32, [n_tokens, n_vocab]).
    Logits(logits::Args),
    /// Print the token ids and pieces of a text.
    Tokenize(tokenize::Args),
    /// Render a chat template (a model's or a file) with a JSON context.
    Template(template::Args),
    /// Quantize a model file to one of llama.cpp's file types (Q4_K_M, Q8_0, ...).
    Quantize(quantize::Args),
    /// Perplexity of a model on a text, or its KL divergence from a base model's saved logits.
    Perplexity(perplexity::Args),
    /// Serve the model over HTTP: an OpenAI-compatible API with continuous batching.
    Serve(serve::Args),
}

/// What a subcommand returns: its error is printed as one line.
pub type CmdResult = Result<(), Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    // A model file truncated or rewritten while mapped faults on access
    // (SIGBUS); say so in one line instead of dying without a word.
    gguf_format::install_sigbus_handler("strata: error: ");
    let cli = Cli::parse();
    let result = match cli.command {
        Commands::Generate(args) => generate::run(args),
        Commands::Chat(args) => chat::run(args),
        Commands::Embedding(args) => embedding::run(args),
        Commands::Bench(args) => bench::run(args),
        Commands::Inspect(args) => inspect::run(args),
        Commands::Logits(args) => logits::run(args),
        Commands::Tokenize(args) => tokenize::run(args),
        Commands::Template(args) => template::run(args),
        Commands::Quantize(args) => quantize::run(args),
        Commands::Perplexity(args) => perplexity::run(args),
        Commands::Serve(args) => serve::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`strata inspect x | head`) is not a failure.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        // A bad argument found after parsing: exit code 2, as clap's own errors.
        Err(e) if e.downcast_ref::<common::UsageError>().is_some() => {
            eprintln!("strata: error: {}", common::one_line(&e.to_string()));
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("strata: error: {}", common::one_line(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}
