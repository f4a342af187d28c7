//! The crate's one error type.

use thiserror::Error;

/// Everything that can be wrong with a GGUF file or a metadata look-up.
///
/// Messages say what is wrong and where: a byte offset, a key or a tensor name.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GgufError {
    /// An I/O error while opening or mapping a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The data ended before a field it must contain.
    #[error("unexpected end of file at byte {offset}: need {needed} more bytes for {what}")]
    UnexpectedEof {
        /// Where the read started.
        offset: u64,
        /// How many bytes were needed.
        needed: u64,
        /// What was being read.
        what: String,
    },
    /// The first four bytes are not `GGUF`.
    #[error("bad magic {found:02x?}: not a GGUF file")]
    BadMagic {
        /// The bytes found.
        found: [u8; 4],
    },
    /// The version field is not one this reader supports.
    #[error("unsupported GGUF version {version}{hint}")]
    UnsupportedVersion {
        /// The version read.
        version: u32,
        /// Extra explanation (e.g. byte-swapped header).
        hint: &'static str,
    },
    /// A structural field is invalid.
    #[error("invalid GGUF at byte {offset}: {message}")]
    Invalid {
        /// Byte offset of the offending field.
        offset: u64,
        /// What is wrong.
        message: String,
    },
    /// A metadata key-value pair is invalid.
    #[error("metadata key `{key}` (byte {offset}): {message}")]
    InvalidMetadata {
        /// The key (or a placeholder when the key itself is bad).
        key: String,
        /// Byte offset of the offending field.
        offset: u64,
        /// What is wrong.
        message: String,
    },
    /// A tensor description is invalid.
    #[error("tensor `{name}`: {message}")]
    InvalidTensor {
        /// The tensor's name (possibly lossy if the name itself is bad).
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A metadata key that was asked for is absent.
    #[error("metadata key `{key}` is missing")]
    MissingKey {
        /// The key.
        key: String,
    },
    /// A metadata key holds a value of another type than asked for.
    #[error("metadata key `{key}` has type {found}, expected {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// What the caller asked for.
        expected: &'static str,
        /// What the file holds.
        found: &'static str,
    },
    /// A tensor that was asked for is absent.
    #[error("tensor `{name}` is missing")]
    MissingTensor {
        /// The tensor name.
        name: String,
    },
    /// An I/O error while writing a file to a [`std::io::Write`].
    #[error("writing GGUF: {source}")]
    WriteIo {
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A value given to the writer cannot be written.
    #[error("cannot write GGUF: {message}")]
    Write {
        /// What is wrong.
        message: String,
    },
}

/// Result alias for this crate.
pub type Result<T, E = GgufError> = std::result::Result<T, E>;
