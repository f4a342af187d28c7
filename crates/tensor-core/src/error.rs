//! The crate's one error type.

use gguf_format::{GgmlType, GgufError};
use quant_kernels::QuantError;
use thiserror::Error;

/// What can be wrong when a tensor enters this crate (from a file or a caller),
/// or when a backend allocates or reads back memory.
///
/// Operations themselves take shapes that were checked when the data entered,
/// so they do not return errors; these come from the entry points.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TensorError {
    /// The GGUF file could not be read, or lacks the tensor.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The tensor's element type has no kernels.
    #[error("unsupported tensor type {ty} in tensor `{name}`")]
    UnsupportedType {
        /// The tensor.
        name: String,
        /// Its element type.
        ty: GgmlType,
    },
    /// The tensor's bytes were rejected by quant-kernels (partial block, bad length).
    #[error("tensor `{name}`: {source}")]
    Quant {
        /// The tensor.
        name: String,
        /// What quant-kernels said.
        #[source]
        source: QuantError,
    },
    /// The tensor has another shape than the caller needs.
    #[error("tensor `{name}`: expected shape {expected:?}, found {found:?} (dimensions innermost first)")]
    Shape {
        /// The tensor.
        name: String,
        /// The shape required.
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
    },
    /// Anything else wrong with a tensor or a request (message says what).
    #[error("tensor `{name}`: {message}")]
    Invalid {
        /// The tensor or buffer concerned.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A backend could not allocate, upload or read back memory.
    #[error("backend {backend}: {message}")]
    Backend {
        /// The backend's name.
        backend: &'static str,
        /// What failed.
        message: String,
    },
}

/// Result alias for this crate.
pub type Result<T, E = TensorError> = std::result::Result<T, E>;
