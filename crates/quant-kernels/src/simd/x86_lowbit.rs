//! x86-64 AVX2 + FMA dot products for Q1_0, Q2_0 and NVFP4, whose weight
//! blocks span several Q8_0 activation blocks (four, two and two).
//!
//! Each one computes what llama.cpp's x86 build computes, which is not
//! ggml's `*_generic` order, so against the portable kernels they agree to
//! float rounding, not bit for bit (goldens: `T.vecdot_avx2.f32`, from the
//! built `libggml-cpu.so`):
//! - Q1_0 and NVFP4 port the AVX2 branches of `ggml_vec_dot_q1_0_q8_0` and
//!   `ggml_vec_dot_nvfp4_q8_0` (`ggml-cpu/arch/x86/quants.c`): eight float
//!   lanes of four-weight integer sums, scaled with fused multiply-adds and
//!   added up by `hsum_float_8` at the end.
//! - Q2_0 has no x86 kernel in ggml: its `*_generic` runs, but compiled for
//!   an FMA target, where GCC fuses `sumi += d1·sumi_block` and
//!   `sumf += d0·sumi` into multiply-adds (seen in the disassembly of the
//!   reference build). The port keeps that order with `mul_add`; its
//!   integer sums come from AVX2 (exact, whatever the order).
//!
//! Like ggml's AVX2 kernels, Q1_0's and NVFP4's assume activations in
//! `[-127, 127]` (all that ggml's Q8_0 quantizers produce): `-128` negates
//! to itself in a byte. Kernels are safe `#[target_feature]` functions on
//! typed blocks; the byte wrappers that [`vec_dot`] hands out call them in
//! `unsafe` blocks, sound because [`vec_dot`] returns them only when
//! [`Features::avx2`] (AVX2, FMA and F16C) was detected.

use std::arch::x86_64::*;
use std::mem::size_of;

use gguf_format::GgmlType;

use super::x86::{fp16x8, hsum_float_8, hsum_i32_8, load_i8x32};
use super::{Features, VecDotFn};
use crate::formats::f16::fp16_to_fp32;
use crate::formats::iq_grids::KVALUES_MXFP4;
use crate::formats::nvfp4::{ue4m3_to_fp32, BlockNVFP4, QK_NVFP4};
use crate::formats::q1_0::{BlockQ1_0, QK1_0};
use crate::formats::q2_0::{BlockQ2_0, QK2_0};
use crate::formats::{self, q8_0::BlockQ8_0};

/// The AVX2 dot product for weights of `ty`, if this module has one for `f`.
pub(super) fn vec_dot(ty: GgmlType, f: Features) -> Option<VecDotFn> {
    if !f.avx2 {
        return None;
    }
    match ty {
        GgmlType::Q1_0 => Some(vec_dot_q1_0),
        GgmlType::Q2_0 => Some(vec_dot_q2_0),
        GgmlType::NVFP4 => Some(vec_dot_nvfp4),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Byte-level wrappers.
//
// SAFETY (for every `unsafe` call in this section): these wrappers are only
// reachable through `vec_dot` above, which returns them only when
// `Features::avx2` (AVX2, FMA and F16C detected at run time) is set.
// ---------------------------------------------------------------------------

/// A weight format whose blocks of `BLOCK` weights pair with `BLOCK / 32`
/// Q8_0 blocks: the byte lengths of `n` weights and their activations.
fn lengths<W>(n: usize, block: usize) -> (usize, usize) {
    let nb = n / block;
    (
        nb * size_of::<W>(),
        nb * block / 32 * size_of::<BlockQ8_0>(),
    )
}

fn vec_dot_q1_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (wb, ab) = lengths::<BlockQ1_0>(n, QK1_0);
    formats::vec_dot_bytes(&w[..wb], &a[..ab], |x, y| {
        // SAFETY: see the section comment.
        unsafe { vec_dot_q1_0_q8_0_avx2(x, y) }
    })
}

fn vec_dot_q2_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (wb, ab) = lengths::<BlockQ2_0>(n, QK2_0);
    formats::vec_dot_bytes(&w[..wb], &a[..ab], |x, y| {
        // SAFETY: see the section comment.
        unsafe { vec_dot_q2_0_q8_0_fma(x, y) }
    })
}

fn vec_dot_nvfp4(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let (wb, ab) = lengths::<BlockNVFP4>(n, QK_NVFP4);
    formats::vec_dot_bytes(&w[..wb], &a[..ab], |x, y| {
        // SAFETY: see the section comment.
        unsafe { vec_dot_nvfp4_q8_0_avx2(x, y) }
    })
}

// ---------------------------------------------------------------------------
// Q1_0.
// ---------------------------------------------------------------------------

/// `±q8` summed four at a time into eight i32 lanes (lane `l`: activations
/// `4l..4l+4`), as floats; the sign of activation `e` is bit `e % 8` of
/// `bits[e / 8]` (set: `+`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q1_signed_sums(bits: &[u8], q8: &[i8; 32]) -> __m256 {
    let byte_of = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, //
        2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
    );
    let bit_of = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let qs32 = i32::from_le_bytes([bits[0], bits[1], bits[2], bits[3]]);
    let spread = _mm256_shuffle_epi8(_mm256_set1_epi32(qs32), byte_of);
    // 0xFF where the bit is clear: those activations are negated.
    let sm = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit_of), _mm256_setzero_si256());
    let sy = _mm256_sub_epi8(_mm256_xor_si256(load_i8x32(q8), sm), sm);
    let pairs = _mm256_maddubs_epi16(_mm256_set1_epi8(1), sy);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// Port of ggml's `ggml_vec_dot_q1_0_q8_0`, AVX2 branch: per Q1_0 block the
/// four activation blocks' lane sums are scaled into `acc_block` (a product,
/// then three multiply-adds), which is multiplied by the block scale into
/// the running lanes with one more multiply-add.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn vec_dot_q1_0_q8_0_avx2(x: &[BlockQ1_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len() * 4, y.len());
    let mut acc = _mm256_setzero_ps();
    for (b, a) in x.iter().zip(y.chunks_exact(4)) {
        let mut acc_block = _mm256_mul_ps(fp16x8(a[0].d), q1_signed_sums(&b.qs[0..4], &a[0].qs));
        for (k, a) in a.iter().enumerate().skip(1) {
            let s = q1_signed_sums(&b.qs[4 * k..4 * k + 4], &a.qs);
            acc_block = _mm256_fmadd_ps(fp16x8(a.d), s, acc_block);
        }
        acc = _mm256_fmadd_ps(fp16x8(b.d), acc_block, acc);
    }
    hsum_float_8(acc)
}

// ---------------------------------------------------------------------------
// Q2_0.
// ---------------------------------------------------------------------------

/// `Σ (q − 1)·q8` over the 32 weights coded in `qs` (8 bytes, weight `e` at
/// bits `2·(e % 4)` of byte `e / 4`) and their activations `q8` (exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q2_half_dot(qs: &[u8], q8: &[i8; 32]) -> i32 {
    let v = u64::from_le_bytes(qs[..8].try_into().expect("8 code bytes"));
    // Byte e of `spread` is code byte e / 4 (the upper lane reads bytes 4..8).
    let byte_of = _mm256_setr_epi8(
        0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, //
        4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7,
    );
    let spread = _mm256_shuffle_epi8(_mm256_set1_epi64x(v as i64), byte_of);
    // Code e is bits 2·(e % 4): shift the whole vector by each of the four
    // amounts and keep, in each byte, the shift that belongs to it.
    let m3 = _mm256_set1_epi8(3);
    let at = |m: i32| _mm256_set1_epi32(0xFF << (8 * m));
    let codes = _mm256_or_si256(
        _mm256_or_si256(
            _mm256_and_si256(_mm256_and_si256(spread, m3), at(0)),
            _mm256_and_si256(_mm256_and_si256(_mm256_srli_epi16::<2>(spread), m3), at(1)),
        ),
        _mm256_or_si256(
            _mm256_and_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(spread), m3), at(2)),
            _mm256_and_si256(_mm256_and_si256(_mm256_srli_epi16::<6>(spread), m3), at(3)),
        ),
    );
    // Σ q·q8 − Σ q8, in i16 pairs (|pair| ≤ 2·3·128) and then i32.
    let q8 = load_i8x32(q8);
    let pairs = _mm256_sub_epi16(
        _mm256_maddubs_epi16(codes, q8),
        _mm256_maddubs_epi16(_mm256_set1_epi8(1), q8),
    );
    hsum_i32_8(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// ggml's `ggml_vec_dot_q2_0_q8_0_generic` as llama.cpp's x86 build runs it
/// (compiled with FMA contraction): `sumi = fma(Σ, d_k, sumi)` over the two
/// activation blocks, `sumf = fma(d, sumi, sumf)`.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn vec_dot_q2_0_q8_0_fma(x: &[BlockQ2_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len() * 2, y.len());
    let mut sumf = 0.0f32;
    for (b, a) in x.iter().zip(y.chunks_exact(2)) {
        let mut sumi = 0.0f32;
        for (k, a) in a.iter().enumerate() {
            let s = q2_half_dot(&b.qs[8 * k..8 * k + 8], &a.qs) as f32;
            sumi = s.mul_add(fp16_to_fp32(a.d), sumi);
        }
        sumf = fp16_to_fp32(b.d).mul_add(sumi, sumf);
    }
    sumf
}

// ---------------------------------------------------------------------------
// NVFP4.
// ---------------------------------------------------------------------------

/// The 32 E2M1 values (doubled) of two sub-blocks, `qs` their 16 code bytes,
/// in weight order: sub-block 0 in the lower lane, 1 in the upper.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nvfp4_values(qs: &[u8]) -> __m256i {
    assert!(qs.len() >= 16);
    // SAFETY: both are 16 readable bytes; loadu has no alignment needs.
    let (table, bits) = unsafe {
        (
            _mm_loadu_si128(KVALUES_MXFP4.as_ptr().cast()),
            _mm_loadu_si128(qs.as_ptr().cast()),
        )
    };
    let m4b = _mm_set1_epi8(0x0f);
    let lo = _mm_shuffle_epi8(table, _mm_and_si128(bits, m4b));
    let hi = _mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16::<4>(bits), m4b));
    _mm256_set_m128i(_mm_unpackhi_epi64(lo, hi), _mm_unpacklo_epi64(lo, hi))
}

/// Port of ggml's `ggml_vec_dot_nvfp4_q8_0`, AVX2 branch: lanes of four
/// weights; each sub-block's scale times its activation block's scale
/// multiplies its four lanes into the running sums with a multiply-add.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn vec_dot_nvfp4_q8_0_avx2(x: &[BlockNVFP4], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len() * 2, y.len());
    let ones = _mm256_set1_epi16(1);
    let mut accum = _mm256_setzero_ps();
    for (b, a) in x.iter().zip(y.chunks_exact(2)) {
        for (h, a) in a.iter().enumerate() {
            let w = nvfp4_values(&b.qs[16 * h..]);
            let q8 = load_i8x32(&a.qs);
            // |w| ≤ 12: w's sign moves onto the activations (ggml's mul_add_epi8).
            let p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(q8, w));
            let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
            let dy = fp16_to_fp32(a.d);
            let s_lo = ue4m3_to_fp32(b.d[2 * h]) * dy;
            let s_hi = ue4m3_to_fp32(b.d[2 * h + 1]) * dy;
            let scales = _mm256_set_m128(_mm_set1_ps(s_hi), _mm_set1_ps(s_lo));
            accum = _mm256_fmadd_ps(scales, sums, accum);
        }
    }
    hsum_float_8(accum)
}
