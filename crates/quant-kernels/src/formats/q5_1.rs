//! Q5_1: 32 weights share an f16 scale and minimum, `x = d·q + m` with `q`
//! 5 bits (a nibble plus one bit of `qh`); 6 bits per weight. Pairs with
//! Q8_1 activations.

use bytemuck::{Pod, Zeroable};
use gguf_format::GgmlType;
use half::f16;

use super::f16::{fp16_to_fp32, fp32_to_fp16};
use super::q8_1::BlockQ8_1;
use super::FormatKernels;

/// Weights per Q5_1 block (ggml's `QK5_1`).
pub const QK5_1: usize = 32;

/// One Q5_1 block (ggml's `block_q5_1`), fifth bits laid out as in Q5_0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_1 {
    /// Scale.
    pub d: f16,
    /// Minimum.
    pub m: f16,
    /// Fifth bits, little-endian u32.
    pub qh: [u8; 4],
    /// Low nibbles.
    pub qs: [u8; QK5_1 / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);

/// Port of ggml's `dequantize_row_q5_1` (ggml-quants.c).
pub fn dequantize_row_q5_1(x: &[BlockQ5_1], y: &mut [f32]) {
    assert_eq!(x.len() * QK5_1, y.len());
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK5_1)) {
        let d = fp16_to_fp32(b.d);
        let m = fp16_to_fp32(b.m);
        let qh = u32::from_le_bytes(b.qh);
        let (lo, hi) = y.split_at_mut(QK5_1 / 2);
        for (j, ((&q, lo), hi)) in b.qs.iter().zip(lo).zip(hi).enumerate() {
            let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
            let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
            let x0 = (q & 0x0F) | xh_0;
            let x1 = (q >> 4) | xh_1;
            *lo = f32::from(x0) * d + m;
            *hi = f32::from(x1) * d + m;
        }
    }
}

/// Port of ggml's `quantize_row_q5_1_ref` (ggml-quants.c):
/// `d = (max − min)/31`, `q = trunc((x − min)/d + 0.5)`.
pub fn quantize_row_q5_1_ref(x: &[f32], y: &mut [BlockQ5_1]) {
    assert_eq!(y.len() * QK5_1, x.len());
    for (x, b) in x.chunks_exact(QK5_1).zip(y.iter_mut()) {
        let mut min = f32::MAX;
        let mut max = -f32::MAX;
        for &v in x {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = fp32_to_fp16(d);
        b.m = fp32_to_fp16(min);
        let mut qh = 0u32;
        for j in 0..QK5_1 / 2 {
            let x0 = (x[j] - min) * id;
            let x1 = (x[QK5_1 / 2 + j] - min) * id;
            // ggml's (uint8_t) cast: no clamp, the values lie in [0, 31.5).
            let xi0 = (x0 + 0.5) as u8;
            let xi1 = (x1 + 0.5) as u8;
            b.qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
            qh |= (u32::from(xi0 & 0x10) >> 4) << j;
            qh |= (u32::from(xi1 & 0x10) >> 4) << (j + QK5_1 / 2);
        }
        b.qh = qh.to_le_bytes();
    }
}

/// Port of ggml's `ggml_vec_dot_q5_1_q8_1_generic` (ggml-cpu/quants.c).
pub fn vec_dot_q5_1_q8_1(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (x, y) in x.iter().zip(y) {
        let qh = u32::from_le_bytes(x.qh);
        let mut sumi0 = 0i32;
        let mut sumi1 = 0i32;
        for j in 0..QK5_1 / 2 {
            let xh_0 = ((qh >> j) & 1) << 4;
            let xh_1 = ((qh >> (j + 16)) & 1) << 4;
            let x0 = (u32::from(x.qs[j] & 0x0F) | xh_0) as i32;
            let x1 = (u32::from(x.qs[j] >> 4) | xh_1) as i32;
            sumi0 += x0 * i32::from(y.qs[j]);
            sumi1 += x1 * i32::from(y.qs[j + QK5_1 / 2]);
        }
        let sumi = sumi0 + sumi1;
        sumf += (fp16_to_fp32(x.d) * fp16_to_fp32(y.d)) * sumi as f32
            + fp16_to_fp32(x.m) * fp16_to_fp32(y.s);
    }
    sumf
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::dequantize_bytes(src, dst, dequantize_row_q5_1);
}

fn quantize(src: &[f32], dst: &mut [u8]) {
    super::quantize_bytes(src, dst, quantize_row_q5_1_ref);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK5_1;
    super::vec_dot_bytes(&w[..nb * 24], &a[..nb * 36], vec_dot_q5_1_q8_1)
}

pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::Q5_1,
    vec_dot_type: GgmlType::Q8_1,
    dequantize,
    quantize: Some(quantize),
    vec_dot,
};
