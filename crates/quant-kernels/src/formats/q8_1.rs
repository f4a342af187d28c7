//! Q8_1: 32 weights share an f16 scale `d` and carry `s = d·Σq`, `x = d·q`;
//! 9 bits per weight. The activation format of Q4_1 and Q5_1 weights (the
//! stored sum folds their offset `m` into one multiply per block).

use bytemuck::{Pod, Zeroable};
use gguf_format::GgmlType;
use half::f16;

use super::f16::{fp16_to_fp32, fp32_to_fp16};
use super::FormatKernels;

/// Weights per Q8_1 block (ggml's `QK8_1`).
pub const QK8_1: usize = 32;

/// One Q8_1 block (ggml's `block_q8_1`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_1 {
    /// Scale.
    pub d: f16,
    /// `d · Σ qs`.
    pub s: f16,
    /// Quants.
    pub qs: [i8; QK8_1],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

/// `x = d·q` (ggml has no `dequantize_row_q8_1`; this is its obvious
/// definition, used only by tests and tools).
pub fn dequantize_row_q8_1(x: &[BlockQ8_1], y: &mut [f32]) {
    assert_eq!(x.len() * QK8_1, y.len());
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK8_1)) {
        let d = fp16_to_fp32(b.d);
        for (y, &q) in y.iter_mut().zip(&b.qs) {
            *y = f32::from(q) * d;
        }
    }
}

/// Port of ggml's `quantize_row_q8_1_ref` (ggml-quants.c): `d = amax/127`,
/// `q = roundf(x/d)`, `s = d·Σq`.
pub fn quantize_row_q8_1_ref(x: &[f32], y: &mut [BlockQ8_1]) {
    assert_eq!(y.len() * QK8_1, x.len());
    for (x, b) in x.chunks_exact(QK8_1).zip(y.iter_mut()) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = fp32_to_fp16(d);
        let mut sum = 0i32;
        for j in 0..QK8_1 / 2 {
            let v0 = x[j] * id;
            let v1 = x[QK8_1 / 2 + j] * id;
            b.qs[j] = v0.round() as i8;
            b.qs[QK8_1 / 2 + j] = v1.round() as i8;
            sum += i32::from(b.qs[j]) + i32::from(b.qs[QK8_1 / 2 + j]);
        }
        b.s = fp32_to_fp16(sum as f32 * d);
    }
}

/// Activation quantization as ggml's CPU backend does it on x86
/// (`quantize_row_q8_1`, ggml-cpu/arch/x86/quants.c, AVX2 branch):
/// `id = 127/amax`, round-half-to-even, `s = d·Σq`. See
/// [`super::q8_0::quantize_row_q8_0`] for why this, not the `_ref`, is used.
pub fn quantize_row_q8_1(x: &[f32], y: &mut [BlockQ8_1]) {
    assert_eq!(y.len() * QK8_1, x.len());
    for (x, b) in x.chunks_exact(QK8_1).zip(y.iter_mut()) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        // x86 ggml converts with F16C here (`GGML_CPU_FP32_TO_FP16`);
        // half does the same rounding, NaN payloads included.
        b.d = f16::from_f32(d);
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut sum = 0i32;
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = (v * id).round_ties_even() as i8;
            sum += i32::from(*q);
        }
        b.s = f16::from_f32(d * sum as f32);
    }
}

/// Q8_1 × Q8_1: an exact integer dot per block scaled by `dx·dy`. ggml
/// defines no such kernel (Q8_1 is only an activation format); this one
/// exists so every table row is complete.
pub fn vec_dot_q8_1_q8_1(x: &[BlockQ8_1], y: &[BlockQ8_1]) -> f32 {
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
    super::dequantize_bytes(src, dst, dequantize_row_q8_1);
}

fn quantize(src: &[f32], dst: &mut [u8]) {
    super::quantize_bytes(src, dst, quantize_row_q8_1_ref);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let bytes = n / QK8_1 * 36;
    super::vec_dot_bytes(&w[..bytes], &a[..bytes], vec_dot_q8_1_q8_1)
}

pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::Q8_1,
    vec_dot_type: GgmlType::Q8_1,
    dequantize,
    quantize: Some(quantize),
    vec_dot,
};
