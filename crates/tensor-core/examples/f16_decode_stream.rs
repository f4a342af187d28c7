//! Token-by-token decoding's weight traffic alone: every 2-D F16 matrix of
//! a GGUF file (memory-mapped, as `strata bench` reads it) multiplied by one
//! activation row through `matmul_float`, in file order, as one decoded
//! token does; tied output embeddings are multiplied as the output
//! projection. Prints the best time per pass, tokens/s and GB/s.
//!
//! `cargo run --release -p tensor-core --example f16_decode_stream -- FILE [PASSES]`

use std::time::Instant;

use tensor_core::gemm::matmul_float;
use tensor_core::gguf_format::{GgmlType, GgufFile};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: f16_decode_stream FILE [PASSES]");
    let passes: usize = args.next().map_or(20, |s| s.parse().expect("PASSES"));
    let file = GgufFile::open(&path).expect("open");
    let mats: Vec<(&[u8], usize, usize)> = file
        .header()
        .tensors()
        .iter()
        .filter(|t| t.ggml_type == GgmlType::F16 && t.dims.len() == 2)
        .map(|t| (file.tensor_data(t), t.dims[1] as usize, t.dims[0] as usize))
        .collect();
    let bytes: usize = mats.iter().map(|m| m.0.len()).sum();
    let max_cols = mats.iter().map(|m| m.2).max().unwrap_or(0);
    let max_rows = mats.iter().map(|m| m.1).max().unwrap_or(0);
    let x: Vec<f32> = (0..max_cols)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
        .collect();
    let mut y = vec![0.0f32; max_rows];
    let mut best = f64::MAX;
    for _ in 0..passes {
        let t0 = Instant::now();
        for &(w, rows, cols) in &mats {
            matmul_float(GgmlType::F16, w, rows, cols, &x[..cols], 1, &mut y[..rows]);
        }
        best = best.min(t0.elapsed().as_secs_f64());
    }
    println!(
        "{} matrices, {:.1} MB a pass: best {:.2} ms, {:.1} passes/s, {:.1} GB/s",
        mats.len(),
        bytes as f64 / 1e6,
        best * 1e3,
        1.0 / best,
        bytes as f64 / best / 1e9
    );
}
