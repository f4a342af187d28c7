//! Throughput of the core kernels in GB/s of weight bytes: memory read
//! bandwidth for comparison, dequantization, matvec (one token) and matmul
//! (a 64-token prompt), on rayon pools of 1 and 2 threads.
//!
//! Run briefly on a shared machine:
//! `cargo bench -p quant-kernels --bench kernels -- --measurement-time 2 --warm-up-time 0.5`

use std::hint::black_box;

use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use quant_kernels::{
    dequantize_row, matmul, matvec, quantize_row, row_bytes, GgmlType, QMatrix, Scratch,
};
use rayon::prelude::*;

const TYPES: [GgmlType; 8] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
];

/// (rows, cols): SmolLM2-135M's attention/FFN shapes and a 1B-class FFN.
const SHAPES: [(usize, usize); 3] = [(576, 1536), (1536, 576), (2048, 5632)];

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

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

fn weights(ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let w = random(rows * cols, 42);
    let mut q = vec![0u8; rows * row_bytes(ty, cols).unwrap()];
    quantize_row(ty, &w, &mut q).unwrap();
    q
}

/// Plain read bandwidth: summing a 256 MiB buffer of u64.
fn bandwidth(c: &mut Criterion) {
    let buf: Vec<u64> = (0..(256usize << 20) / 8).map(|i| i as u64).collect();
    let mut g = c.benchmark_group("bandwidth");
    g.sample_size(10);
    g.throughput(Throughput::Bytes((buf.len() * 8) as u64));
    for threads in [1, 2] {
        let p = pool(threads);
        g.bench_function(
            BenchmarkId::new("read_256MiB", format!("{threads}t")),
            |b| {
                b.iter(|| {
                    p.install(|| {
                        buf.par_chunks(1 << 16)
                            .map(|c| c.iter().fold(0u64, |a, &v| a.wrapping_add(v)))
                            .reduce(|| 0, u64::wrapping_add)
                    })
                })
            },
        );
    }
    g.finish();
}

fn dequantize(c: &mut Criterion) {
    let (rows, cols) = (576, 1536);
    let mut g = c.benchmark_group("dequantize");
    for ty in TYPES {
        let q = weights(ty, rows, cols);
        let mut out = vec![0.0f32; rows * cols];
        g.throughput(Throughput::Bytes(q.len() as u64));
        g.bench_function(BenchmarkId::new(ty.name(), format!("{rows}x{cols}")), |b| {
            b.iter(|| dequantize_row(ty, black_box(&q), &mut out).unwrap())
        });
    }
    g.finish();
}

fn matvec_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("matvec");
    for (rows, cols) in SHAPES {
        let x = random(cols, 7);
        let mut y = vec![0.0f32; rows];
        for ty in TYPES {
            let q = weights(ty, rows, cols);
            let m = QMatrix::new(ty, rows, cols, &q).unwrap();
            g.throughput(Throughput::Bytes(q.len() as u64));
            for threads in [1, 2] {
                let p = pool(threads);
                let mut scratch = Scratch::default();
                let id = BenchmarkId::new(ty.name(), format!("{rows}x{cols}/{threads}t"));
                g.bench_function(id, |b| {
                    b.iter(|| p.install(|| matvec(&m, black_box(&x), &mut y, &mut scratch)))
                });
            }
        }
    }
    g.finish();
}

fn matmul_bench(c: &mut Criterion) {
    let (rows, cols, n) = (1536, 576, 64);
    let x = random(n * cols, 9);
    let mut y = vec![0.0f32; n * rows];
    let mut g = c.benchmark_group("matmul64");
    g.sample_size(20);
    for ty in [
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
    ] {
        let q = weights(ty, rows, cols);
        let m = QMatrix::new(ty, rows, cols, &q).unwrap();
        // Multiply-adds per second, reported as "elements".
        g.throughput(Throughput::Elements((rows * cols * n) as u64));
        let p = pool(2);
        let mut scratch = Scratch::default();
        g.bench_function(
            BenchmarkId::new(ty.name(), format!("{rows}x{cols}x{n}/2t")),
            |b| b.iter(|| p.install(|| matmul(&m, black_box(&x), n, &mut y, &mut scratch))),
        );
    }
    g.finish();
}

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`), so
/// single-thread kernel throughput can be read on a loaded, shared machine:
/// it is what one dedicated core would do (cache and memory contention from
/// other processes still show).
struct ThreadCpuTime;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = Duration;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, i: u64) -> Duration {
        Duration::from_nanos(thread_cpu_ns().saturating_sub(i))
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        criterion::measurement::WallTime.formatter()
    }
}

/// Read bandwidth of one core in thread CPU time: summing 256 MiB.
fn bandwidth_cpu(c: &mut Criterion<ThreadCpuTime>) {
    let buf: Vec<u64> = (0..(256usize << 20) / 8).map(|i| i as u64).collect();
    let mut g = c.benchmark_group("bandwidth_cpu_1t");
    g.sample_size(10);
    g.throughput(Throughput::Bytes((buf.len() * 8) as u64));
    g.bench_function("read_256MiB", |b| {
        b.iter(|| buf.iter().fold(0u64, |a, &v| a.wrapping_add(v)))
    });
    g.finish();
}

/// Single-thread matvec on the calling thread, timed in thread CPU time:
/// the dispatched dot product over every row.
fn matvec_cpu(c: &mut Criterion<ThreadCpuTime>) {
    let mut g = c.benchmark_group("matvec_cpu_1t");
    for (rows, cols) in SHAPES {
        let x = random(cols, 7);
        let mut y = vec![0.0f32; rows];
        for ty in TYPES {
            let q = weights(ty, rows, cols);
            let k = quant_kernels::kernels(ty).unwrap();
            let mut act = vec![0u8; row_bytes(k.vec_dot_type, cols).unwrap()];
            quant_kernels::simd::from_float_for(k.vec_dot_type).unwrap()(&x, &mut act);
            let dot = quant_kernels::simd::vec_dot_for(ty).unwrap();
            let rb = row_bytes(ty, cols).unwrap();
            g.throughput(Throughput::Bytes(q.len() as u64));
            g.bench_function(BenchmarkId::new(ty.name(), format!("{rows}x{cols}")), |b| {
                b.iter(|| {
                    for (y, w) in y.iter_mut().zip(q.chunks_exact(rb)) {
                        *y = dot(cols, w, black_box(&act));
                    }
                })
            });
        }
    }
    g.finish();
}

/// One sixteen-row Q8_0 panel kernel (panels of `P`: `Q8_0x16` or the
/// i16-widened `Q8_0x16w`) over `n` activation rows of `ar` bytes packed by
/// `pack`, eight weight rows of `rb` bytes (`nb` blocks) a call, its
/// outputs copied into `y` token-major as the matmul writes them.
fn bench_panel16<P: Clone + Default>(
    g: &mut criterion::BenchmarkGroup<'_, ThreadCpuTime>,
    name: String,
    (n, size): &(usize, String),
    ((act, ar), (q, rb, nb)): ((&[u8], usize), (&[u8], usize, usize)),
    y: &mut [f32],
    (pack, dot16): (
        quant_kernels::simd::Pack16Fn<P>,
        quant_kernels::simd::Panel16x0DotFn<P>,
    ),
) {
    let n = *n;
    let mut panels16 = vec![P::default(); n / 16 * nb];
    for (g, p) in panels16.chunks_mut(nb).enumerate() {
        let rows: Vec<&[u8]> = (0..16).map(|k| &act[(16 * g + k) * ar..][..ar]).collect();
        pack(&rows, p);
    }
    g.bench_function(BenchmarkId::new(name, size), |b| {
        let gs = n / 16;
        let mut r = vec![[0.0f32; 16]; 8 * gs];
        b.iter(|| {
            for (y, w) in y.chunks_mut(8 * n).zip(q.chunks_exact(8 * rb)) {
                dot16(w, 8, black_box(&panels16), &mut r);
                for (y, r) in y.chunks_exact_mut(n).zip(r.chunks_exact(gs)) {
                    for (y, r) in y.chunks_exact_mut(16).zip(r) {
                        y.copy_from_slice(r);
                    }
                }
            }
        })
    });
}

/// Single-thread batched product on the calling thread, timed in thread
/// CPU time: every weight row against 64 activation rows with the panel
/// kernels that `matmul` uses (its compute-bound inner loop, without
/// scheduling noise): Q4_1 and Q5_1 against eight-row Q8_1 panels, Q8_0
/// against four- and eight-row Q8_0 panels, each for every instruction set
/// the CPU has.
fn matmul_cpu(c: &mut Criterion<ThreadCpuTime>) {
    let (rows, cols, n) = (1536, 576, 64);
    let x = random(n * cols, 9);
    let mut y = vec![0.0f32; n * rows];
    let mut g = c.benchmark_group("matmul64_cpu_1t");
    g.sample_size(20);
    let f = quant_kernels::simd::features();
    let q8_1_variants = [
        quant_kernels::simd::q8_1_panel_for(f),
        quant_kernels::simd::q8_1_panel_for(quant_kernels::simd::Features {
            avx_vnni: false,
            avx512_vnni: false,
            ..f
        }),
    ];
    let mut seen = Vec::new();
    for panel in q8_1_variants.into_iter().flatten() {
        if seen.contains(&panel.isa) {
            continue;
        }
        seen.push(panel.isa);
        for ty in [GgmlType::Q4_1, GgmlType::Q5_1] {
            let dot = panel.dot_for(ty).unwrap();
            let q = weights(ty, rows, cols);
            let ar = row_bytes(GgmlType::Q8_1, cols).unwrap();
            let mut act = vec![0u8; n * ar];
            let from_float = quant_kernels::simd::from_float_for(GgmlType::Q8_1).unwrap();
            for (a, x) in act.chunks_mut(ar).zip(x.chunks(cols)) {
                from_float(x, a);
            }
            let nb = cols / 32;
            let mut panels = vec![quant_kernels::simd::Q8_1x8::default(); n / 8 * nb];
            for (g, p) in panels.chunks_mut(nb).enumerate() {
                let rows: Vec<&[u8]> = (0..8).map(|k| &act[(8 * g + k) * ar..][..ar]).collect();
                quant_kernels::simd::pack_q8_1x8(&rows, p);
            }
            let rb = row_bytes(ty, cols).unwrap();
            g.throughput(Throughput::Elements((rows * cols * n) as u64));
            g.bench_function(
                BenchmarkId::new(
                    format!("{}-panel-{}", ty.name(), panel.isa),
                    format!("{rows}x{cols}x{n}"),
                ),
                |b| {
                    b.iter(|| {
                        for (y, w) in y.chunks_mut(n).zip(q.chunks_exact(rb)) {
                            for (p, y) in panels.chunks_exact(nb).zip(y.chunks_exact_mut(8)) {
                                y.copy_from_slice(&dot(w, black_box(p)));
                            }
                        }
                    })
                },
            );
        }
    }
    // Q8_0 through the panel kernel matmul uses (activations interleaved).
    let variants = [
        quant_kernels::simd::q8_0_panel_for(f),
        quant_kernels::simd::q8_0_panel_for(quant_kernels::simd::Features {
            avx_vnni: false,
            avx512_vnni: false,
            ..f
        }),
    ];
    for panel in variants.into_iter().flatten() {
        let ty = GgmlType::Q8_0;
        let dot = panel.dot_for(ty).unwrap();
        let q = weights(ty, rows, cols);
        let ar = row_bytes(ty, cols).unwrap();
        let mut act = vec![0u8; n * ar];
        let from_float = quant_kernels::simd::from_float_for(ty).unwrap();
        for (a, x) in act.chunks_mut(ar).zip(x.chunks(cols)) {
            from_float(x, a);
        }
        let nb = cols / 32;
        let mut panels = vec![quant_kernels::simd::Q8_0x4::default(); n / 4 * nb];
        for (g, p) in panels.chunks_mut(nb).enumerate() {
            (panel.pack)(std::array::from_fn(|k| &act[(4 * g + k) * ar..][..ar]), p);
        }
        let rb = row_bytes(ty, cols).unwrap();
        g.throughput(Throughput::Elements((rows * cols * n) as u64));
        g.bench_function(
            BenchmarkId::new(
                format!("Q8_0-panel-{}", panel.isa),
                format!("{rows}x{cols}x{n}"),
            ),
            |b| {
                b.iter(|| {
                    for (y, w) in y.chunks_mut(n).zip(q.chunks_exact(rb)) {
                        for (p, y) in panels.chunks_exact(nb).zip(y.chunks_exact_mut(4)) {
                            y.copy_from_slice(&dot(w, black_box(p)));
                        }
                    }
                })
            },
        );
        let dot8 = panel.dot8_for(ty).unwrap();
        let mut panels8 = vec![quant_kernels::simd::Q8_0x8::default(); n / 8 * nb];
        for (g, p) in panels8.chunks_mut(nb).enumerate() {
            let rows: Vec<&[u8]> = (0..8).map(|k| &act[(8 * g + k) * ar..][..ar]).collect();
            (panel.pack8)(&rows, p);
        }
        g.bench_function(
            BenchmarkId::new(
                format!("Q8_0-panel8-{}", panel.isa),
                format!("{rows}x{cols}x{n}"),
            ),
            |b| {
                b.iter(|| {
                    for (y, w) in y.chunks_mut(n).zip(q.chunks_exact(rb)) {
                        for (p, y) in panels8.chunks_exact(nb).zip(y.chunks_exact_mut(8)) {
                            y.copy_from_slice(&dot8(w, black_box(p)));
                        }
                    }
                })
            },
        );
        let shape = (n, format!("{rows}x{cols}x{n}"));
        let input = ((&act[..], ar), (&q[..], rb, nb));
        if let (Some(dot16), Some(pack16)) = (panel.dot16_for(ty), panel.pack16) {
            let name = format!("Q8_0-panel16-{}", panel.isa);
            bench_panel16(&mut g, name, &shape, input, &mut y, (pack16, dot16));
        }
        if let (Some(dot16), Some(pack16)) = (panel.dot16w_for(ty), panel.pack16w) {
            let name = format!("Q8_0-panel16w-{}", panel.isa);
            bench_panel16(&mut g, name, &shape, input, &mut y, (pack16, dot16));
        }
        if variants[1].is_some_and(|v| v.isa == panel.isa) {
            break;
        }
    }
    g.finish();
}

criterion_group!(benches, bandwidth, dequantize, matvec_bench, matmul_bench);
criterion_group! {
    name = cpu_time;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = bandwidth_cpu, matvec_cpu, matmul_cpu
}
criterion_main!(benches, cpu_time);
