//! Per-kernel property tests: random shapes, GPU against CPU references.
//!
//! Weight blocks are drawn at random from the ggml-made goldens in
//! tests/fixtures/quant (`T.blocks`, with ggml's own `dequantize_row_T`
//! output in `T.f32`), so the oracle is ggml's dequantization; quant-kernels'
//! `dequantize_row` is checked to agree with it wherever it supports the type.

use backend_wgpu::kernels::{is_exact, GPU_TYPES};
use backend_wgpu::{oneshot, GpuContext};
use gguf_format::GgmlType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{ctx, read};

/// Random weights of `ty`: `m` rows of `k` (bytes, dequantized values).
fn random_weights(rng: &mut StdRng, ty: GgmlType, k: usize, m: usize) -> (Vec<u8>, Vec<f32>) {
    if ty == GgmlType::F32 {
        let v: Vec<f32> = (0..k * m).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
        return (bytemuck::cast_slice(&v).to_vec(), v);
    }
    let name = ty.name();
    let blocks = read(&format!("quant/{name}.blocks"));
    let values: Vec<f32> = bytemuck::pod_collect_to_vec(&read(&format!("quant/{name}.f32")));
    let (bs, ts) = (ty.block_size(), ty.type_size());
    let n_units = blocks.len() / ts;
    let mut bytes = Vec::with_capacity(k * m / bs * ts);
    let mut deq = Vec::with_capacity(k * m);
    for _ in 0..k * m / bs {
        let u = rng.gen_range(0..n_units);
        bytes.extend_from_slice(&blocks[u * ts..(u + 1) * ts]);
        deq.extend_from_slice(&values[u * bs..(u + 1) * bs]);
    }
    // quant-kernels' reference must agree with ggml's output bit for bit.
    let mut qk = vec![0.0f32; k * m];
    match quant_kernels::dequantize_row(ty, &bytes, &mut qk) {
        Ok(()) => assert!(
            qk.iter().zip(&deq).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{ty}: quant_kernels::dequantize_row disagrees with ggml's golden"
        ),
        Err(e) => eprintln!(
            "{ty}: quant-kernels cannot dequantize it ({e}); ggml's golden values used alone"
        ),
    }
    (bytes, deq)
}

fn row_len(rng: &mut StdRng, ty: GgmlType) -> usize {
    let unit = ty.block_size().max(32);
    unit * rng.gen_range(1..=(2048 / unit).clamp(1, 12))
}

/// The CPU backend's product (tensor-core: llama.cpp's x86 kernels, with
/// activations quantized as ggml quantizes them).
fn cpu_matmul(ty: GgmlType, bytes: &[u8], k: usize, m: usize, x: &[f32]) -> Vec<f32> {
    let n = x.len() / k;
    let mut y = vec![0f32; n * m];
    if tensor_core::gemm::handles(ty, m, k) {
        tensor_core::gemm::matmul_float(ty, bytes, m, k, x, n, &mut y);
    } else {
        let w = quant_kernels::QMatrix::new(ty, m, k, bytes).unwrap();
        quant_kernels::matmul(&w, x, n, &mut y, &mut quant_kernels::Scratch::default());
    }
    y
}

/// GPU W·X against the f64 dot products of ggml's dequantized weights, or,
/// for the formats with exact products, against the CPU backend bit for bit.
fn check_matmul(ty: GgmlType, seed: u64, n_tokens: usize, split: bool) {
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(seed);
    let k = row_len(&mut rng, ty);
    let m = rng.gen_range(1..=150);
    let (bytes, w) = random_weights(&mut rng, ty, k, m);
    let x: Vec<f32> = (0..n_tokens * k)
        .map(|_| rng.gen_range(-1.0f32..1.0))
        .collect();
    let row_bytes = bytes.len() / m;
    let limit = split.then_some((row_bytes * rng.gen_range(1..=m.min(7)) + 8) as u64);
    let y = oneshot::matmul(&ctx, ty, &bytes, k, m, &x, limit, false).unwrap();
    assert_eq!(y.len(), n_tokens * m);
    if is_exact(ty, m as u32) {
        assert_bits(ty, k, m, &y, &cpu_matmul(ty, &bytes, k, m, &x));
        return;
    }
    for t in 0..n_tokens {
        for r in 0..m {
            let (mut dot, mut mag) = (0f64, 0f64);
            for i in 0..k {
                let p = w[r * k + i] as f64 * x[t * k + i] as f64;
                dot += p;
                mag += p.abs();
            }
            let got = y[t * m + r] as f64;
            assert!(
                (got - dot).abs() <= 2e-6 * mag + 1e-6,
                "{ty} k={k} m={m} n={n_tokens} split={split}: y[{t},{r}] = {got}, expected {dot} (Σ|w·x| = {mag})"
            );
        }
    }
}

/// `got` equals `want` to the bit.
fn assert_bits(ty: GgmlType, k: usize, m: usize, got: &[f32], want: &[f32]) {
    let diff: Vec<usize> = (0..got.len())
        .filter(|&i| got[i].to_bits() != want[i].to_bits())
        .collect();
    for &i in diff.iter().take(5) {
        eprintln!(
            "{ty} k={k} m={m}: y[{}, {}] gpu {:e} cpu {:e}",
            i / m,
            i % m,
            got[i],
            want[i]
        );
    }
    assert!(
        diff.is_empty(),
        "{ty} k={k} m={m}: {} of {} outputs differ from the CPU",
        diff.len(),
        got.len()
    );
}

/// Random `m × k` weights of `ty` times `n` tokens of activations in
/// ±`scale`, rounded as the forward pass rounds them: the GPU's product
/// equals the CPU backend's to the bit.
#[allow(clippy::too_many_arguments)]
fn assert_random_product_exact(
    ctx: &GpuContext,
    rng: &mut StdRng,
    ty: GgmlType,
    k: usize,
    m: usize,
    n: usize,
    scale: f32,
) {
    let (bytes, _) = random_weights(rng, ty, k, m);
    let x: Vec<f32> = (0..n * k)
        .map(|_| rng.gen_range(-1.0f32..1.0) * scale)
        .collect();
    let got = oneshot::matmul(ctx, ty, &bytes, k, m, &x, None, true).unwrap();
    assert_bits(ty, k, m, &got, &cpu_matmul(ty, &bytes, k, m, &x));
}

/// The exact products (Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 IQ4_NL) equal the CPU
/// backend's to the bit: one token (ggml's vec_dot / gemv) and batches
/// (gemm, tinyBLAS), repacked (a multiple of 8 rows) or not, with
/// activations of large and tiny magnitude.
#[test]
fn exact_products_are_the_cpus_bit_for_bit() {
    let ctx = ctx();
    let types = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::IQ4_NL,
    ];
    for (i, &ty) in types.iter().enumerate() {
        for (case, n) in [1usize, 2, 5, 17, 64].into_iter().enumerate() {
            let mut rng = StdRng::seed_from_u64(5000 + 10 * i as u64 + case as u64);
            let k = 32 * rng.gen_range(1..=60);
            let mut m = 8 * rng.gen_range(1..=20);
            if case % 2 == 1 {
                m += rng.gen_range(1..8);
            }
            if !is_exact(ty, m as u32) {
                continue;
            }
            assert_random_product_exact(&ctx, &mut rng, ty, k, m, n, [1.0, 40.0, 1e-3][case % 3]);
        }
    }
}

/// The exact K-quant products (Q2_K Q3_K Q4_K Q5_K Q6_K IQ4_XS) equal the
/// CPU backend's to the bit: below 8 tokens each format's AVX2 vec_dot lanes,
/// from 8 the tiled kernel's order, and for Q4_K with a multiple of 8 rows
/// the repacked gemm (first n − n % 4 tokens) and gemv (the rest).
#[test]
fn kquant_products_are_the_cpus_bit_for_bit() {
    let ctx = ctx();
    let types = [
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::IQ4_XS,
    ];
    for (i, &ty) in types.iter().enumerate() {
        for (case, n) in [1usize, 2, 6, 7, 8, 9, 21, 70].into_iter().enumerate() {
            let mut rng = StdRng::seed_from_u64(6000 + 10 * i as u64 + case as u64);
            let k = 256 * rng.gen_range(1..=12);
            let mut m = 8 * rng.gen_range(1..=20);
            if case % 2 == 1 {
                m += rng.gen_range(1..8);
            }
            assert_random_product_exact(&ctx, &mut rng, ty, k, m, n, [1.0, 40.0, 1e-3][case % 3]);
        }
    }
}

/// Float weights (a multiple of 4 rows) in batches above the matrix-vector
/// path (`fmatmul`, tinyBLAS's lanes) equal the CPU backend's products to the bit, with the
/// activations rounded to the weight type as the forward pass rounds them.
#[test]
fn float_batches_are_the_cpus_bit_for_bit() {
    let ctx = ctx();
    for (i, ty) in [GgmlType::F32, GgmlType::F16, GgmlType::BF16]
        .into_iter()
        .enumerate()
    {
        for (case, n) in [5usize, 9, 70, 130].into_iter().enumerate() {
            let mut rng = StdRng::seed_from_u64(7000 + 10 * i as u64 + case as u64);
            let k = 32 * rng.gen_range(1..=40);
            // tinyBLAS (this kernel's order) takes a multiple of 4 weight
            // rows; llama.cpp, and the CPU backend, multiply other float
            // matrices with ggml's vec_dot.
            let m = 4 * rng.gen_range(1..=37);
            assert_random_product_exact(&ctx, &mut rng, ty, k, m, n, [1.0, 40.0, 1e-3][case % 3]);
        }
    }
}

#[test]
fn matvec_all_formats() {
    for (i, &ty) in GPU_TYPES.iter().enumerate() {
        for case in 0..3 {
            check_matmul(ty, 100 + 10 * i as u64 + case, 1 + case as usize, false);
        }
    }
}

#[test]
fn matmul_all_formats() {
    for (i, &ty) in GPU_TYPES.iter().enumerate() {
        for case in 0..2 {
            let mut rng = StdRng::seed_from_u64(7 + i as u64 * 3 + case);
            // One batch inside a 128-token tile of the matmul, one across two.
            let n = if case == 0 {
                rng.gen_range(5..=80)
            } else {
                rng.gen_range(120..=200)
            };
            check_matmul(ty, 200 + 10 * i as u64 + case, n, false);
        }
    }
}

#[test]
fn matrices_split_over_bindings() {
    for (i, &ty) in [
        GgmlType::Q4_0,
        GgmlType::Q6_K,
        GgmlType::F16,
        GgmlType::Q3_K,
    ]
    .iter()
    .enumerate()
    {
        check_matmul(ty, 300 + i as u64, 1, true);
        check_matmul(ty, 310 + i as u64, 9, true);
    }
}

#[test]
fn get_rows_all_formats() {
    let ctx = ctx();
    for (i, &ty) in GPU_TYPES.iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(400 + i as u64);
        let k = row_len(&mut rng, ty);
        let m = rng.gen_range(1..=40);
        let (bytes, w) = random_weights(&mut rng, ty, k, m);
        let ids: Vec<u32> = (0..rng.gen_range(1..=9))
            .map(|_| rng.gen_range(0..m as u32))
            .collect();
        let split = (bytes.len() / m * 3 + 8) as u64;
        let y = oneshot::get_rows(&ctx, ty, &bytes, k, m, &ids, Some(split)).unwrap();
        for (t, &id) in ids.iter().enumerate() {
            for j in 0..k {
                let (got, want) = (y[t * k + j], w[id as usize * k + j]);
                // Decoding is the same arithmetic as ggml's; only a fused
                // multiply-add in `d·q − m` may round differently.
                assert!(
                    (got - want).abs() <= 1e-6 * want.abs().max(1e-3),
                    "{ty}: row {id} element {j}: {got} vs ggml {want}"
                );
            }
        }
    }
}

fn rms_norm_ref(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    tensor_core::ops::rms_norm(x, w, eps, &mut out);
    out
}

#[test]
fn rms_norm_random() {
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(500);
    for _ in 0..5 {
        let n = rng.gen_range(1..=3000);
        let t = rng.gen_range(1..=7);
        let x: Vec<f32> = (0..n * t).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
        let w: Vec<f32> = (0..n).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
        let got = oneshot::rms_norm(&ctx, &x, &w, 1e-5).unwrap();
        let want = rms_norm_ref(&x, &w, 1e-5);
        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - e).abs() <= 1e-5 * e.abs().max(1.0),
                "n={n} [{i}]: {g} vs {e}"
            );
        }
    }
}

/// tensor-core's CPU RoPE (ggml_rope_ext).
#[allow(clippy::too_many_arguments)]
fn rope_ref(
    x: &[f32],
    heads: usize,
    hd: usize,
    n_dims: usize,
    neox: bool,
    base: f32,
    fs: f32,
    pos0: u32,
) -> Vec<f32> {
    let mode = if neox {
        tensor_core::RopeMode::Neox
    } else {
        tensor_core::RopeMode::Normal
    };
    let mut p = tensor_core::RopeParams::new(mode, hd, n_dims, base);
    p.freq_scale = fs;
    let mut y = x.to_vec();
    tensor_core::rope::rope(&mut y, heads, pos0 as usize, &p, None);
    y
}

#[test]
fn rope_normal_and_neox() {
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(600);
    for case in 0..6 {
        let hd = 2 * rng.gen_range(4..=64);
        let heads = rng.gen_range(1..=6);
        let n_dims = if case % 3 == 2 { hd / 2 / 2 * 2 } else { hd };
        let t = rng.gen_range(1..=9);
        let pos0 = rng.gen_range(0..3000);
        let neox = case % 2 == 1;
        let x: Vec<f32> = (0..t * heads * hd)
            .map(|_| rng.gen_range(-2.0f32..2.0))
            .collect();
        let got = oneshot::rope(&ctx, &x, heads, hd, n_dims, neox, 10000.0, 1.0, pos0).unwrap();
        let want = rope_ref(&x, heads, hd, n_dims, neox, 10000.0, 1.0, pos0);
        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
            // Angles up to ~3000 rad: f32 argument reduction differs by a few ulps of the angle.
            assert!(
                (g - e).abs() <= 2e-3,
                "rope case {case} (neox={neox}, pos0={pos0}) [{i}]: {g} vs {e}"
            );
        }
    }
}

/// tensor-core's CPU attention (`attention::<f16>` over an f16 cache
/// holding `k` and `v` when `kv_f16`, else `attention::<f32>`).
#[allow(clippy::too_many_arguments)]
fn attention_ref(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    nh: usize,
    nkv: usize,
    hd: usize,
    pos0: usize,
    kv_f16: bool,
) -> Vec<f32> {
    let p = tensor_core::AttentionParams {
        n_head: nh,
        n_head_kv: nkv,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
        window: None,
        softcap: None,
    };
    let mut out = vec![0f32; q.len()];
    if kv_f16 {
        let h = |x: &[f32]| {
            x.iter()
                .map(|&v| half::f16::from_f32(v))
                .collect::<Vec<_>>()
        };
        tensor_core::attention::attention::<half::f16>(q, &h(k), &h(v), pos0, &p, &mut out);
    } else {
        tensor_core::attention::attention::<f32>(q, k, v, pos0, &p, &mut out);
    }
    out
}

/// One random attention problem: GPU and CPU outputs must have the same bits.
#[allow(clippy::too_many_arguments)]
fn check_attention_exact(
    rng: &mut StdRng,
    nh: usize,
    nkv: usize,
    hd: usize,
    t: usize,
    pos0: usize,
    kv_f16: bool,
    mag: f32,
) {
    let ctx = ctx();
    let n = pos0 + t;
    let mut gen = |len: usize| -> Vec<f32> {
        (0..len)
            .map(|_| {
                let x = rng.gen_range(-mag..mag);
                // An f16 cache holds f16 values (the GPU stores them as f32).
                if kv_f16 {
                    half::f16::from_f32(x).to_f32()
                } else {
                    x
                }
            })
            .collect()
    };
    let k = gen(n * nkv * hd);
    let v = gen(n * nkv * hd);
    let q: Vec<f32> = (0..t * nh * hd).map(|_| rng.gen_range(-mag..mag)).collect();
    let got = oneshot::attention(&ctx, &q, &k, &v, nh, nkv, hd, pos0 as u32, kv_f16).unwrap();
    let want = attention_ref(&q, &k, &v, nh, nkv, hd, pos0, kv_f16);
    let bad: Vec<usize> = (0..want.len())
        .filter(|&i| got[i].to_bits() != want[i].to_bits())
        .collect();
    for &i in bad.iter().take(5) {
        let (tok, h, d) = (i / (nh * hd), i / hd % nh, i % hd);
        eprintln!(
            "heads {nh}/{nkv} hd={hd} tokens={t} pos0={pos0} f16={kv_f16}: \
             token {tok} head {h} out {d}: gpu {} ({:#010x}) cpu {} ({:#010x})",
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
    assert!(
        bad.is_empty(),
        "attention heads {nh}/{nkv} hd={hd} tokens={t} pos0={pos0} f16={kv_f16}: \
         {} of {} outputs differ from the CPU's bits",
        bad.len(),
        want.len()
    );
}

/// Head layouts (n_head, n_head_kv, head_dim): plain, grouped-query by 3
/// and 4, head sizes 64 and 128.
const ATTN_HEADS: [(usize, usize, usize); 5] = [
    (4, 4, 64),
    (6, 2, 64),
    (8, 2, 128),
    (12, 3, 128),
    (3, 1, 64),
];

/// Decoding (one token, ggml_vec_dot's order) and batches (tinyBLAS's
/// order) over an f16 cache, KV windows of 1 to > 300: bit-identical to
/// tensor-core's CPU attention.
#[test]
fn attention_bit_exact_f16_cache() {
    let mut rng = StdRng::seed_from_u64(700);
    for (case, &(nh, nkv, hd)) in ATTN_HEADS.iter().enumerate() {
        // (tokens, first position): a window of 1, decoding, batches.
        let shapes = [
            (1, 0),
            (rng.gen_range(2..=20), 0),
            (1, rng.gen_range(1..=340)),
            (rng.gen_range(2..=20), rng.gen_range(1..=320)),
        ];
        for (t, pos0) in shapes {
            let mag = if case % 2 == 0 { 1.0 } else { 3.0 };
            check_attention_exact(&mut rng, nh, nkv, hd, t, pos0, true, mag);
        }
    }
}

/// As [`attention_bit_exact_f16_cache`] over an f32 cache (FMAs in K·Q and
/// V·P).
#[test]
fn attention_bit_exact_f32_cache() {
    let mut rng = StdRng::seed_from_u64(710);
    for (case, &(nh, nkv, hd)) in ATTN_HEADS.iter().enumerate().skip(1).step_by(2) {
        let shapes = [
            (1, rng.gen_range(0..=330)),
            (rng.gen_range(2..=16), rng.gen_range(0..=300)),
        ];
        for (t, pos0) in shapes {
            let mag = if case % 2 == 0 { 1.0 } else { 2.5 };
            check_attention_exact(&mut rng, nh, nkv, hd, t, pos0, false, mag);
        }
    }
}

/// Rarer paths: a head size not a multiple of 32 (decoding adds the dot
/// product's tail in f64), large scores (probabilities that underflow),
/// and windows past the 2048 positions kept in workgroup memory.
#[test]
fn attention_bit_exact_edges() {
    let mut rng = StdRng::seed_from_u64(720);
    for kv_f16 in [true, false] {
        check_attention_exact(&mut rng, 4, 2, 80, 1, 150, kv_f16, 2.0);
        check_attention_exact(&mut rng, 4, 2, 80, 5, 40, kv_f16, 2.0);
        check_attention_exact(&mut rng, 3, 1, 64, 1, 200, kv_f16, 12.0);
        check_attention_exact(&mut rng, 3, 1, 64, 7, 100, kv_f16, 12.0);
    }
    check_attention_exact(&mut rng, 2, 1, 64, 1, 2100, true, 1.0);
    check_attention_exact(&mut rng, 2, 1, 64, 3, 2060, true, 1.0);
}

/// SwiGLU over random rows (widths multiples of 8, as ggml's vector path
/// covers them), gates up to ±90 (exponentials overflowing and
/// underflowing): bit-identical to tensor-core's `ops::swiglu`.
#[test]
fn swiglu_bit_exact() {
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(810);
    for case in 0..4 {
        let n = 8 * rng.gen_range(1..=200);
        let t = rng.gen_range(1..=5);
        let gmag = [4.0f32, 12.0, 40.0, 90.0][case];
        let mut a: Vec<f32> = (0..n * t).map(|_| rng.gen_range(-gmag..gmag)).collect();
        let b: Vec<f32> = (0..n * t).map(|_| rng.gen_range(-8.0f32..8.0)).collect();
        if case == 3 {
            let edges = [
                0.0, -0.0, 87.0, -87.0, 88.5, -88.5, 89.9, -89.9, 1e-3, -1e-3,
            ];
            a[..edges.len()].copy_from_slice(&edges);
        }
        let got = oneshot::swiglu(&ctx, &a, &b, n).unwrap();
        let mut want = vec![0f32; a.len()];
        tensor_core::ops::swiglu(&a, &b, n, &mut want);
        let bad: Vec<usize> = (0..want.len())
            .filter(|&i| got[i].to_bits() != want[i].to_bits())
            .collect();
        for &i in bad.iter().take(5) {
            eprintln!(
                "swiglu n={n} [{i}] gate {} up {}: gpu {} cpu {}",
                a[i], b[i], got[i], want[i]
            );
        }
        assert!(
            bad.is_empty(),
            "swiglu case {case}: {} of {} differ",
            bad.len(),
            want.len()
        );
    }
}

#[test]
fn add_swiglu_argmax() {
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(800);
    let n = 1000;
    let t = 3;
    let a: Vec<f32> = (0..n * t).map(|_| rng.gen_range(-8.0f32..8.0)).collect();
    let b: Vec<f32> = (0..n * t).map(|_| rng.gen_range(-8.0f32..8.0)).collect();
    let sum = oneshot::add(&ctx, &a, &b, n).unwrap();
    assert!(sum
        .iter()
        .zip(a.iter().zip(&b))
        .all(|(s, (x, y))| *s == x + y));
    let sw = oneshot::swiglu(&ctx, &a, &b, n).unwrap();
    let mut want = vec![0f32; a.len()];
    tensor_core::ops::swiglu(&a, &b, n, &mut want);
    for (i, s) in sw.iter().enumerate() {
        let e = want[i];
        assert_eq!(s.to_bits(), e.to_bits(), "swiglu [{i}]: {s} vs {e}");
    }
    let mut logits: Vec<f32> = (0..40000 * 2)
        .map(|_| rng.gen_range(-10.0f32..10.0))
        .collect();
    logits[31234] = 11.0;
    logits[40000 + 17] = 12.0;
    logits[40000 + 39999] = 12.0; // tie: the lowest index wins
    assert_eq!(
        oneshot::argmax(&ctx, &logits, 40000).unwrap(),
        vec![31234, 17]
    );
}

/// The experts and weights of each row of `logits` as the CPU's session
/// routes them (llama-model's `moe_ffn`: gating 0 softmax, 1 sigmoid, 2 the
/// chosen logits softmaxed), except that the experts are sorted by their
/// logits (stable, `f32::total_cmp`), which every gating keeps in order:
/// the CPU's softmax computes equal logits' probabilities with two `expf`s
/// (ggml's blocks of 8, libm's for the rest), which can break a tie.
fn moe_route_ref(
    logits: &[f32],
    n_expert: usize,
    n_used: usize,
    (gating, normalize, scale): (u32, bool, f32),
) -> (Vec<u32>, Vec<f32>) {
    let (mut experts, mut weights) = (Vec::new(), Vec::new());
    for row in logits.chunks(n_expert) {
        let mut probs = row.to_vec();
        match gating {
            0 => tensor_core::ops::softmax_exact(&mut probs),
            1 => probs
                .iter_mut()
                .for_each(|p| *p = 1.0 / (1.0 + (-*p).exp())),
            _ => {}
        }
        let mut order: Vec<usize> = (0..n_expert).collect();
        order.sort_by(|&a, &c| row[c].total_cmp(&row[a]).then(a.cmp(&c)));
        let mut w: Vec<f32> = order[..n_used].iter().map(|&e| probs[e]).collect();
        if gating == 2 {
            tensor_core::ops::softmax_exact(&mut w);
        }
        if normalize {
            let sum = (w.iter().map(|&v| v as f64).sum::<f64>() as f32).max(6.103_515_6e-5);
            w.iter_mut().for_each(|v| *v /= sum);
        }
        experts.extend(order[..n_used].iter().map(|&e| e as u32));
        weights.extend(w.iter().map(|v| v * scale));
    }
    (experts, weights)
}

/// `moe_route` (one workgroup a token) chooses the CPU's experts in the
/// CPU's slot order, ties to the lower index (rows of logits on a coarse
/// grid, full of exact ties), for 1 to 256 experts and every gating, with
/// weights within 1e-5 (relative) of the CPU's: the softmax sums in another
/// order.
#[test]
fn moe_route_matches_cpu() {
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(900);
    let t = 3;
    for &(n_expert, n_used) in &[
        (1, 1),
        (4, 2),
        (8, 8),
        (32, 4),
        (60, 4),
        (128, 8),
        (250, 6),
        (256, 8),
        (256, 256),
    ] {
        for gating in 0..3u32 {
            for (normalize, scale) in [(false, 1.0), (true, 1.0), (true, 2.5)] {
                let mut logits: Vec<f32> = (0..t * n_expert)
                    .map(|_| rng.gen_range(-6.0f32..6.0))
                    .collect();
                // The last row: ties everywhere (no -0.0, which sorts
                // before 0.0 but has the same probability).
                for v in &mut logits[(t - 1) * n_expert..] {
                    *v = v.round() / 2.0 + 0.0;
                }
                let cfg = (gating, normalize, scale);
                let (ge, gw) = oneshot::moe_route(&ctx, &logits, n_expert, n_used, cfg).unwrap();
                let (we, ww) = moe_route_ref(&logits, n_expert, n_used, cfg);
                let what = format!("{n_expert} experts, {n_used} used, gating {gating}, {cfg:?}");
                assert_eq!(ge, we, "{what}: experts");
                for (i, (g, w)) in gw.iter().zip(&ww).enumerate() {
                    assert!(
                        (g - w).abs() <= 1e-5 * w.abs() + 1e-7,
                        "{what}: weight [{i}] {g} vs {w}"
                    );
                }
            }
        }
    }
}

/// Activation rounding equals quant-kernels' quantize-then-dequantize.
#[test]
fn activation_rounding_matches_ggml() {
    let ctx = ctx();
    let mut rng = StdRng::seed_from_u64(900);
    for act in [GgmlType::Q8_0, GgmlType::Q8_K] {
        let n = 256 * rng.gen_range(1..=8);
        let t = 3;
        let mut x: Vec<f32> = (0..n * t).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
        x[5] = 40.0; // an outlier
        x[300.min(n - 1)] = -50.0;
        for v in &mut x[32..64] {
            *v = 0.0; // an all-zero block
        }
        let got = oneshot::quantize_act(&ctx, act, &x, n).unwrap();
        let mut q = vec![0u8; quant_kernels::row_bytes(act, n * t).unwrap()];
        quant_kernels::quantize_row(act, &x, &mut q).unwrap();
        let mut want = vec![0f32; n * t];
        quant_kernels::dequantize_row(act, &q, &mut want).unwrap();
        let diff = got.iter().zip(&want).filter(|(a, b)| a != b).count();
        for (i, (g, w)) in got
            .iter()
            .zip(&want)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .take(5)
        {
            eprintln!("{act} [{i}] x={} gpu {g} cpu {w}", x[i]);
        }
        assert_eq!(diff, 0, "{act}: {diff} of {} values differ", n * t);
    }
}

/// With activations rounded as ggml rounds them, the GPU product is
/// quant-kernels' (ggml's) `mul_mat` up to summation order.
#[test]
fn matmul_matches_quant_kernels() {
    let ctx = ctx();
    for (i, &ty) in GPU_TYPES.iter().enumerate() {
        for (case, n) in [1usize, 2, 17].into_iter().enumerate() {
            let mut rng = StdRng::seed_from_u64(1000 + 10 * i as u64 + case as u64);
            let k = 256 * rng.gen_range(1..=4);
            let m = rng.gen_range(1..=70);
            let (bytes, _) = random_weights(&mut rng, ty, k, m);
            let x: Vec<f32> = (0..n * k).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            let got = oneshot::matmul(&ctx, ty, &bytes, k, m, &x, None, true).unwrap();
            let w = quant_kernels::QMatrix::new(ty, m, k, &bytes).unwrap();
            let mut want = vec![0f32; n * m];
            quant_kernels::matmul(&w, &x, n, &mut want, &mut quant_kernels::Scratch::default());
            let worst = got
                .iter()
                .zip(&want)
                .map(|(g, e)| ((g - e).abs() / e.abs().max(1e-3)) as f64)
                .fold(0.0, f64::max);
            eprintln!("{ty} n={n}: worst relative deviation from quant-kernels {worst:.2e}");
            for (j, (g, e)) in got.iter().zip(&want).enumerate() {
                let (t, r) = (j / m, j % m);
                let mag: f32 = (0..k).map(|c| x[t * k + c].abs()).sum::<f32>() * 2.0 + 1.0;
                assert!(
                    (g - e).abs() <= 1e-5 * mag,
                    "{ty} k={k} m={m} n={n}: y[{t},{r}] = {g}, quant-kernels {e}"
                );
            }
        }
    }
}

// ---- The seam's Gemma-style ops against tensor-core's CPU backend --------

use tensor_core::{Backend, CpuBackend};

fn seam() -> backend_wgpu::WgpuBackend {
    backend_wgpu::WgpuBackend::with_options(ctx(), backend_wgpu::GpuOptions { exact: true })
}

/// A GPU buffer's values.
fn read_all(b: &backend_wgpu::WgpuBackend, buf: &backend_wgpu::GpuBuffer, len: usize) -> Vec<f32> {
    let mut out = vec![0f32; len];
    b.read(buf, 0, &mut out).unwrap();
    out
}

/// The indices where `got` and `want` differ in their bits (printing the first few).
fn bit_diffs(what: &str, got: &[f32], want: &[f32]) -> usize {
    assert_eq!(got.len(), want.len());
    let bad: Vec<usize> = (0..want.len())
        .filter(|&i| got[i].to_bits() != want[i].to_bits())
        .collect();
    for &i in bad.iter().take(5) {
        eprintln!(
            "{what} [{i}]: gpu {:e} ({:#010x}) cpu {:e} ({:#010x})",
            got[i],
            got[i].to_bits(),
            want[i],
            want[i].to_bits()
        );
    }
    bad.len()
}

/// Distance in units in the last place between two finite f32 values.
fn ulps(a: f32, b: f32) -> u32 {
    let key = |x: f32| {
        let u = x.to_bits() as i64;
        if u & 0x8000_0000 != 0 {
            -(u & 0x7fff_ffff)
        } else {
            u
        }
    };
    (key(a) - key(b)).unsigned_abs() as u32
}

/// GEGLU (ggml's f16 GELU table): gates over ±12 (both cut-offs at ±10),
/// f16 ties and subnormals, rows of odd widths: bit-identical to the CPU
/// backend.
#[test]
fn seam_geglu_bit_exact() {
    let gpu = seam();
    let cpu = CpuBackend::default();
    let mut rng = StdRng::seed_from_u64(1100);
    for (n_rows, width) in [(3usize, 1000usize), (1, 8), (5, 2731), (2, 70_000)] {
        let len = n_rows * width;
        let mut gate: Vec<f32> = (0..len).map(|_| rng.gen_range(-12.0f32..12.0)).collect();
        let up: Vec<f32> = (0..len).map(|_| rng.gen_range(-4.0f32..4.0)).collect();
        let edges = [
            -10.0f32,
            10.0,
            -9.999999,
            9.999999,
            0.0,
            -0.0,
            1e-7,
            -3e-6,
            6.1e-5,
            -6.1035156e-5,
            1.0 + 1.0 / 2048.0, // halfway between two f16 values
            1.0 + 3.0 / 2048.0,
            -2.0 - 1.0 / 1024.0,
            0.5 + 1.0 / 4096.0,
        ];
        let k = edges.len().min(len);
        gate[..k].copy_from_slice(&edges[..k]);
        let (g, u) = (gpu.upload(&gate), gpu.upload(&up));
        let mut out = gpu.alloc(len).unwrap();
        gpu.geglu(&g, &u, n_rows, width, &mut out);
        let got = read_all(&gpu, &out, len);
        let mut want = vec![0f32; len];
        cpu.geglu(&gate, &up, n_rows, width, &mut want);
        let bad = bit_diffs(&format!("geglu {n_rows}×{width}"), &got, &want);
        assert_eq!(
            bad, 0,
            "geglu {n_rows}×{width}: {bad} of {len} differ from the CPU"
        );
    }
}

/// `scale` and `scale_rows` are single products: bit-identical (one call
/// over more than 65535 workgroups of 256, which the grid spreads over two
/// dimensions).
#[test]
fn seam_scale_and_scale_rows_bit_exact() {
    let gpu = seam();
    let cpu = CpuBackend::default();
    let mut rng = StdRng::seed_from_u64(1200);
    for (len, s) in [
        (1usize, 0.125f32),
        (4097, 1.0 / 128f32.sqrt()),
        (300_001, -3.7),
        (65535 * 256 + 3000, 0.7),
    ] {
        let x: Vec<f32> = (0..len).map(|_| rng.gen_range(-100.0f32..100.0)).collect();
        let mut gb = gpu.upload(&x);
        // A length below the buffer's: the rest is untouched.
        let n = len - len / 3;
        gpu.scale(&mut gb, n, s);
        let got = read_all(&gpu, &gb, len);
        let mut want = x.clone();
        cpu.scale(&mut want, n, s);
        assert_eq!(bit_diffs("scale", &got, &want), 0, "scale len {len} s {s}");
    }
    for (rows, width) in [(1usize, 64usize), (7, 2048), (33, 3000)] {
        let x: Vec<f32> = (0..rows * width)
            .map(|_| rng.gen_range(-10.0f32..10.0))
            .collect();
        let f: Vec<f32> = (0..rows).map(|_| rng.gen_range(0.0f32..1.0)).collect();
        let mut gb = gpu.upload(&x);
        gpu.scale_rows(&mut gb, &f, width);
        let got = read_all(&gpu, &gb, x.len());
        let mut want = x.clone();
        cpu.scale_rows(&mut want, &f, width);
        assert_eq!(
            bit_diffs("scale_rows", &got, &want),
            0,
            "scale_rows {rows}×{width}"
        );
    }
}

/// Soft-capping (cap·tanh(x/cap)): the GPU's tanh is not libm's, so the
/// result is compared in ulps of the result: at most [`SOFTCAP_ULPS`] from
/// the CPU's. The product by the cap stretches a tanh difference of one ulp
/// to up to two of the result: measured on llvmpipe against glibc 2.36's
/// tanhf, 4 ulp of the result at most (about a quarter of the values
/// differ), and at most 2 from cap times the correctly rounded tanh (the
/// GPU's tanh is within an ulp of it, glibc 2.36's within two).
#[test]
fn seam_softcap_within_ulps() {
    let gpu = seam();
    let cpu = CpuBackend::default();
    let mut rng = StdRng::seed_from_u64(1300);
    let mut worst = (0u32, 0f32, 0f32);
    let mut worst_cr = 0u32;
    let mut n_diff = 0usize;
    let mut n_total = 0usize;
    for cap in [30.0f32, 50.0, 1.0] {
        let mut x: Vec<f32> = (0..200_000)
            .map(|i| match i % 3 {
                0 => rng.gen_range(-4.0 * cap..4.0 * cap),
                1 => rng.gen_range(-cap..cap),
                _ => rng.gen_range(-1.0f32..1.0) * cap * 10f32.powi(-rng.gen_range(0..8)),
            })
            .collect();
        x.extend([
            0.0,
            -0.0,
            9.5 * cap,
            -9.0 * cap,
            0.9 * cap,
            -0.9 * cap,
            1e30,
            -1e30,
        ]);
        let mut gb = gpu.upload(&x);
        gpu.softcap(&mut gb, x.len(), cap);
        let got = read_all(&gpu, &gb, x.len());
        let mut want = x.clone();
        cpu.softcap(&mut want, x.len(), cap);
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!(g.is_finite() && g.is_sign_negative() == w.is_sign_negative());
            let d = ulps(g, w);
            n_diff += (d != 0) as usize;
            if d > worst.0 {
                worst = (d, x[i], cap);
            }
            // cap·tanh rounded correctly (f64 tanh, then the CPU's last product).
            let inv = 1.0 / cap;
            let cr = ((x[i] * inv) as f64).tanh() as f32 * cap;
            worst_cr = worst_cr.max(ulps(g, cr));
        }
        n_total += x.len();
    }
    eprintln!(
        "softcap: {n_diff} of {n_total} differ from the CPU, at most {} ulp (x = {}, cap {}); \
         at most {worst_cr} ulp from cap·tanh correctly rounded",
        worst.0, worst.1, worst.2
    );
    assert!(
        worst.0 <= SOFTCAP_ULPS,
        "softcap: {} ulp from the CPU at x = {}, cap {}",
        worst.0,
        worst.1,
        worst.2
    );
    assert!(
        worst_cr <= 2,
        "softcap: {worst_cr} ulp from the correctly rounded cap·tanh"
    );
}

/// The soft-cap's tolerance in ulps against the CPU (see
/// `seam_softcap_within_ulps`).
const SOFTCAP_ULPS: u32 = 4;

/// One attention problem through the seam (store_kv, then attention) and
/// through tensor-core's CPU attention, with `window` and `softcap`;
/// returns (GPU, CPU) outputs.
#[allow(clippy::too_many_arguments)]
fn seam_attention(
    rng: &mut StdRng,
    (nh, nkv, hd): (usize, usize, usize),
    t: usize,
    pos0: usize,
    kv_f16: bool,
    mag: f32,
    window: Option<usize>,
    softcap: Option<f32>,
) -> (Vec<f32>, Vec<f32>) {
    let gpu = seam();
    let n = pos0 + t;
    let kvw = nkv * hd;
    let k: Vec<f32> = (0..n * kvw).map(|_| rng.gen_range(-mag..mag)).collect();
    let v: Vec<f32> = (0..n * kvw).map(|_| rng.gen_range(-mag..mag)).collect();
    let q: Vec<f32> = (0..t * nh * hd).map(|_| rng.gen_range(-mag..mag)).collect();
    let p = tensor_core::AttentionParams {
        window,
        softcap,
        ..tensor_core::AttentionParams::new(nh, nkv, hd, 1.0 / (hd as f32).sqrt())
    };
    let shape = tensor_core::KvShape {
        n_layer: 1,
        n_ctx: n,
        n_head_kv: nkv,
        head_dim: hd,
        kv_type: if kv_f16 {
            tensor_core::KvType::F16
        } else {
            tensor_core::KvType::F32
        },
    };
    let mut cache = gpu.alloc_kv(&shape).unwrap();
    gpu.store_kv(&mut cache, 0, 0, n, &gpu.upload(&k), &gpu.upload(&v));
    let mut out = gpu.alloc(q.len()).unwrap();
    gpu.attention(&gpu.upload(&q), &cache, 0, pos0, t, &p, &mut out);
    let got = read_all(&gpu, &out, q.len());
    let mut want = vec![0f32; q.len()];
    if kv_f16 {
        let h = |x: &[f32]| {
            x.iter()
                .map(|&v| half::f16::from_f32(v))
                .collect::<Vec<_>>()
        };
        tensor_core::attention::attention::<half::f16>(&q, &h(&k), &h(&v), pos0, &p, &mut want);
    } else {
        tensor_core::attention::attention::<f32>(&q, &k, &v, pos0, &p, &mut want);
    }
    (got, want)
}

/// Sliding-window attention: decoding (one token) and batches, f16 and f32
/// caches, windows of 1, inside a tile of 128 positions, across tiles, wider
/// than the context (no mask) and, past the 2048 scores kept in workgroup
/// memory, a window of 512 at position 2600 and one of 2500 (recomputed
/// scores); heads of 64, 128 and 256 (Gemma's) values: bit-identical to the
/// CPU, whose masked positions get probability 0.
#[test]
fn seam_attention_window_bit_exact() {
    let mut rng = StdRng::seed_from_u64(1400);
    let cases = [
        ((4, 2, 64), 1, 300, 100),
        ((4, 2, 64), 9, 250, 7),
        ((4, 4, 128), 1, 40, 1),
        ((4, 4, 128), 6, 40, 1),
        ((6, 2, 64), 1, 129, 129),
        ((6, 2, 64), 17, 120, 20),
        ((8, 2, 128), 1, 90, 4096),
        ((8, 2, 128), 12, 500, 260),
        ((2, 1, 64), 1, 2600, 512),
        ((2, 1, 64), 3, 2600, 2500),
        ((4, 1, 256), 1, 700, 512),
        ((4, 1, 256), 5, 700, 512),
    ];
    for kv_f16 in [true, false] {
        for &(heads, t, pos0, w) in &cases {
            let (got, want) = seam_attention(&mut rng, heads, t, pos0, kv_f16, 2.0, Some(w), None);
            let what =
                format!("attention {heads:?} tokens {t} pos0 {pos0} window {w} f16 {kv_f16}");
            let bad = bit_diffs(&what, &got, &want);
            assert_eq!(
                bad,
                0,
                "{what}: {bad} of {} outputs differ from the CPU",
                want.len()
            );
        }
    }
    // Without a window, the seam's attention is the plain causal one.
    let (got, want) = seam_attention(&mut rng, (4, 2, 64), 5, 60, true, 2.0, None, None);
    assert_eq!(bit_diffs("attention no window", &got, &want), 0);
}

/// Soft-capped attention scores (Gemma 2's cap of 50), with and without a
/// window, decoding and batches: the outputs within [`ATTN_SOFTCAP_TOL`]
/// (relative to the largest |output| of the case) of the CPU's.
#[test]
fn seam_attention_softcap_close() {
    let mut rng = StdRng::seed_from_u64(1500);
    let mut worst = 0f32;
    for kv_f16 in [true, false] {
        for (heads, t, pos0, w, mag) in [
            ((4, 2, 64), 1, 200, None, 3.0f32),
            ((4, 2, 64), 7, 150, Some(64), 3.0),
            ((8, 2, 128), 1, 300, Some(100), 2.0),
            ((8, 2, 128), 10, 60, None, 2.0),
        ] {
            let (got, want) = seam_attention(&mut rng, heads, t, pos0, kv_f16, mag, w, Some(50.0));
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            let err = got
                .iter()
                .zip(&want)
                .fold(0f32, |m, (g, e)| m.max((g - e).abs()))
                / scale;
            let n_diff = got
                .iter()
                .zip(&want)
                .filter(|(g, e)| g.to_bits() != e.to_bits())
                .count();
            eprintln!(
                "softcap attention {heads:?} tokens {t} pos0 {pos0} window {w:?} f16 {kv_f16}: \
                 {n_diff} of {} differ, max error {err:.2e} of the largest output",
                want.len()
            );
            worst = worst.max(err);
        }
    }
    assert!(
        worst <= ATTN_SOFTCAP_TOL,
        "soft-capped attention: relative error {worst:e}"
    );
}

/// Soft-capped attention's tolerance, relative to the largest |output|.
const ATTN_SOFTCAP_TOL: f32 = 1e-5;

/// RMSNorm of single heads (weights of head_dim values over tokens · heads
/// rows, as Q/K norms run it), and rows wider than one workgroup, and more
/// rows than one dispatch's z dimension holds: bit-identical to the CPU.
#[test]
fn seam_rms_norm_per_head_bit_exact() {
    let gpu = seam();
    let cpu = CpuBackend::default();
    let mut rng = StdRng::seed_from_u64(1600);
    for (width, rows) in [
        (64usize, 7 * 8),
        (128, 3 * 32),
        (256, 5 * 4),
        (64, 66_000),
        (2048, 3),
        (8192, 2),
    ] {
        let x: Vec<f32> = (0..width * rows)
            .map(|_| rng.gen_range(-3.0f32..3.0))
            .collect();
        let w: Vec<f32> = (0..width).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
        let wt = tensor_core::Tensor::from_f32("norm", vec![width], w).unwrap();
        let (gw, cw) = (gpu.load_vector(&wt).unwrap(), cpu.load_vector(&wt).unwrap());
        let mut out = gpu.alloc(x.len()).unwrap();
        gpu.rms_norm(&gpu.upload(&x), &gw, 1e-6, rows, &mut out);
        let got = read_all(&gpu, &out, x.len());
        let mut want = vec![0f32; x.len()];
        cpu.rms_norm(&x, &cw, 1e-6, rows, &mut want);
        let bad = bit_diffs(&format!("rms_norm width {width}"), &got, &want);
        assert_eq!(
            bad, 0,
            "rms_norm width {width} × {rows} rows: {bad} differ from the CPU"
        );
    }
}

/// `matmul` with weights loaded from `Tensor::rows` views (one expert of a
/// stacked tensor, or one part of a fused projection): the view's product
/// is the CPU's bit for bit, for single tokens, small batches and tiled
/// batches, with row counts that are and are not multiples of 8 (which
/// changes the exact product's order for Q4_0 and Q4_K).
#[test]
fn seam_matmul_on_row_views() {
    let gpu = seam();
    let cpu = CpuBackend::default();
    let mut rng = StdRng::seed_from_u64(1700);
    let mut checked = 0;
    for ftype in ["Q4_K_M", "Q8_0", "Q4_0"] {
        let file = std::sync::Arc::new(
            gguf_format::GgufFile::open(crate::common::fixture(&format!(
                "synth/synth-{ftype}.gguf"
            )))
            .unwrap(),
        );
        let infos: Vec<_> = file
            .tensors()
            .iter()
            .filter(|t| {
                t.dims.len() == 2 && t.name.starts_with("blk.0.") && is_exact(t.ggml_type, 8)
            })
            .cloned()
            .collect();
        for info in infos {
            let whole = tensor_core::Tensor::from_gguf(&file, &info.name).unwrap();
            let n = whole.n_rows();
            for (first, count) in [
                (0, n / 2),
                (n / 3, n - n / 3),
                (5, 8.min(n - 5)),
                (1, 13.min(n - 1)),
            ] {
                let view = whole.rows(first, count, "view").unwrap();
                let (gw, cw) = (
                    gpu.load_matrix(&view).unwrap(),
                    cpu.load_matrix(&view).unwrap(),
                );
                let k = view.row_len();
                for n_tok in [1usize, 3, 9] {
                    let x: Vec<f32> = (0..n_tok * k)
                        .map(|_| rng.gen_range(-1.0f32..1.0))
                        .collect();
                    let mut out = gpu.alloc(n_tok * count).unwrap();
                    gpu.matmul(&gw, &gpu.upload(&x), n_tok, &mut out);
                    let got = read_all(&gpu, &out, n_tok * count);
                    let mut want = vec![0f32; n_tok * count];
                    cpu.matmul(&cw, &x, n_tok, &mut want);
                    let what = format!(
                        "{} ({}) rows {first}..{} × {n_tok} tokens",
                        info.name,
                        info.ggml_type,
                        first + count
                    );
                    let bad = bit_diffs(&what, &got, &want);
                    assert_eq!(bad, 0, "{what}: {bad} differ from the CPU");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 0);
}

/// The fast mode's single-token attention (`attn_fast.wgsl`: f32, online
/// softmax over tiles of 256 positions, split over up to 32 workgroups a
/// head, then combined) against tensor-core's CPU attention over an f32
/// cache: heads of 64, 96 (phi3) and 128, grouped queries, KV windows from 1
/// to past two tiles (and past two tiles a split), sliding windows and
/// soft-capped scores.
/// Not bit for bit: every output within
/// 1e-5 of the largest |v| (the outputs are convex combinations of V).
#[test]
fn fast_attention_agrees_with_cpu() {
    let mut rng = StdRng::seed_from_u64(701);
    let ctx = ctx();
    // Heads per KV head 1, 3 and 4, then TinyLlama's 32 over 4 (64 wide),
    // Gemma 3 1B's 4 over 1 (256 wide: one output per invocation) and 16
    // over 2 of 80 (three slices of the workgroup's 256, 16 invocations
    // idle).
    let cases = [
        (4, 4, 64),
        (6, 2, 96),
        (8, 2, 128),
        (12, 3, 128),
        (32, 4, 64),
        (4, 1, 256),
        (16, 2, 80),
    ];
    for (case, &(nh, nkv, hd)) in cases.iter().enumerate() {
        let long: &[usize] = if case == 0 { &[9000] } else { &[] };
        for &pos0 in [0usize, 1, 63, 64, 200, 255, 256, 600, 2100]
            .iter()
            .chain(long)
        {
            // A sliding window, and a soft-cap, on some of them.
            let window = if case % 2 == 1 { Some(100) } else { None };
            let softcap = if case >= 2 { Some(20.0) } else { None };
            let worst = fast_attention_worst(
                &ctx,
                &mut rng,
                (nh, nkv, hd),
                (1, pos0),
                window,
                softcap,
                false,
            );
            assert!(
                worst <= 2e-5,
                "heads {nh}/{nkv} hd={hd} pos0={pos0} window {window:?} cap {softcap:?}: \
                 largest |gpu − cpu| {worst:e}"
            );
        }
    }
}

/// A random attention problem of `t` tokens after `pos0` cached ones (every
/// value in [-2, 2)), through the fast mode's single-token kernel or (`flash`)
/// its batch kernel, against tensor-core's CPU attention over an f32 cache:
/// the largest |gpu − cpu|.
#[allow(clippy::too_many_arguments)]
fn fast_attention_worst(
    ctx: &backend_wgpu::GpuContext,
    rng: &mut StdRng,
    (nh, nkv, hd): (usize, usize, usize),
    (t, pos0): (usize, usize),
    window: Option<usize>,
    softcap: Option<f32>,
    flash: bool,
) -> f32 {
    let n = pos0 + t;
    let mut random =
        |len: usize| -> Vec<f32> { (0..len).map(|_| rng.gen_range(-2.0..2.0)).collect() };
    let k = random(n * nkv * hd);
    let v = random(n * nkv * hd);
    let q = random(t * nh * hd);
    let run = if flash {
        oneshot::attention_flash
    } else {
        oneshot::attention_fast
    };
    let got = run(
        ctx,
        &q,
        &k,
        &v,
        nh,
        nkv,
        hd,
        pos0 as u32,
        window.unwrap_or(0) as u32,
        softcap.unwrap_or(0.0),
    )
    .unwrap();
    let p = tensor_core::AttentionParams {
        n_head: nh,
        n_head_kv: nkv,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
        window,
        softcap,
    };
    let mut want = vec![0f32; q.len()];
    tensor_core::attention::attention::<f32>(&q, &k, &v, pos0, &p, &mut want);
    got.iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

/// The fast mode's batch attention (`attn_flash.wgsl`: tiles of 32 queries
/// × 64 keys, online softmax in f32) against tensor-core's CPU attention
/// over an f32 cache: heads of 64, 80, 96, 128 and 256, grouped queries,
/// batches from 1 token to past two query tiles at cache offsets from 0 to
/// past two key tiles, sliding windows and soft-capped scores. Not bit for
/// bit: every output within 2e-5 (|v| ≤ 2; outputs are convex combinations
/// of V).
#[test]
fn flash_attention_agrees_with_cpu() {
    let mut rng = StdRng::seed_from_u64(702);
    let ctx = ctx();
    let mut worst_all = 0f32;
    let cases = [(4, 4, 64), (6, 2, 96), (8, 2, 128), (3, 1, 80), (2, 1, 256)];
    for (case, &(nh, nkv, hd)) in cases.iter().enumerate() {
        for &(t, pos0) in &[
            (1usize, 0usize),
            (16, 0),
            (33, 0),
            (70, 5),
            (40, 150),
            (17, 63),
        ] {
            let window = if case % 2 == 1 { Some(50) } else { None };
            let softcap = if case >= 2 { Some(20.0) } else { None };
            let worst = fast_attention_worst(
                &ctx,
                &mut rng,
                (nh, nkv, hd),
                (t, pos0),
                window,
                softcap,
                true,
            );
            assert!(
                worst <= 2e-5,
                "heads {nh}/{nkv} hd={hd} tokens={t} pos0={pos0} window {window:?} cap \
                 {softcap:?}: largest |gpu − cpu| {worst:e}"
            );
            worst_all = worst_all.max(worst);
        }
    }
    eprintln!("attn_flash: largest |gpu − cpu| {worst_all:e}");
    assert!(worst_all > 0.0, "no difference at all: did attn_flash run?");
}

/// The fast mode's single-token product (`fmv`, and `fmv_wide` for Q4_K,
/// Q5_K, F16, and Q8_0 and Q6_K rows of 256-multiples) of every GPU format, with each prologue (x; RMSNorm(x)·w;
/// silu(gate)·up made inside the product), against f64 dot products of
/// ggml's dequantized weights with the f64 activations: within 2e-6 of
/// Σ|w·x|. The wide kernel's formats also with rows past one pass of its
/// lanes (22 super-blocks, as TinyLlama's ffn_down). Where `tg_fused.wgsl`
/// takes the product (Q4_K, Q5_K, Q6_K, Q8_0 on devices with 32-wide
/// subgroups) its activations are rounded to 8 bits a block (256 values;
/// Q8_0: 32), so the bound adds that rounding's: Σ|w|·max|x of the block|/254.
#[test]
fn fast_products_all_formats() {
    use backend_wgpu::oneshot::FastInput;
    let ctx = ctx();
    let wide = [
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::F16,
        GgmlType::Q8_0,
    ];
    let cases = GPU_TYPES
        .iter()
        .map(|&t| (t, false))
        .chain(wide.map(|t| (t, true)));
    for (i, (ty, long)) in cases.enumerate() {
        let mut rng = StdRng::seed_from_u64(900 + i as u64);
        let k = if long { 5632 } else { row_len(&mut rng, ty) };
        let m = rng.gen_range(1..=150);
        let (bytes, w) = random_weights(&mut rng, ty, k, m);
        let mut vec =
            |lo: f32, hi: f32| -> Vec<f32> { (0..k).map(|_| rng.gen_range(lo..hi)).collect() };
        let (a, b) = (vec(-2.0, 2.0), vec(0.5, 1.5));
        let eps = 1e-5f32;
        for kind in 0..3 {
            let (input, xs): (FastInput, Vec<f64>) = match kind {
                0 => (FastInput::Plain(&a), a.iter().map(|&v| v as f64).collect()),
                1 => {
                    let ms = a.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / k as f64;
                    let inv = 1.0 / (ms + eps as f64).sqrt();
                    let xs = a
                        .iter()
                        .zip(&b)
                        .map(|(&x, &g)| x as f64 * inv * g as f64)
                        .collect();
                    (FastInput::Norm(&a, &b, eps), xs)
                }
                _ => {
                    let xs = a
                        .iter()
                        .zip(&b)
                        .map(|(&g, &u)| {
                            let g = g as f64;
                            g / (1.0 + (-g).exp()) * u as f64
                        })
                        .collect();
                    (FastInput::Swiglu(&a, &b), xs)
                }
            };
            let y = oneshot::fmv(&ctx, ty, &bytes, k, m, input).unwrap();
            let fused = backend_wgpu::kernels::tg_fused_fits(ty, k as u32, ctx.caps().subgroup32);
            let block = if ty == GgmlType::Q8_0 { 32 } else { 256 };
            // Each activation's rounding error: half a step of its block.
            let step: Vec<f64> = xs
                .chunks(block)
                .flat_map(|b| {
                    let amax = b.iter().fold(0f64, |m, v| m.max(v.abs()));
                    std::iter::repeat_n(if fused { amax / 254.0 } else { 0.0 }, b.len())
                })
                .collect();
            for r in 0..m {
                let (mut dot, mut mag, mut rounding) = (0f64, 0f64, 0f64);
                for c in 0..k {
                    let p = w[r * k + c] as f64 * xs[c];
                    dot += p;
                    mag += p.abs();
                    rounding += (w[r * k + c] as f64).abs() * step[c];
                }
                let got = y[r] as f64;
                assert!(
                    (got - dot).abs() <= 2e-6 * mag + 1.001 * rounding + 1e-6,
                    "{ty} prologue {kind} k={k} m={m}: y[{r}] = {got}, expected {dot} (Σ|w·x| = {mag})"
                );
            }
        }
    }
}

/// `y` (n × m, token-major) against f64 dot products of ggml's dequantized
/// weights `w` (m × k) and `x` (n × k), plus `acc` where the product
/// accumulated: within 2e-6 of Σ|w·x| for the f32 tiles, 2e-3 for the
/// cooperative matrices (`coop`: f16 inputs), plus 1e-5.
fn check_batch_product(
    y: &[f32],
    w: &[f32],
    x: &[f32],
    acc: Option<&[f32]>,
    (k, m, n): (usize, usize, usize),
    coop: bool,
    what: &str,
) {
    let rel = if coop { 2e-3 } else { 2e-6 };
    for t in 0..n {
        for r in 0..m {
            let (mut dot, mut mag) = (0f64, 0f64);
            for c in 0..k {
                let p = w[r * k + c] as f64 * x[t * k + c] as f64;
                dot += p;
                mag += p.abs();
            }
            if let Some(a) = acc {
                dot += a[t * m + r] as f64;
                mag += (a[t * m + r] as f64).abs();
            }
            let got = y[t * m + r] as f64;
            assert!(
                (got - dot).abs() <= rel * mag + 1e-5,
                "{what}: y[{t}][{r}] = {got}, expected {dot} (Σ|w·x| = {mag})"
            );
        }
    }
}

/// The fast mode's batch product (`mm_fast.wgsl`; `mm_coop.wgsl` too where
/// the device has 16×16×16 f16 cooperative matrices) for every GPU weight
/// type, batches of 1 to 300 tokens and row counts off the 64 × 64 tile,
/// against the f64 dot products of ggml's dequantized weights: within
/// 2e-6 of Σ|w·x| for the f32 tiles, 2e-3 for the cooperative matrices
/// (weights and activations rounded to f16, products summed in f32); also
/// accumulating into y and over a matrix split across bindings.
#[test]
fn fast_batch_products_all_formats() {
    let ctx = ctx();
    let coop = ctx.caps().coop_f16_16;
    eprintln!(
        "fast batch products on {}: portable mm_fast{}",
        ctx.caps().name,
        if coop {
            " and cooperative-matrix mm_coop"
        } else {
            " only (no 16x16x16 f16 cooperative matrices)"
        }
    );
    let shapes = [(1usize, 37usize), (77, 130), (300, 65)];
    for (i, &ty) in GPU_TYPES.iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(1300 + i as u64);
        let unit = ty.block_size().max(32);
        for (s, &(n, m)) in shapes.iter().enumerate() {
            let k = unit * rng.gen_range(1..=(768 / unit).max(1));
            let (bytes, w) = random_weights(&mut rng, ty, k, m);
            let x: Vec<f32> = (0..n * k).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
            // Accumulate into y for the middle shape; split its rows over
            // parts for the last.
            let acc: Option<Vec<f32>> =
                (s == 1).then(|| (0..n * m).map(|_| rng.gen_range(-1.0f32..1.0)).collect());
            let split = (s == 2).then(|| (m / 3 * (bytes.len() / m)) as u64);
            let mut paths = vec![false];
            if coop {
                paths.push(true);
            }
            for use_coop in paths {
                let y = oneshot::mm_fast(
                    &ctx,
                    ty,
                    &bytes,
                    k,
                    m,
                    &x,
                    acc.as_deref(),
                    split,
                    use_coop,
                    None,
                )
                .unwrap();
                let what = format!("{ty} coop={use_coop} k={k} m={m} n={n}");
                check_batch_product(&y, &w, &x, acc.as_deref(), (k, m, n), use_coop, &what);
            }
        }
    }
}

/// The fast batch products split over k (`mm_split.wgsl`: partial sums per
/// split, then `mm_reduce`), as products with few tiles take them: splits
/// of unequal length (k = 928: three of 10, 10 and 9 chunks) and eight
/// splits (k = 2,048), accumulating into y and not, a matrix split across
/// bindings, on `mm_fast` and (where the device has it) `mm_coop`, against
/// f64 dot products within the bounds of `fast_batch_products_all_formats`.
#[test]
fn fast_batch_products_split_over_k() {
    let ctx = ctx();
    let mut paths = vec![false];
    if ctx.caps().coop_f16_16 {
        paths.push(true);
    }
    let mut rng = StdRng::seed_from_u64(1400);
    for ty in [GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_K] {
        for (k, n, m, acc, parts) in [
            (928, 77, 130, true, false),
            (2048, 40, 200, false, true),
            (2048, 130, 64, true, false),
        ] {
            let k = if ty == GgmlType::Q4_K {
                k / 256 * 256
            } else {
                k
            };
            let target = 1 << 12;
            let splits = oneshot::mm_split_count(n as u32, m as u32, k as u32, target);
            let want = ((k as u32 / 32) / 8).min(8);
            assert_eq!(splits, want, "k={k} n={n} m={m}");
            assert!(splits > 1);
            let (bytes, w) = random_weights(&mut rng, ty, k, m);
            let x: Vec<f32> = (0..n * k).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
            let a: Option<Vec<f32>> =
                acc.then(|| (0..n * m).map(|_| rng.gen_range(-1.0f32..1.0)).collect());
            let split = parts.then(|| (m / 3 * (bytes.len() / m)) as u64);
            for &use_coop in &paths {
                let y = oneshot::mm_fast(
                    &ctx,
                    ty,
                    &bytes,
                    k,
                    m,
                    &x,
                    a.as_deref(),
                    split,
                    use_coop,
                    Some(target),
                )
                .unwrap();
                let what = format!("{ty} coop={use_coop} k={k} m={m} n={n} splits={splits}");
                check_batch_product(&y, &w, &x, a.as_deref(), (k, m, n), use_coop, &what);
            }
        }
    }
}

/// The 32-wide subgroup kernels run only where a probe finds the subgroups
/// they assume (32 consecutive invocations): llvmpipe told to use 1024-bit
/// vectors reports 32-wide subgroups but runs 16 lanes, and took them
/// without the probe (its exact logits then left the CPU's bits). Checked
/// in a child process, since the variable must be set before the driver
/// loads; elsewhere than llvmpipe the child's device is another and only
/// its probe's verdict is printed.
#[test]
fn subgroup_probe_rejects_a_wrong_report() {
    const NAME: &str = "kernels::subgroup_probe_rejects_a_wrong_report";
    if crate::common::is_child(NAME) {
        let caps = ctx().caps().clone();
        // On a line of its own (the harness has begun the test's line).
        println!("\nPROBE name={} subgroup32={}", caps.name, caps.subgroup32);
        return;
    }
    let out = crate::common::run_child(NAME, &[("LP_NATIVE_VECTOR_WIDTH", "1024")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed: {text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("PROBE "))
        .unwrap_or_else(|| panic!("no probe line in {text}"));
    eprintln!("{line}");
    if line.contains("llvmpipe") && line.contains("1024 bits") {
        assert!(line.ends_with("subgroup32=false"), "{line}");
    }
}

/// A mixture of experts' routed products for batches (`moe.wgsl`): the
/// grouped path (`moe_bucket`'s lists, then `mm_fast` gathered; `mm_coop`
/// too where the device has cooperative matrices) and the product of one
/// pair at a time (`moe_mv`) against the f64 dot products of ggml's
/// dequantized weights, for every GPU weight type: gate/up over the
/// tokens' rows and down over silu(gate)·up of each pair's row, 6 experts
/// and 2 a token over 150 tokens, one expert taking ~140 pairs (three
/// tiles of 64), one none (its workgroups leave at once), 70 rows (off the
/// 64-row tile). Within 2e-6 of Σ|w·x| for the f32 paths, 2e-3 for the
/// cooperative matrices (f16 operands), as the dense batch products.
#[test]
fn moe_grouped_products_match_reference() {
    let ctx = ctx();
    let coop = ctx.caps().coop_f16_16;
    let (n_expert, n_used, n, m) = (6usize, 2usize, 150usize, 70usize);
    for (i, &ty) in GPU_TYPES.iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(1900 + i as u64);
        let unit = ty.block_size().max(64);
        let k = unit * rng.gen_range(1..=(256 / unit).max(1));
        let (mut bytes, mut w) = (Vec::new(), Vec::new());
        for _ in 0..n_expert {
            let (b, v) = random_weights(&mut rng, ty, k, m);
            bytes.extend(b);
            w.extend(v);
        }
        // Slot 0 mostly expert 0; the other slot one of 1, 2, 3, 5 (not
        // the first's); expert 4 never.
        let mut experts = Vec::with_capacity(n * n_used);
        for _ in 0..n {
            let first = if rng.gen_bool(0.93) { 0 } else { 5 };
            let second = [1, 2, 3, 5][rng.gen_range(0..4)];
            let second = if second == first { 2 } else { second };
            experts.extend([first, second]);
        }
        for swiglu in [false, true] {
            let (rows, width) = if swiglu { (n * n_used, 2 * k) } else { (n, k) };
            let x: Vec<f32> = (0..rows * width)
                .map(|_| rng.gen_range(-2.0f32..2.0))
                .collect();
            // Each pair's activations, as the kernels make them in f32.
            let act = |j: usize, c: usize| -> f64 {
                if swiglu {
                    let (g, u) = (x[j * width + c], x[j * width + k + c]);
                    (g / (1.0 + (-g).exp()) * u) as f64
                } else {
                    x[(j / n_used) * width + c] as f64
                }
            };
            let mut paths = vec![None, Some(false)];
            if coop {
                paths.push(Some(true));
            }
            for grouped in paths {
                let y = oneshot::moe_experts(
                    &ctx,
                    ty,
                    &bytes,
                    (k, m),
                    &x,
                    (&experts, n_used),
                    swiglu,
                    grouped,
                )
                .unwrap();
                let rel = if grouped == Some(true) { 2e-3 } else { 2e-6 };
                for (j, &e) in experts.iter().enumerate() {
                    let we = &w[e as usize * m * k..(e as usize + 1) * m * k];
                    for r in 0..m {
                        let (mut dot, mut mag) = (0f64, 0f64);
                        for c in 0..k {
                            let p = we[r * k + c] as f64 * act(j, c);
                            dot += p;
                            mag += p.abs();
                        }
                        let got = y[j * m + r] as f64;
                        assert!(
                            (got - dot).abs() <= rel * mag + 1e-5,
                            "{ty} k={k} swiglu={swiglu} grouped={grouped:?}: y[{j}][{r}] \
                             (expert {e}) = {got}, expected {dot} (Σ|w·x| = {mag})"
                        );
                    }
                }
            }
        }
    }
}
