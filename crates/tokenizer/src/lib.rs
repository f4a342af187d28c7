//! Tokenizers and chat templates built from a GGUF file's tokenizer.ggml.* metadata.
//!
//! Filled in by the tokenizer issue.
#![deny(missing_docs)]
