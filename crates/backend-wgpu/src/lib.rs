//! The GPU backend: WGSL kernels dispatched through wgpu (Vulkan, Metal,
//! DX12), running any model graph on the GPU.
//!
//! Weights are uploaded once, as the raw GGUF block bytes, and decoded
//! inside the kernels (`src/shaders/quant.wgsl`), so a Q4_K model takes as
//! much GPU memory as its file. Activations and the KV cache live in GPU
//! buffers; a step is one command submission, and only the logits (or, for
//! greedy decoding, the chosen token) are read back.
//!
//! [`WgpuBackend`] implements tensor-core's `Backend` seam: llama-model
//! loads a model's graph onto it (`Model::load_with(&file,
//! WgpuBackend::new(ctx), ..)`), after the backend's rewrite of the graph
//! (products of one input stacked into one, [`rewrite`]'s
//! `stack_products`). A session then compiles the graph once
//! ([`GpuProgram`]: every op of a step built at load, a step one
//! submission, greedy decoding even chained with no read-back,
//! [`GpuProgram::generate_greedy`]), with fusions decided from the graph;
//! or, to trace it node by node or to batch several sequences, runs it
//! through the seam's operations with the same kernels, recording ops
//! until a read-back.
//!
//! Two modes ([`GpuOptions`]). The default, **fast** mode computes a single
//! token's step (decoding) on float activations: each matrix-vector product
//! reads its input as floats and makes the RMSNorm or SwiGLU before it as it
//! reads (`fast.wgsl`: the norm's and SwiGLU's dispatches, and the rounding
//! of activations to Q8, are gone), and attention sums in f32 with an
//! online softmax (`attn_fast.wgsl`); batches (prompts) run the exact
//! kernels. Its logits are close to llama.cpp's, not identical (the README
//! states the measured agreement). The **exact** mode
//! (`GpuOptions { exact: true }`, the CLI's `--exact`) computes the CPU
//! backend's bits everywhere, as described next.
//!
//! Numerics of the exact mode follow ggml's CPU path: activations are rounded to the weight
//! format's `vec_dot_type` (Q8_0, Q8_1 with its f16 block sums, Q8_K, F16,
//! BF16) before each product, the KV cache holds f16-rounded values and the
//! query and attention probabilities are rounded like ggml's f16 products,
//! and RoPE uses tensor-core's cos/sin table. RMSNorm is bit-exact with
//! the CPU's (its f64 sum of squares emulated with error-free f32 sums, the
//! mean, square root and reciprocal rounded correctly). Every quantized
//! product, attention, SwiGLU and RoPE compute the CPU's bits: ggml's exact
//! integer block sums over packed Q8 activations, then llama.cpp's float
//! order step for step, with a correctly rounded fused multiply-add
//! (`fma.wgsl`; emulated where the device's `fma` is not fused):
//! `vec_dot` lanes, the repacked Q4_0/IQ4_NL/Q4_K gemm/gemv, the tiled
//! K-quant kernel, chosen by batch size as llama.cpp chooses (`qdot`,
//! `kdot`, and the tiled `qmm`, `qmm1`, `kmm` for batches; `quant_sg.wgsl`
//! with 32-wide subgroups where the device has them, and `quant_tg.wgsl`'s
//! and `tg_q8.wgsl`'s 16-byte loads for single tokens with Q4_K, Q6_K,
//! Q8_0 and Q4_0). Float (F32/F16/BF16) batches above four tokens take
//! tinyBLAS's eight fused lanes (`fmatmul`); one to four tokens still sum
//! in the matrix-vector kernel's own order and differ in the last bits.
//! The seam's Gemma-style ops (`scale.wgsl`) are the CPU's bits too: GEGLU
//! through ggml's f16 GELU table (uploaded from the host), scaling and
//! per-row scaling; so is sliding-window attention (masked positions get
//! probability 0). Soft-capping, alone or of attention scores, is not: it
//! needs tanh, which the CPU takes from libm (`tanhf`, different in each C
//! library) and the GPU computes itself (`tanh_f32` in `fma.wgsl`, within
//! an ulp of the correctly rounded value, the same bits on llvmpipe and an
//! H100).
//!
//! Design decisions:
//! - One WGSL file per kernel family, specialised by `override` constants
//!   (the block format is the ggml type id), never by editing source text.
//! - Every op of a forward pass is built once at load (pipeline, bind group,
//!   parameters); a step only writes a 16-byte step uniform and records the
//!   dispatches.
//! - Matrices larger than the device's largest storage binding are split by
//!   rows into several buffers, one dispatch per part.
//! - Where the device's subgroups are 32 wide, attention, RMSNorm, SwiGLU
//!   and the activation packing reduce and exchange through subgroup
//!   operations (`attn_sg.wgsl`, `act_sg.wgsl`); elsewhere the same
//!   functions go through workgroup memory (`attn_wg.wgsl`, `act_wg.wgsl`).
//!   Both compute the same bits.
//! - A single token's stacked Q4_K query/key (/value) projection applies
//!   RoPE and writes the KV caches in its epilogue (`tg_rope.wgsl`), the
//!   rotation shared with `rope.wgsl` (`rope_common.wgsl`); the rope op
//!   then runs for batches only, one dispatch fewer per layer.
//! - A shader's loads are issued before the arithmetic that waits for them
//!   (and a step's shuffles before its chain of fmas): on an H100 a loop
//!   that loads, or shuffles, and then adds waits out the latency every
//!   pass.
//!
//! ```no_run
//! use backend_wgpu::{DeviceOptions, GpuContext, WgpuBackend};
//! use tensor_core::{Backend, Tensor};
//! let ctx = GpuContext::new(&DeviceOptions::default())?;
//! let gpu = WgpuBackend::new(ctx);
//! let file = std::sync::Arc::new(gguf_format::GgufFile::open("model.gguf")?);
//! let embd = Tensor::from_gguf(&file, "token_embd.weight")?;
//! let table = gpu.load_matrix(&embd)?;
//! let mut rows = gpu.alloc(2 * embd.row_len())?;
//! gpu.get_rows(&table, &[1, 15043], &mut rows);
//! let mut first = vec![0.0; embd.row_len()];
//! gpu.read(&rows, 0, &mut first)?; // token 1's embedding
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod device;
mod error;
pub mod kernels;
pub mod oneshot;
pub mod ops;
mod program;
pub mod rewrite;
mod seam;

pub use device::{DeviceCaps, DeviceOptions, GpuContext, ADAPTER_ENV, NO_COOP_ENV};
pub use error::{Result, WgpuError};
pub use program::{GpuProgram, ProgramConfig, StepProfile};
pub use seam::{GpuBuffer, GpuKvCache, GpuOptions, GpuWeight, WgpuBackend};
