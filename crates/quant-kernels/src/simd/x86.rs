//! x86-64 kernels: AVX2 + FMA + F16C, ported from ggml's
//! `ggml-cpu/arch/x86/quants.c` (quantized formats) and `ggml-cpu/vec.cpp`
//! with `simd-mappings.h` (F32, F16, BF16), AVX2 branches.
//!
//! Kernels are safe `#[target_feature]` functions taking typed blocks; the
//! byte-level wrappers handed out by [`vec_dot`] and [`from_float`] call them
//! in `unsafe` blocks, which is sound because those two functions only hand
//! a wrapper out when [`Features::avx2`] was detected at run time.
//! To add a kernel, add a row to the `match` of [`vec_dot`] or [`from_float`].

use std::arch::x86_64::*;

use gguf_format::GgmlType;
use half::{bf16, f16};

use super::{Features, FromFloatFn, RowsDotFn, VecDotFn};
use crate::formats::{
    self, bf16::bf16_to_fp32, f16::fp16_to_fp32, q4_0::BlockQ4_0, q4_1::BlockQ4_1, q5_0::BlockQ5_0,
    q5_1::BlockQ5_1, q8_0::BlockQ8_0, q8_1::BlockQ8_1, q8_k::BlockQ8_K,
};

/// The native dot product for weights of `ty`, if there is one for `f`.
pub(super) fn vec_dot(ty: GgmlType, f: Features) -> Option<VecDotFn> {
    match ty {
        GgmlType::F32 if f.avx2 => Some(vec_dot_f32),
        GgmlType::F16 if f.avx2 => Some(vec_dot_f16),
        GgmlType::BF16 if f.avx2 => Some(vec_dot_bf16),
        GgmlType::Q4_0 if f.avx2 => Some(vec_dot_q4_0),
        GgmlType::Q4_1 if f.avx2 => Some(vec_dot_q4_1),
        GgmlType::Q5_0 if f.avx2 => Some(vec_dot_q5_0),
        GgmlType::Q5_1 if f.avx2 => Some(vec_dot_q5_1),
        GgmlType::Q8_0 if f.avx2 => Some(vec_dot_q8_0),
        _ => super::x86_kquants::vec_dot(ty, f),
    }
}

/// The native several-rows product ([`super::RowsDotFn`]) for weights of
/// `ty`, if there is one for `f`.
pub(super) fn rows_dot(ty: GgmlType, f: Features) -> Option<RowsDotFn> {
    use super::x86_panel::{Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};
    use super::x86_rows::dot_rows_avx2;
    if !f.avx2 {
        return None;
    }
    // SAFETY (every closure): the kernels need AVX2, FMA and F16C, which
    // `f.avx2` says were detected.
    match ty {
        GgmlType::Q8_0 => Some(|w, r, a, o| unsafe { dot_rows_avx2::<Q8_0>(w, r, a, o) }),
        GgmlType::Q5_0 => Some(|w, r, a, o| unsafe { dot_rows_avx2::<Q5_0>(w, r, a, o) }),
        GgmlType::Q4_0 => Some(|w, r, a, o| unsafe { dot_rows_avx2::<Q4_0>(w, r, a, o) }),
        GgmlType::Q4_1 => Some(|w, r, a, o| unsafe { dot_rows_avx2::<Q4_1>(w, r, a, o) }),
        GgmlType::Q5_1 => Some(|w, r, a, o| unsafe { dot_rows_avx2::<Q5_1>(w, r, a, o) }),
        _ => None,
    }
}

/// The native activation quantizer producing `ty`, if there is one for `f`.
pub(super) fn from_float(ty: GgmlType, f: Features) -> Option<FromFloatFn> {
    match ty {
        GgmlType::F16 if f.avx2 => Some(from_float_f16),
        GgmlType::Q8_0 if f.avx2 => Some(from_float_q8_0),
        GgmlType::Q8_1 if f.avx2 => Some(from_float_q8_1),
        GgmlType::Q8_K if f.avx2 => Some(from_float_q8_k),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Byte-level wrappers.
// ---------------------------------------------------------------------------

// SAFETY (for every `unsafe` call in this section): these wrappers are only
// reachable through `vec_dot`/`from_float` above, which return them only when
// `Features::avx2` (AVX2, FMA and F16C detected at run time) is set.

fn vec_dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    formats::vec_dot_bytes(&w[..n * 4], &a[..n * 4], |x: &[f32], y: &[f32]| {
        // SAFETY: see the section comment.
        unsafe { dot_f32_avx2(x, y) }
    })
}

fn vec_dot_f16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    formats::vec_dot_bytes(&w[..n * 2], &a[..n * 2], |x: &[f16], y: &[f16]| {
        // SAFETY: see the section comment.
        unsafe { dot_f16_avx2(x, y) }
    })
}

fn vec_dot_bf16(n: usize, w: &[u8], a: &[u8]) -> f32 {
    formats::vec_dot_bytes(&w[..n * 2], &a[..n * 2], |x: &[bf16], y: &[bf16]| {
        // SAFETY: see the section comment.
        unsafe { dot_bf16_avx2(x, y) }
    })
}

fn vec_dot_q4_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    formats::vec_dot_bytes(&w[..nb * 18], &a[..nb * 34], |x, y| {
        // SAFETY: see the section comment.
        unsafe { vec_dot_q4_0_q8_0_avx2(x, y) }
    })
}

fn vec_dot_q4_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    formats::vec_dot_bytes(&w[..nb * 20], &a[..nb * 36], |x, y| {
        // SAFETY: see the section comment.
        unsafe { vec_dot_q4_1_q8_1_avx2(x, y) }
    })
}

fn vec_dot_q5_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    formats::vec_dot_bytes(&w[..nb * 22], &a[..nb * 34], |x, y| {
        // SAFETY: see the section comment.
        unsafe { vec_dot_q5_0_q8_0_avx2(x, y) }
    })
}

fn vec_dot_q5_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    formats::vec_dot_bytes(&w[..nb * 24], &a[..nb * 36], |x, y| {
        // SAFETY: see the section comment.
        unsafe { vec_dot_q5_1_q8_1_avx2(x, y) }
    })
}

fn vec_dot_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    formats::vec_dot_bytes(&w[..nb * 34], &a[..nb * 34], |x, y| {
        // SAFETY: see the section comment.
        unsafe { vec_dot_q8_0_q8_0_avx2(x, y) }
    })
}

fn from_float_f16(src: &[f32], dst: &mut [u8]) {
    formats::quantize_bytes(src, dst, |x, y| {
        // SAFETY: see the section comment.
        unsafe { fp32_to_fp16_row_f16c(x, y) }
    })
}

fn from_float_q8_0(src: &[f32], dst: &mut [u8]) {
    formats::quantize_bytes(src, dst, |x, y| {
        // SAFETY: see the section comment.
        unsafe { quantize_row_q8_0_avx2(x, y) }
    })
}

fn from_float_q8_1(src: &[f32], dst: &mut [u8]) {
    formats::quantize_bytes(src, dst, |x, y| {
        // SAFETY: see the section comment.
        unsafe { quantize_row_q8_1_avx2(x, y) }
    })
}

fn from_float_q8_k(src: &[f32], dst: &mut [u8]) {
    formats::quantize_bytes(src, dst, |x, y| {
        // SAFETY: see the section comment.
        unsafe { quantize_row_q8_k_avx2(x, y) }
    })
}

// ---------------------------------------------------------------------------
// Helpers (ggml's, same names).
// ---------------------------------------------------------------------------

/// f16 → f32 broadcast to 8 lanes with F16C (exact). Every lane is used,
/// which matters: converting only lane 0 lets LLVM insert the half into
/// whatever register is at hand — the accumulator, in practice — and the
/// false dependency serialises the whole loop (measured: 3× slower).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn fp16x8(h: f16) -> __m256 {
    _mm256_cvtph_ps(_mm_set1_epi16(h.to_bits() as i16))
}

/// Two adjacent f16 fields (Q4_1/Q5_1's `d, m`, Q8_1's `d, s`) → lanes 0
/// and 1 of an f32 vector, with one 32-bit move (no false dependency).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fp16_pair(a: f16, b: f16) -> __m128 {
    let v = u32::from(a.to_bits()) | (u32::from(b.to_bits()) << 16);
    _mm_cvtph_ps(_mm_cvtsi32_si128(v as i32))
}

/// Sum of 8 floats, in ggml's `hsum_float_8` order (re-exported as
/// [`super::hsum_float_8`] for other crates' AVX2 kernels).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C (the features it is compiled
/// for); callers compiled with them call it safely.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn hsum_float_8(x: __m256) -> f32 {
    let mut res = _mm256_extractf128_ps(x, 1);
    res = _mm_add_ps(res, _mm256_castps256_ps128(x));
    res = _mm_add_ps(res, _mm_movehl_ps(res, res));
    res = _mm_add_ss(res, _mm_movehdup_ps(res));
    _mm_cvtss_f32(res)
}

/// Sum of 8 i32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum_i32_8(a: __m256i) -> i32 {
    let sum128 = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    let hi64 = _mm_unpackhi_epi64(sum128, sum128);
    let sum64 = _mm_add_epi32(hi64, sum128);
    let hi32 = _mm_shuffle_epi32(sum64, 0b10_11_00_01);
    _mm_cvtsi128_si32(_mm_add_epi32(sum64, hi32))
}

/// 16 bytes of nibbles → 32 bytes in [0, 15]: low nibbles first.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn bytes_from_nibbles_32(rsi: &[u8; 16]) -> __m256i {
    // SAFETY: `rsi` is 16 readable bytes; loadu has no alignment needs.
    let tmp = unsafe { _mm_loadu_si128(rsi.as_ptr().cast()) };
    let bytes = _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp);
    _mm256_and_si256(_mm256_set1_epi8(0xF), bytes)
}

/// 32 bits → 32 bytes, 0xFF where the bit is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn bytes_from_bits_32(x: &[u8; 4]) -> __m256i {
    let x32 = i32::from_le_bytes(*x);
    let shuf_mask = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0x0000000000000000,
    );
    let mut bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x32), shuf_mask);
    let bit_mask = _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe);
    bytes = _mm256_or_si256(bytes, bit_mask);
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_32(p: &[i8; 32]) -> __m256i {
    // SAFETY: `p` is 32 readable bytes; loadu has no alignment needs.
    unsafe { _mm256_loadu_si256(p.as_ptr().cast()) }
}

/// Loads 32 bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load_u8x32(p: &[u8]) -> __m256i {
    assert!(p.len() >= 32);
    // SAFETY: `p` has at least 32 readable bytes; loadu has no alignment needs.
    unsafe { _mm256_loadu_si256(p.as_ptr().cast()) }
}
/// Loads 32 signed bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load_i8x32(p: &[i8]) -> __m256i {
    assert!(p.len() >= 32);
    // SAFETY: `p` has at least 32 readable bytes; loadu has no alignment needs.
    unsafe { _mm256_loadu_si256(p.as_ptr().cast()) }
}

/// Unsigned × signed bytes, pairwise summed twice, as 8 floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn mul_sum_us8_pairs_float(ax: __m256i, sy: __m256i) -> __m256 {
    let dot = _mm256_maddubs_epi16(ax, sy);
    let summed_pairs = _mm256_madd_epi16(_mm256_set1_epi16(1), dot);
    _mm256_cvtepi32_ps(summed_pairs)
}

/// Signed × signed bytes, pairwise summed twice, as 8 floats. Exact for
/// `y` in [−127, 127] (activations never hold −128).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn mul_sum_i8_pairs_float(x: __m256i, y: __m256i) -> __m256 {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    mul_sum_us8_pairs_float(ax, sy)
}

// ---------------------------------------------------------------------------
// Quantized dot products (ggml-cpu/arch/x86/quants.c, AVX2 branches).
// ---------------------------------------------------------------------------

/// Port of ggml's `ggml_vec_dot_q4_0_q8_0`, AVX2 branch.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn vec_dot_q4_0_q8_0_avx2(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut acc = _mm256_setzero_ps();
    let off = _mm256_set1_epi8(8);
    for (x, y) in x.iter().zip(y) {
        let d = _mm256_mul_ps(fp16x8(x.d), fp16x8(y.d));
        let qx = _mm256_sub_epi8(bytes_from_nibbles_32(&x.qs), off);
        let qy = load_32(&y.qs);
        let q = mul_sum_i8_pairs_float(qx, qy);
        acc = _mm256_fmadd_ps(d, q, acc);
    }
    hsum_float_8(acc)
}

/// Port of ggml's `ggml_vec_dot_q4_1_q8_1`, AVX2 branch.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn vec_dot_q4_1_q8_1_avx2(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut acc = _mm256_setzero_ps();
    // Lane 0 carries ggml's scalar `summs`: the same additions in order.
    let mut summs = _mm_setzero_ps();
    for (x, y) in x.iter().zip(y) {
        // [dx·dy, m·s] in one multiply.
        let p = _mm_mul_ps(fp16_pair(x.d, x.m), fp16_pair(y.d, y.s));
        summs = _mm_add_ss(summs, _mm_movehdup_ps(p));
        let d0d1 = _mm256_broadcastss_ps(p);
        let qx = bytes_from_nibbles_32(&x.qs);
        let qy = load_32(&y.qs);
        let xy = mul_sum_us8_pairs_float(qx, qy);
        acc = _mm256_fmadd_ps(d0d1, xy, acc);
    }
    hsum_float_8(acc) + _mm_cvtss_f32(summs)
}

/// Port of ggml's `ggml_vec_dot_q5_0_q8_0`, AVX2 branch.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn vec_dot_q5_0_q8_0_avx2(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut acc = _mm256_setzero_ps();
    for (x, y) in x.iter().zip(y) {
        let d = _mm256_mul_ps(fp16x8(x.d), fp16x8(y.d));
        let mut qx = bytes_from_nibbles_32(&x.qs);
        // Where the fifth bit is clear, OR in 0xF0: the byte becomes q − 16.
        let bxhi = _mm256_andnot_si256(bytes_from_bits_32(&x.qh), _mm256_set1_epi8(0xF0u8 as i8));
        qx = _mm256_or_si256(qx, bxhi);
        let qy = load_32(&y.qs);
        let q = mul_sum_i8_pairs_float(qx, qy);
        acc = _mm256_fmadd_ps(d, q, acc);
    }
    hsum_float_8(acc)
}

/// Port of ggml's `ggml_vec_dot_q5_1_q8_1`, AVX2 branch.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn vec_dot_q5_1_q8_1_avx2(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut acc = _mm256_setzero_ps();
    let mut summs = _mm_setzero_ps();
    for (x, y) in x.iter().zip(y) {
        let p = _mm_mul_ps(fp16_pair(x.d, x.m), fp16_pair(y.d, y.s));
        summs = _mm_add_ss(summs, _mm_movehdup_ps(p));
        let dxdy = _mm256_broadcastss_ps(p);
        let mut qx = bytes_from_nibbles_32(&x.qs);
        let bxhi = _mm256_and_si256(bytes_from_bits_32(&x.qh), _mm256_set1_epi8(0x10));
        qx = _mm256_or_si256(qx, bxhi);
        let qy = load_32(&y.qs);
        let q = mul_sum_us8_pairs_float(qx, qy);
        acc = _mm256_fmadd_ps(q, dxdy, acc);
    }
    hsum_float_8(acc) + _mm_cvtss_f32(summs)
}

/// Port of ggml's `ggml_vec_dot_q8_0_q8_0`, AVX2 branch.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn vec_dot_q8_0_q8_0_avx2(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut acc = _mm256_setzero_ps();
    for (x, y) in x.iter().zip(y) {
        let d = _mm256_mul_ps(fp16x8(x.d), fp16x8(y.d));
        let q = mul_sum_i8_pairs_float(load_32(&x.qs), load_32(&y.qs));
        acc = _mm256_fmadd_ps(d, q, acc);
    }
    hsum_float_8(acc)
}

// ---------------------------------------------------------------------------
// Float dot products (ggml-cpu/vec.cpp with simd-mappings.h, AVX2: four
// 8-wide accumulators over steps of 32, leftovers summed in f64).
// ---------------------------------------------------------------------------

/// ggml's `GGML_F32x8_REDUCE` of four accumulators.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn reduce4(s: [__m256; 4]) -> f32 {
    let a = _mm256_add_ps(s[0], s[2]);
    let b = _mm256_add_ps(s[1], s[3]);
    let x = _mm256_add_ps(a, b);
    let t0 = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    let t1 = _mm_hadd_ps(t0, t0);
    _mm_cvtss_f32(_mm_hadd_ps(t1, t1))
}

/// Port of ggml's `ggml_vec_dot_f32` (AVX2 + FMA).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_f32_avx2(x: &[f32], y: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len());
    let n = x.len();
    let np = n & !31;
    let mut sum = [_mm256_setzero_ps(); 4];
    for i in (0..np).step_by(32) {
        for (j, s) in sum.iter_mut().enumerate() {
            // SAFETY: i + 8j + 8 ≤ np ≤ n for both slices.
            let (ax, ay) = unsafe {
                (
                    _mm256_loadu_ps(x.as_ptr().add(i + 8 * j)),
                    _mm256_loadu_ps(y.as_ptr().add(i + 8 * j)),
                )
            };
            *s = _mm256_fmadd_ps(ax, ay, *s);
        }
    }
    let mut sumf = f64::from(reduce4(sum));
    for i in np..n {
        sumf += f64::from(x[i] * y[i]);
    }
    sumf as f32
}

/// Port of ggml's `ggml_vec_dot_f16` (AVX2 + F16C + FMA).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_f16_avx2(x: &[f16], y: &[f16]) -> f32 {
    assert_eq!(x.len(), y.len());
    let n = x.len();
    let np = n & !31;
    let mut sum = [_mm256_setzero_ps(); 4];
    for i in (0..np).step_by(32) {
        for (j, s) in sum.iter_mut().enumerate() {
            // SAFETY: i + 8j + 8 ≤ np ≤ n halves (16 bytes) for both slices.
            let (ax, ay) = unsafe {
                (
                    _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().add(i + 8 * j).cast())),
                    _mm256_cvtph_ps(_mm_loadu_si128(y.as_ptr().add(i + 8 * j).cast())),
                )
            };
            *s = _mm256_fmadd_ps(ax, ay, *s);
        }
    }
    let mut sumf = f64::from(reduce4(sum));
    for i in np..n {
        sumf += f64::from(fp16_to_fp32(x[i]) * fp16_to_fp32(y[i]));
    }
    sumf as f32
}

/// 8 bf16 → 8 f32 (ggml's AVX2 `LOAD` in `ggml_vec_dot_bf16`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_bf16(p: &[bf16]) -> __m256 {
    assert!(p.len() >= 8);
    // SAFETY: at least 8 bf16 (16 bytes) are readable at `p`.
    let v = unsafe { _mm_loadu_si128(p.as_ptr().cast()) };
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16))
}

/// Port of ggml's `ggml_vec_dot_bf16` (AVX2 branch: multiply, then add).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn dot_bf16_avx2(x: &[bf16], y: &[bf16]) -> f32 {
    assert_eq!(x.len(), y.len());
    let n = x.len();
    let mut c = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (j, c) in c.iter_mut().enumerate() {
            let k = i + 8 * j;
            *c = _mm256_add_ps(_mm256_mul_ps(load_bf16(&x[k..]), load_bf16(&y[k..])), *c);
        }
        i += 32;
    }
    let c1 = _mm256_add_ps(c[0], c[2]);
    let c2 = _mm256_add_ps(c[1], c[3]);
    let mut sumf = f64::from(hsum_float_8(_mm256_add_ps(c1, c2)));
    for k in i..n {
        sumf += f64::from(bf16_to_fp32(x[k]) * bf16_to_fp32(y[k]));
    }
    sumf as f32
}

// ---------------------------------------------------------------------------
// Activation quantizers: byte-identical to the portable twins.
// ---------------------------------------------------------------------------

/// f32 → f16 with F16C, round to nearest even (ggml's `ggml_cpu_fp32_to_fp16`).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn fp32_to_fp16_row_f16c(x: &[f32], y: &mut [f16]) {
    assert_eq!(x.len(), y.len());
    let n = x.len();
    let np = n & !7;
    for i in (0..np).step_by(8) {
        // SAFETY: i + 8 ≤ n for both slices; 8 f32 read, 8 f16 written.
        unsafe {
            let v = _mm256_loadu_ps(x.as_ptr().add(i));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm_storeu_si128(y.as_mut_ptr().add(i).cast(), h);
        }
    }
    for i in np..n {
        y[i] = fp32_to_fp16_f16c(x[i]);
    }
}

/// f32 → f16 with F16C, round to nearest even (`GGML_CPU_FP32_TO_FP16` on x86).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fp32_to_fp16_f16c(x: f32) -> f16 {
    let h = _mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(x));
    f16::from_bits(_mm_extract_epi16::<0>(h) as u16)
}

/// max |x| over a 32-float block, as ggml's AVX2 quantizers compute it.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn block_absmax(v: &[__m256; 4]) -> f32 {
    let sign_bit = _mm256_set1_ps(-0.0);
    let mut max_abs = _mm256_andnot_ps(sign_bit, v[0]);
    max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign_bit, v[1]));
    max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign_bit, v[2]));
    max_abs = _mm256_max_ps(max_abs, _mm256_andnot_ps(sign_bit, v[3]));
    let mut max4 = _mm_max_ps(
        _mm256_extractf128_ps(max_abs, 1),
        _mm256_castps256_ps128(max_abs),
    );
    max4 = _mm_max_ps(max4, _mm_movehl_ps(max4, max4));
    max4 = _mm_max_ss(max4, _mm_movehdup_ps(max4));
    _mm_cvtss_f32(max4)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_block_32(x: &[f32]) -> [__m256; 4] {
    assert!(x.len() >= 32);
    // SAFETY: 32 floats are readable at `x`.
    unsafe {
        [
            _mm256_loadu_ps(x.as_ptr()),
            _mm256_loadu_ps(x.as_ptr().add(8)),
            _mm256_loadu_ps(x.as_ptr().add(16)),
            _mm256_loadu_ps(x.as_ptr().add(24)),
        ]
    }
}

/// Multiplies by `id`, rounds half to even, converts: four vectors of i32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scale_round(v: [__m256; 4], id: f32) -> [__m256i; 4] {
    let mul = _mm256_set1_ps(id);
    v.map(|v| {
        let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(v, mul),
        );
        _mm256_cvtps_epi32(r)
    })
}

/// Packs four vectors of i32 into 32 i8 in order, saturating.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn pack_i8(i: [__m256i; 4], dst: &mut [i8; 32]) {
    let i0 = _mm256_packs_epi32(i[0], i[1]);
    let i2 = _mm256_packs_epi32(i[2], i[3]);
    let p = _mm256_packs_epi16(i0, i2);
    // The packs work per 128-bit lane; this permutation restores the order.
    let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let p = _mm256_permutevar8x32_epi32(p, perm);
    // SAFETY: `dst` is 32 writable bytes; storeu has no alignment needs.
    unsafe { _mm256_storeu_si256(dst.as_mut_ptr().cast(), p) }
}

/// Port of ggml's x86 `quantize_row_q8_0` (AVX2 branch).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn quantize_row_q8_0_avx2(x: &[f32], y: &mut [BlockQ8_0]) {
    assert_eq!(y.len() * 32, x.len());
    for (x, b) in x.chunks_exact(32).zip(y.iter_mut()) {
        let v = load_block_32(x);
        let max_scalar = block_absmax(&v);
        let d = max_scalar / 127.0;
        b.d = fp32_to_fp16_f16c(d);
        let id = if max_scalar != 0.0 {
            127.0 / max_scalar
        } else {
            0.0
        };
        pack_i8(scale_round(v, id), &mut b.qs);
    }
}

/// Port of ggml's x86 `quantize_row_q8_1` (AVX2 branch).
#[target_feature(enable = "avx2,fma,f16c")]
pub fn quantize_row_q8_1_avx2(x: &[f32], y: &mut [BlockQ8_1]) {
    assert_eq!(y.len() * 32, x.len());
    for (x, b) in x.chunks_exact(32).zip(y.iter_mut()) {
        let v = load_block_32(x);
        let max_scalar = block_absmax(&v);
        let d = max_scalar / 127.0;
        b.d = fp32_to_fp16_f16c(d);
        let id = if max_scalar != 0.0 {
            127.0 / max_scalar
        } else {
            0.0
        };
        let i = scale_round(v, id);
        let sum = hsum_i32_8(_mm256_add_epi32(
            _mm256_add_epi32(i[0], i[1]),
            _mm256_add_epi32(i[2], i[3]),
        ));
        b.s = fp32_to_fp16_f16c(d * sum as f32);
        pack_i8(i, &mut b.qs);
    }
}

/// ggml's `quantize_row_q8_K_ref` vectorised (ggml itself uses the
/// reference on x86): same scale, same round-half-even, same bytes.
#[target_feature(enable = "avx2,fma,f16c")]
pub fn quantize_row_q8_k_avx2(x: &[f32], y: &mut [BlockQ8_K]) {
    assert_eq!(y.len() * 256, x.len());
    for (x, b) in x.chunks_exact(256).zip(y.iter_mut()) {
        let mut amax = 0.0f32;
        for c in x.chunks_exact(32) {
            amax = amax.max(block_absmax(&load_block_32(c)));
        }
        if amax == 0.0 {
            *b = bytemuck::Zeroable::zeroed();
            continue;
        }
        // The reference keeps the first element of largest magnitude.
        let max = x.iter().copied().find(|v| v.abs() == amax).unwrap_or(amax);
        let iscale = -127.0 / max;
        let cap = _mm256_set1_epi32(127);
        for (c, q) in x.chunks_exact(32).zip(b.qs.chunks_exact_mut(32)) {
            let i = scale_round(load_block_32(c), iscale).map(|i| _mm256_min_epi32(i, cap));
            pack_i8(i, q.try_into().expect("32 quants"));
        }
        for (s, q) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = q.iter().map(|&q| i16::from(q)).sum();
        }
        b.d = 1.0 / iscale;
    }
}

/// Byte wrapper for a super-block format paired with Q8_K, shared by the
/// k-quant and i-quant modules (their kernels take typed block slices).
macro_rules! k_wrapper {
    ($name:ident, $block:ty, $kernel:ident) => {
        fn $name(n: usize, w: &[u8], a: &[u8]) -> f32 {
            let nb = n / QK_K;
            let (ws, as_) = (size_of::<$block>(), size_of::<BlockQ8_K>());
            formats::vec_dot_bytes(&w[..nb * ws], &a[..nb * as_], |x, y| {
                // SAFETY: see the section comment.
                unsafe { $kernel(x, y) }
            })
        }
    };
}
pub(super) use k_wrapper;
