//! Bit-exact agreement with ggml on the reference fixtures (F16, BF16, Q4_0,
//! Q4_1, Q5_0, Q5_1, Q8_0): dequantization and reference quantization.

use quant_kernels::{dequantize_row, quantize_row, GgmlType, QuantError};

use crate::core_util::{f32s, fixture};

const GOLDEN: [GgmlType; 7] = [
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
];

#[test]
fn dequantize_matches_ggml_bit_for_bit() {
    for ty in GOLDEN {
        let blocks = fixture(&format!("{ty}.blocks"));
        let want = f32s(&fixture(&format!("{ty}.f32")));
        let mut got = vec![0.0f32; want.len()];
        dequantize_row(ty, &blocks, &mut got).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{ty} element {i}: {g} vs {w}");
        }
    }
}

#[test]
fn dequantize_misaligned_bytes() {
    // Tensor data could in principle sit at an odd address: the kernels
    // must copy, not panic.
    for ty in GOLDEN {
        let blocks = fixture(&format!("{ty}.blocks"));
        let want = f32s(&fixture(&format!("{ty}.f32")));
        let mut shifted = vec![0u8; blocks.len() + 1];
        shifted[1..].copy_from_slice(&blocks);
        let mut got = vec![0.0f32; want.len()];
        dequantize_row(ty, &shifted[1..], &mut got).unwrap();
        assert!(
            got.iter()
                .zip(&want)
                .all(|(g, w)| g.to_bits() == w.to_bits()),
            "{ty}"
        );
    }
}

#[test]
fn quantize_matches_ggml_byte_for_byte() {
    for ty in GOLDEN {
        let src = f32s(&fixture(&format!("{ty}.src.f32")));
        let want = fixture(&format!("{ty}.quant"));
        let mut got = vec![0u8; want.len()];
        quantize_row(ty, &src, &mut got).unwrap();
        let bs = ty.type_size();
        for (i, (g, w)) in got.chunks(bs).zip(want.chunks(bs)).enumerate() {
            assert_eq!(g, w, "{ty} block {i}");
        }
        // And through a misaligned destination.
        let mut shifted = vec![0u8; want.len() + 1];
        quantize_row(ty, &src, &mut shifted[1..]).unwrap();
        assert_eq!(&shifted[1..], &want[..], "{ty} misaligned");
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let mut out = vec![0.0f32; 32];
    assert_eq!(
        dequantize_row(GgmlType::Q4_0, &[0u8; 17], &mut out),
        Err(QuantError::BadLength {
            ty: GgmlType::Q4_0,
            what: "source",
            n: 32,
            expected: 18,
            actual: 17
        })
    );
    let mut out = vec![0.0f32; 33];
    assert!(matches!(
        dequantize_row(GgmlType::Q8_0, &[0u8; 34], &mut out),
        Err(QuantError::PartialBlock { .. })
    ));
    let e = dequantize_row(GgmlType::I32, &[0u8; 4], &mut [0.0]).unwrap_err();
    assert_eq!(e.to_string(), "unsupported tensor type I32");
}

#[test]
fn fp16_conversions_match_ggml() {
    use quant_kernels::formats::bf16::fp32_to_bf16;
    use quant_kernels::formats::f16::fp32_to_fp16;
    // ggml turns every NaN into 0x7E00 (sign kept) and rounds to nearest even.
    assert_eq!(fp32_to_fp16(f32::NAN).to_bits(), 0x7E00);
    assert_eq!(fp32_to_fp16(-f32::NAN).to_bits(), 0xFE00);
    assert_eq!(fp32_to_fp16(65520.0).to_bits(), 0x7C00);
    assert_eq!(fp32_to_fp16(1.0 + 1.0 / 2048.0).to_bits(), 0x3C00);
    assert_eq!(fp32_to_fp16(1.0 + 3.0 / 2048.0).to_bits(), 0x3C02);
    assert_eq!(fp32_to_fp16(5.960_464_5e-8).to_bits(), 0x0001);
    // Every finite f16 survives the round trip; agreement with half's
    // rounding on a sweep of f32 bit patterns.
    for h in 0..=u16::MAX {
        let v = half::f16::from_bits(h);
        if v.is_finite() {
            assert_eq!(fp32_to_fp16(v.to_f32()).to_bits(), h);
        }
    }
    for i in (0..u32::MAX).step_by(4099) {
        let f = f32::from_bits(i);
        if !f.is_nan() {
            assert_eq!(fp32_to_fp16(f), half::f16::from_f32(f), "{i:#x}");
            assert_eq!(fp32_to_bf16(f), half::bf16::from_f32(f), "{i:#x}");
        }
    }
    // f16 → f32 is exact for every pattern (NaN stays NaN).
    use quant_kernels::formats::f16::fp16_to_fp32;
    for h in 0..=u16::MAX {
        let (a, b) = (
            fp16_to_fp32(half::f16::from_bits(h)),
            half::f16::from_bits(h).to_f32(),
        );
        assert!(
            a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
            "{h:#x}"
        );
    }
    // bf16: NaN stays NaN with the quiet bit forced.
    assert_eq!(fp32_to_bf16(f32::from_bits(0x7f80_0001)).to_bits(), 0x7fc0);
}
