//! x86-64 AVX2 dot products for the i-quants (IQ2_XXS, IQ2_XS, IQ2_S,
//! IQ3_XXS, IQ3_S, IQ1_S, IQ1_M), the ternary TQ1_0 and TQ2_0, and MXFP4.
//!
//! Each 32-weight group is widened to 32 bytes (grid entries gathered with
//! `_mm256_set_epi64x`/`_mm256_set_epi32`, signs expanded from their bits
//! and moved onto the activations with `_mm256_sign_epi8`), multiplied with
//! `maddubs` and scaled with `madd`. The integer sum of a block is exact, and
//! the float operations per block are the portable kernel's, in its order,
//! so these kernels return the portable (= ggml `*_generic`) result bit for
//! bit. Like ggml's AVX2 kernels they assume activations in `[-127, 127]`,
//! which is all that ggml's Q8_K/Q8_0 quantizers produce (`-128` would be
//! negated to itself by `_mm256_sign_epi8`).
//!
//! Kernels are safe `#[target_feature]` functions on typed blocks; the byte
//! wrappers that [`vec_dot`] hands out call them in `unsafe` blocks, sound
//! because [`vec_dot`] returns them only when [`Features::avx2`] was detected.

use std::arch::x86_64::*;

use gguf_format::GgmlType;

use super::x86::{hsum_i32_8, k_wrapper, load_i8x32, load_u8x32};
use super::{Features, VecDotFn};
use crate::formats::iq_grids::{
    IQ1S_GRID, IQ2S_GRID, IQ2XS_GRID, IQ2XXS_GRID, IQ3S_GRID, IQ3XXS_GRID, KSIGNS_IQ2XS,
    KVALUES_MXFP4,
};
use crate::formats::{
    self, iq1_m::BlockIQ1_M, iq1_s::BlockIQ1_S, iq2_s::BlockIQ2_S, iq2_xs::BlockIQ2_XS,
    iq2_xxs::BlockIQ2_XXS, iq3_s::BlockIQ3_S, iq3_xxs::BlockIQ3_XXS, mxfp4, mxfp4::BlockMXFP4,
    q8_0::BlockQ8_0, q8_k::BlockQ8_K, tq1_0::BlockTQ1_0, tq2_0::BlockTQ2_0,
};

/// The AVX2 dot product for weights of `ty`, if this module has one for `f`.
pub(super) fn vec_dot(ty: GgmlType, f: Features) -> Option<VecDotFn> {
    if !f.avx2 {
        return None;
    }
    match ty {
        GgmlType::IQ2_XXS => Some(vec_dot_iq2_xxs),
        GgmlType::IQ2_XS => Some(vec_dot_iq2_xs),
        GgmlType::IQ2_S => Some(vec_dot_iq2_s),
        GgmlType::IQ3_XXS => Some(vec_dot_iq3_xxs),
        GgmlType::IQ3_S => Some(vec_dot_iq3_s),
        GgmlType::IQ1_S => Some(vec_dot_iq1_s),
        GgmlType::IQ1_M => Some(vec_dot_iq1_m),
        GgmlType::TQ1_0 => Some(vec_dot_tq1_0),
        GgmlType::TQ2_0 => Some(vec_dot_tq2_0),
        GgmlType::MXFP4 => Some(vec_dot_mxfp4),
        _ => super::x86_lowbit::vec_dot(ty, f),
    }
}

// ---------------------------------------------------------------------------
// Byte-level wrappers.
//
// SAFETY (for every `unsafe` call in this section): these wrappers are only
// reachable through `vec_dot` above, which returns them only when
// `Features::avx2` (AVX2, FMA and F16C detected at run time) is set.
// ---------------------------------------------------------------------------

const QK_K: usize = 256;

k_wrapper!(vec_dot_iq2_xxs, BlockIQ2_XXS, vec_dot_iq2_xxs_q8_k_avx2);
k_wrapper!(vec_dot_iq2_xs, BlockIQ2_XS, vec_dot_iq2_xs_q8_k_avx2);
k_wrapper!(vec_dot_iq2_s, BlockIQ2_S, vec_dot_iq2_s_q8_k_avx2);
k_wrapper!(vec_dot_iq3_xxs, BlockIQ3_XXS, vec_dot_iq3_xxs_q8_k_avx2);
k_wrapper!(vec_dot_iq3_s, BlockIQ3_S, vec_dot_iq3_s_q8_k_avx2);
k_wrapper!(vec_dot_iq1_s, BlockIQ1_S, vec_dot_iq1_s_q8_k_avx2);
k_wrapper!(vec_dot_iq1_m, BlockIQ1_M, vec_dot_iq1_m_q8_k_avx2);
k_wrapper!(vec_dot_tq1_0, BlockTQ1_0, vec_dot_tq1_0_q8_k_avx2);
k_wrapper!(vec_dot_tq2_0, BlockTQ2_0, vec_dot_tq2_0_q8_k_avx2);

fn vec_dot_mxfp4(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    let (ws, as_) = (size_of::<BlockMXFP4>(), size_of::<BlockQ8_0>());
    formats::vec_dot_bytes(&w[..nb * ws], &a[..nb * as_], |x, y| {
        // SAFETY: see the section comment.
        unsafe { vec_dot_mxfp4_q8_0_avx2(x, y) }
    })
}

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

/// 32 bytes of ±1 from 32 sign bits: byte `k` of `s` holds the signs of
/// values `8k..8k+8`, bit `j` set meaning value `8k+j` is negative.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn expand_signs(s: u32) -> __m256i {
    let v = _mm256_set1_epi32(s as i32);
    let byte_of_value = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
        2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
    );
    let bytes = _mm256_shuffle_epi8(v, byte_of_value);
    let bits = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let negative = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bits), bits);
    _mm256_or_si256(negative, _mm256_set1_epi8(1))
}

/// Four 7-bit sign indices (bits `7l..7l+7` of `aux`) expanded through
/// `ksigns_iq2xs` to 32 sign bits.
#[inline(always)]
fn ksigns4(aux: u32) -> u32 {
    (0..4).fold(0u32, |s, l| {
        s | (KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize] as u32) << (8 * l)
    })
}

/// Unsigned magnitudes `g` (< 64) times signed activations `q8` with signs
/// `sgn` (±1 bytes), summed in pairs to 16 i16 lanes (exact: |pair| < 2¹⁴).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn signed_dot_pairs(g: __m256i, q8: __m256i, sgn: __m256i) -> __m256i {
    _mm256_maddubs_epi16(g, _mm256_sign_epi8(q8, sgn))
}

/// Sixteen i16 lanes: `lo` for weights 0–15 of a 32-weight group after
/// `maddubs`, `hi` for weights 16–31.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scale_pair(lo: i16, hi: i16) -> __m256i {
    _mm256_set_m128i(_mm_set1_epi16(hi), _mm_set1_epi16(lo))
}

// ---------------------------------------------------------------------------
// Kernels. Each mirrors the portable kernel of the same format
// (crate::formats::<fmt>::vec_dot_<fmt>_<act>), block for block.
// ---------------------------------------------------------------------------

#[target_feature(enable = "avx2,fma,f16c")]
fn vec_dot_iq2_xxs_q8_k_avx2(x: &[BlockIQ2_XXS], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (b, a) in x.iter().zip(y) {
        let d = b.d.to_f32() * a.d;
        let mut acc = _mm256_setzero_si256();
        for ib32 in 0..8 {
            let q = &b.qs[4 * ib32..4 * ib32 + 4];
            let idx = (q[0] as u32 | (q[1] as u32) << 16).to_le_bytes();
            let aux = q[2] as u32 | (q[3] as u32) << 16;
            let g = _mm256_set_epi64x(
                IQ2XXS_GRID[idx[3] as usize] as i64,
                IQ2XXS_GRID[idx[2] as usize] as i64,
                IQ2XXS_GRID[idx[1] as usize] as i64,
                IQ2XXS_GRID[idx[0] as usize] as i64,
            );
            let q8 = load_i8x32(&a.qs[32 * ib32..]);
            let p = signed_dot_pairs(g, q8, expand_signs(ksigns4(aux)));
            let ls = (2 * (aux >> 28) + 1) as i16;
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(ls)));
        }
        sumf += d * hsum_i32_8(acc) as f32;
    }
    0.125 * sumf
}

#[target_feature(enable = "avx2,fma,f16c")]
fn vec_dot_iq2_xs_q8_k_avx2(x: &[BlockIQ2_XS], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (b, a) in x.iter().zip(y) {
        let d = b.d.to_f32() * a.d;
        let mut acc = _mm256_setzero_si256();
        for ib32 in 0..8 {
            let q = &b.qs[4 * ib32..4 * ib32 + 4];
            let g = _mm256_set_epi64x(
                IQ2XS_GRID[(q[3] & 511) as usize] as i64,
                IQ2XS_GRID[(q[2] & 511) as usize] as i64,
                IQ2XS_GRID[(q[1] & 511) as usize] as i64,
                IQ2XS_GRID[(q[0] & 511) as usize] as i64,
            );
            let s = (0..4).fold(0u32, |s, l| {
                s | (KSIGNS_IQ2XS[(q[l] >> 9) as usize] as u32) << (8 * l)
            });
            let q8 = load_i8x32(&a.qs[32 * ib32..]);
            let p = signed_dot_pairs(g, q8, expand_signs(s));
            let sc = b.scales[ib32];
            let ls = scale_pair(2 * (sc & 0xf) as i16 + 1, 2 * (sc >> 4) as i16 + 1);
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ls));
        }
        sumf += d * hsum_i32_8(acc) as f32;
    }
    0.125 * sumf
}

#[target_feature(enable = "avx2,fma,f16c")]
fn vec_dot_iq2_s_q8_k_avx2(x: &[BlockIQ2_S], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (b, a) in x.iter().zip(y) {
        let d = b.d.to_f32() * a.d;
        let mut acc = _mm256_setzero_si256();
        for ib32 in 0..8 {
            let qh = b.qh[ib32] as usize;
            let entry = |l: usize| {
                let idx = b.qs[4 * ib32 + l] as usize | ((qh << (8 - 2 * l)) & 0x300);
                IQ2S_GRID[idx] as i64
            };
            let g = _mm256_set_epi64x(entry(3), entry(2), entry(1), entry(0));
            let o = QK_K / 8 + 4 * ib32;
            let s = u32::from_le_bytes([b.qs[o], b.qs[o + 1], b.qs[o + 2], b.qs[o + 3]]);
            let q8 = load_i8x32(&a.qs[32 * ib32..]);
            let p = signed_dot_pairs(g, q8, expand_signs(s));
            let sc = b.scales[ib32];
            let ls = scale_pair(1 + 2 * (sc & 0xf) as i16, 1 + 2 * (sc >> 4) as i16);
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, ls));
        }
        sumf += d * hsum_i32_8(acc) as f32;
    }
    0.125 * sumf
}

#[target_feature(enable = "avx2,fma,f16c")]
fn vec_dot_iq3_xxs_q8_k_avx2(x: &[BlockIQ3_XXS], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (b, a) in x.iter().zip(y) {
        let d = b.d.to_f32() * a.d;
        let mut acc = _mm256_setzero_si256();
        for ib32 in 0..8 {
            let o = QK_K / 4 + 4 * ib32;
            let aux = u32::from_le_bytes([b.qs[o], b.qs[o + 1], b.qs[o + 2], b.qs[o + 3]]);
            let qs = &b.qs[8 * ib32..8 * ib32 + 8];
            let e = |k: usize| IQ3XXS_GRID[qs[k] as usize] as i32;
            let g = _mm256_set_epi32(e(7), e(6), e(5), e(4), e(3), e(2), e(1), e(0));
            let q8 = load_i8x32(&a.qs[32 * ib32..]);
            let p = signed_dot_pairs(g, q8, expand_signs(ksigns4(aux)));
            let ls = (2 * (aux >> 28) + 1) as i16;
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(ls)));
        }
        sumf += d * hsum_i32_8(acc) as f32;
    }
    0.25 * sumf
}

#[target_feature(enable = "avx2,fma,f16c")]
fn vec_dot_iq3_s_q8_k_avx2(x: &[BlockIQ3_S], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (b, a) in x.iter().zip(y) {
        let d = b.d.to_f32() * a.d;
        let mut acc = _mm256_setzero_si256();
        for ib32 in 0..8 {
            let qs = &b.qs[8 * ib32..8 * ib32 + 8];
            let qh = b.qh[ib32] as usize;
            // Entry k (0..8): its 9th index bit is bit k of qh.
            let e = |k: usize| IQ3S_GRID[qs[k] as usize | (((qh >> k) & 1) << 8)] as i32;
            let g = _mm256_set_epi32(e(7), e(6), e(5), e(4), e(3), e(2), e(1), e(0));
            let o = 4 * ib32;
            let s =
                u32::from_le_bytes([b.signs[o], b.signs[o + 1], b.signs[o + 2], b.signs[o + 3]]);
            let q8 = load_i8x32(&a.qs[32 * ib32..]);
            let p = signed_dot_pairs(g, q8, expand_signs(s));
            let ls = 2 * ((b.scales[ib32 / 2] >> (4 * (ib32 % 2))) & 0xf) as i16 + 1;
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(ls)));
        }
        sumf += d * hsum_i32_8(acc) as f32;
    }
    sumf
}

#[target_feature(enable = "avx2,fma,f16c")]
fn vec_dot_iq1_s_q8_k_avx2(x: &[BlockIQ1_S], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let ones = _mm256_set1_epi8(1);
    let mut sumf = 0.0f32;
    for (b, a) in x.iter().zip(y) {
        let mut acc = _mm256_setzero_si256();
        let mut sumi1 = 0i32;
        for ib in 0..8 {
            let qh = b.qh[ib] as usize;
            let e = |l: usize| {
                IQ1S_GRID[b.qs[4 * ib + l] as usize | (((qh >> (3 * l)) & 7) << 8)] as i64
            };
            // Grid bytes are −1, 0, 1: `sign_epi8` multiplies by them exactly.
            let g = _mm256_set_epi64x(e(3), e(2), e(1), e(0));
            let prod = _mm256_sign_epi8(load_i8x32(&a.qs[32 * ib..]), g);
            let p = _mm256_maddubs_epi16(ones, prod);
            let ls = 2 * ((qh >> 12) & 7) as i32 + 1;
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(ls as i16)));
            let delta = if qh & 0x8000 != 0 { -1 } else { 1 };
            sumi1 += ls * delta * (a.bsums[2 * ib] as i32 + a.bsums[2 * ib + 1] as i32);
        }
        let sumi = hsum_i32_8(acc);
        sumf += b.d.to_f32() * a.d * (sumi as f32 + 0.125 * sumi1 as f32);
    }
    sumf
}

#[target_feature(enable = "avx2,fma,f16c")]
fn vec_dot_iq1_m_q8_k_avx2(x: &[BlockIQ1_M], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let ones = _mm256_set1_epi8(1);
    let mut sumf = 0.0f32;
    for (b, a) in x.iter().zip(y) {
        let sc: [u16; 4] =
            std::array::from_fn(|i| u16::from_le_bytes([b.scales[2 * i], b.scales[2 * i + 1]]));
        let bits =
            (sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000);
        let d = half::f16::from_bits(bits).to_f32();
        let mut acc1 = _mm256_setzero_si256();
        let mut acc2 = _mm256_setzero_si256();
        for ib in 0..8 {
            let qh = [b.qh[2 * ib] as usize, b.qh[2 * ib + 1] as usize];
            let e = |l: usize| {
                let idx = b.qs[4 * ib + l] as usize | ((qh[l / 2] << (8 - 4 * (l % 2))) & 0x700);
                IQ1S_GRID[idx] as i64
            };
            let g = _mm256_set_epi64x(e(3), e(2), e(1), e(0));
            // ±1 in every byte of group l: the sign of its ±1/8 shift.
            let shift = |l: usize| {
                if qh[l / 2] & (0x08 << (4 * (l % 2))) != 0 {
                    -1i64
                } else {
                    0x0101_0101_0101_0101
                }
            };
            let deltas = _mm256_set_epi64x(shift(3), shift(2), shift(1), shift(0));
            let w = sc[ib / 2] >> (6 * (ib % 2));
            let ls = scale_pair(2 * (w & 7) as i16 + 1, 2 * ((w >> 3) & 7) as i16 + 1);
            let q8 = load_i8x32(&a.qs[32 * ib..]);
            let p1 = _mm256_maddubs_epi16(ones, _mm256_sign_epi8(q8, g));
            let p2 = _mm256_maddubs_epi16(ones, _mm256_sign_epi8(q8, deltas));
            acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(p1, ls));
            acc2 = _mm256_add_epi32(acc2, _mm256_madd_epi16(p2, ls));
        }
        let (sumi1, sumi2) = (hsum_i32_8(acc1), hsum_i32_8(acc2));
        sumf += d * a.d * (sumi1 as f32 + 0.125 * sumi2 as f32);
    }
    sumf
}

/// Sum over 16 weights of `trit(w, i)·a` (trits as stored, 0..3): `w` holds
/// 16 packed bytes and `a` 16 activations, both widened to i16 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tq1_trit_dot(w: __m256i, pow3: i16, a: __m256i) -> __m256i {
    // The byte product mod 256 brings trit i to the top; (q·3) >> 8 reads it.
    let q = _mm256_and_si256(
        _mm256_mullo_epi16(w, _mm256_set1_epi16(pow3)),
        _mm256_set1_epi16(0xff),
    );
    let t = _mm256_srli_epi16::<8>(_mm256_mullo_epi16(q, _mm256_set1_epi16(3)));
    _mm256_madd_epi16(t, a)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn vec_dot_tq1_0_q8_k_avx2(x: &[BlockTQ1_0], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    const POW3: [i16; 5] = [1, 3, 9, 27, 81];
    let (zero, ones8, ones16) = (
        _mm256_setzero_si256(),
        _mm256_set1_epi8(1),
        _mm256_set1_epi16(1),
    );
    let mut sumf = 0.0f32;
    for (b, a) in x.iter().zip(y) {
        // Σ (t − 1)·q8 = Σ t·q8 − Σ q8, t ∈ {0, 1, 2} the stored trit.
        let mut acc = _mm256_setzero_si256();
        let mut acc_q8 = _mm256_setzero_si256();
        for c in 0..8 {
            let q8 = load_i8x32(&a.qs[32 * c..]);
            acc_q8 = _mm256_add_epi32(
                acc_q8,
                _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, q8), ones16),
            );
        }
        // Weights 0..160: byte m of qs[0..32] holds weights m + 32n. Bytes and
        // activations are widened with the same (lane-interleaving) unpack,
        // which keeps them paired.
        let v = load_u8x32(&b.qs);
        let (w_lo, w_hi) = (_mm256_unpacklo_epi8(v, zero), _mm256_unpackhi_epi8(v, zero));
        for (n, &p) in POW3.iter().enumerate() {
            let q8 = load_i8x32(&a.qs[32 * n..]);
            let sign = _mm256_cmpgt_epi8(zero, q8);
            let (a_lo, a_hi) = (
                _mm256_unpacklo_epi8(q8, sign),
                _mm256_unpackhi_epi8(q8, sign),
            );
            acc = _mm256_add_epi32(acc, tq1_trit_dot(w_lo, p, a_lo));
            acc = _mm256_add_epi32(acc, tq1_trit_dot(w_hi, p, a_hi));
        }
        // Weights 160..240: byte m of qs[32..48] holds weights 160 + m + 16n.
        // SAFETY: `qs[32..48]` is 16 readable bytes; loadu has no alignment needs.
        let v16 = _mm256_cvtepu8_epi16(unsafe { _mm_loadu_si128(b.qs[32..48].as_ptr().cast()) });
        for (n, &p) in POW3.iter().enumerate() {
            let o = 160 + 16 * n;
            // SAFETY: `qs[o..o + 16]` is 16 readable bytes; loadu has no alignment needs.
            let a16 =
                _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(a.qs[o..o + 16].as_ptr().cast()) });
            acc = _mm256_add_epi32(acc, tq1_trit_dot(v16, p, a16));
        }
        // Weights 240..256 (qh), 16 of them: scalar.
        let mut sum_qh = 0i32;
        for (n, &p) in POW3[..4].iter().enumerate() {
            for j in 0..4 {
                let q = b.qh[j].wrapping_mul(p as u8);
                let t = ((q as u16 * 3) >> 8) as i32;
                sum_qh += t * a.qs[240 + 4 * n + j] as i32;
            }
        }
        let sum = hsum_i32_8(acc) + sum_qh - hsum_i32_8(acc_q8);
        sumf += sum as f32 * (b.d.to_f32() * a.d);
    }
    sumf
}

#[target_feature(enable = "avx2,fma,f16c")]
fn vec_dot_tq2_0_q8_k_avx2(x: &[BlockTQ2_0], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let (ones8, ones16, three) = (
        _mm256_set1_epi8(1),
        _mm256_set1_epi16(1),
        _mm256_set1_epi8(3),
    );
    let mut sumf = 0.0f32;
    for (b, a) in x.iter().zip(y) {
        // Σ (c − 1)·q8 = Σ c·q8 − Σ q8, with c ∈ 0..4 the stored 2-bit code.
        let mut acc = _mm256_setzero_si256();
        let mut acc_q8 = _mm256_setzero_si256();
        for run in 0..2 {
            let v = load_u8x32(&b.qs[32 * run..]);
            for l in 0..4 {
                let c = _mm256_and_si256(
                    _mm256_srlv_epi64(v, _mm256_set1_epi64x(2 * l as i64)),
                    three,
                );
                let q8 = load_i8x32(&a.qs[128 * run + 32 * l..]);
                acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(c, q8), ones16));
                acc_q8 = _mm256_add_epi32(
                    acc_q8,
                    _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, q8), ones16),
                );
            }
        }
        let sumi = hsum_i32_8(acc) - hsum_i32_8(acc_q8);
        let d = a.d * b.d.to_f32();
        sumf += sumi as f32 * d;
    }
    sumf
}

#[target_feature(enable = "avx2,fma,f16c")]
fn vec_dot_mxfp4_q8_0_avx2(x: &[BlockMXFP4], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len());
    // SAFETY: the table is 16 readable bytes; loadu has no alignment needs.
    let t = unsafe { _mm_loadu_si128(KVALUES_MXFP4.as_ptr().cast()) };
    let table = _mm256_set_m128i(t, t);
    let (low4, ones16) = (_mm_set1_epi8(0x0f), _mm256_set1_epi16(1));
    let mut sumf = 0.0f32;
    for (b, a) in x.iter().zip(y) {
        let d = a.d.to_f32() * mxfp4::e8m0_to_fp32_half(b.e);
        // SAFETY: `qs` is 16 readable bytes; loadu has no alignment needs.
        let qs = unsafe { _mm_loadu_si128(b.qs.as_ptr().cast()) };
        let nibbles = _mm256_set_m128i(
            _mm_and_si128(_mm_srli_epi16::<4>(qs), low4),
            _mm_and_si128(qs, low4),
        );
        let w = _mm256_shuffle_epi8(table, nibbles);
        let q8 = load_i8x32(&a.qs);
        // |w| ≤ 12: move w's sign onto the activations, multiply magnitudes.
        let p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(q8, w));
        let sumi = hsum_i32_8(_mm256_madd_epi16(p, ones16));
        sumf += d * sumi as f32;
    }
    sumf
}
