//! K-quants (Q2_K–Q6_K) and the non-linear IQ4_NL/IQ4_XS: reference codecs
//! against llama.cpp's goldens, the portable dot products against
//! dequantize-then-dot, and the quantizers' error bounds.

use std::collections::BTreeMap;
use std::path::PathBuf;

use gguf_format::GgufFile;
use proptest::prelude::*;
use quant_kernels::{dequantize_row, kernels, quantize_row, row_bytes, simd, GgmlType};

/// The formats this module covers.
const FORMATS: [GgmlType; 7] = [
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
];

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures")).join(rel)
}

fn read_f32(path: &PathBuf) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn f32_le(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn dequantize_matches_ggml_bit_for_bit() {
    for ty in FORMATS {
        let blocks = std::fs::read(fixture(&format!("quant/{}.blocks", ty.name()))).unwrap();
        let want = read_f32(&fixture(&format!("quant/{}.f32", ty.name())));
        let mut got = vec![0f32; want.len()];
        dequantize_row(ty, &blocks, &mut got).unwrap();
        let bad = got
            .iter()
            .zip(&want)
            .position(|(g, w)| g.to_bits() != w.to_bits());
        assert_eq!(
            bad,
            None,
            "{ty}: element {} is {} but ggml gives {}",
            bad.unwrap_or(0),
            got[bad.unwrap_or(0)],
            want[bad.unwrap_or(0)]
        );
    }
}

/// Activations quantized by the reference Q8_K/Q8_0 quantizers, as bytes.
fn reference_activations(act: GgmlType, x: &[f32]) -> Vec<u8> {
    use quant_kernels::formats::{q8_0, q8_k};
    match act {
        GgmlType::Q8_K => {
            let mut b = vec![q8_k::BlockQ8_K::default(); x.len() / 256];
            q8_k::quantize_row_q8_k_ref(x, &mut b);
            bytemuck::cast_slice(&b).to_vec()
        }
        GgmlType::Q8_0 => {
            let mut b = vec![q8_0::BlockQ8_0::default(); x.len() / 32];
            q8_0::quantize_row_q8_0_ref(x, &mut b);
            bytemuck::cast_slice(&b).to_vec()
        }
        _ => unreachable!(),
    }
}

/// `T.vecdot.f32` holds ggml's C `ggml_vec_dot_<T>_q8_K_generic`
/// (`_q8_0_` for IQ4_NL) of row r of `T.blocks` with activations
/// `n·r..n·(r+1)` of `vecdot.act.f32`, rows of n = 1024 weights (four
/// super-blocks; 256, eight blocks, for IQ4_NL) so that the float
/// accumulation across blocks is checked too: the portable kernels
/// reproduce it bit for bit.
#[test]
fn vec_dot_matches_ggml_generic_bit_for_bit() {
    let act = read_f32(&fixture("quant/vecdot.act.f32"));
    for ty in FORMATS {
        let blocks = std::fs::read(fixture(&format!("quant/{}.blocks", ty.name()))).unwrap();
        let want = read_f32(&fixture(&format!("quant/{}.vecdot.f32", ty.name())));
        let k = kernels(ty).unwrap();
        let n = if ty == GgmlType::IQ4_NL { 256 } else { 1024 };
        let rb = row_bytes(ty, n).unwrap();
        assert_eq!(want.len(), (blocks.len() / rb).min(act.len() / n), "{ty}");
        for (r, (w, want)) in blocks.chunks_exact(rb).zip(&want).enumerate() {
            let a = reference_activations(k.vec_dot_type, &act[n * r..n * (r + 1)]);
            let got = (k.vec_dot)(n, w, &a);
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "{ty} row {r}: {got} vs ggml {want}"
            );
        }
    }
}

/// `T.vecdot_avx2.f32` holds ggml's C AVX2 kernels (`ggml_vec_dot_<T>_q8_K`,
/// `-O3 -march=haswell`, what llama.cpp runs on an AVX2 machine) on the same
/// rows (IQ4_NL: rows of seven blocks, so its odd-block tail is covered):
/// where this CPU has AVX2, the dispatched kernels reproduce them bit for bit.
#[test]
fn simd_vec_dot_matches_ggml_avx2_bit_for_bit() {
    let f = simd::features();
    if !f.avx2 {
        return;
    }
    let act = read_f32(&fixture("quant/vecdot.act.f32"));
    for ty in FORMATS {
        let blocks = std::fs::read(fixture(&format!("quant/{}.blocks", ty.name()))).unwrap();
        let want = read_f32(&fixture(&format!("quant/{}.vecdot_avx2.f32", ty.name())));
        let native = simd::native_vec_dot_for(ty, f).unwrap();
        let n = if ty == GgmlType::IQ4_NL { 224 } else { 1024 };
        let rb = row_bytes(ty, n).unwrap();
        assert_eq!(want.len(), (blocks.len() / rb).min(act.len() / n), "{ty}");
        let act_ty = kernels(ty).unwrap().vec_dot_type;
        for (r, (w, want)) in blocks.chunks_exact(rb).zip(&want).enumerate() {
            let a = reference_activations(act_ty, &act[n * r..n * (r + 1)]);
            let got = native(n, w, &a);
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "{ty} row {r}: {got} vs ggml AVX2 {want}"
            );
        }
    }
}

/// `T.ref.quant` holds ggml's C `quantize_row_<T>_ref` of `vecdot.act.f32`
/// (64 rows with outliers and quiet rows); for IQ4_NL that is the cheap
/// `quantize_row_iq4_nl_ref`, not the searching quantizer of the table.
#[test]
fn reference_quantizers_match_ggml_c() {
    use quant_kernels::formats::{iq4_nl, iq4_xs, q2_k, q3_k, q4_k, q5_k, q6_k};
    fn run<B: bytemuck::Pod + bytemuck::Zeroable>(
        x: &[f32],
        bs: usize,
        f: fn(&[f32], &mut [B]),
    ) -> Vec<u8> {
        let mut b = vec![B::zeroed(); x.len() / bs];
        f(x, &mut b);
        bytemuck::cast_slice(&b).to_vec()
    }
    let x = read_f32(&fixture("quant/vecdot.act.f32"));
    for ty in FORMATS {
        let want = std::fs::read(fixture(&format!("quant/{}.ref.quant", ty.name()))).unwrap();
        let got = match ty {
            GgmlType::Q2_K => run(&x, 256, q2_k::quantize_row_q2_k_ref),
            GgmlType::Q3_K => run(&x, 256, q3_k::quantize_row_q3_k_ref),
            GgmlType::Q4_K => run(&x, 256, q4_k::quantize_row_q4_k_ref),
            GgmlType::Q5_K => run(&x, 256, q5_k::quantize_row_q5_k_ref),
            GgmlType::Q6_K => run(&x, 256, q6_k::quantize_row_q6_k_ref),
            GgmlType::IQ4_NL => run(&x, 32, iq4_nl::quantize_row_iq4_nl_ref),
            GgmlType::IQ4_XS => run(&x, 256, iq4_xs::quantize_row_iq4_xs_ref),
            _ => unreachable!(),
        };
        let bs = ty.type_size();
        let bad: Vec<usize> = got
            .chunks_exact(bs)
            .zip(want.chunks_exact(bs))
            .enumerate()
            .filter(|(_, (g, w))| g != w)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(got.len(), want.len(), "{ty}");
        assert!(bad.is_empty(), "{ty}: blocks {bad:?} differ from ggml");
    }
}

/// Quantizing a tensor of `synth-F32.gguf` to the type `llama-quantize` gave
/// it in `synth-<FTYPE>.gguf` must reproduce llama.cpp's bytes. Reports the
/// fraction of identical blocks per file and type, then requires all of them.
#[test]
fn quantizers_match_llama_quantize() {
    let src = GgufFile::open(fixture("synth/synth-F32.gguf")).unwrap();
    let ftypes = [
        "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS",
    ];
    // (file, type) -> (matching blocks, blocks)
    let mut rates: BTreeMap<(String, String), (usize, usize)> = BTreeMap::new();
    let mut first_mismatch = Vec::new();
    for ftype in ftypes {
        let q = GgufFile::open(fixture(&format!("synth/synth-{ftype}.gguf"))).unwrap();
        for t in q.tensors() {
            if !FORMATS.contains(&t.ggml_type) {
                continue;
            }
            let ty = t.ggml_type;
            let (st, sbytes) = src.tensor_by_name(&t.name).unwrap();
            assert_eq!(st.ggml_type, GgmlType::F32, "{}", t.name);
            assert_eq!(st.dims, t.dims, "{}", t.name);
            let x = f32_le(sbytes);
            let want = q.tensor_data(t);
            let mut got = vec![0u8; row_bytes(ty, x.len()).unwrap()];
            quantize_row(ty, &x, &mut got).unwrap();
            let bs = ty.type_size();
            let e = rates
                .entry((ftype.to_string(), ty.name().to_string()))
                .or_default();
            for (i, (g, w)) in got.chunks_exact(bs).zip(want.chunks_exact(bs)).enumerate() {
                e.1 += 1;
                if g == w {
                    e.0 += 1;
                } else if first_mismatch.len() < 5 {
                    first_mismatch.push(format!("synth-{ftype} {} ({ty}) block {i}", t.name));
                }
            }
        }
    }
    let mut all_match = true;
    for ((file, ty), (ok, n)) in &rates {
        println!(
            "synth-{file}: {ty}: {ok}/{n} blocks identical ({:.3}%)",
            100.0 * *ok as f64 / *n as f64
        );
        all_match &= ok == n;
    }
    for ty in FORMATS {
        assert!(
            rates.keys().any(|(_, t)| t == ty.name()),
            "no synth tensor of type {ty} was checked"
        );
    }
    assert!(all_match, "first mismatches: {first_mismatch:?}");
}

/// Quantizes `x` to `ty`, then dequantizes it.
fn roundtrip(ty: GgmlType, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut q = vec![0u8; row_bytes(ty, x.len()).unwrap()];
    quantize_row(ty, x, &mut q).unwrap();
    let mut y = vec![0f32; x.len()];
    dequantize_row(ty, &q, &mut y).unwrap();
    (q, y)
}

/// Largest allowed RMS error of quantize→dequantize, relative to the RMS of
/// Gaussian-like input (measured values are roughly half of these).
fn rel_rmse_bound(ty: GgmlType) -> f64 {
    match ty {
        GgmlType::Q2_K => 0.50,
        GgmlType::Q3_K => 0.30,
        GgmlType::Q4_K => 0.15,
        GgmlType::Q5_K => 0.08,
        GgmlType::Q6_K => 0.04,
        GgmlType::IQ4_NL | GgmlType::IQ4_XS => 0.15,
        _ => unreachable!(),
    }
}

/// Deterministic approximately normal values (sum of uniforms) with a few outliers.
fn gaussian_like(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|i| {
            let g: f64 = (0..4).map(|_| next()).sum::<f64>() - 2.0;
            let v = if i % 97 == 13 { 6.0 * g } else { g };
            v as f32
        })
        .collect()
}

fn rel_rmse(x: &[f32], y: &[f32]) -> f64 {
    let err: f64 = x
        .iter()
        .zip(y)
        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
        .sum();
    let sig: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
    (err / sig).sqrt()
}

#[test]
fn quantize_dequantize_error_is_bounded() {
    for ty in FORMATS {
        let x = gaussian_like(256 * 16, ty.id() as u64);
        let (_, y) = roundtrip(ty, &x);
        let e = rel_rmse(&x, &y);
        println!("{ty}: relative RMS error {e:.4}");
        assert!(e < rel_rmse_bound(ty), "{ty}: relative RMS error {e}");
    }
}

/// `quantize_row_iq4_nl_ref` (one scale guess, no search) is a valid but
/// coarser quantizer than the `quantize_iq4_nl` that llama-quantize runs.
#[test]
fn iq4_nl_ref_quantizer_is_coarser_than_search() {
    use quant_kernels::formats::iq4_nl::{
        dequantize_row_iq4_nl, quantize_iq4_nl, quantize_row_iq4_nl_ref, BlockIQ4_NL,
    };
    let x = gaussian_like(32 * 64, 5);
    let mut blocks = vec![bytemuck::Zeroable::zeroed(); 64];
    let mut y = vec![0f32; x.len()];
    let mut err = |quantize: fn(&[f32], &mut [BlockIQ4_NL])| {
        quantize(&x, &mut blocks);
        dequantize_row_iq4_nl(&blocks, &mut y);
        rel_rmse(&x, &y)
    };
    let (e_ref, e_search) = (err(quantize_row_iq4_nl_ref), err(quantize_iq4_nl));
    println!("IQ4_NL: ref {e_ref:.4}, search {e_search:.4}");
    assert!(e_search <= e_ref && e_ref < rel_rmse_bound(GgmlType::IQ4_NL));
}

#[test]
fn degenerate_blocks() {
    for ty in FORMATS {
        let n = 256;
        // All zeros quantize to a block that dequantizes to zeros.
        let (_, y) = roundtrip(ty, &vec![0.0; n]);
        assert!(y.iter().all(|v| *v == 0.0), "{ty}: zeros");
        // Constant, negative-only, single outlier and tiny values stay finite
        // and keep their sign pattern roughly.
        let cases: [Vec<f32>; 4] = [
            vec![0.75; n],
            (0..n).map(|i| -1.0 - (i % 7) as f32).collect(),
            (0..n)
                .map(|i| {
                    if i == 100 {
                        1000.0
                    } else {
                        0.01 * (i % 5) as f32
                    }
                })
                .collect(),
            (0..n).map(|i| 1e-20 * ((i % 9) as f32 - 4.0)).collect(),
        ];
        for (c, x) in cases.iter().enumerate() {
            let (q1, y) = roundtrip(ty, x);
            let (q2, _) = roundtrip(ty, x);
            assert_eq!(q1, q2, "{ty}: case {c} not deterministic");
            assert!(y.iter().all(|v| v.is_finite()), "{ty}: case {c} not finite");
        }
        // The outlier is kept to within a tenth.
        let (_, y) = roundtrip(ty, &cases[2]);
        assert!(
            (y[100] - 1000.0).abs() < 100.0,
            "{ty}: outlier became {}",
            y[100]
        );
    }
}

/// `vec_dot` on `n` weights of `ty` (made from `w`) with activations made
/// from `a`, and the f64 dot product of both sides dequantized, with the sum
/// of |products| for scaling the tolerance.
fn dot_vs_dequantized(ty: GgmlType, w: &[f32], a: &[f32]) -> (f32, f64, f64) {
    let k = kernels(ty).unwrap();
    let n = w.len();
    let (wq, wd) = roundtrip(ty, w);
    let act = k.vec_dot_type;
    let mut aq = vec![0u8; row_bytes(act, n).unwrap()];
    quantize_row(act, a, &mut aq).unwrap();
    let mut ad = vec![0f32; n];
    dequantize_row(act, &aq, &mut ad).unwrap();
    let got = (k.vec_dot)(n, &wq, &aq);
    let exact: f64 = wd.iter().zip(&ad).map(|(x, y)| *x as f64 * *y as f64).sum();
    let mag: f64 = wd
        .iter()
        .zip(&ad)
        .map(|(x, y)| (*x as f64 * *y as f64).abs())
        .sum();
    (got, exact, mag)
}

#[test]
fn odd_shapes() {
    // One block, many blocks, and a row of a length seen in real models (11008 = 43·256).
    for ty in FORMATS {
        for nb in [1usize, 3, 43] {
            let n = nb * 256;
            let w = gaussian_like(n, 7 + nb as u64);
            let a = gaussian_like(n, 1000 + nb as u64);
            let (got, exact, mag) = dot_vs_dequantized(ty, &w, &a);
            assert!(
                ((got as f64) - exact).abs() <= 1e-5 * mag + 1e-6,
                "{ty}, {nb} blocks: vec_dot {got} vs dequantized {exact}"
            );
        }
        // Partial blocks and wrong buffer sizes are typed errors, not panics.
        let bs = ty.block_size();
        let mut out = vec![0u8; 1000];
        assert!(quantize_row(ty, &vec![0.0; bs + 1], &mut out).is_err());
        assert!(dequantize_row(ty, &out[..ty.type_size() + 1], &mut vec![0.0; bs]).is_err());
    }
}

/// Native (SIMD) and portable dot products of the weight bytes `wq` with
/// activations made from `a`, and Σ|w·a| of the dequantized operands.
fn native_vs_portable(ty: GgmlType, wq: &[u8], a: &[f32]) -> Option<(f32, f32, f64)> {
    let native = simd::native_vec_dot_for(ty, simd::features())?;
    let portable = simd::portable_vec_dot(ty).unwrap();
    let n = a.len();
    let act = kernels(ty).unwrap().vec_dot_type;
    let mut aq = vec![0u8; row_bytes(act, n).unwrap()];
    quantize_row(act, a, &mut aq).unwrap();
    let mut ad = vec![0f32; n];
    dequantize_row(act, &aq, &mut ad).unwrap();
    let mut wd = vec![0f32; n];
    dequantize_row(ty, wq, &mut wd).unwrap();
    let mag: f64 = wd
        .iter()
        .zip(&ad)
        .map(|(x, y)| (*x as f64 * *y as f64).abs())
        .sum();
    Some((native(n, wq, &aq), portable(n, wq, &aq), mag))
}

#[test]
fn simd_kernels_exist_where_detected() {
    if simd::features().avx2 {
        for ty in FORMATS {
            assert!(
                simd::native_vec_dot_for(ty, simd::features()).is_some(),
                "{ty}"
            );
            assert!(std::ptr::fn_addr_eq(
                simd::vec_dot_for(ty).unwrap(),
                simd::native_vec_dot_for(ty, simd::features()).unwrap()
            ));
        }
    }
}

/// The golden blocks are random bit patterns: every scale and quant value occurs.
#[test]
fn simd_matches_portable_on_golden_blocks() {
    for ty in FORMATS {
        let blocks = std::fs::read(fixture(&format!("quant/{}.blocks", ty.name()))).unwrap();
        let n = blocks.len() / ty.type_size() * ty.block_size();
        let a = gaussian_like(n, 99);
        if let Some((native, portable, mag)) = native_vs_portable(ty, &blocks, &a) {
            assert!(
                ((native - portable) as f64).abs() <= 1e-5 * mag,
                "{ty}: native {native} portable {portable}"
            );
        }
    }
}

fn any_format() -> impl Strategy<Value = GgmlType> {
    proptest::sample::select(FORMATS.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The fused integer dot product equals the dot product of the
    /// dequantized operands up to float rounding (ggml's own test allows a
    /// far looser 4e-3 of the quantization error).
    #[test]
    fn vec_dot_matches_dequantized_dot(
        ty in any_format(),
        nb in 1usize..5,
        seed in any::<u64>(),
        scale in prop_oneof![Just(1e-3f32), Just(1.0f32), Just(50.0f32)],
    ) {
        let n = nb * 256;
        let w: Vec<f32> = gaussian_like(n, seed).iter().map(|v| v * scale).collect();
        let a = gaussian_like(n, seed ^ 0xABCD);
        let (got, exact, mag) = dot_vs_dequantized(ty, &w, &a);
        prop_assert!(
            ((got as f64) - exact).abs() <= 1e-5 * mag + 1e-30,
            "{}: vec_dot {} vs dequantized {} (|sum| {})", ty, got, exact, mag
        );
    }

    /// SIMD and portable dot products agree within 1e-5 of Σ|w·a| over the row,
    /// on quantized weights and on raw random blocks (finite f16 scales).
    #[test]
    fn simd_matches_portable(
        ty in any_format(),
        nb in 1usize..9,
        seed in any::<u64>(),
        raw in any::<bool>(),
    ) {
        let n = nb * ty.block_size() * if ty == GgmlType::IQ4_NL { 8 } else { 1 };
        let wq = if raw {
            let mut s = seed | 1;
            let mut bytes: Vec<u8> = (0..row_bytes(ty, n).unwrap())
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s >> 24) as u8
                })
                .collect();
            // Clear the top exponent bit of every f16 field so scales are finite and small.
            let f16_offsets: &[usize] = match ty {
                GgmlType::Q2_K => &[81, 83],
                GgmlType::Q3_K => &[109],
                GgmlType::Q4_K | GgmlType::Q5_K => &[1, 3],
                GgmlType::Q6_K => &[209],
                GgmlType::IQ4_NL | GgmlType::IQ4_XS => &[1],
                _ => unreachable!(),
            };
            for b in bytes.chunks_exact_mut(ty.type_size()) {
                for &o in f16_offsets {
                    b[o] &= 0x3F;
                }
            }
            bytes
        } else {
            roundtrip(ty, &gaussian_like(n, seed)).0
        };
        let a = gaussian_like(n, seed ^ 0x5555);
        if let Some((native, portable, mag)) = native_vs_portable(ty, &wq, &a) {
            prop_assert!(
                ((native - portable) as f64).abs() <= 1e-5 * mag + 1e-30,
                "{}: native {} portable {} (|sum| {})", ty, native, portable, mag
            );
        }
    }

    /// Quantize→dequantize stays within the format's error bound for any input scale.
    #[test]
    fn roundtrip_error_bounded(ty in any_format(), seed in any::<u64>(), exp in -6i32..16) {
        let s = 2f32.powi(exp);
        let x: Vec<f32> = gaussian_like(512, seed).iter().map(|v| v * s).collect();
        let (_, y) = roundtrip(ty, &x);
        let e = rel_rmse(&x, &y);
        prop_assert!(e < rel_rmse_bound(ty), "{}: relative RMS error {}", ty, e);
    }
}
