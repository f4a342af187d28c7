//! Sampling and streaming text generation over a llama-model and its tokenizer.
//!
//! A [`Generator`] takes a prompt — raw text, token ids, or chat messages
//! rendered with the model's template ([`Prompt`]) — runs it through an
//! [`Engine`] (a llama-model [`Session`](llama_model::Session), or a GPU
//! model), and streams the generated text in pieces of complete UTF-8
//! characters until an end-of-generation token, a stop string or the token
//! limit. The [`sampler`] turns logits into a token through a fixed chain of
//! small steps (penalties, bias, top-k, top-p, min-p, temperature, draw);
//! the same seed gives the same text, always. A [`constraint`] (JSON
//! Schema, Lark or GBNF through llguidance) masks the tokens a grammar does
//! not allow before the draw ([`Sampler::sample_allowed`]).
//!
//! ```no_run
//! use generate::{GenerateOptions, Generator, Prompt, SamplerConfig};
//! use llama_model::{CpuBackend, LoadOptions, Model, SessionOptions};
//! use std::sync::Arc;
//!
//! let file = Arc::new(gguf_format::GgufFile::open("model.gguf")?);
//! let model = Model::load_with(&file, CpuBackend::new(), &LoadOptions::default())?;
//! let tokenizer = tokenizer::Tokenizer::from_gguf(file.header())?;
//! let mut generator = Generator::new(model.session(&SessionOptions::default())?, &tokenizer)?;
//! let opts = GenerateOptions { max_tokens: 32, sampler: SamplerConfig::greedy(), ..Default::default() };
//! let done = generator.generate(Prompt::Text("The capital of France is"), &opts, |piece| print!("{piece}"))?;
//! eprintln!("\n{}", done.timings);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Design decisions:
//! - The generator remembers which tokens are in the engine's KV cache. A new
//!   prompt is compared with them, the cache is truncated to the common
//!   prefix and only the rest is computed — so the turns of a [`Chat`], each
//!   rendered whole by the template and continuing the tokens the model saw
//!   ([`LastTurn`]), cost only their new tokens ([`Timings::reused_tokens`],
//!   [`Timings::prompt_tokens`]). A model with recurrent layers rewinds to
//!   the longest saved snapshot of its states ([`Engine::rewind_point`]).
//! - Text that could be the beginning of a stop string is held back until the
//!   next token decides; a stop string is never part of the output.
//! - Arguments are checked before any work ([`GenerateOptions::validate`],
//!   prompt length against the context), so a bad value costs nothing.
#![deny(missing_docs)]

mod chat;
pub mod constraint;
mod engine;
mod error;
mod generator;
pub mod harmony;
pub mod sampler;
pub mod stop;
mod timings;

pub use chat::{Chat, LastTurn};
pub use engine::Engine;
pub use error::GenerateError;
pub use generator::{
    tokenize_chat, Completion, GenerateOptions, Generator, Prompt, StopReason, Stream,
};
pub use sampler::{Sampler, SamplerConfig};
pub use stop::StopFilter;
pub use timings::Timings;
