//! x86-64 AVX2 + FMA dot products for the k-quants (Q2_K–Q6_K) and the
//! non-linear IQ4_NL/IQ4_XS, after the AVX2 branches of ggml's
//! `ggml-cpu/arch/x86/quants.c` (`ggml_vec_dot_q4_K_q8_K` and siblings).
//!
//! The integer parts are exact (as in ggml: unsigned×signed `maddubs` pairs
//! that cannot saturate for these value ranges, then `madd` with the
//! sub-block scales). Each kernel also keeps ggml's AVX2 lane layout and
//! float operation order (FMA where llama.cpp's compiler fuses), so its
//! result is bit-identical to what llama.cpp computes on an AVX2 machine
//! (tested against goldens from ggml's C); against the portable kernels,
//! which follow ggml's `*_generic` order, it agrees to float rounding.
//! Kernels are safe `#[target_feature]` functions on typed blocks; the byte
//! wrappers that [`vec_dot`] hands out call them in `unsafe` blocks, sound
//! because [`vec_dot`] returns them only when [`Features::avx2`] was detected.

use std::arch::x86_64::*;

use gguf_format::GgmlType;

use super::x86::{hsum_float_8, k_wrapper, load_i8x32, load_u8x32};
use super::{Features, VecDotFn};
use crate::formats::{
    self, iq4_nl::BlockIQ4_NL, iq4_nl::KVALUES_IQ4NL, iq4_xs::BlockIQ4_XS, q2_k::BlockQ2_K,
    q3_k::BlockQ3_K, q4_k::BlockQ4_K, q5_k::BlockQ5_K, q6_k::BlockQ6_K, q8_0::BlockQ8_0,
    q8_k::BlockQ8_K,
};

/// The AVX2 dot product for weights of `ty`, if this module has one for `f`.
pub(super) fn vec_dot(ty: GgmlType, f: Features) -> Option<VecDotFn> {
    if !f.avx2 {
        return None;
    }
    match ty {
        GgmlType::Q2_K => Some(vec_dot_q2_k),
        GgmlType::Q3_K => Some(vec_dot_q3_k),
        GgmlType::Q4_K => Some(vec_dot_q4_k),
        GgmlType::Q5_K => Some(vec_dot_q5_k),
        GgmlType::Q6_K => Some(vec_dot_q6_k),
        GgmlType::IQ4_NL => Some(vec_dot_iq4_nl),
        GgmlType::IQ4_XS => Some(vec_dot_iq4_xs),
        _ => super::x86_iquants::vec_dot(ty, f),
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

k_wrapper!(vec_dot_q2_k, BlockQ2_K, vec_dot_q2_k_q8_k_avx2);
k_wrapper!(vec_dot_q3_k, BlockQ3_K, vec_dot_q3_k_q8_k_avx2);
k_wrapper!(vec_dot_q4_k, BlockQ4_K, vec_dot_q4_k_q8_k_avx2);
k_wrapper!(vec_dot_q5_k, BlockQ5_K, vec_dot_q5_k_q8_k_avx2);
k_wrapper!(vec_dot_q6_k, BlockQ6_K, vec_dot_q6_k_q8_k_avx2);
k_wrapper!(vec_dot_iq4_xs, BlockIQ4_XS, vec_dot_iq4_xs_q8_k_avx2);

fn vec_dot_iq4_nl(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    let (ws, as_) = (size_of::<BlockIQ4_NL>(), size_of::<BlockQ8_0>());
    formats::vec_dot_bytes(&w[..nb * ws], &a[..nb * as_], |x, y| {
        // SAFETY: see the section comment.
        unsafe { vec_dot_iq4_nl_q8_0_avx2(x, y) }
    })
}

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

/// f16 → f32 with F16C (exact, like every f16 → f32 conversion).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fp16_to_fp32(h: half::f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32)))
}

/// Every f16 bit pattern's f32 value (ggml's `ggml_table_f32_f16`, 256 KiB):
/// for IQ4_NL, whose two scales per 32 weights make the F16C round trip
/// through a vector register the bottleneck, one load is cheaper.
pub(super) fn f16_table() -> &'static [f32; 1 << 16] {
    static TABLE: std::sync::OnceLock<Box<[f32; 1 << 16]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Box::new([0f32; 1 << 16]);
        for (i, v) in t.iter_mut().enumerate() {
            *v = half::f16::from_bits(i as u16).to_f32();
        }
        t
    })
}

/// Loads 16 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_u8x16(p: &[u8]) -> __m128i {
    assert!(p.len() >= 16);
    // SAFETY: `p` has at least 16 readable bytes; loadu has no alignment needs.
    unsafe { _mm_loadu_si128(p.as_ptr().cast()) }
}

/// `pshufb` masks that, applied to eight i16 scales duplicated in both
/// 128-bit lanes, put scale `2s` in the low lane and `2s + 1` in the high
/// lane: the scales of chunk `s` (32 weights, 16 per scale) after `maddubs`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scale_shuffles() -> [__m256i; 4] {
    std::array::from_fn(|s| {
        let lo = (((4 * s + 1) << 8) | (4 * s)) as i16;
        let hi = (((4 * s + 3) << 8) | (4 * s + 2)) as i16;
        _mm256_set_m128i(_mm_set1_epi16(hi), _mm_set1_epi16(lo))
    })
}

/// Sixteen signed 8-bit scales widened to i16, as two vectors holding
/// scales 0–7 and 8–15, each duplicated in both 128-bit lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn widen_scales(scales8: __m128i) -> [__m256i; 2] {
    let all = _mm256_cvtepi8_epi16(scales8);
    let l = _mm256_castsi256_si128(all);
    let h = _mm256_extracti128_si256(all, 1);
    [_mm256_set_m128i(l, l), _mm256_set_m128i(h, h)]
}

/// Signed × signed bytes summed in pairs to i16 (ggml's `mul_add_epi8`);
/// exact while `|x| ≤ 127` and pair sums fit in i16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mul_add_epi8(x: __m256i, y: __m256i) -> __m256i {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    _mm256_maddubs_epi16(ax, sy)
}

/// The 16 IQ4_NL levels, twice (one copy per 128-bit lane) for `pshufb`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn iq4nl_table() -> __m256i {
    // SAFETY: the table is 16 readable bytes; loadu has no alignment needs.
    let t = unsafe { _mm_loadu_si128(KVALUES_IQ4NL.as_ptr().cast()) };
    _mm256_set_m128i(t, t)
}

/// 16 bytes of IQ4 nibbles → 32 signed levels: low nibbles first.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn iq4_levels(table: __m256i, qs: &[u8]) -> __m256i {
    let tmp = load_u8x16(qs);
    let nib = _mm256_and_si256(
        _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp),
        _mm256_set1_epi8(0xF),
    );
    _mm256_shuffle_epi8(table, nib)
}

// ---------------------------------------------------------------------------
// Dot products.
// ---------------------------------------------------------------------------

/// Q2_K × Q8_K, after ggml's `ggml_vec_dot_q2_K_q8_K` AVX2 branch: the
/// mins term is one `madd` of the 16 mins with Q8_K's 16 block sums, and the
/// scales are widened once and broadcast per chunk with `pshufb`.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn vec_dot_q2_k_q8_k_avx2(x: &[BlockQ2_K], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let m3 = _mm256_set1_epi8(3);
    let m4 = _mm_set1_epi8(0xF);
    let shuffles = scale_shuffles();
    let mut acc = _mm256_setzero_ps();
    for (xb, yb) in x.iter().zip(y) {
        let dall = yb.d * fp16_to_fp32(xb.d);
        let dmin = -yb.d * fp16_to_fp32(xb.dmin);
        let mins_and_scales = load_u8x16(&xb.scales);
        let scales8 = _mm_and_si128(mins_and_scales, m4);
        let mins8 = _mm_and_si128(_mm_srli_epi16(mins_and_scales, 4), m4);
        // SAFETY: `bsums` is 32 readable bytes; loadu has no alignment needs.
        let bsums = unsafe { _mm256_loadu_si256(yb.bsums.as_ptr().cast()) };
        let prod = _mm256_madd_epi16(_mm256_cvtepu8_epi16(mins8), bsums);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(prod), acc);
        let halves = widen_scales(scales8);
        let mut sumi = _mm256_setzero_si256();
        for (half, scales) in halves.into_iter().enumerate() {
            let mut q2bits = load_u8x32(&xb.qs[32 * half..]);
            for (s, shuffle) in shuffles.iter().enumerate() {
                let q2 = _mm256_and_si256(q2bits, m3);
                q2bits = _mm256_srli_epi16(q2bits, 2);
                let q8 = load_i8x32(&yb.qs[128 * half + 32 * s..]);
                let p16 = _mm256_maddubs_epi16(q2, q8);
                let sc = _mm256_shuffle_epi8(scales, *shuffle);
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(sc, p16));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dall), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_float_8(acc)
}

/// Q3_K × Q8_K, after ggml's `ggml_vec_dot_q3_K_q8_K` AVX2 branch: the
/// low 2 bits go through `maddubs`, and `4·q8` is subtracted where the high
/// bit is clear.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn vec_dot_q3_k_q8_k_avx2(x: &[BlockQ3_K], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let m3 = _mm256_set1_epi8(3);
    let shuffles = scale_shuffles();
    let mut acc = _mm256_setzero_ps();
    for (xb, yb) in x.iter().zip(y) {
        let d = yb.d * fp16_to_fp32(xb.d);
        let scales = crate::formats::k_helpers::unpack_scales_q3_k(&xb.scales);
        // SAFETY: `scales` is 16 readable bytes; loadu has no alignment needs.
        let scales8 = unsafe { _mm_loadu_si128(scales.as_ptr().cast()) };
        let halves = widen_scales(_mm_sub_epi8(scales8, _mm_set1_epi8(32)));
        let hbits = load_u8x32(&xb.hmask);
        let mut sumi = _mm256_setzero_si256();
        for (h, scales) in halves.into_iter().enumerate() {
            let mut q3bits = load_u8x32(&xb.qs[32 * h..]);
            for (s, shuffle) in shuffles.iter().enumerate() {
                let k = 4 * h + s;
                let q3l = _mm256_and_si256(q3bits, m3);
                q3bits = _mm256_srli_epi16(q3bits, 2);
                // Bit k of hmask byte l is the high bit of weight 32k + l.
                let bit = _mm256_set1_epi8((1u8 << k) as i8);
                let clear = _mm256_cmpeq_epi8(_mm256_and_si256(hbits, bit), _mm256_setzero_si256());
                let q3h = _mm256_and_si256(clear, _mm256_set1_epi8(4));
                let q8 = load_i8x32(&yb.qs[32 * k..]);
                let p16 =
                    _mm256_sub_epi16(_mm256_maddubs_epi16(q3l, q8), _mm256_maddubs_epi16(q3h, q8));
                let sc = _mm256_shuffle_epi8(scales, *shuffle);
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(sc, p16));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_float_8(acc)
}

/// The mins term of Q4_K/Q5_K, `Σ_j m_j · (bsums[2j] + bsums[2j+1])`, as
/// four partial sums.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn mins_dot_bsums(mins: &[u8], bsums: &[i16; 16]) -> __m128i {
    // SAFETY: `bsums` is 32 readable bytes; loadu has no alignment needs.
    let q8sums = unsafe { _mm256_loadu_si256(bsums.as_ptr().cast()) };
    let q8s = _mm_hadd_epi16(
        _mm256_castsi256_si128(q8sums),
        _mm256_extracti128_si256(q8sums, 1),
    );
    assert!(mins.len() >= 8);
    // SAFETY: `mins` has at least 8 readable bytes, all that loadl reads.
    let m = _mm_cvtepu8_epi16(unsafe { _mm_loadl_epi64(mins.as_ptr().cast()) });
    _mm_madd_epi16(m, q8s)
}

/// Q4_K × Q8_K, after ggml's `ggml_vec_dot_q4_K_q8_K` AVX2 branch.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn vec_dot_q4_k_q8_k_avx2(x: &[BlockQ4_K], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let m4 = _mm256_set1_epi8(0xF);
    let mut acc = _mm256_setzero_ps();
    let mut acc_m = _mm_setzero_ps();
    for (xb, yb) in x.iter().zip(y) {
        let d = yb.d * fp16_to_fp32(xb.d);
        let dmin = -yb.d * fp16_to_fp32(xb.dmin);
        let sm = crate::formats::k_helpers::unpack_scales_mins_k4(&xb.scales);
        let m = _mm_cvtepi32_ps(mins_dot_bsums(&sm[8..], &yb.bsums));
        acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), m, acc_m);
        let mut sumi = _mm256_setzero_si256();
        for j in 0..QK_K / 64 {
            let q4bits = load_u8x32(&xb.qs[32 * j..]);
            let q4l = _mm256_and_si256(q4bits, m4);
            let q4h = _mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4);
            let q8l = load_i8x32(&yb.qs[64 * j..]);
            let q8h = load_i8x32(&yb.qs[64 * j + 32..]);
            let p16l = _mm256_madd_epi16(
                _mm256_set1_epi16(sm[2 * j] as i16),
                _mm256_maddubs_epi16(q4l, q8l),
            );
            let p16h = _mm256_madd_epi16(
                _mm256_set1_epi16(sm[2 * j + 1] as i16),
                _mm256_maddubs_epi16(q4h, q8h),
            );
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16l, p16h));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    acc_m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
    acc_m = _mm_add_ss(acc_m, _mm_movehdup_ps(acc_m));
    hsum_float_8(acc) + _mm_cvtss_f32(acc_m)
}

/// Q5_K × Q8_K, after ggml's `ggml_vec_dot_q5_K_q8_K` AVX2 branch.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn vec_dot_q5_k_q8_k_avx2(x: &[BlockQ5_K], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let m4 = _mm256_set1_epi8(0xF);
    let sixteen = _mm256_set1_epi8(16);
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let d = yb.d * fp16_to_fp32(xb.d);
        let dmin = -yb.d * fp16_to_fp32(xb.dmin);
        let sm = crate::formats::k_helpers::unpack_scales_mins_k4(&xb.scales);
        // ggml sums Q5_K's mins term in a scalar, which llama.cpp's compiler
        // fuses into an FMA.
        let m = mins_dot_bsums(&sm[8..], &yb.bsums);
        let m = _mm_hadd_epi32(_mm_hadd_epi32(m, _mm_setzero_si128()), _mm_setzero_si128());
        summs = dmin.mul_add(_mm_cvtsi128_si32(m) as f32, summs);
        let hbits = load_u8x32(&xb.qh);
        let mut sumi = _mm256_setzero_si256();
        for j in 0..QK_K / 64 {
            let q5bits = load_u8x32(&xb.qs[32 * j..]);
            let bit_l = _mm256_set1_epi8((1u8 << (2 * j)) as i8);
            let bit_h = _mm256_set1_epi8((2u8 << (2 * j)) as i8);
            let hl = _mm256_and_si256(
                _mm256_cmpeq_epi8(_mm256_and_si256(hbits, bit_l), bit_l),
                sixteen,
            );
            let hh = _mm256_and_si256(
                _mm256_cmpeq_epi8(_mm256_and_si256(hbits, bit_h), bit_h),
                sixteen,
            );
            let q5l = _mm256_or_si256(_mm256_and_si256(q5bits, m4), hl);
            let q5h = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q5bits, 4), m4), hh);
            let q8l = load_i8x32(&yb.qs[64 * j..]);
            let q8h = load_i8x32(&yb.qs[64 * j + 32..]);
            let p16l = _mm256_madd_epi16(
                _mm256_set1_epi16(sm[2 * j] as i16),
                _mm256_maddubs_epi16(q5l, q8l),
            );
            let p16h = _mm256_madd_epi16(
                _mm256_set1_epi16(sm[2 * j + 1] as i16),
                _mm256_maddubs_epi16(q5h, q8h),
            );
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16l, p16h));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_float_8(acc) + summs
}

/// Q6_K × Q8_K, after ggml's `ggml_vec_dot_q6_K_q8_K` AVX2 branch: the
/// unsigned 6-bit values go through `maddubs`, and the offset 32 is taken
/// off once per block as `32·Σ sc·bsums`, lane for lane as ggml does (so
/// the float rounding is ggml's too).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn vec_dot_q6_k_q8_k_avx2(x: &[BlockQ6_K], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let m4 = _mm256_set1_epi8(0xF);
    let m2 = _mm256_set1_epi8(3);
    let shuffles = scale_shuffles();
    let mut acc = _mm256_setzero_ps();
    for (xb, yb) in x.iter().zip(y) {
        let d = yb.d * fp16_to_fp32(xb.d);
        // SAFETY: `scales` is 16 readable bytes; loadu has no alignment needs.
        let scales8 = unsafe { _mm_loadu_si128(xb.scales.as_ptr().cast()) };
        // SAFETY: `bsums` is 32 readable bytes; loadu has no alignment needs.
        let q8sums = unsafe { _mm256_loadu_si256(yb.bsums.as_ptr().cast()) };
        let q8sclsub =
            _mm256_slli_epi32(_mm256_madd_epi16(q8sums, _mm256_cvtepi8_epi16(scales8)), 5);
        let halves = widen_scales(scales8);
        let mut sumi = _mm256_setzero_si256();
        for (h, scales) in halves.into_iter().enumerate() {
            let q4bits1 = load_u8x32(&xb.ql[64 * h..]);
            let q4bits2 = load_u8x32(&xb.ql[64 * h + 32..]);
            let q4bits_h = load_u8x32(&xb.qh[32 * h..]);
            let hi0 = _mm256_slli_epi16(_mm256_and_si256(q4bits_h, m2), 4);
            let hi1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bits_h, 2), m2), 4);
            let hi2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bits_h, 4), m2), 4);
            let hi3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bits_h, 6), m2), 4);
            let q = [
                _mm256_or_si256(_mm256_and_si256(q4bits1, m4), hi0),
                _mm256_or_si256(_mm256_and_si256(q4bits2, m4), hi1),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits1, 4), m4), hi2),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits2, 4), m4), hi3),
            ];
            for (c, qc) in q.into_iter().enumerate() {
                let q8 = load_i8x32(&yb.qs[128 * h + 32 * c..]);
                let p16 = _mm256_maddubs_epi16(qc, q8);
                let scale = _mm256_shuffle_epi8(scales, shuffles[c]);
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scale, p16));
            }
        }
        sumi = _mm256_sub_epi32(sumi, q8sclsub);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_float_8(acc)
}

/// IQ4_NL × Q8_0, after ggml's `ggml_vec_dot_iq4_nl_q8_0` AVX2 branch:
/// the levels come from a `pshufb` table lookup.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn vec_dot_iq4_nl_q8_0_avx2(x: &[BlockIQ4_NL], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len());
    let table = iq4nl_table();
    let ones = _mm256_set1_epi16(1);
    // Two blocks per step into two accumulators, as ggml does, so that
    // consecutive blocks' FMAs do not wait on each other.
    let mut acc = [_mm256_setzero_ps(); 2];
    let f16 = f16_table();
    let block = |xb: &BlockIQ4_NL, yb: &BlockQ8_0| -> (__m256, __m256) {
        let q4 = iq4_levels(table, &xb.qs);
        let q8 = load_i8x32(&yb.qs);
        let p = _mm256_madd_epi16(mul_add_epi8(q4, q8), ones);
        let d = f16[yb.d.to_bits() as usize] * f16[xb.d.to_bits() as usize];
        (_mm256_set1_ps(d), _mm256_cvtepi32_ps(p))
    };
    let mut xs = x.chunks_exact(2);
    let mut ys = y.chunks_exact(2);
    for (x2, y2) in (&mut xs).zip(&mut ys) {
        let (d0, p0) = block(&x2[0], &y2[0]);
        let (d1, p1) = block(&x2[1], &y2[1]);
        acc[0] = _mm256_fmadd_ps(d0, p0, acc[0]);
        acc[1] = _mm256_fmadd_ps(d1, p1, acc[1]);
    }
    let mut sumf = hsum_float_8(_mm256_add_ps(acc[0], acc[1]));
    // An odd last block goes through ggml's scalar tail.
    for (xb, yb) in xs.remainder().iter().zip(ys.remainder()) {
        let d = f16[yb.d.to_bits() as usize] * f16[xb.d.to_bits() as usize];
        let mut sumi = 0i32;
        for j in 0..16 {
            sumi += yb.qs[j] as i32 * KVALUES_IQ4NL[(xb.qs[j] & 0xF) as usize] as i32;
            sumi += yb.qs[j + 16] as i32 * KVALUES_IQ4NL[(xb.qs[j] >> 4) as usize] as i32;
        }
        sumf = d.mul_add(sumi as f32, sumf);
    }
    sumf
}

/// IQ4_XS × Q8_K, after ggml's `ggml_vec_dot_iq4_xs_q8_K` AVX2 branch.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn vec_dot_iq4_xs_q8_k_avx2(x: &[BlockIQ4_XS], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let table = iq4nl_table();
    let mut acc = _mm256_setzero_ps();
    for (xb, yb) in x.iter().zip(y) {
        let mut sumi = _mm256_setzero_si256();
        for ib in 0..QK_K / 32 {
            let ls = ((xb.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF) as i16
                | ((((xb.scales_h >> (2 * ib)) & 3) as i16) << 4);
            let q4 = iq4_levels(table, &xb.qs[16 * ib..]);
            let q8 = load_i8x32(&yb.qs[32 * ib..]);
            let p16 = mul_add_epi8(q4, q8);
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p16, _mm256_set1_epi16(ls - 32)));
        }
        let d = fp16_to_fp32(xb.d) * yb.d;
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    hsum_float_8(acc)
}
