//! Throughput of the float-weight products (`matmul_float`, tinyBLAS's
//! order) in FLOP/s (reported as elements/s, 2 per multiply-add), on
//! SmolLM2-135M's shapes: a 128-token prompt and one decoded token, with
//! rayon pools of 1 and 2 threads.
//!
//! Run briefly on a shared machine:
//! `cargo bench -p tensor-core --bench float_gemm -- --measurement-time 2 --warm-up-time 0.5`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::{bf16, f16};
use tensor_core::gemm::matmul_float;
use tensor_core::gguf_format::GgmlType;

/// (rows, cols): attention (q, o), FFN up/gate, FFN down, and the output
/// projection (too large for any cache but L3).
const SHAPES: [(usize, usize); 4] = [(576, 576), (1536, 576), (576, 1536), (49152, 576)];

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn weights(ty: GgmlType, w: &[f32]) -> Vec<u8> {
    match ty {
        GgmlType::F32 => w.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => w
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
        _ => w
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect(),
    }
}

fn float_gemm(c: &mut Criterion) {
    for (ty, n) in [
        (GgmlType::F16, 128),
        (GgmlType::F16, 1),
        (GgmlType::F32, 128),
        (GgmlType::BF16, 128),
    ] {
        let mut g = c.benchmark_group(format!("matmul_float/{ty:?}/n{n}"));
        for (rows, cols) in SHAPES {
            if n > 1 && rows > 4096 {
                continue;
            }
            let w = weights(ty, &random(rows * cols, 7));
            let x = random(n * cols, 9);
            let mut y = vec![0.0f32; n * rows];
            g.throughput(Throughput::Elements((2 * rows * cols * n) as u64));
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                g.bench_function(BenchmarkId::new(format!("{rows}x{cols}"), threads), |b| {
                    pool.install(|| {
                        b.iter(|| matmul_float(ty, black_box(&w), rows, cols, &x, n, &mut y))
                    })
                });
            }
        }
        g.finish();
    }
}

criterion_group!(benches, float_gemm);
criterion_main!(benches);
