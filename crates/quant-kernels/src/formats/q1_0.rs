//! Q1_0: 128 weights share an f16 scale and keep only their signs,
//! `x = ±d`; 1.125 bits per weight.
//!
//! Bit `j % 8` of byte `j / 8` is set when weight `j` is `+d` (it was `≥ 0`).
//! The scale is the mean absolute value of the block. Ported from ggml's
//! `quantize_row_q1_0_ref`, `dequantize_row_q1_0` and
//! `ggml_vec_dot_q1_0_q8_0_generic`.

use std::mem::size_of;

use bytemuck::{Pod, Zeroable};
use gguf_format::GgmlType;
use half::f16;

use super::f16::{fp16_to_fp32, fp32_to_fp16};
use super::q8_0::BlockQ8_0;
use super::{dequantize_bytes, quantize_bytes, vec_dot_bytes, FormatKernels};

/// Weights per Q1_0 block (ggml's `QK1_0`).
pub const QK1_0: usize = 128;

/// One Q1_0 block (ggml's `block_q1_0`): `x = d` where the bit is set, `−d`
/// where it is not.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ1_0 {
    /// Scale: the mean of `|x|` over the block.
    pub d: f16,
    /// Sign bits, weight `j` at bit `j % 8` of byte `j / 8`.
    pub qs: [u8; QK1_0 / 8],
}
const _: () = assert!(std::mem::size_of::<BlockQ1_0>() == 18);

/// Dequantizes `x` into `y` (`y.len() == x.len() * 128`), bit-exact to ggml.
pub fn dequantize_row_q1_0(x: &[BlockQ1_0], y: &mut [f32]) {
    assert_eq!(y.len(), x.len() * QK1_0);
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK1_0)) {
        let d = fp16_to_fp32(b.d);
        for (j, y) in y.iter_mut().enumerate() {
            *y = if (b.qs[j / 8] >> (j % 8)) & 1 != 0 {
                d
            } else {
                -d
            };
        }
    }
}

/// Quantizes `x` (`x.len() == y.len() * 128`) to Q1_0 with ggml's reference
/// algorithm: `d = Σ|x| / 128` (summed in order), and the bit of each weight
/// is `x ≥ 0` (so `−0.0` is positive and NaN negative).
pub fn quantize_row_q1_0_ref(x: &[f32], y: &mut [BlockQ1_0]) {
    assert_eq!(x.len(), y.len() * QK1_0);
    for (x, b) in x.chunks_exact(QK1_0).zip(y.iter_mut()) {
        let mut sum_abs = 0.0f32;
        for &v in x {
            sum_abs += v.abs();
        }
        b.d = fp32_to_fp16(sum_abs / QK1_0 as f32);
        b.qs = [0; QK1_0 / 8];
        for (j, &v) in x.iter().enumerate() {
            if v >= 0.0 {
                b.qs[j / 8] |= 1 << (j % 8);
            }
        }
    }
}

/// `Σ ±q8` over the 32 activations of one Q8_0 block, the signs from the 32
/// bits of `bits` (exact).
#[inline(always)]
pub(crate) fn signed_sum_32(bits: &[u8], q8: &[i8; 32]) -> i32 {
    let mut sum = 0i32;
    for (k, &q) in q8.iter().enumerate() {
        let q = i32::from(q);
        sum += if (bits[k / 8] >> (k % 8)) & 1 != 0 {
            q
        } else {
            -q
        };
    }
    sum
}

/// Dot product of Q1_0 weights with Q8_0 activations, four Q8_0 blocks per
/// Q1_0 block (ggml's `ggml_vec_dot_q1_0_q8_0_generic`): per block
/// `sumi = Σ_k d_k · Σ±q8` over its four activation blocks, then
/// `sumf += d · sumi`.
pub fn vec_dot_q1_0_q8_0(x: &[BlockQ1_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len() * 4, y.len());
    let mut sumf = 0.0f32;
    for (b, a) in x.iter().zip(y.chunks_exact(4)) {
        let d0 = fp16_to_fp32(b.d);
        let mut sumi = 0.0f32;
        for (k, a) in a.iter().enumerate() {
            let d1 = fp16_to_fp32(a.d);
            sumi += d1 * signed_sum_32(&b.qs[4 * k..4 * k + 4], &a.qs) as f32;
        }
        sumf += d0 * sumi;
    }
    sumf
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    dequantize_bytes(src, dst, dequantize_row_q1_0);
}

fn quantize(src: &[f32], dst: &mut [u8]) {
    quantize_bytes(src, dst, quantize_row_q1_0_ref);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK1_0;
    let (wb, ab) = (nb * size_of::<BlockQ1_0>(), 4 * nb * size_of::<BlockQ8_0>());
    vec_dot_bytes(&w[..wb], &a[..ab], vec_dot_q1_0_q8_0)
}

pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::Q1_0,
    vec_dot_type: GgmlType::Q8_0,
    dequantize,
    quantize: Some(quantize),
    vec_dot,
};
