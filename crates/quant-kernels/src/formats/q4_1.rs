//! Q4_1: 32 weights share an f16 scale and an f16 minimum, `x = d·q + m`
//! with `q` a 4-bit nibble; 5 bits per weight. Pairs with Q8_1 activations.

use bytemuck::{Pod, Zeroable};
use gguf_format::GgmlType;
use half::f16;

use super::f16::{fp16_to_fp32, fp32_to_fp16};
use super::q8_1::BlockQ8_1;
use super::FormatKernels;

/// Weights per Q4_1 block (ggml's `QK4_1`).
pub const QK4_1: usize = 32;

/// One Q4_1 block (ggml's `block_q4_1`): nibbles laid out as in Q4_0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_1 {
    /// Scale.
    pub d: f16,
    /// Minimum.
    pub m: f16,
    /// Nibbles.
    pub qs: [u8; QK4_1 / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

/// Port of ggml's `dequantize_row_q4_1` (ggml-quants.c).
pub fn dequantize_row_q4_1(x: &[BlockQ4_1], y: &mut [f32]) {
    assert_eq!(x.len() * QK4_1, y.len());
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK4_1)) {
        let d = fp16_to_fp32(b.d);
        let m = fp16_to_fp32(b.m);
        let (lo, hi) = y.split_at_mut(QK4_1 / 2);
        for ((&q, lo), hi) in b.qs.iter().zip(lo).zip(hi) {
            let x0 = i32::from(q & 0x0F);
            let x1 = i32::from(q >> 4);
            *lo = x0 as f32 * d + m;
            *hi = x1 as f32 * d + m;
        }
    }
}

/// Port of ggml's `quantize_row_q4_1_ref` (ggml-quants.c):
/// `d = (max − min)/15`, `q = min(15, trunc((x − min)/d + 0.5))`.
pub fn quantize_row_q4_1_ref(x: &[f32], y: &mut [BlockQ4_1]) {
    assert_eq!(y.len() * QK4_1, x.len());
    for (x, b) in x.chunks_exact(QK4_1).zip(y.iter_mut()) {
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
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = fp32_to_fp16(d);
        b.m = fp32_to_fp16(min);
        for j in 0..QK4_1 / 2 {
            let x0 = (x[j] - min) * id;
            let x1 = (x[QK4_1 / 2 + j] - min) * id;
            let xi0 = ((x0 + 0.5) as i8).min(15) as u8;
            let xi1 = ((x1 + 0.5) as i8).min(15) as u8;
            b.qs[j] = xi0 | (xi1 << 4);
        }
    }
}

/// Port of ggml's `ggml_vec_dot_q4_1_q8_1_generic` (ggml-cpu/quants.c):
/// `Σ dx·dy·Σq·q8 + m·s`, the Q8_1 sum folding the offset in.
pub fn vec_dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (x, y) in x.iter().zip(y) {
        let mut sumi0 = 0i32;
        let mut sumi1 = 0i32;
        for j in 0..QK4_1 / 2 {
            let v0 = i32::from(x.qs[j] & 0x0F);
            let v1 = i32::from(x.qs[j] >> 4);
            sumi0 += v0 * i32::from(y.qs[j]);
            sumi1 += v1 * i32::from(y.qs[j + QK4_1 / 2]);
        }
        let sumi = sumi0 + sumi1;
        sumf += (fp16_to_fp32(x.d) * fp16_to_fp32(y.d)) * sumi as f32
            + fp16_to_fp32(x.m) * fp16_to_fp32(y.s);
    }
    sumf
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::dequantize_bytes(src, dst, dequantize_row_q4_1);
}

fn quantize(src: &[f32], dst: &mut [u8]) {
    super::quantize_bytes(src, dst, quantize_row_q4_1_ref);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK4_1;
    super::vec_dot_bytes(&w[..nb * 20], &a[..nb * 36], vec_dot_q4_1_q8_1)
}

pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::Q4_1,
    vec_dot_type: GgmlType::Q8_1,
    dequantize,
    quantize: Some(quantize),
    vec_dot,
};
