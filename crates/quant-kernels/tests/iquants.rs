//! The i-quants (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M),
//! the ternary formats (TQ1_0, TQ2_0) and MXFP4: bit-exact dequantization
//! and byte-exact reference quantization against ggml's goldens, and the
//! fused dot products (portable, and SIMD where detected) against ggml's own
//! `*_generic` results and an f64 dot of dequantized operands.

use proptest::prelude::*;
use quant_kernels::formats::{self, iq1_m, iq2_xxs, mxfp4, q8_0, q8_k};
use quant_kernels::{
    dequantize_row, matmul, matvec, quantize_row, row_bytes, simd, GgmlType, QMatrix, QuantError,
    Scratch,
};

use crate::core_util::{f32s, fixture, Rng};

/// Every format of this module.
const TYPES: [GgmlType; 10] = [
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
];

/// The formats with a ggml reference quantizer.
const QUANTIZABLE: [GgmlType; 3] = [GgmlType::TQ1_0, GgmlType::TQ2_0, GgmlType::MXFP4];

#[test]
fn dequantize_matches_ggml_bit_for_bit() {
    for ty in TYPES {
        let blocks = fixture(&format!("{ty}.blocks"));
        let want = f32s(&fixture(&format!("{ty}.f32")));
        assert_eq!(
            blocks.len() / ty.type_size() * ty.block_size(),
            want.len(),
            "{ty}"
        );
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
    for ty in QUANTIZABLE {
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
fn vec_dot_matches_ggml_generic_bit_for_bit() {
    // `T.vecdot.f32`: ggml's own `ggml_vec_dot_<T>_<act>_generic`, row r of
    // `n` weights of `T.blocks` (1024, four super-blocks; 256 for MXFP4)
    // against activations `n·r..n·(r+1)` of `vecdot.act.f32` quantized with
    // ggml's `quantize_row_q8_K_ref` / `quantize_row_q8_0_ref`.
    let act = f32s(&fixture("vecdot.act.f32"));
    for ty in TYPES {
        let blocks = fixture(&format!("{ty}.blocks"));
        let want = f32s(&fixture(&format!("{ty}.vecdot.f32")));
        let k = formats::kernels(ty).unwrap();
        let n = if ty == GgmlType::MXFP4 { 256 } else { 1024 };
        let rb = row_bytes(ty, n).unwrap();
        assert_eq!(want.len(), blocks.len() / rb, "{ty}");
        // The dispatched kernel (SIMD where this CPU has one) is held to the
        // same bits: its integer sums are exact and its float steps the same.
        let dispatched = simd::vec_dot_for(ty).unwrap();
        for (r, (w, want)) in blocks.chunks_exact(rb).zip(&want).enumerate() {
            let (a, _) = activations(k.vec_dot_type, &act[r * n..(r + 1) * n]);
            let got = (k.vec_dot)(n, w, &a);
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "{ty} row {r}: {got} vs {want}"
            );
            let got = dispatched(n, w, &a);
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "{ty} dispatched, row {r}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn ternary_quantization_round_trips_ternary_input() {
    // Values already of the form d·t survive a quantize/dequantize round trip
    // exactly, zero blocks included (d = 0 must not divide by zero).
    let mut rng = Rng(0x7e57);
    let mut x: Vec<f32> = (0..3 * 256)
        .map(|_| (rng.next_u64() % 3) as f32 - 1.0)
        .collect();
    x[0] = 1.0; // both nonzero blocks hold amax = 1 = d
    x[256] = -1.0;
    x[512..].iter_mut().for_each(|v| *v = 0.0);
    for ty in [GgmlType::TQ1_0, GgmlType::TQ2_0] {
        let mut q = vec![0u8; row_bytes(ty, x.len()).unwrap()];
        quantize_row(ty, &x, &mut q).unwrap();
        let mut back = vec![0.0f32; x.len()];
        dequantize_row(ty, &q, &mut back).unwrap();
        assert_eq!(back, x, "{ty}");
    }
}

#[test]
fn formats_without_a_reference_quantizer_say_so() {
    for ty in TYPES.into_iter().filter(|t| !QUANTIZABLE.contains(t)) {
        let n = ty.block_size();
        let mut dst = vec![0u8; ty.type_size()];
        assert_eq!(
            quantize_row(ty, &vec![0.5; n], &mut dst),
            Err(QuantError::UnsupportedType(ty))
        );
    }
}

#[test]
fn table_rows_pair_with_ggml_activation_types() {
    for ty in TYPES {
        let k = formats::kernels(ty).unwrap_or_else(|| panic!("{ty} has no kernels"));
        assert_eq!(k.ty, ty);
        let want = if ty == GgmlType::MXFP4 {
            GgmlType::Q8_0
        } else {
            GgmlType::Q8_K
        };
        assert_eq!(k.vec_dot_type, want, "{ty}");
    }
}

#[test]
fn bad_lengths_are_typed_errors() {
    for ty in TYPES {
        let mut out = vec![0.0f32; ty.block_size()];
        let err = dequantize_row(ty, &vec![0u8; ty.type_size() - 1], &mut out).unwrap_err();
        assert!(matches!(err, QuantError::BadLength { .. }), "{ty}: {err}");
        let mut out = vec![0.0f32; ty.block_size() + 1];
        let err = dequantize_row(ty, &vec![0u8; ty.type_size()], &mut out).unwrap_err();
        assert!(
            matches!(err, QuantError::PartialBlock { .. }),
            "{ty}: {err}"
        );
    }
}

#[test]
fn mxfp4_scale_is_half_the_e8m0_value() {
    // ggml_e8m0_to_fp32_half: 2^(e-128); e = 0 and 1 are subnormal f32s.
    assert_eq!(mxfp4::e8m0_to_fp32_half(0).to_bits(), 0x0020_0000);
    assert_eq!(mxfp4::e8m0_to_fp32_half(1).to_bits(), 0x0040_0000);
    for e in 2..=255u8 {
        assert_eq!(
            mxfp4::e8m0_to_fp32_half(e),
            2f32.powi(i32::from(e) - 128),
            "e = {e}"
        );
    }
}

#[test]
fn iq1_m_scale_is_assembled_from_nibbles() {
    // The f16 super-block scale 1.0 (0x3c00) spread over the top nibbles of
    // the four scale words; all sub-scales 0 (→ 1), all grid indices 0
    // (iq1s_grid[0] = all −1), positive shifts: every weight is −1 + 1/8.
    let mut b = iq1_m::BlockIQ1_M {
        qs: [0; 32],
        qh: [0; 16],
        scales: [0; 8],
    };
    b.scales[1] = 0x00; // nibble 0 of 0x3c00
    b.scales[3] = 0x00; // nibble 1
    b.scales[5] = 0xc0; // nibble 2
    b.scales[7] = 0x30; // nibble 3
    let mut y = [0.0f32; 256];
    iq1_m::dequantize_row_iq1_m(&[b], &mut y);
    assert!(y.iter().all(|&v| v == -0.875), "{:?}", &y[..8]);
}

#[test]
fn iq2_xxs_sign_parity_is_even() {
    // The 8th sign is implied: a stored sign index with an odd number of
    // bits set negates the last value too.
    let mut b = iq2_xxs::BlockIQ2_XXS {
        d: half::f16::from_f32(4.0),
        qs: [0; 32],
    };
    b.qs[2] = 1; // group 0: sign index 1 (one bit: first value negated, parity → last too)
    let mut y = [0.0f32; 256];
    iq2_xxs::dequantize_row_iq2_xxs(&[b], &mut y);
    // d·(0.5 + 0)/4 · 8 = 4.0
    assert_eq!(&y[..8], &[-4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, -4.0]);
}

/// Random blocks of `ty` whose scale fields hold finite values of moderate
/// size (random bits elsewhere), so products stay finite.
fn random_blocks(ty: GgmlType, n_blocks: usize, rng: &mut Rng) -> Vec<u8> {
    let ts = ty.type_size();
    let mut out: Vec<u8> = (0..n_blocks * ts).map(|_| rng.next_u64() as u8).collect();
    for b in out.chunks_exact_mut(ts) {
        let d = half::f16::from_f32(rng.unit() * 0.05).to_bits();
        match ty {
            GgmlType::TQ1_0 => b[52..54].copy_from_slice(&d.to_le_bytes()),
            GgmlType::TQ2_0 => b[64..66].copy_from_slice(&d.to_le_bytes()),
            GgmlType::MXFP4 => b[0] = 100 + (rng.next_u64() % 40) as u8,
            GgmlType::IQ1_M => {
                for k in 0..4 {
                    let nib = ((d >> (4 * k)) & 0xf) as u8;
                    b[49 + 2 * k] = (b[49 + 2 * k] & 0x0f) | (nib << 4);
                }
            }
            _ => b[0..2].copy_from_slice(&d.to_le_bytes()),
        }
    }
    out
}

/// Σ|a·b| in f64: the scale against which dot-product rounding is judged.
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

/// Activations quantized with the reference quantizer of `act`.
fn activations(act: GgmlType, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut q = vec![0u8; row_bytes(act, x.len()).unwrap()];
    let mut d = vec![0.0f32; x.len()];
    match act {
        GgmlType::Q8_K => {
            let mut blocks = vec![q8_k::BlockQ8_K::default(); x.len() / 256];
            q8_k::quantize_row_q8_k_ref(x, &mut blocks);
            q.copy_from_slice(bytemuck::cast_slice(&blocks));
            q8_k::dequantize_row_q8_k(&blocks, &mut d);
        }
        GgmlType::Q8_0 => {
            let mut blocks = vec![q8_0::BlockQ8_0::default(); x.len() / 32];
            q8_0::quantize_row_q8_0_ref(x, &mut blocks);
            q.copy_from_slice(bytemuck::cast_slice(&blocks));
            q8_0::dequantize_row_q8_0(&blocks, &mut d);
        }
        _ => unreachable!("{act}"),
    }
    (q, d)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// The fused integer dot product equals the f64 dot of what the two
    /// operands dequantize to, up to f32 rounding of the per-block sums.
    #[test]
    fn vec_dot_is_dot_of_dequantized(seed in 1u64.., blocks in 1usize..6) {
        for ty in TYPES {
            let mut rng = Rng(seed | 1);
            let n = blocks * 256;
            let w = random_blocks(ty, n / ty.block_size(), &mut rng);
            let mut wd = vec![0.0f32; n];
            dequantize_row(ty, &w, &mut wd).unwrap();
            let k = formats::kernels(ty).unwrap();
            let x = rng.activations(n);
            let (a, ad) = activations(k.vec_dot_type, &x);
            let got = f64::from((k.vec_dot)(n, &w, &a));
            let want = dot64(&wd, &ad);
            let tol = 1e-5 * abs_dot(&wd, &ad) + 1e-12;
            prop_assert!((got - want).abs() <= tol, "{ty}: {got} vs {want} (tol {tol})");
        }
    }

    /// Every native kernel returns its portable twin's result bit for bit.
    #[test]
    fn native_vec_dot_is_bit_identical_to_portable(seed in 1u64.., blocks in 1usize..9) {
        let features = simd::features();
        for ty in TYPES {
            let Some(native) = simd::native_vec_dot_for(ty, features) else { continue };
            let mut rng = Rng(seed | 1);
            let n = blocks * 256;
            let w = random_blocks(ty, n / ty.block_size(), &mut rng);
            let k = formats::kernels(ty).unwrap();
            let x = rng.activations(n);
            let mut a = vec![0u8; row_bytes(k.vec_dot_type, n).unwrap()];
            (simd::from_float_for(k.vec_dot_type).unwrap())(&x, &mut a);
            let (want, got) = ((k.vec_dot)(n, &w, &a), native(n, &w, &a));
            prop_assert_eq!(got.to_bits(), want.to_bits(), "{}: {} vs {}", ty, got, want);
        }
    }
}

#[test]
fn native_kernels_are_registered_where_detected() {
    // Without this the bit-identity property above could pass vacuously.
    if cfg!(target_arch = "x86_64") && simd::features().avx2 {
        for ty in TYPES {
            assert!(
                simd::native_vec_dot_for(ty, simd::features()).is_some(),
                "{ty}"
            );
        }
    }
}

#[test]
fn matvec_and_matmul_use_these_formats() {
    // A matrix of each format through the crate's matrix products: every
    // output is the dispatched dot product of its row with the activations
    // quantized by the dispatched quantizer, bit for bit.
    let (rows, cols, n) = (7, 512, 3);
    let mut rng = Rng(0xfeed);
    for ty in TYPES {
        let data = random_blocks(ty, rows * cols / ty.block_size(), &mut rng);
        let m = QMatrix::new(ty, rows, cols, &data).unwrap();
        let x = rng.activations(n * cols);
        let k = formats::kernels(ty).unwrap();
        let dot = simd::vec_dot_for(ty).unwrap();
        let quantize = simd::from_float_for(k.vec_dot_type).unwrap();
        let rb = row_bytes(ty, cols).unwrap();
        let want: Vec<f32> = x
            .chunks_exact(cols)
            .flat_map(|xc| {
                let mut a = vec![0u8; row_bytes(k.vec_dot_type, cols).unwrap()];
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
