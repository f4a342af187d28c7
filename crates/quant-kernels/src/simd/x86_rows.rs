//! Matrix-vector kernels (x86, AVX2): several weight rows of Q8_0, Q5_0,
//! Q4_0, Q4_1 or Q5_1 against one activation row, [`PASS`] rows a pass
//! (what [`crate::matmul::matvec`] uses for a single-token product).
//!
//! Per row the operations are those of [`super::x86`]'s ports of ggml's
//! AVX2 `ggml_vec_dot_{q8_0,q5_0,q4_0}_q8_0` and
//! `ggml_vec_dot_{q4_1,q5_1}_q8_1` — per block eight 32-bit sums of four
//! byte products converted to f32, `d_w·d_a` formed in f32 and one FMA
//! into the row's accumulator (Q4_1/Q5_1: `m_w·s_a` added to the row's
//! scalar sum), blocks in order, ggml's `hsum_float_8` at the end — so every
//! output is bit-identical to the single-row kernel's (for activations in
//! [−127, 127], which is all a quantizer makes). What a pass shares is the
//! activation block (its quants loaded and its scale converted once for
//! all its rows) and the loop and call around it; the rows' FMA chains are
//! independent, so they overlap. Two things take work off the vector ports
//! that a single-row product spends on every block: the f16 scales are
//! looked up in [`f16_table`] (a load each, where F16C costs two vector
//! operations), and Q5_0/Q4_0 quants are multiplied unsigned, their offset
//! taken off the exact integer sums once per activation block (see
//! [`pass`]), where ggml's sign trick costs two operations per row.

use std::arch::x86_64::*;

use super::x86::{
    bytes_from_bits_32, bytes_from_nibbles_32, hsum_float_8, mul_sum_i8_pairs_float,
    mul_sum_us8_pairs_float,
};
use super::x86_kquants::f16_table;
use super::x86_panel::{block_bytes, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0};

/// Weight rows a pass multiplies (four accumulators, and for Q4_1/Q5_1
/// four scalar sums, stay in registers beside the decoding constants).
pub(super) const PASS: usize = 4;

/// Whether format `T` pairs with Q8_1 activations (else Q8_0).
const fn q8_1<const T: u8>() -> bool {
    matches!(T, Q4_1 | Q5_1)
}

/// Bytes of one activation block for format `T` (Q8_1: 36, Q8_0: 34).
const fn act_bytes<const T: u8>() -> usize {
    if q8_1::<T>() {
        36
    } else {
        34
    }
}

/// `rows` weight rows of format `T` (one after another in `w`, each as
/// many blocks as the activation row `a` has) times `a`: `out[i]` is
/// bit-identical to the single-row kernel's product of row `i` with `a`
/// (whose quants lie in [−127, 127], as every quantizer makes them).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_rows_avx2<const T: u8>(w: &[u8], rows: usize, a: &[u8], out: &mut [f32]) {
    let nb = a.len() / act_bytes::<T>();
    assert_eq!(
        a.len(),
        nb * act_bytes::<T>(),
        "activation row of whole blocks"
    );
    let rb = nb * block_bytes::<T>();
    assert_eq!(w.len(), rows * rb, "{rows} weight rows of {nb} blocks");
    assert_eq!(out.len(), rows, "one output per weight row");
    let (w, a) = (w.as_ptr(), a.as_ptr());
    let mut r = 0;
    while r + PASS <= rows {
        // SAFETY: rows r..r + PASS of `rb` bytes lie within `w`, and `a`
        // holds `nb` activation blocks (both asserted above).
        let v = unsafe { pass::<T, PASS>(w.add(r * rb), rb, a, nb) };
        out[r..r + PASS].copy_from_slice(&v);
        r += PASS;
    }
    while r < rows {
        // SAFETY: as above, for row r alone.
        let [v] = unsafe { pass::<T, 1>(w.add(r * rb), rb, a, nb) };
        out[r] = v;
        r += 1;
    }
}

/// The f16 at `p`, as an index into [`f16_table`].
///
/// # Safety
/// `p` must point to 2 readable bytes.
#[inline(always)]
unsafe fn f16_at(p: *const u8) -> usize {
    // SAFETY: the caller's; read_unaligned has no alignment needs.
    usize::from(unsafe { p.cast::<u16>().read_unaligned() })
}

/// `tab[h]` broadcast to 8 lanes: a load, no conversion on the vector
/// ports (f16 → f32 is exact either way).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bcast(tab: &[f32; 1 << 16], h: usize) -> __m256 {
    _mm256_broadcast_ss(&tab[h])
}

/// A weight block's 32 quants as the pass multiplies them: Q8_0 as they
/// are (signed, ggml's sign trick follows), the others unsigned — Q4_0's
/// nibbles and Q5_0's five-bit values without ggml's offset (8, 16), which
/// the pass takes off the exact 32-bit sums instead; Q4_1 and Q5_1 as ggml.
///
/// # Safety
/// `x` must point to [`block_bytes`]`::<T>()` readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weight_quants<const T: u8>(x: *const u8) -> __m256i {
    // SAFETY (each arm): the fields read lie within the block's bytes
    // (Q8_0: d, qs[32]; Q5_0: d, qh[4], qs[16]; Q4_0: d, qs[16]; Q4_1: d,
    // m, qs[16]; Q5_1: d, m, qh[4], qs[16]); byte arrays need no alignment.
    unsafe {
        match T {
            Q8_0 => _mm256_loadu_si256(x.add(2).cast()),
            Q4_0 => bytes_from_nibbles_32(&*x.add(2).cast::<[u8; 16]>()),
            Q4_1 => bytes_from_nibbles_32(&*x.add(4).cast::<[u8; 16]>()),
            _ => {
                let (h, l) = if T == Q5_0 { (2, 6) } else { (4, 8) };
                let qh = &*x.add(h).cast::<[u8; 4]>();
                let qs = &*x.add(l).cast::<[u8; 16]>();
                let bxhi = _mm256_and_si256(bytes_from_bits_32(qh), _mm256_set1_epi8(0x10));
                _mm256_or_si256(bytes_from_nibbles_32(qs), bxhi)
            }
        }
    }
}

/// `R` weight rows of format `T` starting at `w`, `rb` bytes apart, times
/// the `nb` activation blocks at `a`.
///
/// Q5_0 and Q4_0: ggml multiplies `q − o` (`o` = 16, 8) by the activation
/// with the sign trick; the pass multiplies the unsigned `q` and subtracts
/// `o·Σa` per group of four bytes (one per block, for all rows). Both give
/// the exact 32-bit sums `Σ (q − o)·a` — neither `maddubs` saturates, as
/// `|q − o| ≤ 16`, `q ≤ 31` and `|a| ≤ 127` — so the floats are the same.
/// (Activations hold no −128: every Q8_0/Q8_1 quantizer makes them in
/// [−127, 127], and ggml's sign trick is not exact for −128 either.)
///
/// # Safety
/// `w` must point to `R·rb` readable bytes with `rb = nb·block_bytes::<T>()`,
/// `a` to `nb·act_bytes::<T>()`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pass<const T: u8, const R: usize>(
    w: *const u8,
    rb: usize,
    a: *const u8,
    nb: usize,
) -> [f32; R] {
    let tab = f16_table();
    let bb = block_bytes::<T>();
    let ones = _mm256_set1_epi16(1);
    let offset = _mm256_set1_epi8(if T == Q5_0 { 16 } else { 8 });
    let mut acc = [_mm256_setzero_ps(); R];
    // Lane 0 of each carries ggml's scalar `summs` (Q4_1, Q5_1).
    let mut summs = [_mm_setzero_ps(); R];
    for i in 0..nb {
        // SAFETY: block i of the activations and of each of the R rows lies
        // within the bytes the caller vouches for.
        unsafe {
            let y = a.add(i * act_bytes::<T>());
            let x = w.add(i * bb);
            if q8_1::<T>() {
                let dy = bcast(tab, f16_at(y));
                let sy = _mm_set_ss(tab[f16_at(y.add(2))]);
                let qy = _mm256_loadu_si256(y.add(4).cast());
                for (r, (acc, summs)) in acc.iter_mut().zip(&mut summs).enumerate() {
                    let x = x.add(r * rb);
                    // ggml's [dx·dy, m·s] (one multiply there, two here:
                    // the same products).
                    let d0d1 = _mm256_mul_ps(bcast(tab, f16_at(x)), dy);
                    let ms = _mm_mul_ss(_mm_set_ss(tab[f16_at(x.add(2))]), sy);
                    *summs = _mm_add_ss(*summs, ms);
                    let xy = mul_sum_us8_pairs_float(weight_quants::<T>(x), qy);
                    *acc = _mm256_fmadd_ps(d0d1, xy, *acc);
                }
            } else {
                let dy = bcast(tab, f16_at(y));
                let qy = _mm256_loadu_si256(y.add(2).cast());
                // o·Σa per group of four bytes (Q5_0, Q4_0).
                let corr = _mm256_madd_epi16(_mm256_maddubs_epi16(offset, qy), ones);
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = x.add(r * rb);
                    let d = _mm256_mul_ps(bcast(tab, f16_at(x)), dy);
                    let q = if T == Q8_0 {
                        mul_sum_i8_pairs_float(weight_quants::<T>(x), qy)
                    } else {
                        let dot = _mm256_maddubs_epi16(weight_quants::<T>(x), qy);
                        let sum = _mm256_sub_epi32(_mm256_madd_epi16(dot, ones), corr);
                        _mm256_cvtepi32_ps(sum)
                    };
                    *acc = _mm256_fmadd_ps(d, q, *acc);
                }
            }
        }
    }
    let mut out = [0.0; R];
    for (o, (acc, summs)) in out.iter_mut().zip(acc.into_iter().zip(summs)) {
        *o = if q8_1::<T>() {
            hsum_float_8(acc) + _mm_cvtss_f32(summs)
        } else {
            hsum_float_8(acc)
        };
    }
    out
}
