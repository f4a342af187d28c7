//! F16: IEEE half precision, `x = v`, 16 bits per weight, and ggml's exact
//! f32 ↔ f16 conversions used by every format with f16 scales.

use gguf_format::GgmlType;
use half::f16;

use super::FormatKernels;

/// f16 → f32, exact (every f16 is representable as an f32): a port of
/// ggml's `ggml_compute_fp16_to_fp32` (ggml-impl.h). Branch-free float
/// arithmetic, so it inlines and vectorises; `half`'s conversion checks the
/// CPU's features on every call, which costs more than the kernels here.
#[inline(always)]
pub fn fp16_to_fp32(h: f16) -> f32 {
    let w = u32::from(h.to_bits()) << 16;
    let sign = w & 0x8000_0000;
    let two_w = w.wrapping_add(w);
    let exp_offset = 0xE0u32 << 23;
    let exp_scale = f32::from_bits(0x0780_0000); // 0x1.0p-112f
    let normalized_value = f32::from_bits((two_w >> 4) + exp_offset) * exp_scale;
    let magic_mask = 126u32 << 23;
    let magic_bias = 0.5f32;
    let denormalized_value = f32::from_bits((two_w >> 17) | magic_mask) - magic_bias;
    let denormalized_cutoff = 1u32 << 27;
    let result = sign
        | if two_w < denormalized_cutoff {
            denormalized_value.to_bits()
        } else {
            normalized_value.to_bits()
        };
    f32::from_bits(result)
}

/// f32 → f16 rounded to nearest even, NaN → `0x7E00` with the sign kept:
/// a port of ggml's `ggml_compute_fp32_to_fp16` (ggml-impl.h, from FP16 by
/// Maratyszcza), which `GGML_FP32_TO_FP16` expands to in the reference codecs.
#[inline]
pub fn fp32_to_fp16(f: f32) -> f16 {
    let scale_to_inf = f32::from_bits(0x7780_0000); // 0x1.0p+112f
    let scale_to_zero = f32::from_bits(0x0880_0000); // 0x1.0p-110f
    let mut base = (f.abs() * scale_to_inf) * scale_to_zero;
    let w = f.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    let mut bias = shl1_w & 0xFF00_0000;
    if bias < 0x7100_0000 {
        bias = 0x7100_0000;
    }
    base += f32::from_bits((bias >> 1) + 0x0780_0000);
    let bits = base.to_bits();
    let exp_bits = (bits >> 13) & 0x0000_7C00;
    let mantissa_bits = bits & 0x0000_0FFF;
    let nonsign = exp_bits + mantissa_bits;
    let h = (sign >> 16)
        | if shl1_w > 0xFF00_0000 {
            0x7E00
        } else {
            nonsign
        };
    f16::from_bits(h as u16)
}

/// Widens `x` to f32 (ggml's `ggml_fp16_to_fp32_row`).
pub fn dequantize_row_f16(x: &[f16], y: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    for (d, s) in y.iter_mut().zip(x) {
        *d = fp16_to_fp32(*s);
    }
}

/// Rounds `x` to f16 (ggml's `ggml_fp32_to_fp16_row`).
pub fn quantize_row_f16_ref(x: &[f32], y: &mut [f16]) {
    assert_eq!(x.len(), y.len());
    for (d, s) in y.iter_mut().zip(x) {
        *d = fp32_to_fp16(*s);
    }
}

/// `Σ x[i]·y[i]` with each product formed in f32 and summed in f64, as
/// ggml's scalar `ggml_vec_dot_f16` does.
pub fn vec_dot_f16_f16(x: &[f16], y: &[f16]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sum = 0.0f64;
    for (a, b) in x.iter().zip(y) {
        sum += f64::from(fp16_to_fp32(*a) * fp16_to_fp32(*b));
    }
    sum as f32
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::dequantize_bytes(src, dst, dequantize_row_f16);
}

fn quantize(src: &[f32], dst: &mut [u8]) {
    super::quantize_bytes(src, dst, quantize_row_f16_ref);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    super::vec_dot_bytes(&w[..n * 2], &a[..n * 2], vec_dot_f16_f16)
}

pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::F16,
    vec_dot_type: GgmlType::F16,
    dequantize,
    quantize: Some(quantize),
    vec_dot,
};
