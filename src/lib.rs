//! strata: load GGUF model files and run LLaMA-family models on the CPU or a GPU.
//!
//! This umbrella crate holds no logic; it re-exports the layered crates so a
//! user depends on one name:
//!
//! | module | crate | what it does |
//! |---|---|---|
//! | [`gguf`] | `gguf-format` | strict, zero-copy GGUF reader and writer |
//! | [`quant`] | `quant-kernels` | block formats, dot products, SIMD kernels |
//! | [`tensor`] | `tensor-core` | tensors and CPU ops |
//! | [`wgpu`] | `backend-wgpu` | GPU backend |
//! | [`model`] | `llama-model` | LLaMA-family forward pass |
//! | [`tokenizer`] | `tokenizer` | tokenizers and chat templates |
//! | [`generate`] | `generate` | sampling and generation |
//! | [`cache`] | `model-cache` | default model fetching |
//!
//! ```no_run
//! let file = strata::gguf::GgufFile::open("model.gguf")?;
//! println!("{} tensors", file.tensors().len());
//! # Ok::<(), strata::gguf::GgufError>(())
//! ```
#![deny(missing_docs)]

pub use backend_wgpu as wgpu;
pub use generate;
pub use gguf_format as gguf;
pub use llama_model as model;
pub use model_cache as cache;
pub use quant_kernels as quant;
pub use tensor_core as tensor;
pub use tokenizer;
