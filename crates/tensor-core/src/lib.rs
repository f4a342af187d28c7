//! Tensors over mmapped GGUF data and the CPU operations a LLaMA forward pass needs,
//! behind a backend seam that a GPU backend implements too.
//!
//! - [`Tensor`]: a name, an element type, a shape and bytes — a view of the
//!   mapped file for every weight (cloning shares, never copies).
//! - [`ops`], [`rope`], [`attention`]: small CPU kernels, each with a one-line
//!   contract, following the ggml CPU operation it names down to the
//!   precision of intermediate sums.
//! - [`Backend`]: the seam. The model crate writes its forward pass once
//!   against this trait; [`CpuBackend`] implements it with the kernels here
//!   and quant-kernels' matrix products.
//!
//! ```no_run
//! use std::sync::Arc;
//! use tensor_core::{Backend, CpuBackend, Tensor};
//!
//! let file = Arc::new(gguf_format::GgufFile::open("model.gguf")?);
//! let embd = Tensor::from_gguf(&file, "token_embd.weight")?;
//! let cpu = CpuBackend::new();
//! let table = cpu.load_matrix(&embd)?;
//! let mut row = cpu.alloc(embd.row_len())?;
//! cpu.get_rows(&table, &[42], &mut row);
//! println!("token 42: rms {}", tensor_core::ops::rms(&row));
//! # Ok::<(), tensor_core::TensorError>(())
//! ```
//!
//! # The backend seam
//!
//! A key design decision is that the seam is a set of coarse operations on
//! opaque handles rather than a tensor graph: [`Backend`] has three
//! associated types — `Weight` (a resident matrix or `f32` vector), `Buffer`
//! (an `f32` activation buffer) and `KvCache` — and one method per step of a
//! LLaMA layer (`get_rows`, `rms_norm`, `matmul`, `add_bias`, `rope`,
//! `store_kv`, `attention`, `swiglu`, `add`, `copy`), plus `read` to bring
//! values back to the host (logits, traces). A GPU backend keeps weights,
//! activations and the KV cache resident on the device and records each
//! operation as a dispatch; only `read` synchronises. The model never sees
//! where memory lives.
//!
//! Conventions every backend follows:
//! - Activations are row-major `[n_rows, width]`, one row per token; an
//!   operation touches only the first `n_rows * width` values of a buffer, so
//!   buffers are allocated once for the largest batch and reused.
//! - A matrix weight has ggml's shape `[cols, rows]` (innermost first) and
//!   computes `out[b, r] = Σ_c W[r, c]·x[b, c]`.
//! - Positions are contiguous: a batch of `n_rows` rows starts at `pos0`, and
//!   the KV cache of a layer holds positions `0..pos0 + n_rows` after `store_kv`.
//! - Numerics are ggml's: see each method. In particular with the default
//!   `f16` KV cache ([`KvType::F16`]), queries are rounded to `f16` before
//!   `K·Q` and probabilities before `V·P`, as ggml does when it multiplies an
//!   `f16` tensor with an `f32` one.
//!
//! Shapes are validated where data enters (`load_matrix`, `load_vector`,
//! `alloc`); operations do not return errors.
#![deny(missing_docs)]

pub mod attention;
mod backend;
mod cpu;
mod error;
mod fma;
pub mod gemm;
pub mod graph;
pub mod ops;
pub mod recurrent;
pub mod rope;
mod tensor;

pub use attention::{AttentionParams, KvShape, KvType};
pub use backend::{Backend, Program, ProgramOptions};
pub use cpu::{check_memory, CpuBackend, CpuKvCache};
pub use error::{Result, TensorError};
pub use recurrent::{DeltaNetInputs, DeltaNetParams, Unary};
pub use rope::{RopeMode, RopeParams};
pub use tensor::{FileBytes, Tensor};

/// The GGUF crate this one reads from.
pub use gguf_format;
/// The quantized kernels this one multiplies with.
pub use quant_kernels;
