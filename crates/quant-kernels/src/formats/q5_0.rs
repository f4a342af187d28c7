//! Q5_0: 32 weights share an f16 scale, `x = d·(q − 16)` with `q` 5 bits (a
//! nibble plus one bit of `qh`); 5.5 bits per weight. Pairs with Q8_0.

use bytemuck::{Pod, Zeroable};
use gguf_format::GgmlType;
use half::f16;

use super::f16::{fp16_to_fp32, fp32_to_fp16};
use super::q8_0::BlockQ8_0;
use super::FormatKernels;

/// Weights per Q5_0 block (ggml's `QK5_0`).
pub const QK5_0: usize = 32;

/// One Q5_0 block (ggml's `block_q5_0`): bit `j` of the little-endian
/// `qh` is the fifth bit of weight `j`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_0 {
    /// Scale.
    pub d: f16,
    /// Fifth bits, little-endian u32.
    pub qh: [u8; 4],
    /// Low nibbles.
    pub qs: [u8; QK5_0 / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);

/// Port of ggml's `dequantize_row_q5_0` (ggml-quants.c).
pub fn dequantize_row_q5_0(x: &[BlockQ5_0], y: &mut [f32]) {
    assert_eq!(x.len() * QK5_0, y.len());
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK5_0)) {
        let d = fp16_to_fp32(b.d);
        let qh = u32::from_le_bytes(b.qh);
        let (lo, hi) = y.split_at_mut(QK5_0 / 2);
        for (j, ((&q, lo), hi)) in b.qs.iter().zip(lo).zip(hi).enumerate() {
            let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
            let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
            let x0 = i32::from((q & 0x0F) | xh_0) - 16;
            let x1 = i32::from((q >> 4) | xh_1) - 16;
            *lo = x0 as f32 * d;
            *hi = x1 as f32 * d;
        }
    }
}

/// Port of ggml's `quantize_row_q5_0_ref` (ggml-quants.c): the signed value
/// of largest magnitude maps to −16, `q = min(31, trunc(x/d + 16.5))`.
pub fn quantize_row_q5_0_ref(x: &[f32], y: &mut [BlockQ5_0]) {
    assert_eq!(y.len() * QK5_0, x.len());
    for (x, b) in x.chunks_exact(QK5_0).zip(y.iter_mut()) {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = fp32_to_fp16(d);
        let mut qh = 0u32;
        for j in 0..QK5_0 / 2 {
            let x0 = x[j] * id;
            let x1 = x[QK5_0 / 2 + j] * id;
            let xi0 = ((x0 + 16.5) as i8).min(31) as u8;
            let xi1 = ((x1 + 16.5) as i8).min(31) as u8;
            b.qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
            qh |= (u32::from(xi0 & 0x10) >> 4) << j;
            qh |= (u32::from(xi1 & 0x10) >> 4) << (j + QK5_0 / 2);
        }
        b.qh = qh.to_le_bytes();
    }
}

/// Port of ggml's `ggml_vec_dot_q5_0_q8_0_generic` (ggml-cpu/quants.c).
pub fn vec_dot_q5_0_q8_0(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (x, y) in x.iter().zip(y) {
        let qh = u32::from_le_bytes(x.qh);
        let mut sumi0 = 0i32;
        let mut sumi1 = 0i32;
        for j in 0..QK5_0 / 2 {
            let xh_0 = ((qh >> j) & 1) << 4;
            let xh_1 = ((qh >> (j + 16)) & 1) << 4;
            let x0 = (u32::from(x.qs[j] & 0x0F) | xh_0) as i32 - 16;
            let x1 = (u32::from(x.qs[j] >> 4) | xh_1) as i32 - 16;
            sumi0 += x0 * i32::from(y.qs[j]);
            sumi1 += x1 * i32::from(y.qs[j + QK5_0 / 2]);
        }
        let sumi = sumi0 + sumi1;
        sumf += (fp16_to_fp32(x.d) * fp16_to_fp32(y.d)) * sumi as f32;
    }
    sumf
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::dequantize_bytes(src, dst, dequantize_row_q5_0);
}

fn quantize(src: &[f32], dst: &mut [u8]) {
    super::quantize_bytes(src, dst, quantize_row_q5_0_ref);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK5_0;
    super::vec_dot_bytes(&w[..nb * 22], &a[..nb * 34], vec_dot_q5_0_q8_0)
}

pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::Q5_0,
    vec_dot_type: GgmlType::Q8_0,
    dequantize,
    quantize: Some(quantize),
    vec_dot,
};
