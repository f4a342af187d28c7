//! IQ3_XXS, ggml's "true" 3-bit i-quant: 3.0625 bits per weight.
//!
//! Each group of 4 weights is one of 256 sign-free patterns from
//! `IQ3XXS_GRID`; per 8 weights 7 sign bits (parity gives the 8th,
//! `KSIGNS_IQ2XS`); per 32 weights a 4-bit scale. Ported from ggml's
//! `dequantize_row_iq3_xxs` and `ggml_vec_dot_iq3_xxs_q8_K_generic`; ggml has
//! no reference quantizer for it (quantizing needs an importance matrix).

use std::mem::size_of;

use bytemuck::{Pod, Zeroable};
use gguf_format::GgmlType;
use half::f16;

use super::f16::fp16_to_fp32;
use super::iq_grids::{IQ3XXS_GRID, KMASK_IQ2XS, KSIGNS_IQ2XS};
use super::q8_k::{BlockQ8_K, QK_K};
use super::{dequantize_bytes, vec_dot_bytes, FormatKernels};

/// One IQ3_XXS block of 256 weights: `x = d·(0.5 + s)/2 · g · (±1)`, with
/// `g` from `IQ3XXS_GRID`, `s` a 4-bit scale per 32 weights (3.0625 bpw).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ3_XXS {
    /// Super-block scale.
    pub d: f16,
    /// 64 grid indices (one per 4 weights), then per 32 weights a
    /// little-endian `u32`: four 7-bit sign indices and the 4-bit scale.
    pub qs: [u8; 3 * QK_K / 8],
}
const _: () = assert!(std::mem::size_of::<BlockIQ3_XXS>() == 98);

/// The signs-and-scale word of 32-weight group `ib32`.
#[inline(always)]
fn signs_and_scale(b: &BlockIQ3_XXS, ib32: usize) -> u32 {
    let o = QK_K / 4 + 4 * ib32;
    u32::from_le_bytes([b.qs[o], b.qs[o + 1], b.qs[o + 2], b.qs[o + 3]])
}

/// Dequantizes `x` into `y` (`y.len() == x.len() * 256`), bit-exact to ggml.
pub fn dequantize_row_iq3_xxs(x: &[BlockIQ3_XXS], y: &mut [f32]) {
    assert_eq!(y.len(), x.len() * QK_K);
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = fp16_to_fp32(b.d);
        for (ib32, y) in y.chunks_exact_mut(32).enumerate() {
            let aux = signs_and_scale(b, ib32);
            let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
            let qs = &b.qs[8 * ib32..8 * ib32 + 8];
            for (l, y) in y.chunks_exact_mut(8).enumerate() {
                let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
                let grid1 = IQ3XXS_GRID[qs[2 * l] as usize].to_le_bytes();
                let grid2 = IQ3XXS_GRID[qs[2 * l + 1] as usize].to_le_bytes();
                for j in 0..4 {
                    let s1 = if signs & KMASK_IQ2XS[j] != 0 {
                        -1.0
                    } else {
                        1.0
                    };
                    let s2 = if signs & KMASK_IQ2XS[j + 4] != 0 {
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

/// Dot product of IQ3_XXS weights with Q8_K activations (ggml's
/// `ggml_vec_dot_iq3_xxs_q8_K_generic`).
pub fn vec_dot_iq3_xxs_q8_k(x: &[BlockIQ3_XXS], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (b, a) in x.iter().zip(y) {
        let d = fp16_to_fp32(b.d) * a.d;
        let mut bsum = 0i32;
        for (ib32, q8) in a.qs.chunks_exact(32).enumerate() {
            let aux = signs_and_scale(b, ib32);
            let ls = (2 * (aux >> 28) + 1) as i32;
            let qs = &b.qs[8 * ib32..8 * ib32 + 8];
            let mut sumi = 0i32;
            for (l, q8) in q8.chunks_exact(8).enumerate() {
                let grid1 = IQ3XXS_GRID[qs[2 * l] as usize].to_le_bytes();
                let grid2 = IQ3XXS_GRID[qs[2 * l + 1] as usize].to_le_bytes();
                let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
                for j in 0..4 {
                    let p1 = grid1[j] as i32 * q8[j] as i32;
                    let p2 = grid2[j] as i32 * q8[j + 4] as i32;
                    sumi += if signs & KMASK_IQ2XS[j] != 0 { -p1 } else { p1 };
                    sumi += if signs & KMASK_IQ2XS[j + 4] != 0 {
                        -p2
                    } else {
                        p2
                    };
                }
            }
            bsum += sumi * ls;
        }
        sumf += d * bsum as f32;
    }
    0.25 * sumf
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    dequantize_bytes(src, dst, dequantize_row_iq3_xxs);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK_K;
    let (wb, ab) = (nb * size_of::<BlockIQ3_XXS>(), nb * size_of::<BlockQ8_K>());
    vec_dot_bytes(&w[..wb], &a[..ab], vec_dot_iq3_xxs_q8_k)
}

pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::IQ3_XXS,
    vec_dot_type: GgmlType::Q8_K,
    dequantize,
    quantize: None,
    vec_dot,
};
