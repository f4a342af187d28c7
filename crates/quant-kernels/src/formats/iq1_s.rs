//! IQ1_S: 1.5625 bits per weight.
//!
//! Each group of 8 weights is one of 2048 ternary patterns from
//! `IQ1S_GRID` (values −1, 0, 1), shifted by ±1/8 per 32 weights, with a
//! 3-bit odd scale `2s + 1` per 32 weights. Ported from ggml's
//! `dequantize_row_iq1_s` and `ggml_vec_dot_iq1_s_q8_K_generic`; ggml has no
//! reference quantizer for it (quantizing needs an importance matrix).

use std::mem::size_of;

use bytemuck::{Pod, Zeroable};
use gguf_format::GgmlType;
use half::f16;

use super::f16::fp16_to_fp32;
use super::iq_grids::IQ1S_GRID;
use super::q8_k::{BlockQ8_K, QK_K};
use super::{dequantize_bytes, vec_dot_bytes, FormatKernels};

/// The shift added to every IQ1_S grid value, sign chosen per 32 weights (`IQ1S_DELTA`).
pub(crate) const IQ1S_DELTA: f32 = 0.125;

/// One IQ1_S block of 256 weights: `x = d·(2s + 1)·(g ± 1/8)`, with `g` from
/// `IQ1S_GRID`, `s` a 3-bit scale per 32 weights (1.5625 bpw).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ1_S {
    /// Super-block scale.
    pub d: f16,
    /// Low 8 bits of the 32 grid indices (one per 8 weights).
    pub qs: [u8; QK_K / 8],
    /// Per 32 weights: four 3-bit high index parts (bits 0..12), the 3-bit
    /// scale (bits 12..15) and the sign of the shift (bit 15: negative).
    pub qh: [u16; QK_K / 32],
}
const _: () = assert!(std::mem::size_of::<BlockIQ1_S>() == 50);

/// Grid entry of group `l` (0..4) of 32-weight group `ib`, as signed values.
#[inline(always)]
fn grid(b: &BlockIQ1_S, ib: usize, l: usize) -> [i8; 8] {
    let qh = b.qh[ib] as usize;
    let idx = b.qs[4 * ib + l] as usize | (((qh >> (3 * l)) & 7) << 8);
    IQ1S_GRID[idx].to_le_bytes().map(|v| v as i8)
}

/// Dequantizes `x` into `y` (`y.len() == x.len() * 256`), bit-exact to ggml.
pub fn dequantize_row_iq1_s(x: &[BlockIQ1_S], y: &mut [f32]) {
    assert_eq!(y.len(), x.len() * QK_K);
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = fp16_to_fp32(b.d);
        for (ib, y) in y.chunks_exact_mut(32).enumerate() {
            let qh = b.qh[ib];
            let dl = d * (2 * ((qh >> 12) & 7) as i32 + 1) as f32;
            let delta = if qh & 0x8000 != 0 {
                -IQ1S_DELTA
            } else {
                IQ1S_DELTA
            };
            for (l, y) in y.chunks_exact_mut(8).enumerate() {
                let grid = grid(b, ib, l);
                for j in 0..8 {
                    y[j] = dl * (grid[j] as f32 + delta);
                }
            }
        }
    }
}

/// Dot product of IQ1_S weights with Q8_K activations (ggml's
/// `ggml_vec_dot_iq1_s_q8_K_generic`): the ±1/8 shift is applied through the
/// activations' 16-element sums (`bsums`).
pub fn vec_dot_iq1_s_q8_k(x: &[BlockIQ1_S], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (b, a) in x.iter().zip(y) {
        let mut sumi = 0i32;
        let mut sumi1 = 0i32;
        for (ib, q8) in a.qs.chunks_exact(32).enumerate() {
            let qh = b.qh[ib];
            let ls = 2 * ((qh >> 12) & 7) as i32 + 1;
            let delta = if qh & 0x8000 != 0 { -1 } else { 1 };
            let mut lsum = 0i32;
            for (l, q8) in q8.chunks_exact(8).enumerate() {
                let grid = grid(b, ib, l);
                for j in 0..8 {
                    lsum += q8[j] as i32 * grid[j] as i32;
                }
            }
            sumi += ls * lsum;
            sumi1 += ls * delta * (a.bsums[2 * ib] as i32 + a.bsums[2 * ib + 1] as i32);
        }
        sumf += fp16_to_fp32(b.d) * a.d * (sumi as f32 + IQ1S_DELTA * sumi1 as f32);
    }
    sumf
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    dequantize_bytes(src, dst, dequantize_row_iq1_s);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK_K;
    let (wb, ab) = (nb * size_of::<BlockIQ1_S>(), nb * size_of::<BlockQ8_K>());
    vec_dot_bytes(&w[..wb], &a[..ab], vec_dot_iq1_s_q8_k)
}

pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::IQ1_S,
    vec_dot_type: GgmlType::Q8_K,
    dequantize,
    quantize: None,
    vec_dot,
};
