//! IQ1_M: 1.75 bits per weight.
//!
//! The IQ1_S grid (`IQ1S_GRID`) with finer side information: the ±1/8
//! shift is chosen per 8 weights, the 3-bit odd scale per 16 weights, and
//! the f16 super-block scale is spread over the top nibbles of the four
//! scale words. Ported from ggml's `dequantize_row_iq1_m` and
//! `ggml_vec_dot_iq1_m_q8_K_generic`; ggml has no reference quantizer for it
//! (quantizing needs an importance matrix).

use std::mem::size_of;

use bytemuck::{Pod, Zeroable};
use gguf_format::GgmlType;
use half::f16;

use super::f16::fp16_to_fp32;
use super::iq1_s::IQ1S_DELTA;
use super::iq_grids::IQ1S_GRID;
use super::q8_k::{BlockQ8_K, QK_K};
use super::{dequantize_bytes, vec_dot_bytes, FormatKernels};

/// `IQ1M_DELTA`: the shift the dot product applies; equal to [`IQ1S_DELTA`],
/// which ggml's dequantizer uses for this format.
const IQ1M_DELTA: f32 = 0.125;

/// One IQ1_M block of 256 weights: `x = d·(2s + 1)·(g ± 1/8)`, with `g` from
/// `IQ1S_GRID`, `s` a 3-bit scale per 16 weights, the shift's sign per 8
/// weights (1.75 bpw).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIQ1_M {
    /// Low 8 bits of the 32 grid indices (one per 8 weights).
    pub qs: [u8; QK_K / 8],
    /// Per 16 weights, two nibbles: 3 high index bits and the shift's sign
    /// (bit 3: negative) of each 8-weight group.
    pub qh: [u8; QK_K / 16],
    /// Four little-endian `u16`: four 3-bit scales each (bits 0..12), and in
    /// bits 12..16 one nibble of the f16 super-block scale.
    pub scales: [u8; QK_K / 32],
}
const _: () = assert!(std::mem::size_of::<BlockIQ1_M>() == 56);

/// The four scale words and the super-block scale assembled from their top nibbles.
#[inline(always)]
fn scales(b: &BlockIQ1_M) -> ([u16; 4], f32) {
    let sc: [u16; 4] =
        std::array::from_fn(|i| u16::from_le_bytes([b.scales[2 * i], b.scales[2 * i + 1]]));
    let bits = (sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000);
    (sc, fp16_to_fp32(f16::from_bits(bits)))
}

/// Grid entry of group `l` (0..4) of 32-weight group `ib`, as signed values.
#[inline(always)]
fn grid(b: &BlockIQ1_M, ib: usize, l: usize) -> [i8; 8] {
    let qh = b.qh[2 * ib + l / 2] as usize;
    let idx = b.qs[4 * ib + l] as usize | ((qh << (8 - 4 * (l % 2))) & 0x700);
    IQ1S_GRID[idx].to_le_bytes().map(|v| v as i8)
}

/// Whether the shift of group `l` (0..4) of 32-weight group `ib` is negative.
#[inline(always)]
fn negative_shift(b: &BlockIQ1_M, ib: usize, l: usize) -> bool {
    b.qh[2 * ib + l / 2] & (0x08 << (4 * (l % 2))) != 0
}

/// The two 3-bit scales `(2s + 1)` of 32-weight group `ib`.
#[inline(always)]
fn sub_scales(sc: &[u16; 4], ib: usize) -> [i32; 2] {
    let w = sc[ib / 2] >> (6 * (ib % 2));
    [2 * (w & 7) as i32 + 1, 2 * ((w >> 3) & 7) as i32 + 1]
}

/// Dequantizes `x` into `y` (`y.len() == x.len() * 256`), bit-exact to ggml.
pub fn dequantize_row_iq1_m(x: &[BlockIQ1_M], y: &mut [f32]) {
    assert_eq!(y.len(), x.len() * QK_K);
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let (sc, d) = scales(b);
        for (ib, y) in y.chunks_exact_mut(32).enumerate() {
            let ls = sub_scales(&sc, ib);
            let dl = [d * ls[0] as f32, d * ls[1] as f32];
            for (l, y) in y.chunks_exact_mut(8).enumerate() {
                let grid = grid(b, ib, l);
                let delta = if negative_shift(b, ib, l) {
                    -IQ1S_DELTA
                } else {
                    IQ1S_DELTA
                };
                for j in 0..8 {
                    y[j] = dl[l / 2] * (grid[j] as f32 + delta);
                }
            }
        }
    }
}

/// Dot product of IQ1_M weights with Q8_K activations (ggml's
/// `ggml_vec_dot_iq1_m_q8_K_generic`).
pub fn vec_dot_iq1_m_q8_k(x: &[BlockIQ1_M], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (b, a) in x.iter().zip(y) {
        let (sc, d) = scales(b);
        let mut sumi1 = 0i32;
        let mut sumi2 = 0i32;
        for (ib, q8) in a.qs.chunks_exact(32).enumerate() {
            let mut sum1 = [0i32; 2];
            let mut sum2 = [0i32; 2];
            for (l, q8) in q8.chunks_exact(8).enumerate() {
                let grid = grid(b, ib, l);
                let delta = if negative_shift(b, ib, l) { -1 } else { 1 };
                let mut lsum1 = 0i32;
                let mut lsum2 = 0i32;
                for j in 0..8 {
                    lsum1 += q8[j] as i32 * grid[j] as i32;
                    lsum2 += q8[j] as i32;
                }
                sum1[l / 2] += lsum1;
                sum2[l / 2] += lsum2 * delta;
            }
            let [ls1, ls2] = sub_scales(&sc, ib);
            sumi1 += sum1[0] * ls1 + sum1[1] * ls2;
            sumi2 += sum2[0] * ls1 + sum2[1] * ls2;
        }
        sumf += d * a.d * (sumi1 as f32 + IQ1M_DELTA * sumi2 as f32);
    }
    sumf
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    dequantize_bytes(src, dst, dequantize_row_iq1_m);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK_K;
    let (wb, ab) = (nb * size_of::<BlockIQ1_M>(), nb * size_of::<BlockQ8_K>());
    vec_dot_bytes(&w[..wb], &a[..ab], vec_dot_iq1_m_q8_k)
}

pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::IQ1_M,
    vec_dot_type: GgmlType::Q8_K,
    dequantize,
    quantize: None,
    vec_dot,
};
