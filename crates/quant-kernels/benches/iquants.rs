//! Throughput of the i-quant, ternary, MXFP4, NVFP4, Q1_0 and Q2_0 kernels in GB/s of weight
//! bytes on one thread: dequantization, and the portable and run-time-chosen
//! (SIMD) dot product over a whole matrix with one activation row.
//!
//! Run briefly on a shared machine:
//! `cargo bench -p quant-kernels --bench iquants -- --measurement-time 2 --warm-up-time 0.5`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use quant_kernels::{dequantize_row, kernels, quantize_row, row_bytes, simd, GgmlType};

const TYPES: [GgmlType; 13] = [
    GgmlType::IQ2_XXS,
    GgmlType::IQ2_XS,
    GgmlType::IQ2_S,
    GgmlType::IQ3_XXS,
    GgmlType::IQ3_S,
    GgmlType::IQ1_S,
    GgmlType::IQ1_M,
    GgmlType::TQ1_0,
    GgmlType::TQ2_0,
    GgmlType::MXFP4,
    GgmlType::NVFP4,
    GgmlType::Q1_0,
    GgmlType::Q2_0,
];

const ROWS: usize = 1024;
const COLS: usize = 4096;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Random blocks (most of these formats have no reference quantizer) with
/// their scale fields set to small finite values.
fn random_blocks(ty: GgmlType, n: usize, seed: u64) -> Vec<u8> {
    let mut rng = XorShift(seed | 1);
    let ts = ty.type_size();
    let mut q: Vec<u8> = (0..row_bytes(ty, n).unwrap())
        .map(|_| rng.next() as u8)
        .collect();
    let d = half::f16::from_f32(0.01).to_bits().to_le_bytes();
    for b in q.chunks_exact_mut(ts) {
        match ty {
            GgmlType::TQ1_0 => b[52..54].copy_from_slice(&d),
            GgmlType::TQ2_0 => b[64..66].copy_from_slice(&d),
            GgmlType::MXFP4 => b[0] = 120,
            GgmlType::NVFP4 => b[0..4].fill(0x38), // UE4M3 1.0
            GgmlType::IQ1_M => {}                  // any nibbles: NaN scales cost the same
            _ => b[0..2].copy_from_slice(&d),
        }
    }
    q
}

fn activations(ty: GgmlType, seed: u64) -> Vec<u8> {
    let mut rng = XorShift(seed | 1);
    let x: Vec<f32> = (0..COLS)
        .map(|_| (rng.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        .collect();
    let act = kernels(ty).unwrap().vec_dot_type;
    let mut a = vec![0u8; row_bytes(act, COLS).unwrap()];
    quantize_row(act, &x, &mut a).unwrap();
    a
}

fn dequantize(c: &mut Criterion) {
    let mut g = c.benchmark_group("iquants/dequantize");
    let n = 256 * COLS;
    let mut out = vec![0.0f32; n];
    for ty in TYPES {
        let q = random_blocks(ty, n, 1);
        g.throughput(Throughput::Bytes(q.len() as u64));
        g.bench_function(BenchmarkId::new(ty.name(), n), |b| {
            b.iter(|| dequantize_row(ty, black_box(&q), &mut out).unwrap())
        });
    }
    g.finish();
}

/// Row-by-row dot products of a ROWS×COLS matrix with one activation row.
fn vec_dot(c: &mut Criterion) {
    let mut g = c.benchmark_group("iquants/vec_dot");
    for ty in TYPES {
        let q = random_blocks(ty, ROWS * COLS, 2);
        let a = activations(ty, 3);
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

criterion_group!(benches, dequantize, vec_dot);
criterion_main!(benches);
