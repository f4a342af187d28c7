//! NVFP4, NVIDIA's FP4 format: 4.5 bits per weight.
//!
//! A block of 64 FP4 (E2M1) values in four sub-blocks of 16, each with its
//! own unsigned E4M3 scale (UE4M3, one byte). As for MXFP4, ggml stores the
//! E2M1 values doubled (`kvalues_fp4`, integers) and halves the scale
//! (`ggml_ue4m3_to_fp32` returns half the UE4M3 value), so that the dot
//! product with Q8_0 stays in integers. Sub-block `s` holds weights
//! `16s..16s+16` in bytes `8s..8s+8`: low nibbles weights `16s..16s+8`,
//! high nibbles `16s+8..16s+16`. Ported from ggml's `quantize_row_nvfp4_ref`,
//! `dequantize_row_nvfp4`, `ggml_vec_dot_nvfp4_q8_0_generic` and the
//! UE4M3 conversions of `ggml-impl.h`.

use std::mem::size_of;

use bytemuck::{Pod, Zeroable};
use gguf_format::GgmlType;

use super::f16::fp16_to_fp32;
use super::iq_grids::KVALUES_MXFP4;
use super::mxfp4::best_index_mxfp4;
use super::q8_0::BlockQ8_0;
use super::{dequantize_bytes, quantize_bytes, vec_dot_bytes, FormatKernels};

/// Weights per NVFP4 block (ggml's `QK_NVFP4`).
pub const QK_NVFP4: usize = 64;
/// Weights per scale (ggml's `QK_NVFP4_SUB`).
pub const QK_NVFP4_SUB: usize = 16;

/// One NVFP4 block of 64 weights: `x = s_j · k[q]` for sub-block `j`, `s_j`
/// half its UE4M3 scale, `k` the doubled E2M1 values, `q` 4 bits (4.5 bpw).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockNVFP4 {
    /// UE4M3 scales, one per 16-weight sub-block.
    pub d: [u8; QK_NVFP4 / QK_NVFP4_SUB],
    /// Packed E2M1 codes, 8 bytes per sub-block (see the module docs).
    pub qs: [u8; QK_NVFP4 / 2],
}
const _: () = assert!(std::mem::size_of::<BlockNVFP4>() == 36);

/// Half the value of the UE4M3 byte `x` (4 exponent bits with bias 7, 3
/// mantissa bits; ggml's `ggml_ue4m3_to_fp32`, exact). As in ggml, bit 7 is
/// ignored except that `0x7F` reads as 0 and `0xFF` does not.
#[inline]
pub fn ue4m3_to_fp32(x: u8) -> f32 {
    if x == 0 || x == 0x7F {
        return 0.0;
    }
    let exp = u32::from((x >> 3) & 0xF);
    let man = f32::from(x & 0x7);
    let raw = if exp == 0 {
        man * f32::from_bits((127 - 9) << 23) // man · 2⁻⁹
    } else {
        (1.0 + man / 8.0) * f32::from_bits((exp + 127 - 7) << 23)
    };
    raw * 0.5
}

/// The UE4M3 byte for `x` (ggml's `ggml_fp32_to_ue4m3`): 0 for anything not
/// above zero (NaN included), values above 448 clamped, the mantissa rounded
/// half up on the first dropped bit. Ported as it is, including that every
/// `x` from 256 up gives `0x7E` (448), and subnormals round with
/// `(int)(x·512 + 0.5)`.
pub fn fp32_to_ue4m3(x: f32) -> u8 {
    // `!(x > 0)` also catches NaN.
    if x.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
        return 0;
    }
    let x = if x > 448.0 { 448.0 } else { x };
    let bits = x.to_bits();
    let fp32_exp = ((bits >> 23) & 0xFF) as i32 - 127;
    let fp32_man = ((bits >> 20) & 0x7) as i32;
    let mut exp = fp32_exp + 7;
    if exp <= 0 {
        // Subnormal: man · 2⁻⁹. C's (int) truncates toward zero, as `as` does.
        let man = ((x * 512.0 + 0.5) as i32).min(7);
        return if man < 1 { 0 } else { man as u8 };
    }
    if exp >= 15 {
        return 0x7E;
    }
    let mut man = fp32_man + ((bits >> 19) & 1) as i32;
    if man > 7 {
        man = 0;
        exp += 1;
        if exp >= 15 {
            return 0x7E;
        }
    }
    ((exp << 3) | man) as u8
}

/// Dequantizes `x` into `y` (`y.len() == x.len() * 64`), bit-exact to ggml.
pub fn dequantize_row_nvfp4(x: &[BlockNVFP4], y: &mut [f32]) {
    assert_eq!(y.len(), x.len() * QK_NVFP4);
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_NVFP4)) {
        for (s, y) in y.chunks_exact_mut(QK_NVFP4_SUB).enumerate() {
            let d = ue4m3_to_fp32(b.d[s]);
            for (j, &q) in b.qs[s * 8..s * 8 + 8].iter().enumerate() {
                y[j] = f32::from(KVALUES_MXFP4[(q & 0x0F) as usize]) * d;
                y[j + 8] = f32::from(KVALUES_MXFP4[(q >> 4) as usize]) * d;
            }
        }
    }
}

/// Quantizes `x` (`x.len() == y.len() * 64`) to NVFP4 with ggml's reference
/// algorithm (`quantize_row_nvfp4_ref`): per sub-block of 16 the scale is
/// `ue4m3(amax / 6)` (the largest E2M1 value, 6, lands on `amax`), and each
/// value takes its nearest level at that scale (the first of equally near
/// levels wins).
pub fn quantize_row_nvfp4_ref(x: &[f32], y: &mut [BlockNVFP4]) {
    assert_eq!(x.len(), y.len() * QK_NVFP4);
    for (x, b) in x.chunks_exact(QK_NVFP4).zip(y.iter_mut()) {
        for (s, xb) in x.chunks_exact(QK_NVFP4_SUB).enumerate() {
            let mut amax = 0.0f32;
            for &v in xb {
                if amax < v.abs() {
                    amax = v.abs();
                }
            }
            let ue = fp32_to_ue4m3(amax / 6.0);
            b.d[s] = ue;
            let d = ue4m3_to_fp32(ue);
            for j in 0..QK_NVFP4_SUB / 2 {
                let x0 = best_index_mxfp4(xb[j], d);
                let x1 = best_index_mxfp4(xb[QK_NVFP4_SUB / 2 + j], d);
                b.qs[s * 8 + j] = x0 | (x1 << 4);
            }
        }
    }
}

/// The integer dot product of sub-block `s` of `b` with its 16 activations
/// `q8` (exact).
#[inline(always)]
pub(crate) fn sub_block_dot(b: &BlockNVFP4, s: usize, q8: &[i8]) -> i32 {
    let (mut lo, mut hi) = (0i32, 0i32);
    for (j, &q) in b.qs[s * 8..s * 8 + 8].iter().enumerate() {
        lo += i32::from(q8[j]) * i32::from(KVALUES_MXFP4[(q & 0x0F) as usize]);
        hi += i32::from(q8[j + 8]) * i32::from(KVALUES_MXFP4[(q >> 4) as usize]);
    }
    lo + hi
}

/// Dot product of NVFP4 weights with Q8_0 activations, two Q8_0 blocks per
/// NVFP4 block (ggml's `ggml_vec_dot_nvfp4_q8_0_generic`): per sub-block
/// `sumf += (d_a · s) · Σq·q8`, left to right.
pub fn vec_dot_nvfp4_q8_0(x: &[BlockNVFP4], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len() * 2, y.len());
    let mut sumf = 0.0f32;
    for (b, a) in x.iter().zip(y.chunks_exact(2)) {
        for s in 0..4 {
            let d = ue4m3_to_fp32(b.d[s]);
            let a = &a[s / 2];
            let dy = fp16_to_fp32(a.d);
            let off = (s % 2) * QK_NVFP4_SUB;
            let sumi = sub_block_dot(b, s, &a.qs[off..off + QK_NVFP4_SUB]);
            sumf += dy * d * sumi as f32;
        }
    }
    sumf
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    dequantize_bytes(src, dst, dequantize_row_nvfp4);
}

fn quantize(src: &[f32], dst: &mut [u8]) {
    quantize_bytes(src, dst, quantize_row_nvfp4_ref);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK_NVFP4;
    let (wb, ab) = (
        nb * size_of::<BlockNVFP4>(),
        2 * nb * size_of::<BlockQ8_0>(),
    );
    vec_dot_bytes(&w[..wb], &a[..ab], vec_dot_nvfp4_q8_0)
}

pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::NVFP4,
    vec_dot_type: GgmlType::Q8_0,
    dequantize,
    quantize: Some(quantize),
    vec_dot,
};
