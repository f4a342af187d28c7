//! Sampling and streaming text generation over a llama-model and its tokenizer.
//!
//! The [`sampler`] turns logits into a token through a fixed chain of small
//! steps (penalties, bias, top-k, top-p, min-p, temperature, draw).
//!
//! ```
//! use generate::{Sampler, SamplerConfig};
//! let mut sampler = Sampler::new(SamplerConfig::greedy())?;
//! assert_eq!(sampler.sample(&[0.1, 2.0, -1.0], &[]), 1);
//! # Ok::<(), generate::GenerateError>(())
//! ```
#![deny(missing_docs)]

pub mod sampler;

pub use sampler::{Sampler, SamplerConfig};

/// Errors of generation: bad arguments, and failures of the model or tokenizer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GenerateError {
    /// A setting is out of range.
    #[error("invalid {name} {value}: expected {expected}")]
    InvalidArgument {
        /// The setting.
        name: &'static str,
        /// The value given.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
}
