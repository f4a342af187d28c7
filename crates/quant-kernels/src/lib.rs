//! ggml's block formats, exact and fast: bit-exact reference codecs, fused
//! dot products, SIMD kernels chosen at run time, and the matrix products a
//! transformer's CPU forward pass is made of.
//!
//! Every format is described once, in [`formats`]: one file per format with
//! its `#[repr(C)]` block struct and the reference functions ported from
//! ggml (`dequantize_row_<fmt>`, `quantize_row_<fmt>_ref`,
//! `vec_dot_<weight>_<activation>`), and one row of [`formats::kernels`].
//! The reference kernels are the test oracle for everything faster.
//!
//! A key design decision is that activations are quantized exactly the way
//! llama.cpp's CPU backend quantizes them before a dot product (Q8_0, Q8_1,
//! Q8_K, or rounded to F16/BF16, per weight format's `vec_dot_type`), so that
//! [`matvec`] and [`matmul`] reproduce llama.cpp's logits rather than an
//! idealised f32 product. SIMD kernels ([`simd`]) are picked once at run
//! time from the CPU's features; a portable build never silently loses them.
//!
//! ```
//! use quant_kernels::{matvec, quantize_row, GgmlType, QMatrix, Scratch};
//!
//! // A 2×64 weight matrix, quantized to Q8_0 row by row.
//! let (rows, cols) = (2, 64);
//! let w: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.1).sin()).collect();
//! let row_bytes = quant_kernels::row_bytes(GgmlType::Q8_0, cols).unwrap();
//! let mut data = vec![0u8; rows * row_bytes];
//! quantize_row(GgmlType::Q8_0, &w, &mut data)?;
//!
//! let m = QMatrix::new(GgmlType::Q8_0, rows, cols, &data)?;
//! let x = vec![1.0f32; cols];
//! let mut y = vec![0.0f32; rows];
//! matvec(&m, &x, &mut y, &mut Scratch::default());
//! let exact: f32 = w[..cols].iter().sum();
//! assert!((y[0] - exact).abs() < 0.05);
//! # Ok::<(), quant_kernels::QuantError>(())
//! ```
#![deny(missing_docs)]

mod error;
pub mod formats;
mod matmul;
pub mod pool;
pub mod simd;

pub use error::QuantError;
pub use formats::{dequantize_row, is_supported, kernels, quantize_row, row_bytes, FormatKernels};
pub use gguf_format::GgmlType;
pub use matmul::{matmul, matvec, QMatrix, Scratch};
