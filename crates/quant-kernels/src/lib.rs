//! ggml's block formats, exact and fast: reference codecs, fused dot products and SIMD kernels chosen at run time.
//!
//! Filled in by the quant-kernels issue.
#![deny(missing_docs)]
