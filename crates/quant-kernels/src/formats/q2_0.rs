//! Q2_0: 64 weights share an f16 scale, `x = d·(q − 1)` with `q` 2 bits
//! (−1, 0, 1, 2 times the scale); 2.25 bits per weight.
//!
//! Weight `j` sits at bits `2·(j % 4)` of byte `j / 4`. The reference
//! quantizer takes `d = max|x|` and rounds `x/d` into `−1..=1` (the code 3,
//! `+2d`, is never produced but dequantizes). Ported from ggml's
//! `quantize_row_q2_0_ref`, `dequantize_row_q2_0` and
//! `ggml_vec_dot_q2_0_q8_0_generic`.

use std::mem::size_of;

use bytemuck::{Pod, Zeroable};
use gguf_format::GgmlType;
use half::f16;

use super::f16::{fp16_to_fp32, fp32_to_fp16};
use super::q8_0::BlockQ8_0;
use super::{dequantize_bytes, quantize_bytes, vec_dot_bytes, FormatKernels};

/// Weights per Q2_0 block (ggml's `QK2_0`).
pub const QK2_0: usize = 64;

/// One Q2_0 block (ggml's `block_q2_0`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ2_0 {
    /// Scale.
    pub d: f16,
    /// 2-bit codes `q`, four per byte, weight `j` at bits `2·(j % 4)` of byte `j / 4`.
    pub qs: [u8; QK2_0 / 4],
}
const _: () = assert!(std::mem::size_of::<BlockQ2_0>() == 18);

/// The code of weight `j` of `b`, minus one: −1, 0, 1 or 2.
#[inline(always)]
fn level(b: &BlockQ2_0, j: usize) -> i32 {
    i32::from((b.qs[j / 4] >> (2 * (j % 4))) & 3) - 1
}

/// Dequantizes `x` into `y` (`y.len() == x.len() * 64`), bit-exact to ggml.
pub fn dequantize_row_q2_0(x: &[BlockQ2_0], y: &mut [f32]) {
    assert_eq!(y.len(), x.len() * QK2_0);
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK2_0)) {
        let d = fp16_to_fp32(b.d);
        for (j, y) in y.iter_mut().enumerate() {
            *y = level(b, j) as f32 * d;
        }
    }
}

/// Quantizes `x` (`x.len() == y.len() * 64`) to Q2_0 with ggml's reference
/// algorithm: `d = max|x|`, `q = clamp(round(x/d) + 1, 0, 3)` (halves away
/// from zero).
///
/// `(int)roundf(x·id)` is undefined behaviour in C when the product is NaN
/// or beyond `i32` (a block whose `max|x|` is so small that `1/d` is
/// infinite); x86-64 builds of ggml then get `i32::MIN` from `cvttss2si`
/// and store code 0, and so does this port.
pub fn quantize_row_q2_0_ref(x: &[f32], y: &mut [BlockQ2_0]) {
    assert_eq!(x.len(), y.len() * QK2_0);
    for (x, b) in x.chunks_exact(QK2_0).zip(y.iter_mut()) {
        let mut amax = 0.0f32;
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
            }
        }
        let d = amax;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        b.d = fp32_to_fp16(d);
        b.qs = [0; QK2_0 / 4];
        for (j, &v) in x.iter().enumerate() {
            let q = (cvttss2si((v * id).round()).saturating_add(1)).clamp(0, 3);
            b.qs[j / 4] |= (q as u8) << (2 * (j % 4));
        }
    }
}

/// C's `(int)f` as x86-64 computes it (`cvttss2si`): truncation toward
/// zero, and `i32::MIN` for NaN and for values outside `i32`.
#[inline(always)]
fn cvttss2si(f: f32) -> i32 {
    // NaN is in no range.
    if !(-2_147_483_648.0..2_147_483_648.0).contains(&f) {
        i32::MIN
    } else {
        f as i32
    }
}

/// `Σ (q − 1)·q8` over half `k` of `b` (weights `32k..32k+32`) and the 32
/// activations of its Q8_0 block (exact).
#[inline(always)]
pub(crate) fn half_dot(b: &BlockQ2_0, k: usize, q8: &[i8; 32]) -> i32 {
    q8.iter()
        .enumerate()
        .map(|(e, &q)| level(b, 32 * k + e) * i32::from(q))
        .sum()
}

/// Dot product of Q2_0 weights with Q8_0 activations, two Q8_0 blocks per
/// Q2_0 block (ggml's `ggml_vec_dot_q2_0_q8_0_generic`): per block
/// `sumi = Σ_k d_k · Σ(q−1)·q8` over its two activation blocks, then
/// `sumf += d · sumi`.
pub fn vec_dot_q2_0_q8_0(x: &[BlockQ2_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len() * 2, y.len());
    let mut sumf = 0.0f32;
    for (b, a) in x.iter().zip(y.chunks_exact(2)) {
        let d0 = fp16_to_fp32(b.d);
        let mut sumi = 0.0f32;
        for (k, a) in a.iter().enumerate() {
            sumi += fp16_to_fp32(a.d) * half_dot(b, k, &a.qs) as f32;
        }
        sumf += d0 * sumi;
    }
    sumf
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    dequantize_bytes(src, dst, dequantize_row_q2_0);
}

fn quantize(src: &[f32], dst: &mut [u8]) {
    quantize_bytes(src, dst, quantize_row_q2_0_ref);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK2_0;
    let (wb, ab) = (nb * size_of::<BlockQ2_0>(), 2 * nb * size_of::<BlockQ8_0>());
    vec_dot_bytes(&w[..wb], &a[..ab], vec_dot_q2_0_q8_0)
}

pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::Q2_0,
    vec_dot_type: GgmlType::Q8_0,
    dequantize,
    quantize: Some(quantize),
    vec_dot,
};
