//! LLaMA-family models from GGUF files: hyper-parameters, weights, KV cache and the forward pass.
//!
//! Filled in by the CPU inference issue.
#![deny(missing_docs)]
