//! BF16: bfloat16, the top half of an f32, `x = v`, 16 bits per weight.

use gguf_format::GgmlType;
use half::bf16;

use super::FormatKernels;

/// bf16 → f32, exact: the bits shifted into the top half.
#[inline(always)]
pub fn bf16_to_fp32(h: bf16) -> f32 {
    f32::from_bits(u32::from(h.to_bits()) << 16)
}

/// f32 → bf16 rounded to nearest even; NaN is kept NaN by forcing the quiet
/// bit. A port of ggml's `ggml_compute_fp32_to_bf16` (ggml-impl.h).
#[inline]
pub fn fp32_to_bf16(s: f32) -> bf16 {
    let i = s.to_bits();
    if (i & 0x7fff_ffff) > 0x7f80_0000 {
        return bf16::from_bits(((i >> 16) | 64) as u16);
    }
    bf16::from_bits((i.wrapping_add(0x7fff + ((i >> 16) & 1)) >> 16) as u16)
}

/// Widens `x` to f32 (ggml's `ggml_bf16_to_fp32_row`).
pub fn dequantize_row_bf16(x: &[bf16], y: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    for (d, s) in y.iter_mut().zip(x) {
        *d = bf16_to_fp32(*s);
    }
}

/// Rounds `x` to bf16 (ggml's `ggml_fp32_to_bf16_row_ref`).
pub fn quantize_row_bf16_ref(x: &[f32], y: &mut [bf16]) {
    assert_eq!(x.len(), y.len());
    for (d, s) in y.iter_mut().zip(x) {
        *d = fp32_to_bf16(*s);
    }
}

/// `Σ x[i]·y[i]` with each product formed in f32 and summed in f64, as
/// ggml's scalar `ggml_vec_dot_bf16` does.
pub fn vec_dot_bf16_bf16(x: &[bf16], y: &[bf16]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sum = 0.0f64;
    for (a, b) in x.iter().zip(y) {
        sum += f64::from(bf16_to_fp32(*a) * bf16_to_fp32(*b));
    }
    sum as f32
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::dequantize_bytes(src, dst, dequantize_row_bf16);
}

fn quantize(src: &[f32], dst: &mut [u8]) {
    super::quantize_bytes(src, dst, quantize_row_bf16_ref);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    super::vec_dot_bytes(&w[..n * 2], &a[..n * 2], vec_dot_bf16_bf16)
}

pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::BF16,
    vec_dot_type: GgmlType::BF16,
    dequantize,
    quantize: Some(quantize),
    vec_dot,
};
