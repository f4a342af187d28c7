//! IQ2_XXS, ggml's "true" 2-bit i-quant: 2.0625 bits per weight.
//!
//! Each group of 8 weights is one of 256 sign-free patterns from
//! `IQ2XXS_GRID` (values 8, 25, 43) plus 7 sign bits (the 8th is implied by
//! even parity, `KSIGNS_IQ2XS`); each 32 weights share a 4-bit scale.
//! Ported from ggml's `dequantize_row_iq2_xxs` (ggml-quants.c) and
//! `ggml_vec_dot_iq2_xxs_q8_K_generic` (ggml-cpu/quants.c). ggml has no
//! reference quantizer for it (quantizing needs an importance matrix).

use std::mem::size_of;

use bytemuck::{Pod, Zeroable};
use gguf_format::GgmlType;
use half::f16;

use super::f16::fp16_to_fp32;
use super::iq_grids::{IQ2XXS_GRID, KMASK_IQ2XS, KSIGNS_IQ2XS};
use super::q8_k::{BlockQ8_K, QK_K};
use super::{dequantize_bytes, vec_dot_bytes, FormatKernels};

/// One IQ2_XXS block of 256 weights: `x = d·(0.5 + s)/4 · g · (±1)`, with
/// `g` from `IQ2XXS_GRID`, `s` a 4-bit scale per 32 weights (2.0625 bpw).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ2_XXS {
    /// Super-block scale.
    pub d: f16,
    /// Per 32 weights, four 16-bit words read as two `u32`: the first holds
    /// four 8-bit grid indices, the second four 7-bit sign indices (bits
    /// 0..28) and the 4-bit scale (bits 28..32).
    pub qs: [u16; QK_K / 8],
}
const _: () = assert!(std::mem::size_of::<BlockIQ2_XXS>() == 66);

/// The `(grid indices, signs and scale)` words of 32-weight group `ib32`
/// (ggml's `memcpy(aux32, qs + 4*ib32, 8)` on a little-endian host).
#[inline(always)]
fn aux32(b: &BlockIQ2_XXS, ib32: usize) -> (u32, u32) {
    let q = &b.qs[4 * ib32..4 * ib32 + 4];
    (
        q[0] as u32 | (q[1] as u32) << 16,
        q[2] as u32 | (q[3] as u32) << 16,
    )
}

/// Dequantizes `x` into `y` (`y.len() == x.len() * 256`), bit-exact to ggml.
pub fn dequantize_row_iq2_xxs(x: &[BlockIQ2_XXS], y: &mut [f32]) {
    assert_eq!(y.len(), x.len() * QK_K);
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = fp16_to_fp32(b.d);
        for (ib32, y) in y.chunks_exact_mut(32).enumerate() {
            let (idx, aux) = aux32(b, ib32);
            let db = d * (0.5 + (aux >> 28) as f32) * 0.25;
            for (l, y) in y.chunks_exact_mut(8).enumerate() {
                let grid = IQ2XXS_GRID[idx.to_le_bytes()[l] as usize].to_le_bytes();
                let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
                for j in 0..8 {
                    let sign = if signs & KMASK_IQ2XS[j] != 0 {
                        -1.0
                    } else {
                        1.0
                    };
                    y[j] = db * grid[j] as f32 * sign;
                }
            }
        }
    }
}

/// Dot product of IQ2_XXS weights with Q8_K activations (ggml's
/// `ggml_vec_dot_iq2_xxs_q8_K_generic`): exact integer sums per block, then
/// one float multiply-add per block.
pub fn vec_dot_iq2_xxs_q8_k(x: &[BlockIQ2_XXS], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (b, a) in x.iter().zip(y) {
        let d = fp16_to_fp32(b.d) * a.d;
        let mut bsum = 0i32;
        for (ib32, q8) in a.qs.chunks_exact(32).enumerate() {
            let (idx, aux) = aux32(b, ib32);
            let ls = (2 * (aux >> 28) + 1) as i32;
            let mut sumi = 0i32;
            for (l, q8) in q8.chunks_exact(8).enumerate() {
                let grid = IQ2XXS_GRID[idx.to_le_bytes()[l] as usize].to_le_bytes();
                let signs = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
                for j in 0..8 {
                    let p = grid[j] as i32 * q8[j] as i32;
                    sumi += if signs & KMASK_IQ2XS[j] != 0 { -p } else { p };
                }
            }
            bsum += sumi * ls;
        }
        sumf += d * bsum as f32;
    }
    0.125 * sumf
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    dequantize_bytes(src, dst, dequantize_row_iq2_xxs);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK_K;
    let (wb, ab) = (nb * size_of::<BlockIQ2_XXS>(), nb * size_of::<BlockQ8_K>());
    vec_dot_bytes(&w[..wb], &a[..ab], vec_dot_iq2_xxs_q8_k)
}

pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::IQ2_XXS,
    vec_dot_type: GgmlType::Q8_K,
    dequantize,
    quantize: None,
    vec_dot,
};
