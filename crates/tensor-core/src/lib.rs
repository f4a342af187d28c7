//! Tensors over mmapped GGUF data and the CPU operations a LLaMA forward pass needs.
//!
//! Filled in by the CPU inference issue.
#![deny(missing_docs)]
