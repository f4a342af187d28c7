//! ggml's newest block formats, NVFP4, Q1_0 and Q2_0: bit-exact
//! dequantization, byte-exact reference quantization and the UE4M3
//! conversions against goldens from llama.cpp's own build
//! (`tests/fixtures/gen/lowbit_goldens.c`); the portable dot products
//! against ggml's `*_generic` kernels and the AVX2 ones against what
//! llama.cpp's x86 build runs (`T.vecdot.f32`, `T.vecdot_avx2.f32`), and
//! properties on random blocks: portable against an f64 dot of the
//! dequantized operands, native against a scalar model of the x86 order
//! (bit for bit) and against the portable kernel (to rounding), quantizers
//! against the nearest-level rule.

use proptest::prelude::*;
use quant_kernels::formats::{self, f16::fp16_to_fp32, nvfp4, q1_0, q2_0, q8_0};
use quant_kernels::{
    dequantize_row, is_supported, matmul, matvec, quantize_row, row_bytes, simd, GgmlType, QMatrix,
    QuantError, Scratch,
};

use crate::core_util::{f32s, fixture, Rng};

const TYPES: [GgmlType; 3] = [GgmlType::NVFP4, GgmlType::Q1_0, GgmlType::Q2_0];

/// Weights per row of the dot-product goldens.
const N: usize = 512;

#[test]
fn type_table_rows() {
    for (ty, id, block, size) in [
        (GgmlType::NVFP4, 40, 64, 36),
        (GgmlType::Q1_0, 41, 128, 18),
        (GgmlType::Q2_0, 42, 64, 18),
    ] {
        assert_eq!(
            (ty.id(), ty.block_size(), ty.type_size()),
            (id, block, size)
        );
        assert_eq!(GgmlType::from_id(id), Some(ty));
        assert!(is_supported(ty), "{ty}");
        let k = formats::kernels(ty).unwrap();
        assert_eq!((k.ty, k.vec_dot_type), (ty, GgmlType::Q8_0), "{ty}");
        assert!(k.quantize.is_some(), "{ty}");
    }
}

#[test]
fn dequantize_matches_ggml_bit_for_bit() {
    for ty in TYPES {
        let blocks = fixture(&format!("{ty}.blocks"));
        let want = f32s(&fixture(&format!("{ty}.f32")));
        assert_eq!(blocks.len() / ty.type_size() * ty.block_size(), want.len());
        let mut got = vec![0.0f32; want.len()];
        dequantize_row(ty, &blocks, &mut got).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{ty} element {i}: {g} vs {w}");
        }
        // Tensor data at an odd address is copied, not rejected.
        let mut shifted = vec![0u8; blocks.len() + 1];
        shifted[1..].copy_from_slice(&blocks);
        let mut got = vec![0.0f32; want.len()];
        dequantize_row(ty, &shifted[1..], &mut got).unwrap();
        assert!(
            got.iter()
                .zip(&want)
                .all(|(g, w)| g.to_bits() == w.to_bits()),
            "{ty} misaligned"
        );
    }
}

#[test]
fn quantize_matches_ggml_byte_for_byte() {
    // Sources: zeros, −0, a lone value, subnormals (Q2_0's 1/max overflows),
    // infinities, huge values, level ties, UE4M3 rounding edges, random.
    for ty in TYPES {
        let src = f32s(&fixture(&format!("{ty}.src.f32")));
        let want = fixture(&format!("{ty}.quant"));
        let mut got = vec![0u8; want.len()];
        quantize_row(ty, &src, &mut got).unwrap();
        let bs = ty.type_size();
        for (i, (g, w)) in got.chunks(bs).zip(want.chunks(bs)).enumerate() {
            assert_eq!(g, w, "{ty} block {i}");
        }
        let mut shifted = vec![0u8; want.len() + 1];
        quantize_row(ty, &src, &mut shifted[1..]).unwrap();
        assert_eq!(&shifted[1..], &want[..], "{ty} misaligned");
    }
}

#[test]
fn ue4m3_conversions_match_ggml() {
    // ggml_fp32_to_ue4m3 of 65536 floats: every sign, exponent and top
    // mantissa bits (upper 16 bits h), lower bits (h·0x9E37) mod 2^16.
    let want = fixture("NVFP4.ue4m3.u8");
    for (h, &w) in want.iter().enumerate() {
        let bits = ((h as u32) << 16) | ((h as u32).wrapping_mul(0x9E37) & 0xFFFF);
        let x = f32::from_bits(bits);
        assert_eq!(nvfp4::fp32_to_ue4m3(x), w, "{x:e} ({bits:#010x})");
    }
    // The dequantization golden holds every scale byte (blocks 0..64); here
    // the decoding is checked against the E4M3 definition directly.
    for x in 0..=255u8 {
        let (e, m) = (i32::from((x >> 3) & 15), f64::from(x & 7));
        let raw = if e == 0 {
            m * 2f64.powi(-9)
        } else {
            (1.0 + m / 8.0) * 2f64.powi(e - 7)
        };
        let want = if x == 0x7F { 0.0 } else { raw / 2.0 };
        assert_eq!(f64::from(nvfp4::ue4m3_to_fp32(x)), want, "{x:#04x}");
    }
    // Values UE4M3 represents come back as themselves (below 256, where
    // ggml's rounding does not jump to 0x7E).
    for x in 1..0x78u8 {
        assert_eq!(
            nvfp4::fp32_to_ue4m3(2.0 * nvfp4::ue4m3_to_fp32(x)),
            x,
            "{x:#04x}"
        );
    }
}

/// Activation rows of the dot-product goldens: `vecdot.act.f32` quantized
/// with ggml's `quantize_row_q8_0_ref`.
fn golden_activations(rows: usize) -> Vec<Vec<u8>> {
    let act = f32s(&fixture("vecdot.act.f32"));
    (0..rows)
        .map(|r| {
            let mut blocks = vec![q8_0::BlockQ8_0::default(); N / 32];
            q8_0::quantize_row_q8_0_ref(&act[r * N..(r + 1) * N], &mut blocks);
            bytemuck::cast_slice(&blocks).to_vec()
        })
        .collect()
}

#[test]
fn portable_vec_dot_matches_ggml_generic_bit_for_bit() {
    for ty in TYPES {
        let blocks = fixture(&format!("{ty}.blocks"));
        let want = f32s(&fixture(&format!("{ty}.vecdot.f32")));
        let rb = row_bytes(ty, N).unwrap();
        assert_eq!(want.len(), blocks.len() / rb, "{ty}");
        let k = formats::kernels(ty).unwrap();
        for (r, (a, (w, want))) in golden_activations(want.len())
            .iter()
            .zip(blocks.chunks_exact(rb).zip(&want))
            .enumerate()
        {
            let got = (k.vec_dot)(N, w, a);
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "{ty} row {r}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn native_vec_dot_matches_llama_cpp_x86_bit_for_bit() {
    // What llama.cpp's AVX2 build runs (libggml-cpu.so's ggml_vec_dot_T_q8_0):
    // the AVX2 kernels of Q1_0 and NVFP4, Q2_0's generic with fused
    // multiply-adds. This is what makes a model's logits equal llama.cpp's.
    let features = simd::features();
    if !(cfg!(target_arch = "x86_64") && features.avx2) {
        return;
    }
    for ty in TYPES {
        let native = simd::native_vec_dot_for(ty, features)
            .unwrap_or_else(|| panic!("{ty}: no AVX2 kernel"));
        assert_eq!(
            simd::vec_dot_for(ty).map(|f| f as usize),
            Some(native as usize),
            "{ty}"
        );
        let blocks = fixture(&format!("{ty}.blocks"));
        let want = f32s(&fixture(&format!("{ty}.vecdot_avx2.f32")));
        let rb = row_bytes(ty, N).unwrap();
        for (r, (a, (w, want))) in golden_activations(want.len())
            .iter()
            .zip(blocks.chunks_exact(rb).zip(&want))
            .enumerate()
        {
            let got = native(N, w, a);
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "{ty} row {r}: {got} vs {want}"
            );
            assert_eq!(
                x86_order(ty, N, w, a).to_bits(),
                want.to_bits(),
                "{ty} model, row {r}"
            );
        }
    }
}

/// ggml's `hsum_float_8`: halves, then pairs, then the last two.
fn hsum8(v: [f32; 8]) -> f32 {
    let r: [f32; 4] = std::array::from_fn(|i| v[i + 4] + v[i]);
    let (a, b) = (r[0] + r[2], r[1] + r[3]);
    a + b
}

/// A scalar model of the summation order of llama.cpp's x86 kernels (eight
/// lanes of four-weight integer sums, `mul_add` where they fuse), built
/// from the format definitions alone: the oracle for the AVX2 kernels on
/// random blocks.
fn x86_order(ty: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    let act: &[q8_0::BlockQ8_0] = bytemuck::cast_slice(&a[..n / 32 * 34]);
    // Lane l of a 32-weight activation block: weights 4l..4l+4.
    let lanes = |codes: &dyn Fn(usize) -> i32, q: &[i8; 32]| -> [f32; 8] {
        std::array::from_fn(|l| {
            (4 * l..4 * l + 4)
                .map(|e| codes(e) * i32::from(q[e]))
                .sum::<i32>() as f32
        })
    };
    match ty {
        GgmlType::Q1_0 => {
            let w: &[q1_0::BlockQ1_0] = bytemuck::cast_slice(&w[..n / 128 * 18]);
            let mut acc = [0.0f32; 8];
            for (b, a) in w.iter().zip(act.chunks_exact(4)) {
                let mut block = [0.0f32; 8];
                for (k, a) in a.iter().enumerate() {
                    let sign = |e: usize| {
                        if (b.qs[4 * k + e / 8] >> (e % 8)) & 1 != 0 {
                            1
                        } else {
                            -1
                        }
                    };
                    let s = lanes(&sign, &a.qs);
                    let d1 = fp16_to_fp32(a.d);
                    for l in 0..8 {
                        block[l] = if k == 0 {
                            d1 * s[l]
                        } else {
                            d1.mul_add(s[l], block[l])
                        };
                    }
                }
                for l in 0..8 {
                    acc[l] = fp16_to_fp32(b.d).mul_add(block[l], acc[l]);
                }
            }
            hsum8(acc)
        }
        GgmlType::NVFP4 => {
            let w: &[nvfp4::BlockNVFP4] = bytemuck::cast_slice(&w[..n / 64 * 36]);
            let kv = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];
            let mut acc = [0.0f32; 8];
            for (b, a) in w.iter().zip(act.chunks_exact(2)) {
                for (h, a) in a.iter().enumerate() {
                    // Weight e of the half: sub-block 2h + e/16, element e % 16.
                    let code = |e: usize| {
                        let (s, j) = (2 * h + e / 16, e % 16);
                        let q = b.qs[8 * s + j % 8];
                        kv[usize::from(if j < 8 { q & 15 } else { q >> 4 })]
                    };
                    let s = lanes(&code, &a.qs);
                    let dy = fp16_to_fp32(a.d);
                    for l in 0..8 {
                        let scale = nvfp4::ue4m3_to_fp32(b.d[2 * h + l / 4]) * dy;
                        acc[l] = scale.mul_add(s[l], acc[l]);
                    }
                }
            }
            hsum8(acc)
        }
        GgmlType::Q2_0 => {
            let w: &[q2_0::BlockQ2_0] = bytemuck::cast_slice(&w[..n / 64 * 18]);
            let mut sumf = 0.0f32;
            for (b, a) in w.iter().zip(act.chunks_exact(2)) {
                let mut sumi = 0.0f32;
                for (k, a) in a.iter().enumerate() {
                    let code = |e: usize| {
                        let j = 32 * k + e;
                        i32::from((b.qs[j / 4] >> (2 * (j % 4))) & 3) - 1
                    };
                    let s: f32 = lanes(&code, &a.qs).iter().sum::<f32>();
                    sumi = s.mul_add(fp16_to_fp32(a.d), sumi);
                }
                sumf = fp16_to_fp32(b.d).mul_add(sumi, sumf);
            }
            sumf
        }
        _ => unreachable!("{ty}"),
    }
}

#[test]
fn bad_lengths_are_typed_errors() {
    for ty in TYPES {
        let mut out = vec![0.0f32; ty.block_size()];
        let err = dequantize_row(ty, &vec![0u8; ty.type_size() - 1], &mut out).unwrap_err();
        assert!(matches!(err, QuantError::BadLength { .. }), "{ty}: {err}");
        let mut out = vec![0.0f32; ty.block_size() + 32];
        let err = dequantize_row(ty, &vec![0u8; 2 * ty.type_size()], &mut out).unwrap_err();
        assert!(
            matches!(err, QuantError::PartialBlock { .. }),
            "{ty}: {err}"
        );
    }
}

#[test]
fn matvec_and_matmul_use_these_formats() {
    // Every output of the crate's matrix products is the dispatched dot
    // product of its row with the activations quantized by the dispatched
    // quantizer, bit for bit.
    let (rows, cols, n) = (7, 512, 5);
    let mut rng = Rng(0xfeed);
    for ty in TYPES {
        let data = random_blocks(ty, rows * cols / ty.block_size(), &mut rng);
        let m = QMatrix::new(ty, rows, cols, &data).unwrap();
        let x = rng.activations(n * cols);
        let dot = simd::vec_dot_for(ty).unwrap();
        let quantize = simd::from_float_for(GgmlType::Q8_0).unwrap();
        let rb = row_bytes(ty, cols).unwrap();
        let want: Vec<f32> = x
            .chunks_exact(cols)
            .flat_map(|xc| {
                let mut a = vec![0u8; row_bytes(GgmlType::Q8_0, cols).unwrap()];
                quantize(xc, &mut a);
                data.chunks_exact(rb)
                    .map(|w| dot(cols, w, &a))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut y = vec![0.0f32; rows];
        matvec(&m, &x[..cols], &mut y, &mut Scratch::default());
        assert!(
            y.iter()
                .zip(&want[..rows])
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{ty} matvec"
        );
        let mut y = vec![0.0f32; n * rows];
        matmul(&m, &x, n, &mut y, &mut Scratch::default());
        assert!(
            y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{ty} matmul"
        );
    }
}

/// Random blocks of `ty`: random code bits, scales of moderate size.
fn random_blocks(ty: GgmlType, n_blocks: usize, rng: &mut Rng) -> Vec<u8> {
    let ts = ty.type_size();
    let mut out: Vec<u8> = (0..n_blocks * ts).map(|_| rng.next_u64() as u8).collect();
    for b in out.chunks_exact_mut(ts) {
        match ty {
            // Any UE4M3 byte but the largest binade (moderate products).
            GgmlType::NVFP4 => b[..4]
                .iter_mut()
                .for_each(|d| *d = (rng.next_u64() % 0x70) as u8),
            _ => b[..2].copy_from_slice(
                &half::f16::from_f32(rng.unit() * 0.05)
                    .to_bits()
                    .to_le_bytes(),
            ),
        }
    }
    out
}

fn abs_dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) * f64::from(*y)).abs())
        .sum()
}

fn dot64(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

/// Activations quantized by the quantizer the matrix products use, and
/// what they dequantize to.
fn activations(x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut q = vec![0u8; row_bytes(GgmlType::Q8_0, x.len()).unwrap()];
    (simd::from_float_for(GgmlType::Q8_0).unwrap())(x, &mut q);
    let mut d = vec![0.0f32; x.len()];
    dequantize_row(GgmlType::Q8_0, &q, &mut d).unwrap();
    (q, d)
}

/// Floats at scale `2^exp`, with exact zeros and repeats mixed in.
fn sources(rng: &mut Rng, n: usize, exp: i32) -> Vec<f32> {
    let scale = 2f32.powi(exp);
    (0..n)
        .map(|_| match rng.next_u64() % 16 {
            0 => 0.0,
            1 => scale,
            _ => rng.unit() * scale,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The portable (reference) dot product equals the f64 dot of what the
    /// two operands dequantize to, up to f32 rounding of the block sums.
    #[test]
    fn portable_vec_dot_is_dot_of_dequantized(seed in 1u64.., rows in 1usize..5) {
        for ty in TYPES {
            let mut rng = Rng(seed | 1);
            let n = rows * 256;
            let w = random_blocks(ty, n / ty.block_size(), &mut rng);
            let mut wd = vec![0.0f32; n];
            dequantize_row(ty, &w, &mut wd).unwrap();
            let (a, ad) = activations(&rng.activations(n));
            let got = f64::from((formats::kernels(ty).unwrap().vec_dot)(n, &w, &a));
            let want = dot64(&wd, &ad);
            let tol = 1e-5 * abs_dot(&wd, &ad) + 1e-12;
            prop_assert!((got - want).abs() <= tol, "{ty}: {got} vs {want} (tol {tol})");
        }
    }

    /// The native kernels follow llama.cpp's x86 order bit for bit (the
    /// scalar model above), and agree with the portable kernel, which sums
    /// in ggml's generic order, to rounding.
    #[test]
    fn native_vec_dot_follows_x86_order(seed in 1u64.., rows in 1usize..9) {
        let features = simd::features();
        for ty in TYPES {
            let Some(native) = simd::native_vec_dot_for(ty, features) else { continue };
            let mut rng = Rng(seed | 1);
            let n = rows * 128;
            let w = random_blocks(ty, n / ty.block_size(), &mut rng);
            let (a, ad) = activations(&rng.activations(n));
            let got = native(n, &w, &a);
            let model = x86_order(ty, n, &w, &a);
            prop_assert_eq!(got.to_bits(), model.to_bits(), "{}: {} vs model {}", ty, got, model);
            let portable = (formats::kernels(ty).unwrap().vec_dot)(n, &w, &a);
            let mut wd = vec![0.0f32; n];
            dequantize_row(ty, &w, &mut wd).unwrap();
            let tol = 1e-5 * abs_dot(&wd, &ad) + 1e-12;
            prop_assert!((f64::from(got) - f64::from(portable)).abs() <= tol,
                "{}: native {} portable {}", ty, got, portable);
        }
    }

    /// Q1_0 keeps each sign and the mean magnitude (f16-rounded); what it
    /// dequantizes to quantizes to the same bytes.
    #[test]
    fn q1_0_keeps_signs_and_mean(seed in any::<u64>(), exp in -14i32..15) {
        let x = sources(&mut Rng(seed | 1), 512, exp);
        let mut q = vec![0u8; row_bytes(GgmlType::Q1_0, x.len()).unwrap()];
        quantize_row(GgmlType::Q1_0, &x, &mut q).unwrap();
        let mut y = vec![0.0f32; x.len()];
        dequantize_row(GgmlType::Q1_0, &q, &mut y).unwrap();
        for (xb, yb) in x.chunks(128).zip(y.chunks(128)) {
            let mean = xb.iter().map(|v| f64::from(v.abs())).sum::<f64>() / 128.0;
            let d = f64::from(yb[0].abs());
            prop_assert!((d - mean).abs() <= mean * 1e-3 + 6e-8, "d {} mean {}", d, mean);
            for (&v, &r) in xb.iter().zip(yb) {
                prop_assert_eq!(r.abs(), yb[0].abs());
                prop_assert!((v >= 0.0) == (r.is_sign_positive()) || d == 0.0);
            }
        }
        let mut again = vec![0u8; q.len()];
        quantize_row(GgmlType::Q1_0, &y, &mut again).unwrap();
        for (i, (a, b)) in again.chunks(18).zip(q.chunks(18)).enumerate() {
            // A zero scale dequantizes to ±0, and −0 quantizes as positive.
            prop_assert!(a == b || fp16_to_fp32(half::f16::from_le_bytes([b[0], b[1]])) == 0.0, "block {}", i);
        }
    }

    /// Q2_0 rounds each value to the nearest of −d, 0, d (d the f16 of the
    /// block's max |x|), and is stable under a second round trip.
    #[test]
    fn q2_0_rounds_to_nearest_level(seed in any::<u64>(), exp in -12i32..15) {
        let x = sources(&mut Rng(seed | 1), 512, exp);
        let mut q = vec![0u8; row_bytes(GgmlType::Q2_0, x.len()).unwrap()];
        quantize_row(GgmlType::Q2_0, &x, &mut q).unwrap();
        let mut y = vec![0.0f32; x.len()];
        dequantize_row(GgmlType::Q2_0, &q, &mut y).unwrap();
        for (xb, yb) in x.chunks(64).zip(y.chunks(64)) {
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = f64::from(half::f16::from_f32(amax).to_f32());
            for (&v, &r) in xb.iter().zip(yb) {
                // Half a step, plus the scale's f16 rounding.
                let err = (f64::from(v) - f64::from(r)).abs();
                prop_assert!(err <= 0.5 * d + 1e-3 * d + 1e-30, "{} -> {} (d {})", v, r, d);
                prop_assert!(r.abs() <= d as f32);
            }
        }
        let mut again = vec![0u8; q.len()];
        quantize_row(GgmlType::Q2_0, &y, &mut again).unwrap();
        let mut y2 = vec![0.0f32; y.len()];
        dequantize_row(GgmlType::Q2_0, &again, &mut y2).unwrap();
        prop_assert_eq!(y2, y);
    }

    /// NVFP4 gives each value the nearest E2M1 level at its sub-block's
    /// scale, and that scale is ggml's UE4M3 rounding of max|x|/6.
    #[test]
    fn nvfp4_takes_nearest_levels(seed in any::<u64>(), exp in -8i32..10) {
        let x = sources(&mut Rng(seed | 1), 512, exp);
        let mut q = vec![0u8; row_bytes(GgmlType::NVFP4, x.len()).unwrap()];
        quantize_row(GgmlType::NVFP4, &x, &mut q).unwrap();
        let mut y = vec![0.0f32; x.len()];
        dequantize_row(GgmlType::NVFP4, &q, &mut y).unwrap();
        let blocks: &[nvfp4::BlockNVFP4] = bytemuck::cast_slice(&q);
        const LEVELS: [f32; 8] = [0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0];
        for (i, (xs, ys)) in x.chunks(16).zip(y.chunks(16)).enumerate() {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let ue = blocks[i / 4].d[i % 4];
            prop_assert_eq!(ue, nvfp4::fp32_to_ue4m3(amax / 6.0));
            let s = nvfp4::ue4m3_to_fp32(ue);
            for (&v, &r) in xs.iter().zip(ys) {
                let best = LEVELS.iter().map(|k| (v.abs() - k * s).abs()).fold(f32::INFINITY, f32::min);
                prop_assert_eq!((v - r).abs(), best, "{} -> {} (s {})", v, r, s);
            }
        }
    }
}
