//! F32: plain IEEE single precision, `x = v`, 32 bits per weight.

use gguf_format::GgmlType;

use super::FormatKernels;

/// Copies `x` to `y` (ggml's F32 "dequantization" is the identity).
pub fn dequantize_row_f32(x: &[f32], y: &mut [f32]) {
    y.copy_from_slice(x);
}

/// Copies `x` to `y`.
pub fn quantize_row_f32_ref(x: &[f32], y: &mut [f32]) {
    y.copy_from_slice(x);
}

/// `Σ x[i]·y[i]`, each product rounded to f32 and summed in f64, as ggml's
/// scalar `ggml_vec_dot_f32` does.
pub fn vec_dot_f32_f32(x: &[f32], y: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sum = 0.0f64;
    for (a, b) in x.iter().zip(y) {
        sum += f64::from(a * b);
    }
    sum as f32
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::dequantize_bytes(src, dst, dequantize_row_f32);
}

fn quantize(src: &[f32], dst: &mut [u8]) {
    super::quantize_bytes(src, dst, quantize_row_f32_ref);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    super::vec_dot_bytes(&w[..n * 4], &a[..n * 4], vec_dot_f32_f32)
}

pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::F32,
    vec_dot_type: GgmlType::F32,
    dequantize,
    quantize: Some(quantize),
    vec_dot,
};
