//! Language models from GGUF files: hyper-parameters, weights, the model
//! graph of each architecture, KV cache, the forward pass, and a layer trace
//! to find where two runs diverge.
//!
//! A [`Model`] reads its [`Config`] from the file's metadata, builds its
//! architecture's [`Graph`] (one file per architecture in `src/arch/`:
//! `llama`, `qwen2`, `qwen3`, `qwen3moe`, `qwen35`, `qwen35moe`, `gemma2`, `gemma3`,
//! `phi3`, `smollm3`, `olmo2`) and puts the graph's weights on a [`Backend`]
//! (the CPU by default, where they stay in the memory map). A [`Session`]
//! owns a KV cache (and, for the recurrent layers of `qwen35` and `qwen35moe`, each
//! sequence's convolution and delta-rule states) and buffers and executes
//! the graph over tokens, in batches (prompt processing: one matrix product
//! per weight for the whole batch) or one at a time (generation).
//!
//! ```no_run
//! use llama_model::{LoadOptions, LogitsMode, Model, SessionOptions};
//!
//! let model = Model::load("model.gguf", &LoadOptions::default())?;
//! let mut session = model.session(&SessionOptions::default())?;
//! let logits = session.forward(&[1, 450, 4996], LogitsMode::Last)?;
//! let next = (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap();
//! let logits = session.forward(&[next as u32], LogitsMode::Last)?;
//! println!("{} logits after {} tokens", logits.len(), session.n_past());
//! # Ok::<(), llama_model::ModelError>(())
//! ```
//!
//! A key design decision is that an architecture is described once, as a
//! graph of named operations ([`graph`]): node names are llama.cpp's
//! (`attn_norm-0`, `Qcur-0`, `kqv_out-0`, `ffn_out-3`, `result_output`), so a
//! trace lines up with llama.cpp's eval-callback dump, and the architecture
//! files share llama.cpp's building blocks (`build_norm`, `build_qkv`,
//! `build_attn`, `build_ffn`, `build_moe_ffn`) so each says only what is its
//! own. The session executes the graph against tensor-core's [`Backend`]
//! trait, so the GPU backend runs the very same graph. Another is that it reproduces
//! llama.cpp's arithmetic rather than an idealised one — activations are
//! quantized like ggml's before each matrix product, the KV cache is `f16` by
//! default and queries and attention probabilities are rounded to it as
//! ggml does, and sums run in the order of llama.cpp's x86 kernels (tinyBLAS
//! for float batches, the repacked gemm/gemv for Q4_0, Q4_K and IQ4_NL, the
//! tiled kernel for other K-quant batches of 8+ rows, `ggml_vec_dot_*` for
//! single tokens) — so its logits match llama.cpp's, bit for bit on every
//! synthetic test file. As in llama.cpp, a token decoded alone goes through
//! other kernels than a batch: prefilling then decoding one token at a time
//! differs from one batch by 6e-5 in a logit for F32 weights, 6e-3 for F16,
//! ~0.2 for the quantized synthetic files (random weights with outliers
//! amplify last-bit differences) and 0.9 for SmolLM2-135M Q4_1 (30 layers;
//! llama.cpp's own batch and single-token logits differ the same way). A session that needs a token's logits not to
//! depend on how the prompt was batched (prefill then decode giving exactly
//! the logits of one batch) asks for [`BatchKernels::RowConsistent`]: every
//! row then takes the single-token kernels.
//!
//! To find where a run diverges from another (a quantized file from its
//! `F32` original, the GPU from the CPU, a batch from incremental decoding),
//! pass a [`Trace`] to [`Session::forward_traced`] for each and read
//! [`Trace::diff`].
#![deny(missing_docs)]

mod arch;
mod config;
mod error;
pub mod graph;
mod model;
pub mod quantize;
mod session;
mod trace;

pub use config::{Architecture, Config, LoadOptions};
pub use error::{ModelError, Result};
pub use graph::{Graph, GraphBuilder, Node, NodeId, Op};
pub use model::Model;
pub use session::{Batch, BatchKernels, LogitsMode, Session, SessionOptions};
pub use tensor_core::{Backend, CpuBackend, KvType};
pub use trace::{Observer, Stats, StepDiff, Trace, TraceEntry};
