//! Q8_K: 256 weights share an f32 scale, `x = d·q`, with per-16 sums of the
//! quants kept for the K-quant dot products; 9.125 bits per weight. The
//! activation format of every 256-weight super-block format.

use bytemuck::{Pod, Zeroable};
use gguf_format::GgmlType;

use super::FormatKernels;

/// Weights per super-block (ggml's `QK_K`).
pub const QK_K: usize = 256;

/// One Q8_K block (ggml's `block_q8_K`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_K {
    /// Scale.
    pub d: f32,
    /// Quants.
    pub qs: [i8; QK_K],
    /// Sum of each group of 16 quants.
    pub bsums: [i16; QK_K / 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_K>() == 292);

impl Default for BlockQ8_K {
    fn default() -> Self {
        Self::zeroed()
    }
}

/// ggml's `nearest_int` (ggml-quants.c): round half to even through the
/// float adder, valid for |x| ≤ 4194303.
#[inline(always)]
pub fn nearest_int(fval: f32) -> i32 {
    debug_assert!(fval.abs() <= 4194303.0);
    let val = fval + 12582912.0;
    (val.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Port of ggml's `dequantize_row_q8_K` (ggml-quants.c).
pub fn dequantize_row_q8_k(x: &[BlockQ8_K], y: &mut [f32]) {
    assert_eq!(x.len() * QK_K, y.len());
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        for (y, &q) in y.iter_mut().zip(&b.qs) {
            *y = b.d * f32::from(q);
        }
    }
}

/// Port of ggml's `quantize_row_q8_K_ref` (ggml-quants.c): the scale maps
/// the signed value of largest magnitude to −127, `q = nearest_int(x/d)`
/// capped at 127. ggml leaves `bsums` unwritten for an all-zero block; here
/// they are zeroed, which is what every reader of them needs.
pub fn quantize_row_q8_k_ref(x: &[f32], y: &mut [BlockQ8_K]) {
    assert_eq!(y.len() * QK_K, x.len());
    for (x, b) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in x {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax == 0.0 {
            *b = BlockQ8_K::zeroed();
            continue;
        }
        // ggml: "We need this change for IQ2_XXS, else the AVX
        // implementation becomes very awkward" (-127, not -128).
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, q) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = q.iter().map(|&q| i16::from(q)).sum();
        }
        b.d = 1.0 / iscale;
    }
}

/// Q8_K × Q8_K: an exact integer dot per block scaled by `dx·dy`. ggml
/// defines no such kernel (Q8_K is only an activation format); this one
/// exists so every table row is complete.
pub fn vec_dot_q8_k_q8_k(x: &[BlockQ8_K], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (x, y) in x.iter().zip(y) {
        let sumi: i32 =
            x.qs.iter()
                .zip(&y.qs)
                .map(|(&a, &b)| i32::from(a) * i32::from(b))
                .sum();
        sumf += x.d * y.d * sumi as f32;
    }
    sumf
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::dequantize_bytes(src, dst, dequantize_row_q8_k);
}

fn quantize(src: &[f32], dst: &mut [u8]) {
    super::quantize_bytes(src, dst, quantize_row_q8_k_ref);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let bytes = n / QK_K * 292;
    super::vec_dot_bytes(&w[..bytes], &a[..bytes], vec_dot_q8_k_q8_k)
}

pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::Q8_K,
    vec_dot_type: GgmlType::Q8_K,
    dequantize,
    quantize: Some(quantize),
    vec_dot,
};
