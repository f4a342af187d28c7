//! The crate's one error type.

use gguf_format::{GgmlType, GgufError};
use tensor_core::TensorError;
use thiserror::Error;

/// Everything that can go wrong loading a model or running it.
///
/// Messages say what and where: the tensor, the metadata key, the position.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The file could not be read or parsed, or a required metadata key is
    /// missing or of the wrong type.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// `general.architecture` names an architecture this crate does not run.
    #[error("unknown architecture `{0}` (supported: llama, qwen2, qwen3, qwen3moe, gemma2, gemma3, phi3, smollm3, olmo2)")]
    UnknownArchitecture(String),
    /// A metadata value is out of range or inconsistent with another.
    #[error("metadata `{key}`: {message}")]
    InvalidMetadata {
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A feature the file uses that this crate does not implement.
    #[error("unsupported model feature: {0}")]
    Unsupported(String),
    /// A tensor the architecture needs is absent.
    #[error("tensor `{name}` is missing")]
    MissingTensor {
        /// The tensor's name.
        name: String,
    },
    /// A tensor has another shape than the hyper-parameters imply.
    #[error("tensor `{name}`: expected shape {expected:?}, found {found:?} (dimensions innermost first)")]
    WrongShape {
        /// The tensor's name.
        name: String,
        /// The shape the hyper-parameters imply.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor's element type has no kernels.
    #[error("unsupported tensor type {ty} in tensor `{name}`")]
    UnsupportedType {
        /// The tensor's name.
        name: String,
        /// Its type.
        ty: GgmlType,
    },
    /// Another tensor or backend problem.
    #[error(transparent)]
    Tensor(TensorError),
    /// The batch would run past the session's context.
    #[error(
        "context overflow: {n_past} tokens in the cache + {n_tokens} new > context size {n_ctx}"
    )]
    ContextOverflow {
        /// Tokens already in the KV cache.
        n_past: usize,
        /// Tokens in the batch.
        n_tokens: usize,
        /// The session's context size.
        n_ctx: usize,
    },
    /// A token id outside the vocabulary.
    #[error("token id {token} at batch index {index} is out of range (vocabulary of {n_vocab})")]
    InvalidToken {
        /// The id.
        token: u32,
        /// Where it is in the batch.
        index: usize,
        /// The vocabulary size.
        n_vocab: usize,
    },
    /// A request that cannot be served (empty batch, bad truncation, bad option).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl From<TensorError> for ModelError {
    fn from(e: TensorError) -> ModelError {
        match e {
            TensorError::Gguf(GgufError::MissingTensor { name }) => {
                ModelError::MissingTensor { name }
            }
            TensorError::Gguf(g) => ModelError::Gguf(g),
            TensorError::UnsupportedType { name, ty } => ModelError::UnsupportedType { name, ty },
            TensorError::Shape {
                name,
                expected,
                found,
            } => ModelError::WrongShape {
                name,
                expected,
                found,
            },
            other => ModelError::Tensor(other),
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
