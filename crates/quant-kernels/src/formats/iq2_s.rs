//! IQ2_S: 2.5625 bits per weight.
//!
//! Each group of 8 weights has a 10-bit index into the 1024-entry
//! `IQ2S_GRID` (8 low bits in `qs`, 2 high bits in `qh`) and 8 explicit
//! sign bits; every 16 weights have a 4-bit scale. Ported from ggml's
//! `dequantize_row_iq2_s` and `ggml_vec_dot_iq2_s_q8_K_generic`; ggml has no
//! reference quantizer for it (quantizing needs an importance matrix).

use std::mem::size_of;

use bytemuck::{Pod, Zeroable};
use gguf_format::GgmlType;
use half::f16;

use super::f16::fp16_to_fp32;
use super::iq_grids::{IQ2S_GRID, KMASK_IQ2XS};
use super::q8_k::{BlockQ8_K, QK_K};
use super::{dequantize_bytes, vec_dot_bytes, FormatKernels};

/// One IQ2_S block of 256 weights: `x = d·(0.5 + s)/4 · g · (±1)`, with
/// `g` from `IQ2S_GRID`, `s` a 4-bit scale per 16 weights (2.5625 bpw).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ2_S {
    /// Super-block scale.
    pub d: f16,
    /// 32 low bytes of the grid indices, then 32 sign bytes (one per 8 weights).
    pub qs: [u8; QK_K / 4],
    /// Per 32 weights, the high 2 bits of its four grid indices.
    pub qh: [u8; QK_K / 32],
    /// Per 32 weights, two 4-bit scales (low nibble: first 16 weights).
    pub scales: [u8; QK_K / 32],
}
const _: () = assert!(std::mem::size_of::<BlockIQ2_S>() == 82);

/// Grid entry of group `l` (0..4) of 32-weight group `ib32`.
#[inline(always)]
fn grid(b: &BlockIQ2_S, ib32: usize, l: usize) -> [u8; 8] {
    let idx = b.qs[4 * ib32 + l] as usize | (((b.qh[ib32] as usize) << (8 - 2 * l)) & 0x300);
    IQ2S_GRID[idx].to_le_bytes()
}

/// Dequantizes `x` into `y` (`y.len() == x.len() * 256`), bit-exact to ggml.
pub fn dequantize_row_iq2_s(x: &[BlockIQ2_S], y: &mut [f32]) {
    assert_eq!(y.len(), x.len() * QK_K);
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = fp16_to_fp32(b.d);
        let signs = &b.qs[QK_K / 8..];
        for (ib32, y) in y.chunks_exact_mut(32).enumerate() {
            let sc = b.scales[ib32];
            let db = [
                d * (0.5 + (sc & 0xf) as f32) * 0.25,
                d * (0.5 + (sc >> 4) as f32) * 0.25,
            ];
            for (l, y) in y.chunks_exact_mut(8).enumerate() {
                let dl = db[l / 2];
                let grid = grid(b, ib32, l);
                let s = signs[4 * ib32 + l];
                for j in 0..8 {
                    let sign = if s & KMASK_IQ2XS[j] != 0 { -1.0 } else { 1.0 };
                    y[j] = dl * grid[j] as f32 * sign;
                }
            }
        }
    }
}

/// Dot product of IQ2_S weights with Q8_K activations (ggml's
/// `ggml_vec_dot_iq2_s_q8_K_generic`).
pub fn vec_dot_iq2_s_q8_k(x: &[BlockIQ2_S], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (b, a) in x.iter().zip(y) {
        let d = fp16_to_fp32(b.d) * a.d;
        let signs = &b.qs[QK_K / 8..];
        let mut bsum = 0i32;
        for (ib32, q8) in a.qs.chunks_exact(32).enumerate() {
            let ls1 = 1 + 2 * (b.scales[ib32] & 0xf) as i32;
            let ls2 = 1 + 2 * (b.scales[ib32] >> 4) as i32;
            let mut sumi = [0i32; 2];
            for (l, q8) in q8.chunks_exact(8).enumerate() {
                let grid = grid(b, ib32, l);
                let s = signs[4 * ib32 + l];
                for j in 0..8 {
                    let p = q8[j] as i32 * grid[j] as i32;
                    sumi[l / 2] += if s & KMASK_IQ2XS[j] != 0 { -p } else { p };
                }
            }
            bsum += ls1 * sumi[0] + ls2 * sumi[1];
        }
        sumf += d * bsum as f32;
    }
    0.125 * sumf
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    dequantize_bytes(src, dst, dequantize_row_iq2_s);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK_K;
    let (wb, ab) = (nb * size_of::<BlockIQ2_S>(), nb * size_of::<BlockQ8_K>());
    vec_dot_bytes(&w[..wb], &a[..ab], vec_dot_iq2_s_q8_k)
}

pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::IQ2_S,
    vec_dot_type: GgmlType::Q8_K,
    dequantize,
    quantize: None,
    vec_dot,
};
