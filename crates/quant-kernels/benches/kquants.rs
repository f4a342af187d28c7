//! Throughput of the k-quant and IQ4 kernels in GB/s of weight bytes:
//! dequantization, the portable and the run-time-chosen (SIMD) dot product
//! over a whole matrix on one thread, and `matvec` on 1 and 2 threads.
//!
//! Run briefly on a shared machine:
//! `cargo bench -p quant-kernels --bench kquants -- --measurement-time 2 --warm-up-time 0.5`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use quant_kernels::{
    dequantize_row, kernels, matvec, quantize_row, row_bytes, simd, GgmlType, QMatrix, Scratch,
};

const TYPES: [GgmlType; 7] = [
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
];

/// A 1B-class FFN projection: every row a whole number of 256-weight super-blocks.
const ROWS: usize = 2048;
const COLS: usize = 5632;

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

fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut q = vec![0u8; row_bytes(ty, x.len()).unwrap()];
    quantize_row(ty, x, &mut q).unwrap();
    q
}

fn dequantize(c: &mut Criterion) {
    let mut g = c.benchmark_group("kquants/dequantize");
    let n = 256 * COLS;
    let x = random(n, 1);
    let mut out = vec![0.0f32; n];
    for ty in TYPES {
        let q = quantize(ty, &x);
        g.throughput(Throughput::Bytes(q.len() as u64));
        g.bench_function(BenchmarkId::new(ty.name(), n), |b| {
            b.iter(|| dequantize_row(ty, black_box(&q), &mut out).unwrap())
        });
    }
    g.finish();
}

/// Row-by-row dot products of a ROWS×COLS matrix with one activation row.
fn vec_dot(c: &mut Criterion) {
    let mut g = c.benchmark_group("kquants/vec_dot");
    let w = random(ROWS * COLS, 2);
    let x = random(COLS, 3);
    for ty in TYPES {
        let q = quantize(ty, &w);
        let a = quantize(kernels(ty).unwrap().vec_dot_type, &x);
        let rb = row_bytes(ty, COLS).unwrap();
        g.throughput(Throughput::Bytes(q.len() as u64));
        let kinds = [
            ("portable", simd::portable_vec_dot(ty).unwrap()),
            ("dispatched", simd::vec_dot_for(ty).unwrap()),
        ];
        for (kind, f) in kinds {
            g.bench_function(BenchmarkId::new(ty.name(), kind), |b| {
                b.iter(|| {
                    q.chunks_exact(rb)
                        .map(|row| f(COLS, black_box(row), &a))
                        .sum::<f32>()
                })
            });
        }
    }
    g.finish();
}

fn matvec_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("kquants/matvec");
    let w = random(ROWS * COLS, 4);
    let x = random(COLS, 5);
    let mut y = vec![0.0f32; ROWS];
    for ty in TYPES {
        let q = quantize(ty, &w);
        let m = QMatrix::new(ty, ROWS, COLS, &q).unwrap();
        g.throughput(Throughput::Bytes(q.len() as u64));
        for threads in [1, 2] {
            let p = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut scratch = Scratch::default();
            let id = BenchmarkId::new(ty.name(), format!("{ROWS}x{COLS}/{threads}t"));
            g.bench_function(id, |b| {
                b.iter(|| p.install(|| matvec(&m, black_box(&x), &mut y, &mut scratch)))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, dequantize, vec_dot, matvec_bench);
criterion_main!(benches);
