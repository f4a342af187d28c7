//! The crate's one error type.

use gguf_format::GgmlType;

/// What went wrong when data entered a quant-kernels entry point.
///
/// Kernels themselves take checked shapes and do not return errors; these
/// come from the byte-level entry points ([`crate::dequantize_row`],
/// [`crate::quantize_row`], [`crate::QMatrix::new`]) that validate once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuantError {
    /// The type has no kernels in this crate (integer types, F64, or a
    /// format with no reference quantizer when quantizing).
    #[error("unsupported tensor type {0}")]
    UnsupportedType(GgmlType),
    /// An element count that is not a whole number of blocks.
    #[error("{ty}: {n} elements is not a multiple of the block size {block_size}")]
    PartialBlock {
        /// The tensor type.
        ty: GgmlType,
        /// The element count given.
        n: usize,
        /// Elements per block of `ty`.
        block_size: usize,
    },
    /// A byte buffer whose length does not match the element count.
    #[error("{ty}: {what} holds {actual} bytes, but {n} elements need {expected}")]
    BadLength {
        /// The tensor type.
        ty: GgmlType,
        /// Which buffer ("source", "destination", "matrix data").
        what: &'static str,
        /// The element count.
        n: usize,
        /// Bytes needed.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
    /// A matrix shape whose size overflows `usize`.
    #[error("{ty}: a {rows}×{cols} matrix is too large")]
    TooLarge {
        /// The tensor type.
        ty: GgmlType,
        /// Rows.
        rows: usize,
        /// Columns.
        cols: usize,
    },
}
