//! TQ1_0, ternary weights packed 5 to a byte: 1.6875 bits per weight.
//!
//! Weights are `d·t` with `t ∈ {−1, 0, 1}`. Five trits `t₀..t₄` (stored as
//! `t + 1`) form the base-3 number `n = Σ (tᵢ+1)·3^(4−i)`, kept as the byte
//! `⌈n·256/243⌉`: multiplying that byte by `3^i` (mod 256) brings trit `i` to
//! the top, and `(b·3) >> 8` reads it, without any division. Ported from
//! ggml's `quantize_row_tq1_0_ref`, `dequantize_row_tq1_0` and
//! `ggml_vec_dot_tq1_0_q8_K_generic`.

use std::mem::size_of;

use bytemuck::{Pod, Zeroable};
use gguf_format::GgmlType;
use half::f16;

use super::f16::{fp16_to_fp32, fp32_to_fp16};
use super::q8_k::{BlockQ8_K, QK_K};
use super::{dequantize_bytes, quantize_bytes, vec_dot_bytes, FormatKernels};

/// Powers of three that bring each packed trit to the top of the byte.
const POW3: [u8; 6] = [1, 3, 9, 27, 81, 243];

/// One TQ1_0 block of 256 weights: `x = d·t`, `t ∈ {−1, 0, 1}`, 5 trits per
/// byte in `qs`, 4 per byte in `qh` (1.6875 bpw).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockTQ1_0 {
    /// Weights 0..240: byte `j` of each 32-byte (then 16-byte) run holds the
    /// trits of weights `j + k·run` for `k` in 0..5.
    pub qs: [u8; (QK_K - 4 * QK_K / 64) / 5],
    /// Weights 240..256: byte `j` holds the trits of weights `240 + j + 4k`, `k` in 0..4.
    pub qh: [u8; QK_K / 64],
    /// Block scale.
    pub d: f16,
}
const _: () = assert!(std::mem::size_of::<BlockTQ1_0>() == 54);

/// Trit `i` (0..5) of packed byte `b`, as −1, 0 or 1.
#[inline(always)]
fn trit(b: u8, i: usize) -> i32 {
    let q = b.wrapping_mul(POW3[i]);
    ((q as u16 * 3) >> 8) as i32 - 1
}

/// Calls `f(position, trit)` for the 256 weights of `b`, in ggml's order.
#[inline(always)]
fn for_each_trit(b: &BlockTQ1_0, mut f: impl FnMut(usize, i32)) {
    // 32-byte run: 160 weights; 16-byte run: 80 weights; qh: 16 weights.
    for n in 0..5 {
        for m in 0..32 {
            f(n * 32 + m, trit(b.qs[m], n));
        }
    }
    for n in 0..5 {
        for m in 0..16 {
            f(160 + n * 16 + m, trit(b.qs[32 + m], n));
        }
    }
    for n in 0..4 {
        for j in 0..4 {
            f(240 + n * 4 + j, trit(b.qh[j], n));
        }
    }
}

/// Dequantizes `x` into `y` (`y.len() == x.len() * 256`), bit-exact to ggml.
pub fn dequantize_row_tq1_0(x: &[BlockTQ1_0], y: &mut [f32]) {
    assert_eq!(y.len(), x.len() * QK_K);
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = fp16_to_fp32(b.d);
        for_each_trit(b, |i, t| y[i] = t as f32 * d);
    }
}

/// Packs base-3 digits (already `t + 1`, most significant first) into a byte
/// by ceiling division, so that the decoder's multiply-and-shift reads them.
#[inline(always)]
fn pack(q: u8) -> u8 {
    (q as u16 * 256).div_ceil(243) as u8
}

/// Quantizes `x` (`x.len() == y.len() * 256`) to TQ1_0 with ggml's reference
/// algorithm: `d = max|x|`, `t = round(x/d)` (halves away from zero).
pub fn quantize_row_tq1_0_ref(x: &[f32], y: &mut [BlockTQ1_0]) {
    assert_eq!(x.len(), y.len() * QK_K);
    for (x, b) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = fp32_to_fp16(d);
        // ggml's lroundf(x·id) + 1 maps −1, 0, 1 to 0, 1, 2.
        let t = |v: f32| ((v * id).round() as i32 + 1) as u8;
        for m in 0..32 {
            let q = (0..5).fold(0u8, |q, n| q.wrapping_mul(3).wrapping_add(t(x[m + n * 32])));
            b.qs[m] = pack(q);
        }
        for m in 0..16 {
            let q = (0..5).fold(0u8, |q, n| {
                q.wrapping_mul(3).wrapping_add(t(x[160 + m + n * 16]))
            });
            b.qs[32 + m] = pack(q);
        }
        for j in 0..4 {
            let q = (0..4).fold(0u8, |q, m| {
                q.wrapping_mul(3).wrapping_add(t(x[240 + j + m * 4]))
            });
            // Four trits: shift them up so the first is the most significant of five.
            b.qh[j] = pack(q.wrapping_mul(3));
        }
    }
}

/// Dot product of TQ1_0 weights with Q8_K activations (ggml's
/// `ggml_vec_dot_tq1_0_q8_K_generic`).
pub fn vec_dot_tq1_0_q8_k(x: &[BlockTQ1_0], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (b, a) in x.iter().zip(y) {
        let mut sum = 0i32;
        for_each_trit(b, |i, t| sum += t * a.qs[i] as i32);
        sumf += sum as f32 * (fp16_to_fp32(b.d) * a.d);
    }
    sumf
}

fn dequantize(src: &[u8], dst: &mut [f32]) {
    dequantize_bytes(src, dst, dequantize_row_tq1_0);
}

fn quantize(src: &[f32], dst: &mut [u8]) {
    quantize_bytes(src, dst, quantize_row_tq1_0_ref);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK_K;
    let (wb, ab) = (nb * size_of::<BlockTQ1_0>(), nb * size_of::<BlockQ8_K>());
    vec_dot_bytes(&w[..wb], &a[..ab], vec_dot_tq1_0_q8_k)
}

pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::TQ1_0,
    vec_dot_type: GgmlType::Q8_K,
    dequantize,
    quantize: Some(quantize),
    vec_dot,
};
