//! MXFP4, the OCP microscaling FP4 format: 4.25 bits per weight.
//!
//! 32 FP4 (E2M1) values share one E8M0 (power-of-two) scale. ggml stores the
//! E2M1 values doubled (`KVALUES_MXFP4`, integers) and halves the scale
//! (`GGML_E8M0_TO_FP32_HALF`) so that the dot product with Q8_0 stays in
//! integers. Ported from ggml's `quantize_row_mxfp4_ref`,
//! `dequantize_row_mxfp4` and `ggml_vec_dot_mxfp4_q8_0_generic`.

use std::mem::size_of;

use bytemuck::{Pod, Zeroable};
use gguf_format::GgmlType;

use super::f16::fp16_to_fp32;
use super::iq_grids::KVALUES_MXFP4;
use super::q8_0::BlockQ8_0;
use super::{dequantize_bytes, quantize_bytes, vec_dot_bytes, FormatKernels};

const QK_MXFP4: usize = 32;

/// One MXFP4 block of 32 weights: `x = 2^(e−128) · k[q]`, `k` the doubled
/// E2M1 values, `q` 4 bits (4.25 bpw).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockMXFP4 {
    /// E8M0 scale exponent (bias 127).
    pub e: u8,
    /// Low nibbles: weights 0..16; high nibbles: weights 16..32.
    pub qs: [u8; QK_MXFP4 / 2],
}
const _: () = assert!(std::mem::size_of::<BlockMXFP4>() == 17);

/// Half the value of the E8M0 scale `x`, i.e. `2^(x − 128)`, exact for every
/// `x` (ggml's `ggml_e8m0_to_fp32_half`: 0 and 1 give subnormals).
#[inline(always)]
pub fn e8m0_to_fp32_half(x: u8) -> f32 {
    let bits = if x < 2 {
        0x0020_0000u32 << x
    } else {
        ((x - 1) as u32) << 23
    };
    f32::from_bits(bits)
}

/// Dequantizes `x` into `y` (`y.len() == x.len() * 32`), bit-exact to ggml.
pub fn dequantize_row_mxfp4(x: &[BlockMXFP4], y: &mut [f32]) {
    assert_eq!(y.len(), x.len() * QK_MXFP4);
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_MXFP4)) {
        let d = e8m0_to_fp32_half(b.e);
        for (j, &q) in b.qs.iter().enumerate() {
            y[j] = KVALUES_MXFP4[(q & 0x0f) as usize] as f32 * d;
            y[j + QK_MXFP4 / 2] = KVALUES_MXFP4[(q >> 4) as usize] as f32 * d;
        }
    }
}

/// Index of the level of `KVALUES_MXFP4` nearest to `x` at scale `e`
/// (ggml's `best_index_mxfp4`: the first of equally near levels wins).
#[inline(always)]
pub(crate) fn best_index_mxfp4(x: f32, e: f32) -> u8 {
    let mut best_index = 0;
    let mut best_err = (KVALUES_MXFP4[0] as f32 * e - x).abs();
    for (i, &k) in KVALUES_MXFP4.iter().enumerate().skip(1) {
        let err = (k as f32 * e - x).abs();
        if err < best_err {
            best_index = i;
            best_err = err;
        }
    }
    best_index as u8
}

/// Quantizes `x` (`x.len() == y.len() * 32`) to MXFP4 with ggml's reference
/// algorithm (`quantize_row_mxfp4_ref`): the exponent is
/// `floor(log2(amax)) − 2 + 127`, so that `amax` lands in the top E2M1
/// binade, and each value takes its nearest level.
///
/// The exponent goes through `log2f` as in ggml (not the float's exponent
/// bits): just below a power of two `log2f` rounds up to it, and ggml's
/// bytes depend on that. A result outside `0..=255` (|x| below 2⁻¹²⁵ or
/// infinite) is undefined behaviour in C; this port wraps it to a byte as
/// x86-64 builds of ggml do.
pub fn quantize_row_mxfp4_ref(x: &[f32], y: &mut [BlockMXFP4]) {
    assert_eq!(x.len(), y.len() * QK_MXFP4);
    for (x, b) in x.chunks_exact(QK_MXFP4).zip(y.iter_mut()) {
        let mut amax = 0.0f32;
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
            }
        }
        let e = if amax > 0.0 {
            (amax.log2().floor() - 2.0 + 127.0) as i32 as u8
        } else {
            0
        };
        let d = e8m0_to_fp32_half(e);
        b.e = e;
        for j in 0..QK_MXFP4 / 2 {
            let x0 = best_index_mxfp4(x[j], d);
            let x1 = best_index_mxfp4(x[QK_MXFP4 / 2 + j], d);
            b.qs[j] = x0 | (x1 << 4);
        }
    }
}

/// Dot product of MXFP4 weights with Q8_0 activations (ggml's
/// `ggml_vec_dot_mxfp4_q8_0_generic`).
pub fn vec_dot_mxfp4_q8_0(x: &[BlockMXFP4], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (b, a) in x.iter().zip(y) {
        let d = fp16_to_fp32(a.d) * e8m0_to_fp32_half(b.e);
        let mut sumi1 = 0i32;
        let mut sumi2 = 0i32;
        for (j, &q) in b.qs.iter().enumerate() {
            sumi1 += a.qs[j] as i32 * KVALUES_MXFP4[(q & 0x0f) as usize] as i32;
            sumi2 += a.qs[j + QK_MXFP4 / 2] as i32 * KVALUES_MXFP4[(q >> 4) as usize] as i32;
        }
        sumf += d * (sumi1 + sumi2) as f32;
    }
    sumf
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    dequantize_bytes(src, dst, dequantize_row_mxfp4);
}

fn quantize(src: &[f32], dst: &mut [u8]) {
    quantize_bytes(src, dst, quantize_row_mxfp4_ref);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK_MXFP4;
    let (wb, ab) = (nb * size_of::<BlockMXFP4>(), nb * size_of::<BlockQ8_0>());
    vec_dot_bytes(&w[..wb], &a[..ab], vec_dot_mxfp4_q8_0)
}

pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::MXFP4,
    vec_dot_type: GgmlType::Q8_0,
    dequantize,
    quantize: Some(quantize),
    vec_dot,
};
