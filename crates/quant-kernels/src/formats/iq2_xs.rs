//! IQ2_XS: 2.3125 bits per weight.
//!
//! Like IQ2_XXS but each group of 8 weights stores a 9-bit index into the
//! 512-entry `IQ2XS_GRID` and its 7 sign bits in one 16-bit word, and every
//! 16 weights have their own 4-bit scale. Ported from ggml's
//! `dequantize_row_iq2_xs` and `ggml_vec_dot_iq2_xs_q8_K_generic`; ggml has
//! no reference quantizer for it (quantizing needs an importance matrix).

use std::mem::size_of;

use bytemuck::{Pod, Zeroable};
use gguf_format::GgmlType;
use half::f16;

use super::f16::fp16_to_fp32;
use super::iq_grids::{IQ2XS_GRID, KMASK_IQ2XS, KSIGNS_IQ2XS};
use super::q8_k::{BlockQ8_K, QK_K};
use super::{dequantize_bytes, vec_dot_bytes, FormatKernels};

/// One IQ2_XS block of 256 weights: `x = d·(0.5 + s)/4 · g · (±1)`, with
/// `g` from `IQ2XS_GRID`, `s` a 4-bit scale per 16 weights (2.3125 bpw).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ2_XS {
    /// Super-block scale.
    pub d: f16,
    /// Per 8 weights: grid index (bits 0..9) and sign index (bits 9..16).
    pub qs: [u16; QK_K / 8],
    /// Per 32 weights, two 4-bit scales (low nibble: first 16 weights).
    pub scales: [u8; QK_K / 32],
}
const _: () = assert!(std::mem::size_of::<BlockIQ2_XS>() == 74);

/// Dequantizes `x` into `y` (`y.len() == x.len() * 256`), bit-exact to ggml.
pub fn dequantize_row_iq2_xs(x: &[BlockIQ2_XS], y: &mut [f32]) {
    assert_eq!(y.len(), x.len() * QK_K);
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = fp16_to_fp32(b.d);
        for (ib32, y) in y.chunks_exact_mut(32).enumerate() {
            let sc = b.scales[ib32];
            let db = [
                d * (0.5 + (sc & 0xf) as f32) * 0.25,
                d * (0.5 + (sc >> 4) as f32) * 0.25,
            ];
            for (l, y) in y.chunks_exact_mut(8).enumerate() {
                let q = b.qs[4 * ib32 + l];
                let grid = IQ2XS_GRID[(q & 511) as usize].to_le_bytes();
                let signs = KSIGNS_IQ2XS[(q >> 9) as usize];
                for j in 0..8 {
                    let sign = if signs & KMASK_IQ2XS[j] != 0 {
                        -1.0
                    } else {
                        1.0
                    };
                    y[j] = db[l / 2] * grid[j] as f32 * sign;
                }
            }
        }
    }
}

/// Signed integer dot product of one 8-weight group (index word `q`) with 8 activations.
#[inline(always)]
fn group_dot(q: u16, q8: &[i8]) -> i32 {
    let grid = IQ2XS_GRID[(q & 511) as usize].to_le_bytes();
    let signs = KSIGNS_IQ2XS[(q >> 9) as usize];
    let mut sumi = 0i32;
    for j in 0..8 {
        let p = grid[j] as i32 * q8[j] as i32;
        sumi += if signs & KMASK_IQ2XS[j] != 0 { -p } else { p };
    }
    sumi
}

/// Dot product of IQ2_XS weights with Q8_K activations (ggml's
/// `ggml_vec_dot_iq2_xs_q8_K_generic`).
pub fn vec_dot_iq2_xs_q8_k(x: &[BlockIQ2_XS], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (b, a) in x.iter().zip(y) {
        let d = fp16_to_fp32(b.d) * a.d;
        let mut bsum = 0i32;
        for (ib32, q8) in a.qs.chunks_exact(32).enumerate() {
            let ls1 = 2 * (b.scales[ib32] & 0xf) as i32 + 1;
            let ls2 = 2 * (b.scales[ib32] >> 4) as i32 + 1;
            let q = &b.qs[4 * ib32..4 * ib32 + 4];
            let sumi1 = group_dot(q[0], &q8[0..8]) + group_dot(q[1], &q8[8..16]);
            let sumi2 = group_dot(q[2], &q8[16..24]) + group_dot(q[3], &q8[24..32]);
            bsum += sumi1 * ls1;
            bsum += sumi2 * ls2;
        }
        sumf += d * bsum as f32;
    }
    0.125 * sumf
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    dequantize_bytes(src, dst, dequantize_row_iq2_xs);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK_K;
    let (wb, ab) = (nb * size_of::<BlockIQ2_XS>(), nb * size_of::<BlockQ8_K>());
    vec_dot_bytes(&w[..wb], &a[..ab], vec_dot_iq2_xs_q8_k)
}

pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::IQ2_XS,
    vec_dot_type: GgmlType::Q8_K,
    dequantize,
    quantize: None,
    vec_dot,
};
