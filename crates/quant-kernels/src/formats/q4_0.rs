//! Q4_0: 32 weights share an f16 scale, `x = d·(q − 8)` with `q` a 4-bit
//! unsigned nibble; 4.5 bits per weight. Pairs with Q8_0 activations.

use bytemuck::{Pod, Zeroable};
use gguf_format::GgmlType;
use half::f16;

use super::f16::{fp16_to_fp32, fp32_to_fp16};
use super::q8_0::BlockQ8_0;
use super::FormatKernels;

/// Weights per Q4_0 block (ggml's `QK4_0`).
pub const QK4_0: usize = 32;

/// One Q4_0 block (ggml's `block_q4_0`): byte `j` of `qs` holds weight `j`
/// in its low nibble and weight `j + 16` in its high nibble.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_0 {
    /// Scale.
    pub d: f16,
    /// Nibbles.
    pub qs: [u8; QK4_0 / 2],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

/// Port of ggml's `dequantize_row_q4_0` (ggml-quants.c).
pub fn dequantize_row_q4_0(x: &[BlockQ4_0], y: &mut [f32]) {
    assert_eq!(x.len() * QK4_0, y.len());
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK4_0)) {
        let d = fp16_to_fp32(b.d);
        // Split halves (rather than indexing y[j + 16]) so this vectorises.
        let (lo, hi) = y.split_at_mut(QK4_0 / 2);
        for ((&q, lo), hi) in b.qs.iter().zip(lo).zip(hi) {
            let x0 = i32::from(q & 0x0F) - 8;
            let x1 = i32::from(q >> 4) - 8;
            *lo = x0 as f32 * d;
            *hi = x1 as f32 * d;
        }
    }
}

/// Port of ggml's `quantize_row_q4_0_ref` (ggml-quants.c): the signed value
/// of largest magnitude maps to −8, `q = min(15, trunc(x/d + 8.5))`.
pub fn quantize_row_q4_0_ref(x: &[f32], y: &mut [BlockQ4_0]) {
    assert_eq!(y.len() * QK4_0, x.len());
    for (x, b) in x.chunks_exact(QK4_0).zip(y.iter_mut()) {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = fp32_to_fp16(d);
        for j in 0..QK4_0 / 2 {
            let x0 = x[j] * id;
            let x1 = x[QK4_0 / 2 + j] * id;
            // C's (int8_t) conversion truncates toward zero, as `as` does.
            let xi0 = ((x0 + 8.5) as i8).min(15) as u8;
            let xi1 = ((x1 + 8.5) as i8).min(15) as u8;
            b.qs[j] = xi0 | (xi1 << 4);
        }
    }
}

/// Port of ggml's `ggml_vec_dot_q4_0_q8_0_generic` (ggml-cpu/quants.c).
pub fn vec_dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (x, y) in x.iter().zip(y) {
        let mut sumi0 = 0i32;
        let mut sumi1 = 0i32;
        for j in 0..QK4_0 / 2 {
            let v0 = i32::from(x.qs[j] & 0x0F) - 8;
            let v1 = i32::from(x.qs[j] >> 4) - 8;
            sumi0 += v0 * i32::from(y.qs[j]);
            sumi1 += v1 * i32::from(y.qs[j + QK4_0 / 2]);
        }
        let sumi = sumi0 + sumi1;
        // ggml multiplies left to right here: (sumi·dx)·dy.
        sumf += sumi as f32 * fp16_to_fp32(x.d) * fp16_to_fp32(y.d);
    }
    sumf
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::dequantize_bytes(src, dst, dequantize_row_q4_0);
}

fn quantize(src: &[f32], dst: &mut [u8]) {
    super::quantize_bytes(src, dst, quantize_row_q4_0_ref);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK4_0;
    super::vec_dot_bytes(&w[..nb * 18], &a[..nb * 34], vec_dot_q4_0_q8_0)
}

pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::Q4_0,
    vec_dot_type: GgmlType::Q8_0,
    dequantize,
    quantize: Some(quantize),
    vec_dot,
};
