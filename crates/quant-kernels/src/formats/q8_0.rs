//! Q8_0: 32 weights share an f16 scale, `x = d·q` with `q` an i8; 8.5 bits
//! per weight. Also the activation format of Q4_0, Q5_0 and Q8_0 weights.

use bytemuck::{Pod, Zeroable};
use gguf_format::GgmlType;
use half::f16;

use super::f16::{fp16_to_fp32, fp32_to_fp16};
use super::FormatKernels;

/// Weights per Q8_0 block (ggml's `QK8_0`).
pub const QK8_0: usize = 32;

/// One Q8_0 block (ggml's `block_q8_0`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_0 {
    /// Scale.
    pub d: f16,
    /// Quants.
    pub qs: [i8; QK8_0],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

/// Port of ggml's `dequantize_row_q8_0` (ggml-quants.c).
pub fn dequantize_row_q8_0(x: &[BlockQ8_0], y: &mut [f32]) {
    assert_eq!(x.len() * QK8_0, y.len());
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK8_0)) {
        let d = fp16_to_fp32(b.d);
        for (y, &q) in y.iter_mut().zip(&b.qs) {
            *y = f32::from(q) * d;
        }
    }
}

/// Port of ggml's `quantize_row_q8_0_ref` (ggml-quants.c): `d = amax/127`,
/// `q = roundf(x/d)` (ties away from zero).
pub fn quantize_row_q8_0_ref(x: &[f32], y: &mut [BlockQ8_0]) {
    assert_eq!(y.len() * QK8_0, x.len());
    for (x, b) in x.chunks_exact(QK8_0).zip(y.iter_mut()) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = fp32_to_fp16(d);
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = (v * id).round() as i8;
        }
    }
}

/// Activation quantization as ggml's CPU backend does it on x86
/// (`quantize_row_q8_0` in ggml-cpu/arch/x86/quants.c, the AVX2 branch):
/// `id = 127/amax` and round-half-to-even. This differs from
/// [`quantize_row_q8_0_ref`] in rare ties and last-ulp cases; llama.cpp's
/// logits on x86 were computed with this one, so it is the activation
/// quantizer on every machine, and its SIMD twins give identical bytes.
pub fn quantize_row_q8_0(x: &[f32], y: &mut [BlockQ8_0]) {
    assert_eq!(y.len() * QK8_0, x.len());
    for (x, b) in x.chunks_exact(QK8_0).zip(y.iter_mut()) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        // x86 ggml converts with F16C here (`GGML_CPU_FP32_TO_FP16`);
        // half does the same rounding, NaN payloads included.
        b.d = f16::from_f32(d);
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = (v * id).round_ties_even() as i8;
        }
    }
}

/// Port of ggml's `ggml_vec_dot_q8_0_q8_0_generic` (ggml-cpu/quants.c):
/// an exact integer dot per block, scaled by `dx·dy` and summed in f32.
pub fn vec_dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (x, y) in x.iter().zip(y) {
        let sumi: i32 =
            x.qs.iter()
                .zip(&y.qs)
                .map(|(&a, &b)| i32::from(a) * i32::from(b))
                .sum();
        sumf += sumi as f32 * (fp16_to_fp32(x.d) * fp16_to_fp32(y.d));
    }
    sumf
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::dequantize_bytes(src, dst, dequantize_row_q8_0);
}

fn quantize(src: &[f32], dst: &mut [u8]) {
    super::quantize_bytes(src, dst, quantize_row_q8_0_ref);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let bytes = n / QK8_0 * 34;
    super::vec_dot_bytes(&w[..bytes], &a[..bytes], vec_dot_q8_0_q8_0)
}

pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::Q8_0,
    vec_dot_type: GgmlType::Q8_0,
    dequantize,
    quantize: Some(quantize),
    vec_dot,
};
