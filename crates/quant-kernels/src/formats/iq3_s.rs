//! IQ3_S: 3.4375 bits per weight.
//!
//! Each group of 4 weights has a 9-bit index into the 512-entry
//! `IQ3S_GRID` (8 low bits in `qs`, the high bit in `qh`), every weight an
//! explicit sign bit, and every 32 weights a 4-bit odd scale `1 + 2s`.
//! Ported from ggml's `dequantize_row_iq3_s` and
//! `ggml_vec_dot_iq3_s_q8_K_generic`; ggml has no reference quantizer for it
//! (quantizing needs an importance matrix).

use std::mem::size_of;

use bytemuck::{Pod, Zeroable};
use gguf_format::GgmlType;
use half::f16;

use super::f16::fp16_to_fp32;
use super::iq_grids::{IQ3S_GRID, KMASK_IQ2XS};
use super::q8_k::{BlockQ8_K, QK_K};
use super::{dequantize_bytes, vec_dot_bytes, FormatKernels};

/// One IQ3_S block of 256 weights: `x = d·(1 + 2s) · g · (±1)`, with `g`
/// from `IQ3S_GRID`, `s` a 4-bit scale per 32 weights (3.4375 bpw).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ3_S {
    /// Super-block scale.
    pub d: f16,
    /// Low 8 bits of the 64 grid indices (one per 4 weights).
    pub qs: [u8; QK_K / 4],
    /// Per 32 weights, the high (9th) bits of its 8 grid indices.
    pub qh: [u8; QK_K / 32],
    /// One sign bit per weight.
    pub signs: [u8; QK_K / 8],
    /// Per 64 weights, two 4-bit scales (low nibble: first 32 weights).
    pub scales: [u8; QK_K / 64],
}
const _: () = assert!(std::mem::size_of::<BlockIQ3_S>() == 110);

/// The two 4-value grid entries of group `l` (0..4) in 32-weight group `ib32`.
#[inline(always)]
fn grids(b: &BlockIQ3_S, ib32: usize, l: usize) -> ([u8; 4], [u8; 4]) {
    let qs = &b.qs[8 * ib32..];
    let qh = b.qh[ib32] as usize;
    let i1 = qs[2 * l] as usize | ((qh << (8 - 2 * l)) & 256);
    let i2 = qs[2 * l + 1] as usize | ((qh << (7 - 2 * l)) & 256);
    (IQ3S_GRID[i1].to_le_bytes(), IQ3S_GRID[i2].to_le_bytes())
}

/// Dequantizes `x` into `y` (`y.len() == x.len() * 256`), bit-exact to ggml.
pub fn dequantize_row_iq3_s(x: &[BlockIQ3_S], y: &mut [f32]) {
    assert_eq!(y.len(), x.len() * QK_K);
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = fp16_to_fp32(b.d);
        for (ib32, y) in y.chunks_exact_mut(32).enumerate() {
            let sc = (b.scales[ib32 / 2] >> (4 * (ib32 % 2))) & 0xf;
            let db = d * (1 + 2 * sc as i32) as f32;
            for (l, y) in y.chunks_exact_mut(8).enumerate() {
                let (grid1, grid2) = grids(b, ib32, l);
                let s = b.signs[4 * ib32 + l];
                for j in 0..4 {
                    let s1 = if s & KMASK_IQ2XS[j] != 0 { -1.0 } else { 1.0 };
                    let s2 = if s & KMASK_IQ2XS[j + 4] != 0 {
                        -1.0
                    } else {
                        1.0
                    };
                    y[j] = db * grid1[j] as f32 * s1;
                    y[j + 4] = db * grid2[j] as f32 * s2;
                }
            }
        }
    }
}

/// Dot product of IQ3_S weights with Q8_K activations (ggml's
/// `ggml_vec_dot_iq3_s_q8_K_generic`).
pub fn vec_dot_iq3_s_q8_k(x: &[BlockIQ3_S], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (b, a) in x.iter().zip(y) {
        let d = fp16_to_fp32(b.d) * a.d;
        let mut bsum = 0i32;
        for (ib32, q8) in a.qs.chunks_exact(32).enumerate() {
            let ls = 2 * ((b.scales[ib32 / 2] >> (4 * (ib32 % 2))) & 0xf) as i32 + 1;
            let mut sumi = 0i32;
            for (l, q8) in q8.chunks_exact(8).enumerate() {
                let (grid1, grid2) = grids(b, ib32, l);
                let s = b.signs[4 * ib32 + l];
                for j in 0..4 {
                    let p1 = grid1[j] as i32 * q8[j] as i32;
                    let p2 = grid2[j] as i32 * q8[j + 4] as i32;
                    sumi += if s & KMASK_IQ2XS[j] != 0 { -p1 } else { p1 };
                    sumi += if s & KMASK_IQ2XS[j + 4] != 0 { -p2 } else { p2 };
                }
            }
            bsum += sumi * ls;
        }
        sumf += d * bsum as f32;
    }
    sumf
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    dequantize_bytes(src, dst, dequantize_row_iq3_s);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK_K;
    let (wb, ab) = (nb * size_of::<BlockIQ3_S>(), nb * size_of::<BlockQ8_K>());
    vec_dot_bytes(&w[..wb], &a[..ab], vec_dot_iq3_s_q8_k)
}

pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::IQ3_S,
    vec_dot_type: GgmlType::Q8_K,
    dequantize,
    quantize: None,
    vec_dot,
};
