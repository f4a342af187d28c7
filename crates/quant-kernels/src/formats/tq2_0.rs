//! TQ2_0, ternary weights in 2 bits each: 2.0625 bits per weight.
//!
//! Weights are `d·t` with `t ∈ {−1, 0, 1}` stored as `t + 1` in 2-bit
//! fields; byte `m` of each 32-byte run holds weights `m + 32·l`, `l` in
//! 0..4, at bits `2l`. Ported from ggml's `quantize_row_tq2_0_ref`,
//! `dequantize_row_tq2_0` and `ggml_vec_dot_tq2_0_q8_K_generic`.

use std::mem::size_of;

use bytemuck::{Pod, Zeroable};
use gguf_format::GgmlType;
use half::f16;

use super::f16::{fp16_to_fp32, fp32_to_fp16};
use super::q8_k::{BlockQ8_K, QK_K};
use super::{dequantize_bytes, quantize_bytes, vec_dot_bytes, FormatKernels};

/// One TQ2_0 block of 256 weights: `x = d·(q − 1)`, `q` 2 bits (2.0625 bpw).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockTQ2_0 {
    /// 2-bit codes `t + 1`, four per byte (see the module docs for the order).
    pub qs: [u8; QK_K / 4],
    /// Block scale.
    pub d: f16,
}
const _: () = assert!(std::mem::size_of::<BlockTQ2_0>() == 66);

/// The ternary value of weight `l·32 + m` in the 128-weight run starting at byte `j`.
#[inline(always)]
fn trit(b: &BlockTQ2_0, j: usize, l: usize, m: usize) -> i32 {
    ((b.qs[j + m] >> (2 * l)) & 3) as i32 - 1
}

/// Dequantizes `x` into `y` (`y.len() == x.len() * 256`), bit-exact to ggml.
pub fn dequantize_row_tq2_0(x: &[BlockTQ2_0], y: &mut [f32]) {
    assert_eq!(y.len(), x.len() * QK_K);
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = fp16_to_fp32(b.d);
        for (run, y) in y.chunks_exact_mut(128).enumerate() {
            for l in 0..4 {
                for m in 0..32 {
                    y[l * 32 + m] = trit(b, 32 * run, l, m) as f32 * d;
                }
            }
        }
    }
}

/// Quantizes `x` (`x.len() == y.len() * 256`) to TQ2_0 with ggml's reference
/// algorithm: `d = max|x|`, `t = round(x/d)` (halves away from zero).
pub fn quantize_row_tq2_0_ref(x: &[f32], y: &mut [BlockTQ2_0]) {
    assert_eq!(x.len(), y.len() * QK_K);
    for (x, b) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = fp32_to_fp16(d);
        for (run, x) in x.chunks_exact(128).enumerate() {
            for m in 0..32 {
                let mut q = 0u8;
                for n in 0..4 {
                    // ggml's lroundf(x·id) + 1 maps −1, 0, 1 to 0, 1, 2.
                    let xi = (x[m + n * 32] * id).round() as i32 + 1;
                    q = q.wrapping_add(((xi & 3) << (2 * n)) as u8);
                }
                b.qs[32 * run + m] = q;
            }
        }
    }
}

/// Dot product of TQ2_0 weights with Q8_K activations (ggml's
/// `ggml_vec_dot_tq2_0_q8_K_generic`).
pub fn vec_dot_tq2_0_q8_k(x: &[BlockTQ2_0], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (b, a) in x.iter().zip(y) {
        let mut sumi = 0i32;
        for run in 0..2 {
            for l in 0..4 {
                for k in 0..32 {
                    sumi += a.qs[run * 128 + l * 32 + k] as i32 * trit(b, 32 * run, l, k);
                }
            }
        }
        let d = a.d * fp16_to_fp32(b.d);
        sumf += sumi as f32 * d;
    }
    sumf
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    dequantize_bytes(src, dst, dequantize_row_tq2_0);
}

fn quantize(src: &[f32], dst: &mut [u8]) {
    quantize_bytes(src, dst, quantize_row_tq2_0_ref);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK_K;
    let (wb, ab) = (nb * size_of::<BlockTQ2_0>(), nb * size_of::<BlockQ8_K>());
    vec_dot_bytes(&w[..wb], &a[..ab], vec_dot_tq2_0_q8_k)
}

pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::TQ2_0,
    vec_dot_type: GgmlType::Q8_K,
    dequantize,
    quantize: Some(quantize),
    vec_dot,
};
