//! Sampling and streaming text generation.
//!
//! Filled in by the generate issue.
#![deny(missing_docs)]
