//! AVX2 versions of [`super::b32_rows`] and the prepared-row K-quant
//! products: the same float steps in the same order, the exact integer
//! sums computed for 16 weight rows per activation broadcast. With
//! AVX512-VNNI the batched Q4_0 and K-quant products take the 16 rows in
//! one 512-bit register and `vpdpbusd` for the exact sums (the same
//! integers, so the same bits).
//!
//! Weights are unpacked once per group of 16 rows into two interleaved
//! halves of 8 (register `k` of a block holds elements `4k..4k + 4` of each
//! of 8 rows, one 32-bit lane per row), so one `maddubs` multiplies four
//! elements of 8 rows by the same four activations, and the sums land one
//! lane per row, as ggml's repacked 8x8 kernels arrange them. The float
//! steps then run on 8 outputs at once, lane `r` doing exactly the portable
//! code's `mul_add`s for row `r`. The unpacking reads each row front to
//! back with a software prefetch (mmapped weights: the hardware prefetcher
//! stops at 4 KiB pages), which is what makes one-row decoding fast.
//!
//! Every integer sum is exact: `maddubs` takes unsigned quants (formats
//! with an offset store `q + off` and subtract `off·Σ scale·bsum`), and
//! its i16 pair sums are added only as far as they provably fit.

use std::arch::x86_64::*;

use gguf_format::GgmlType;

use super::{accumulate, decode_kblock, sub_block_len, KBlock, KOrder, KVALUES_IQ4NL};
use quant_kernels::simd::{prefetch, PREFETCH_AHEAD as PREFETCH};

/// The f16 at `b[i..i + 2]` as f32, converted by F16C (the `half` crate
/// checks for it and calls out on every value).
///
/// # Safety
/// The CPU must support F16C.
#[inline(always)]
unsafe fn f16c_at(b: &[u8], i: usize) -> f32 {
    let bits = u16::from_le_bytes([b[i], b[i + 1]]);
    // SAFETY: register operations; F16C guaranteed by the caller.
    unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))) }
}

/// The 4 bytes at `p` broadcast to every 32-bit lane.
///
/// # Safety
/// `p..p + 4` must be readable; AVX2 must be available.
#[inline(always)]
unsafe fn bcast4(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 4 readable bytes (unaligned read).
    _mm256_set1_epi32(unsafe { std::ptr::read_unaligned(p as *const i32) })
}

/// Transposes 8 vectors of 8 32-bit lanes: lane `r` of output `k` is lane
/// `k` of input `r`.
#[inline(always)]
unsafe fn transpose_8x8_epi32(u: [__m256i; 8]) -> [__m256i; 8] {
    // SAFETY: register shuffles only; AVX2 is enabled by every caller.
    unsafe {
        let t0 = _mm256_unpacklo_epi32(u[0], u[1]);
        let t1 = _mm256_unpackhi_epi32(u[0], u[1]);
        let t2 = _mm256_unpacklo_epi32(u[2], u[3]);
        let t3 = _mm256_unpackhi_epi32(u[2], u[3]);
        let t4 = _mm256_unpacklo_epi32(u[4], u[5]);
        let t5 = _mm256_unpackhi_epi32(u[4], u[5]);
        let t6 = _mm256_unpacklo_epi32(u[6], u[7]);
        let t7 = _mm256_unpackhi_epi32(u[6], u[7]);
        // Rows 0-3 (4-7) of lanes k and k + 4, per 128-bit half.
        let a0 = _mm256_unpacklo_epi64(t0, t2);
        let a1 = _mm256_unpackhi_epi64(t0, t2);
        let a2 = _mm256_unpacklo_epi64(t1, t3);
        let a3 = _mm256_unpackhi_epi64(t1, t3);
        let b0 = _mm256_unpacklo_epi64(t4, t6);
        let b1 = _mm256_unpackhi_epi64(t4, t6);
        let b2 = _mm256_unpacklo_epi64(t5, t7);
        let b3 = _mm256_unpackhi_epi64(t5, t7);
        [
            _mm256_permute2x128_si256(a0, b0, 0x20),
            _mm256_permute2x128_si256(a1, b1, 0x20),
            _mm256_permute2x128_si256(a2, b2, 0x20),
            _mm256_permute2x128_si256(a3, b3, 0x20),
            _mm256_permute2x128_si256(a0, b0, 0x31),
            _mm256_permute2x128_si256(a1, b1, 0x31),
            _mm256_permute2x128_si256(a2, b2, 0x31),
            _mm256_permute2x128_si256(a3, b3, 0x31),
        ]
    }
}

/// `out[i·n + b]` for the Q4_0 / IQ4_NL rows of `w` (ggml's repacked 8x8
/// gemm/gemv order, as [`super::b32_rows`]). Activations are block_q8_0
/// rows from ggml's quantizer, whose quants lie in `-127..=127`.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` holds whole rows of
/// `row_bytes`, `xq` `n` rows of `act_row` bytes, `out` `n` values per
/// weight row.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn b32_rows_avx2(
    ty: GgmlType,
    w: &[u8],
    row_bytes: usize,
    xq: &[u8],
    act_row: usize,
    n: usize,
    out: &mut [f32],
) {
    let iq4 = ty == GgmlType::IQ4_NL;
    // Q4_0 batches with AVX512-VNNI: one `vpdpbusd` per group of four
    // quants of all 16 rows (see `b32_pass_vnni512`), which wants a block's
    // registers `k` of the two halves side by side.
    let vnni = !iq4 && n > 1 && quant_kernels::simd::features().avx512_vnni;
    let nb = row_bytes / 18;
    let rows = w.len() / row_bytes;
    assert!(xq.len() >= n * act_row && act_row >= nb * 34 && out.len() >= rows * n);
    if n == 1 {
        // SAFETY: as this function's.
        return unsafe {
            if iq4 {
                b32_rows_one_avx2(iq4, w, row_bytes, xq, out)
            } else {
                q4_0_rows_one_avx2(w, row_bytes, xq, out)
            }
        };
    }
    // Per activation block: its scale, and 8·Σy (Q4_0 stores `q + 8`).
    let mut da = vec![0.0f32; n * nb];
    let mut ysum8 = vec![0i32; n * nb];
    let ones8 = _mm256_set1_epi8(1);
    let ones = _mm256_set1_epi16(1);
    for b in 0..n {
        for j in 0..nb {
            let ab = &xq[b * act_row + 34 * j..][..34];
            da[b * nb + j] = f16c_at(ab, 0);
            // SAFETY: `ab[2..34]` is the block's 32 quants.
            let y = _mm256_loadu_si256(ab[2..].as_ptr() as *const __m256i);
            let s = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, y), ones);
            let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
            ysum8[b * nb + j] = 8 * _mm_cvtsi128_si32(s);
        }
    }
    // Groups of 16 rows, two interleaved halves of 8 per block, so each
    // activation broadcast serves 16 rows.
    let mut q = vec![0u8; nb * 512];
    let mut d = vec![0.0f32; nb * 16];
    let mut d16 = vec![0u16; nb * 16];
    let mut unpacked = vec![_mm256_setzero_si256(); nb * 16];
    let lut = _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i);
    let mask = _mm_set1_epi8(0xf);
    for g in (0..rows).step_by(16) {
        let gr = (rows - g).min(16);
        // Each row is read front to back (one stream at a time for the
        // prefetcher), unpacked to 32 bytes per block, then each block's 8
        // rows are transposed into the interleaved layout.
        for r in 0..16 {
            for j in 0..nb {
                let (mut bits, mut u) = (0u16, _mm256_setzero_si256());
                if r < gr {
                    let xb = &w[(g + r) * row_bytes + 18 * j..][..18];
                    // The weights stream from memory (often mmapped 4 KiB
                    // pages, where the hardware prefetcher stops): ask for
                    // the bytes 2 KiB ahead. A prefetch never faults.
                    prefetch(xb.as_ptr().wrapping_add(PREFETCH));
                    bits = u16::from_le_bytes([xb[0], xb[1]]);
                    // SAFETY: `xb[2..18]` is the block's 16 bytes of nibbles.
                    let x = _mm_loadu_si128(xb[2..].as_ptr() as *const __m128i);
                    let (mut lo, mut hi) = (
                        _mm_and_si128(x, mask),
                        _mm_and_si128(_mm_srli_epi16(x, 4), mask),
                    );
                    if iq4 {
                        (lo, hi) = (_mm_shuffle_epi8(lut, lo), _mm_shuffle_epi8(lut, hi));
                    }
                    u = _mm256_set_m128i(hi, lo);
                }
                d16[16 * j + r] = bits;
                unpacked[16 * j + r] = u;
            }
        }
        for j in 0..nb {
            for h in 0..2 {
                let o = 16 * j + 8 * h;
                // SAFETY: `d16` and `d` hold 16 values per block.
                let dj = _mm256_cvtph_ps(_mm_loadu_si128(d16[o..].as_ptr() as *const __m128i));
                _mm256_storeu_ps(d[o..].as_mut_ptr(), dj);
                let u: [__m256i; 8] = unpacked[o..][..8].try_into().expect("8 rows");
                for (k, t) in transpose_8x8_epi32(u).iter().enumerate() {
                    let at = if vnni {
                        64 * k + 32 * h
                    } else {
                        256 * h + 32 * k
                    };
                    // SAFETY: `q` holds 512 bytes for block `j`.
                    _mm256_storeu_si256(q[512 * j + at..].as_mut_ptr() as *mut __m256i, *t);
                }
            }
        }
        let mut b = 0;
        while vnni && b < n {
            // Four activation rows per pass share each weight register.
            const R: usize = 4;
            let (ya, nba, ys) = (&xq[b * act_row..], &da[b * nb..], &ysum8[b * nb..]);
            let mut put = |lanes: &[[f32; 16]]| {
                for (i, lanes) in lanes.iter().enumerate() {
                    for r in 0..gr {
                        out[(g + r) * n + b + i] = lanes[r];
                    }
                }
                lanes.len()
            };
            // SAFETY: AVX512-VNNI is present (`vnni`); `q` is in its layout;
            // `ya` holds `R` activation rows (or one) from `b`.
            b += unsafe {
                if b + R <= n {
                    put(&b32_pass_vnni512::<R>(&q, &d, ya, act_row, nb, nba, ys))
                } else {
                    put(&b32_pass_vnni512::<1>(&q, &d, ya, act_row, nb, nba, ys))
                }
            };
        }
        for b in b..n {
            let lanes = b32_pass(
                iq4,
                &q,
                &d,
                &xq[b * act_row..][..act_row],
                nb,
                &da[b * nb..][..nb],
                &ysum8[b * nb..][..nb],
            );
            for r in 0..gr {
                out[(g + r) * n + b] = lanes[r / 8][r % 8];
            }
        }
    }
}

/// Rows `g .. g + gr` (gr ≤ 8) of `w` as a group of eight: the rows
/// themselves, or for a last partial group a copy in `tail` padded with
/// zero rows (scale 0: their lanes stay 0 and are not written).
fn group8<'a>(
    w: &'a [u8],
    g: usize,
    gr: usize,
    row_bytes: usize,
    tail: &'a mut Vec<u8>,
) -> &'a [u8] {
    if gr == 8 {
        return &w[g * row_bytes..(g + 8) * row_bytes];
    }
    tail.clear();
    tail.extend_from_slice(&w[g * row_bytes..(g + gr) * row_bytes]);
    tail.resize(8 * row_bytes, 0);
    tail
}

/// [`b32_rows_avx2`] for one activation row (decoding): the same lanes —
/// per row and block the exact sum `Σ q·y`, then
/// `acc = fma(sumi, d_w·d_a, acc)` — but each block of eight rows is
/// multiplied straight from the weights, its eight sums gathered into lanes
/// by a horizontal-add tree (integer sums, so any order is exact), instead
/// of unpacking and transposing the rows first: for one activation row that
/// staging cost more than the products.
///
/// # Safety
/// As [`b32_rows_avx2`] with `n = 1`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn b32_rows_one_avx2(iq4: bool, w: &[u8], row_bytes: usize, xq: &[u8], out: &mut [f32]) {
    let nb = row_bytes / 18;
    let rows = w.len() / row_bytes;
    assert!(xq.len() >= nb * 34 && out.len() >= rows && row_bytes == nb * 18);
    let ones = _mm256_set1_epi16(1);
    let m4 = _mm256_set1_epi8(0xf);
    // Byte k of the 16 stored ones holds weights k (low nibble) and k + 16.
    let nibble_shift = _mm256_set_epi64x(4, 4, 0, 0);
    let lut =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i));
    // Per activation block: scale, quants, 8·Σy (Q4_0 stores `q + 8`).
    let mut ys = Vec::with_capacity(nb);
    for j in 0..nb {
        let ab = &xq[34 * j..][..34];
        // SAFETY: `ab[2..34]` is the block's 32 quants.
        let y = unsafe { _mm256_loadu_si256(ab[2..].as_ptr() as *const __m256i) };
        let s = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), y), ones);
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        // SAFETY: `ab` has the block's two scale bytes.
        let da = unsafe { f16c_at(ab, 0) };
        ys.push((y, da, 8 * _mm_cvtsi128_si32(s)));
    }
    // Eight rows at a time ([`group8`]).
    let mut tail = Vec::new();
    // Byte offsets of a group's eight rows, for the scale gather.
    let offsets = _mm256_mullo_epi32(
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        _mm256_set1_epi32(row_bytes as i32),
    );
    for g in (0..rows).step_by(8) {
        let gr = (rows - g).min(8);
        let block_rows = group8(w, g, gr, row_bytes, &mut tail);
        let base = block_rows.as_ptr();
        let mut acc = _mm256_setzero_ps();
        for (j, &(y, da, ysum8)) in ys.iter().enumerate() {
            let mut v = [_mm256_setzero_si256(); 8];
            for (r, v) in v.iter_mut().enumerate() {
                // SAFETY: row r's block j is 18 bytes at r·row_bytes + 18j
                // inside `block_rows` (8 whole rows); its quants are the 16
                // bytes after the scale. A prefetch never faults.
                let u = unsafe {
                    let xb = base.add(r * row_bytes + 18 * j);
                    if j % 3 == 0 {
                        prefetch(xb.wrapping_add(PREFETCH));
                    }
                    _mm256_broadcastsi128_si256(_mm_loadu_si128(xb.add(2) as *const __m128i))
                };
                let u = _mm256_and_si256(_mm256_srlv_epi64(u, nibble_shift), m4);
                *v = if iq4 {
                    let wv = _mm256_shuffle_epi8(lut, u);
                    // |y| ≤ 127, so negating y where w < 0 is exact.
                    _mm256_madd_epi16(
                        _mm256_maddubs_epi16(_mm256_abs_epi8(wv), _mm256_sign_epi8(y, wv)),
                        ones,
                    )
                } else {
                    // u ≤ 15: pair sums stay within 2·15·127 < 2^15.
                    _mm256_madd_epi16(_mm256_maddubs_epi16(u, y), ones)
                };
            }
            // Row r's eight partial sums → lane r.
            let t0 = _mm256_hadd_epi32(v[0], v[1]);
            let t1 = _mm256_hadd_epi32(v[2], v[3]);
            let t2 = _mm256_hadd_epi32(v[4], v[5]);
            let t3 = _mm256_hadd_epi32(v[6], v[7]);
            let u0 = _mm256_hadd_epi32(t0, t1);
            let u1 = _mm256_hadd_epi32(t2, t3);
            let mut sumi = _mm256_add_epi32(
                _mm256_permute2x128_si256(u0, u1, 0x20),
                _mm256_permute2x128_si256(u0, u1, 0x31),
            );
            if !iq4 {
                sumi = _mm256_sub_epi32(sumi, _mm256_set1_epi32(ysum8));
            }
            // The eight rows' scales: 4 bytes at each block start, low halves.
            // SAFETY: each gathered address is row r's block j (18 bytes).
            let dw =
                unsafe { _mm256_i32gather_epi32::<1>(base.add(18 * j) as *const i32, offsets) };
            let dw = _mm256_permute4x64_epi64(
                _mm256_shuffle_epi8(
                    dw,
                    _mm256_setr_epi8(
                        0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 4, 5, 8, 9,
                        12, 13, -1, -1, -1, -1, -1, -1, -1, -1,
                    ),
                ),
                0b00_00_10_00,
            );
            let dd = _mm256_mul_ps(
                _mm256_cvtph_ps(_mm256_castsi256_si128(dw)),
                _mm256_set1_ps(da),
            );
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), dd, acc);
        }
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` is 8 writable floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        out[g..g + gr].copy_from_slice(&lanes[..gr]);
    }
}

/// [`b32_rows_one_avx2`] for Q4_0: the same lanes (per row and block the
/// exact sum `Σ q·y`, then `acc = fma(sumi, d_w·d_a, acc)`), with the
/// integer sums gathered more cheaply. Two rows' blocks share a register
/// (one 128-bit half each), their low and high nibbles meet the block's
/// two 16-byte halves of activations, and the products stay in i16 until
/// every row's 32 are summed to 16 values of at most 16·15·127 = 30480,
/// so three `phaddw` and one `pmaddwd` reduce eight rows instead of eight
/// `pmaddwd` and a tree of `phaddd`. The lanes then hold the rows in the
/// order 0, 2, 4, 6, 1, 3, 5, 7, which the scales follow.
///
/// # Safety
/// As [`b32_rows_avx2`] with `n = 1`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_0_rows_one_avx2(w: &[u8], row_bytes: usize, xq: &[u8], out: &mut [f32]) {
    let nb = row_bytes / 18;
    let rows = w.len() / row_bytes;
    assert!(xq.len() >= nb * 34 && out.len() >= rows && row_bytes == nb * 18);
    let ones = _mm256_set1_epi16(1);
    let m4 = _mm256_set1_epi8(0xf);
    // Per activation block: its low and high 16 quants, each in both
    // halves; its scale; 8·Σy (Q4_0 stores `q + 8`).
    let mut ys = Vec::with_capacity(nb);
    for j in 0..nb {
        let ab = &xq[34 * j..][..34];
        // SAFETY: `ab[2..34]` is the block's 32 quants.
        let y = unsafe { _mm256_loadu_si256(ab[2..].as_ptr() as *const __m256i) };
        let s = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), y), ones);
        let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        let ylo = _mm256_permute2x128_si256(y, y, 0x00);
        let yhi = _mm256_permute2x128_si256(y, y, 0x11);
        // SAFETY: `ab` has the block's two scale bytes.
        let da = unsafe { f16c_at(ab, 0) };
        ys.push((ylo, yhi, da, _mm256_set1_epi32(8 * _mm_cvtsi128_si32(s))));
    }
    let mut tail = Vec::new();
    // Byte offsets of a group's rows in lane order, for the scale gather.
    let offsets = _mm256_mullo_epi32(
        _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7),
        _mm256_set1_epi32(row_bytes as i32),
    );
    let pack_scales = _mm256_setr_epi8(
        0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 4, 5, 8, 9, 12, 13, -1, -1,
        -1, -1, -1, -1, -1, -1,
    );
    for g in (0..rows).step_by(8) {
        let gr = (rows - g).min(8);
        let block_rows = group8(w, g, gr, row_bytes, &mut tail);
        let base = block_rows.as_ptr();
        // The group reads 8 rows side by side, which the hardware
        // prefetcher follows poorly (one row at a time: ~10 GB/s a thread
        // from memory): ask for the group two groups on instead, front to
        // back, 144 bytes (its share) per block (~15 GB/s; one group ahead
        // or four measured less).
        let ahead = w.as_ptr().wrapping_add((g + 16) * row_bytes);
        let mut acc = _mm256_setzero_ps();
        for (j, &(ylo, yhi, da, ysum8)) in ys.iter().enumerate() {
            let pf = ahead.wrapping_add(144 * j);
            prefetch(pf);
            prefetch(pf.wrapping_add(64));
            prefetch(pf.wrapping_add(128));
            let mut s = [_mm256_setzero_si256(); 4];
            for (p, s) in s.iter_mut().enumerate() {
                // SAFETY: rows 2p and 2p + 1 have their block j (18 bytes)
                // at r·row_bytes + 18j inside `block_rows` (8 whole rows);
                // the quants are the 16 bytes after the scale. A prefetch
                // never faults.
                let x = unsafe {
                    let x0 = base.add(2 * p * row_bytes + 18 * j);
                    let x1 = x0.add(row_bytes);
                    _mm256_inserti128_si256::<1>(
                        _mm256_castsi128_si256(_mm_loadu_si128(x0.add(2) as *const __m128i)),
                        _mm_loadu_si128(x1.add(2) as *const __m128i),
                    )
                };
                let lo = _mm256_and_si256(x, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
                // Nibbles ≤ 15: each i16 sums four products, ≤ 4·15·127.
                *s = _mm256_add_epi16(_mm256_maddubs_epi16(lo, ylo), _mm256_maddubs_epi16(hi, yhi));
            }
            // Sums of 8, then 16 products (≤ 30480 < 2^15), then i32.
            let h = _mm256_hadd_epi16(_mm256_hadd_epi16(s[0], s[1]), _mm256_hadd_epi16(s[2], s[3]));
            let sumi = _mm256_sub_epi32(_mm256_madd_epi16(h, ones), ysum8);
            // The eight rows' scales in lane order: 4 bytes at each block
            // start, low halves.
            // SAFETY: each gathered address is a row's block j (18 bytes).
            let dw =
                unsafe { _mm256_i32gather_epi32::<1>(base.add(18 * j) as *const i32, offsets) };
            let dw = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(dw, pack_scales), 0b00_00_10_00);
            let dd = _mm256_mul_ps(
                _mm256_cvtph_ps(_mm256_castsi256_si128(dw)),
                _mm256_set1_ps(da),
            );
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), dd, acc);
        }
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` is 8 writable floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        for (r, o) in out[g..g + gr].iter_mut().enumerate() {
            *o = lanes[r / 2 + 4 * (r % 2)];
        }
    }
}

/// The outputs of one group of 16 unpacked weight rows (`q`, `d`) for
/// one activation row `y` (block scales `da`, `8·Σy` per block `ysum8`):
/// per block the exact sum `Σ q·y`, then `acc = fma(sumi, d_w·d_a, acc)`
/// in each lane.
///
/// # Safety
/// AVX2 and FMA.
#[inline(always)]
unsafe fn b32_pass(
    iq4: bool,
    q: &[u8],
    d: &[f32],
    y: &[u8],
    nb: usize,
    da: &[f32],
    ysum8: &[i32],
) -> [[f32; 8]; 2] {
    assert!(q.len() >= nb * 512 && d.len() >= nb * 16 && y.len() >= nb * 34);
    assert!(da.len() >= nb && ysum8.len() >= nb);
    // SAFETY: loads within `q` (512 bytes per block), `d` (16 per block)
    // and each activation block's 32 quants, in bounds by the asserts; the
    // rest is registers.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 2];
        for j in 0..nb {
            let qb = q.as_ptr().add(512 * j);
            let yb = y.as_ptr().add(34 * j + 2);
            let mut s = [_mm256_setzero_si256(); 2];
            for k in 0..8 {
                let yv = bcast4(yb.add(4 * k));
                for (h, s) in s.iter_mut().enumerate() {
                    let wv = _mm256_loadu_si256(qb.add(256 * h + 32 * k) as *const __m256i);
                    *s = if iq4 {
                        // |y| ≤ 127, so negating y where w < 0 is exact.
                        let p = _mm256_maddubs_epi16(_mm256_abs_epi8(wv), _mm256_sign_epi8(yv, wv));
                        _mm256_add_epi32(*s, _mm256_madd_epi16(p, ones))
                    } else {
                        // u ≤ 15: eight pair sums stay within 8·2·15·128 < 2^15.
                        _mm256_add_epi16(*s, _mm256_maddubs_epi16(wv, yv))
                    };
                }
            }
            let da = _mm256_set1_ps(*da.get_unchecked(j));
            let ys = _mm256_set1_epi32(*ysum8.get_unchecked(j));
            for h in 0..2 {
                let sumi = if iq4 {
                    s[h]
                } else {
                    _mm256_sub_epi32(_mm256_madd_epi16(s[h], ones), ys)
                };
                let dd = _mm256_mul_ps(_mm256_loadu_ps(d.as_ptr().add(16 * j + 8 * h)), da);
                acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi), dd, acc[h]);
            }
        }
        let mut lanes = [[0.0f32; 8]; 2];
        _mm256_storeu_ps(lanes[0].as_mut_ptr(), acc[0]);
        _mm256_storeu_ps(lanes[1].as_mut_ptr(), acc[1]);
        lanes
    }
}

/// [`b32_pass`] for Q4_0 with AVX512-VNNI, for `R` activation rows at
/// once (`y`, `da` and `ysum8` hold `R` rows of `act_row`, `nb` and `nb`):
/// register `k` of a block holds quants `4k..4k + 4` of all 16 weight rows
/// (`q[512j + 64k..]`: the two halves' registers `k` side by side), so one
/// `vpdpbusd` with an activation row's four bytes broadcast adds one
/// group's products for 16 rows, and each register serves `R` rows.
/// Starting from `−8·Σy` (Q4_0's stored `q + 8`), the block's sums are the
/// same exact integers as [`b32_pass`]'s; the float steps are the same
/// `fma(sumi, d_w·d_a, acc)` per output, so the same bits.
///
/// # Safety
/// The CPU must support AVX512-F, -BW, -VL and -VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
unsafe fn b32_pass_vnni512<const R: usize>(
    q: &[u8],
    d: &[f32],
    y: &[u8],
    act_row: usize,
    nb: usize,
    da: &[f32],
    ysum8: &[i32],
) -> [[f32; 16]; R] {
    assert!(q.len() >= nb * 512 && d.len() >= nb * 16);
    assert!(y.len() >= (R - 1) * act_row + nb * 34 && act_row >= nb * 34);
    assert!(da.len() >= R * nb && ysum8.len() >= R * nb);
    let mut acc = [_mm512_setzero_ps(); R];
    for j in 0..nb {
        // SAFETY: loads within `q` (512 bytes per block), `d` (16 per
        // block), `da`, `ysum8` and each activation row's block `j`, in
        // bounds by the asserts; the rest is registers.
        unsafe {
            let qb = q.as_ptr().add(512 * j);
            let mut s: [__m512i; R] =
                std::array::from_fn(|r| _mm512_set1_epi32(-*ysum8.get_unchecked(r * nb + j)));
            for k in 0..8 {
                let wv = _mm512_loadu_si512(qb.add(64 * k) as *const __m512i);
                for (r, s) in s.iter_mut().enumerate() {
                    let yb = y.as_ptr().add(r * act_row + 34 * j + 2 + 4 * k);
                    let yv = _mm512_set1_epi32(std::ptr::read_unaligned(yb as *const i32));
                    *s = _mm512_dpbusd_epi32(*s, wv, yv);
                }
            }
            let dw = _mm512_loadu_ps(d.as_ptr().add(16 * j));
            for (r, acc) in acc.iter_mut().enumerate() {
                let dd = _mm512_mul_ps(dw, _mm512_set1_ps(*da.get_unchecked(r * nb + j)));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[r]), dd, *acc);
            }
        }
    }
    acc.map(|acc| {
        let mut lanes = [0.0f32; 16];
        // SAFETY: `lanes` holds sixteen f32; storeu has no alignment needs.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc) };
        lanes
    })
}

/// Elements `32c..32c + 32` of a Q4_K, Q5_K or Q6_K super-block as
/// unsigned quants (Q6_K's `q + 32`), as [`decode_kblock`] orders them.
#[inline(always)]
unsafe fn unpack_32(ty: GgmlType, xb: &[u8], c: usize) -> __m256i {
    let m4 = _mm256_set1_epi8(0xf);
    // SAFETY: every load reads 32 bytes inside the block (`xb` has the
    // format's full size: 144, 176 or 210 bytes).
    unsafe {
        let ld = |o: usize| _mm256_loadu_si256(xb[o..o + 32].as_ptr() as *const __m256i);
        let nib = |v: __m256i, hi: bool| {
            if hi {
                _mm256_and_si256(_mm256_srli_epi16(v, 4), m4)
            } else {
                _mm256_and_si256(v, m4)
            }
        };
        let shr = |v: __m256i, by: usize| match by {
            0 => v,
            1 => _mm256_srli_epi16(v, 1),
            2 => _mm256_srli_epi16(v, 2),
            3 => _mm256_srli_epi16(v, 3),
            4 => _mm256_srli_epi16(v, 4),
            5 => _mm256_srli_epi16(v, 5),
            6 => _mm256_srli_epi16(v, 6),
            _ => _mm256_srli_epi16(v, 7),
        };
        match ty {
            GgmlType::Q4_K => nib(ld(16 + 32 * (c / 2)), c % 2 == 1),
            GgmlType::Q5_K => {
                let q = nib(ld(48 + 32 * (c / 2)), c % 2 == 1);
                let h = _mm256_and_si256(shr(ld(16), c), _mm256_set1_epi8(1));
                _mm256_or_si256(q, _mm256_slli_epi16(h, 4))
            }
            _ => {
                // Q6_K: element 128h + 32j + l.
                let (h, j) = (c / 4, c % 4);
                let lo = nib(ld(64 * h + 32 * (j % 2)), j >= 2);
                let hi = _mm256_and_si256(shr(ld(128 + 32 * h), 2 * j), _mm256_set1_epi8(3));
                _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4))
            }
        }
    }
}

/// A K-quant super-block's per-16-element scales and mins (mins zero where
/// `dmin` is zero, as the portable code skips them), `d` and `dmin`; Q2_K
/// and Q3_K through the portable decoder, which also fills `k`.
///
/// # Safety
/// The CPU must support F16C; `xb` is one whole super-block of `ty`.
#[inline(always)]
unsafe fn block_scales(
    ty: GgmlType,
    xb: &[u8],
    k: &mut KBlock,
    sb: usize,
) -> ([i32; 16], [i32; 16], f32, f32) {
    let (mut sc, mut mn) = ([0i32; 16], [0i32; 16]);
    // SAFETY: F16C by the caller's contract.
    let (d, dmin) = unsafe {
        match ty {
            GgmlType::Q4_K | GgmlType::Q5_K => {
                for s in 0..8 {
                    (sc[2 * s], mn[2 * s]) = super::scale_min_k4(s, &xb[4..16]);
                    (sc[2 * s + 1], mn[2 * s + 1]) = (sc[2 * s], mn[2 * s]);
                }
                (f16c_at(xb, 0), f16c_at(xb, 2))
            }
            GgmlType::Q6_K => {
                for (s, v) in sc.iter_mut().enumerate() {
                    *v = xb[192 + s] as i8 as i32;
                }
                (f16c_at(xb, 208), 0.0)
            }
            _ => {
                decode_kblock(ty, xb, k);
                for g16 in 0..16 {
                    (sc[g16], mn[g16]) = (k.scale[g16 * 16 / sb], k.min[g16 * 16 / sb]);
                }
                (k.d, k.dmin)
            }
        }
    };
    if dmin == 0.0 {
        mn = [0; 16];
    }
    (sc, mn, d, dmin)
}

/// One super-block of 8 weight rows, unpacked for [`kquant_rows_avx2`].
#[repr(C, align(32))]
#[derive(Clone, Copy)]
struct KGroup {
    /// Unsigned quants (`q + off`), interleaved 4 bytes per row.
    u: [u8; 2048],
    /// Per 16-element group `g`: row `r`'s scale in i16 lanes `2r, 2r + 1`.
    sc: [[i16; 16]; 16],
    /// Per pair of groups `h`: `off·scale` of groups `2h`, `2h + 1` of row
    /// `r` in lanes `2r`, `2r + 1` (the offset's correction, times bsums).
    off_sc: [[i16; 16]; 8],
    /// As `off_sc`, the mins (zero where `dmin` is zero, as the portable
    /// code skips them).
    min: [[i16; 16]; 8],
    d: [f32; 8],
    dmin: [f32; 8],
}

impl KGroup {
    const ZERO: KGroup = KGroup {
        u: [0; 2048],
        sc: [[0; 16]; 16],
        off_sc: [[0; 16]; 8],
        min: [[0; 16]; 8],
        d: [0.0; 8],
        dmin: [0.0; 8],
    };
}

/// Whether [`kquant_rows_avx2`] handles `ty` (its quants fit `maddubs`'s
/// unsigned operand after an offset; IQ4_XS's signed levels do not).
pub(super) fn kquant_avx2_handles(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K
    )
}

/// The K-quant product of [`super::kquant_rows`]'s prepared-row path for a
/// chunk of weight rows, `order(b)` deciding each activation row's float
/// steps, bit for bit as [`super::kquant_dot`].
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `ty` passes
/// [`kquant_avx2_handles`]; `w` holds whole rows of `row_bytes`, `xq` `n`
/// block_q8_K rows of `act_row` bytes, `out` `n` values per weight row.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn kquant_rows_avx2(
    ty: GgmlType,
    w: &[u8],
    row_bytes: usize,
    xq: &[u8],
    act_row: usize,
    n: usize,
    out: &mut [f32],
    order: &dyn Fn(usize) -> KOrder,
) {
    let block_bytes = ty.type_size();
    let nb = row_bytes / block_bytes;
    let rows = w.len() / row_bytes;
    assert!(
        kquant_avx2_handles(ty)
            && xq.len() >= n * act_row
            && act_row >= nb * 292
            && out.len() >= rows * n
    );
    let sb = sub_block_len(ty);
    let off: i32 = match ty {
        GgmlType::Q3_K => 4,
        GgmlType::Q6_K => 32,
        _ => 0,
    };
    // Groups of 16 rows: two [`KGroup`]s per super-block (`2j`, `2j + 1`),
    // so each activation broadcast serves 16 rows.
    let mut groups = vec![KGroup::ZERO; 2 * nb];
    let mut ks = [KBlock::ZERO; 16];
    let mut lanes = [0.0f32; 8];
    // Q4_K, Q5_K and Q6_K unpack straight from their bytes; Q2_K and Q3_K
    // (rarer) through the portable decoder.
    let direct = matches!(ty, GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K);
    // Q6_K's quants take 6 bits; the others' at most 5 (Q5_K).
    let wide = ty == GgmlType::Q6_K;
    let mut unpacked = vec![_mm256_setzero_si256(); nb * 128];
    for g in (0..rows).step_by(16) {
        let gr = (rows - g).min(16);
        // Rows front to back (see `PREFETCH`): scales into the groups,
        // quants unpacked to 8 vectors per super-block, transposed below.
        for (r, k) in ks.iter_mut().enumerate() {
            let (h, lr) = (r / 8, r % 8);
            for j in 0..nb {
                let kg = &mut groups[2 * j + h];
                if lr == 0 && gr < 8 * h + 8 {
                    // Lanes past the last row stay zero.
                    *kg = KGroup::ZERO;
                }
                if r >= gr {
                    for c in 0..8 {
                        unpacked[128 * j + 16 * c + r] = _mm256_setzero_si256();
                    }
                    continue;
                }
                let xb = &w[(g + r) * row_bytes + j * block_bytes..][..block_bytes];
                for c in (0..block_bytes).step_by(64) {
                    prefetch(xb.as_ptr().wrapping_add(PREFETCH + c));
                }
                let (sc, mn, d, dmin) = block_scales(ty, xb, k, sb);
                for (lanes, &v) in kg.sc.iter_mut().zip(&sc) {
                    (lanes[2 * lr], lanes[2 * lr + 1]) = (v as i16, v as i16);
                }
                for h in 0..8 {
                    kg.off_sc[h][2 * lr] = (off * sc[2 * h]) as i16;
                    kg.off_sc[h][2 * lr + 1] = (off * sc[2 * h + 1]) as i16;
                    kg.min[h][2 * lr] = mn[2 * h] as i16;
                    kg.min[h][2 * lr + 1] = mn[2 * h + 1] as i16;
                }
                kg.d[lr] = d;
                kg.dmin[lr] = dmin;
                for c in 0..8 {
                    unpacked[128 * j + 16 * c + r] = if direct {
                        unpack_32(ty, xb, c)
                    } else {
                        // SAFETY: `q` has 256 bytes.
                        _mm256_add_epi8(
                            _mm256_loadu_si256(k.q[32 * c..].as_ptr() as *const __m256i),
                            _mm256_set1_epi8(off as i8),
                        )
                    };
                }
            }
        }
        for (jh, kg) in groups.iter_mut().enumerate() {
            let (j, h) = (jh / 2, jh % 2);
            for c in 0..8 {
                let u: [__m256i; 8] = unpacked[128 * j + 16 * c + 8 * h..][..8]
                    .try_into()
                    .expect("8 rows");
                for (i, t) in transpose_8x8_epi32(u).iter().enumerate() {
                    // SAFETY: `u` has 2048 bytes; chunk c covers 256 of them.
                    _mm256_store_si256(kg.u[256 * c + 32 * i..].as_mut_ptr() as *mut __m256i, *t);
                }
            }
        }
        for b in 0..n {
            let order = order(b);
            let mut acc = [_mm256_setzero_ps(); 2];
            let mut acc_min = [_mm256_setzero_ps(); 2];
            let arow = &xq[b * act_row..][..nb * 292];
            for (kgs, yb) in groups.chunks_exact(2).zip(arow.chunks_exact(292)) {
                let dy = _mm256_set1_ps(f32::from_le_bytes([yb[0], yb[1], yb[2], yb[3]]));
                let yq = yb.as_ptr().add(4);
                let bs = yb.as_ptr().add(260);
                let u = [kgs[0].u.as_ptr(), kgs[1].u.as_ptr()];
                let mut s = [[_mm256_setzero_si256(); 4]; 2];
                let mut m = [[_mm256_setzero_si256(); 4]; 2];
                for p in 0..4 {
                    let mut a = [_mm256_setzero_si256(); 2];
                    for g16 in 4 * p..4 * p + 4 {
                        // SAFETY (all loads here): each group holds 2048
                        // quant bytes and whole scale rows; the activation
                        // block has 256 quants and 16 bsums (checked above).
                        let k0 = 4 * g16;
                        let y: [__m256i; 4] = std::array::from_fn(|i| bcast4(yq.add(4 * (k0 + i))));
                        for h in 0..2 {
                            let scv = _mm256_load_si256(kgs[h].sc[g16].as_ptr() as *const __m256i);
                            let prod = |i: usize| {
                                _mm256_maddubs_epi16(
                                    _mm256_load_si256(u[h].add(32 * (k0 + i)) as *const __m256i),
                                    y[i],
                                )
                            };
                            if wide {
                                // u ≤ 63: two pair sums stay within 2·2·63·128 < 2^15.
                                for i in 0..2 {
                                    let t = _mm256_add_epi16(prod(2 * i), prod(2 * i + 1));
                                    a[h] = _mm256_add_epi32(a[h], _mm256_madd_epi16(t, scv));
                                }
                            } else {
                                // u ≤ 31: four pair sums stay within 4·2·31·128 < 2^15.
                                let t = _mm256_add_epi16(
                                    _mm256_add_epi16(prod(0), prod(1)),
                                    _mm256_add_epi16(prod(2), prod(3)),
                                );
                                a[h] = _mm256_add_epi32(a[h], _mm256_madd_epi16(t, scv));
                            }
                        }
                    }
                    // bsums of groups 4p..4p + 4, two per 32-bit lane.
                    let b0 = bcast4(bs.add(8 * p));
                    let b1 = bcast4(bs.add(8 * p + 4));
                    let ld = |v: &[i16; 16]| _mm256_load_si256(v.as_ptr() as *const __m256i);
                    for h in 0..2 {
                        let kg = &kgs[h];
                        let o = _mm256_add_epi32(
                            _mm256_madd_epi16(ld(&kg.off_sc[2 * p]), b0),
                            _mm256_madd_epi16(ld(&kg.off_sc[2 * p + 1]), b1),
                        );
                        s[h][p] = _mm256_sub_epi32(a[h], o);
                        m[h][p] = _mm256_add_epi32(
                            _mm256_madd_epi16(ld(&kg.min[2 * p]), b0),
                            _mm256_madd_epi16(ld(&kg.min[2 * p + 1]), b1),
                        );
                    }
                }
                for h in 0..2 {
                    let d = _mm256_load_ps(kgs[h].d.as_ptr());
                    let dmin = _mm256_load_ps(kgs[h].dmin.as_ptr());
                    let (s, m) = (&s[h], &m[h]);
                    let sum4 = |v: &[__m256i; 4]| {
                        _mm256_add_epi32(_mm256_add_epi32(v[0], v[1]), _mm256_add_epi32(v[2], v[3]))
                    };
                    match order {
                        KOrder::Tiled => {
                            let s1 = _mm256_cvtepi32_ps(sum4(s));
                            let s2 = _mm256_cvtepi32_ps(sum4(m));
                            let res = _mm256_fnmadd_ps(dmin, s2, _mm256_mul_ps(d, s1));
                            acc[h] = _mm256_fmadd_ps(res, dy, acc[h]);
                        }
                        KOrder::RepackGemv => {
                            let (dd, dm) = (_mm256_mul_ps(d, dy), _mm256_mul_ps(dmin, dy));
                            acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum4(s)), dd, acc[h]);
                            acc_min[h] =
                                _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum4(m)), dm, acc_min[h]);
                        }
                        KOrder::RepackGemm => {
                            let (dd, dm) = (_mm256_mul_ps(d, dy), _mm256_mul_ps(dmin, dy));
                            for p in 0..4 {
                                acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[p]), dd, acc[h]);
                                acc_min[h] =
                                    _mm256_fmadd_ps(_mm256_cvtepi32_ps(m[p]), dm, acc_min[h]);
                            }
                        }
                    }
                }
            }
            for h in 0..2 {
                _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_sub_ps(acc[h], acc_min[h]));
                for r in 8 * h..gr.min(8 * h + 8) {
                    out[(g + r) * n + b] = lanes[r - 8 * h];
                }
            }
        }
    }
}

/// One super-block of 16 weight rows, unpacked for [`kquant_rows_vnni512`].
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct KGroup16 {
    /// Unsigned quants (`q + off`): for each group `k` of four elements,
    /// the 16 rows' four bytes side by side (64 bytes).
    u: [u8; 4096],
    /// Per 16-element group: each row's scale.
    sc: [[i32; 16]; 16],
    /// Per pair of groups `h`: `off·scale` of groups `2h`, `2h + 1` of row
    /// `r` in i16 lanes `2r`, `2r + 1`.
    off_sc: [[i16; 32]; 8],
    /// As `off_sc`, the mins.
    min: [[i16; 32]; 8],
    d: [f32; 16],
    dmin: [f32; 16],
}

impl KGroup16 {
    const ZERO: KGroup16 = KGroup16 {
        u: [0; 4096],
        sc: [[0; 16]; 16],
        off_sc: [[0; 32]; 8],
        min: [[0; 32]; 8],
        d: [0.0; 16],
        dmin: [0.0; 16],
    };
}

/// [`kquant_rows_avx2`] with AVX512-VNNI: the same exact integer sums and
/// the same float steps, on 16 weight rows per 512-bit register. Per
/// 16-element group one `vpdpbusd` per four elements gives each row's
/// `Σ u·y` (where AVX2 needs `maddubs` and i16 additions), times the
/// group's scale with `vpmulld`; integer sums, so their order does not
/// matter. Two activation rows share each weight register.
///
/// # Safety
/// As [`kquant_rows_avx2`], and the CPU must support AVX512-F, -BW, -VL
/// and -VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn kquant_rows_vnni512(
    ty: GgmlType,
    w: &[u8],
    row_bytes: usize,
    xq: &[u8],
    act_row: usize,
    n: usize,
    out: &mut [f32],
    order: &dyn Fn(usize) -> KOrder,
) {
    let block_bytes = ty.type_size();
    let nb = row_bytes / block_bytes;
    let rows = w.len() / row_bytes;
    assert!(
        kquant_avx2_handles(ty)
            && xq.len() >= n * act_row
            && act_row >= nb * 292
            && out.len() >= rows * n
    );
    let sb = sub_block_len(ty);
    let off: i32 = match ty {
        GgmlType::Q3_K => 4,
        GgmlType::Q6_K => 32,
        _ => 0,
    };
    let mut groups = vec![KGroup16::ZERO; nb];
    let mut k = KBlock::ZERO;
    let direct = matches!(ty, GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K);
    let mut unpacked = vec![_mm256_setzero_si256(); nb * 128];
    for g in (0..rows).step_by(16) {
        let gr = (rows - g).min(16);
        let mut has_min = false;
        if gr < 16 {
            // Lanes past the last row stay zero.
            groups.fill(KGroup16::ZERO);
        }
        // Rows front to back (see `PREFETCH`): scales into the groups,
        // quants unpacked to 8 vectors per super-block, transposed below.
        for r in 0..16 {
            for j in 0..nb {
                let kg = &mut groups[j];
                if r >= gr {
                    for c in 0..8 {
                        unpacked[128 * j + 16 * c + r] = _mm256_setzero_si256();
                    }
                    continue;
                }
                let xb = &w[(g + r) * row_bytes + j * block_bytes..][..block_bytes];
                for c in (0..block_bytes).step_by(64) {
                    prefetch(xb.as_ptr().wrapping_add(PREFETCH + c));
                }
                let (sc, mn, d, dmin) = block_scales(ty, xb, &mut k, sb);
                has_min |= dmin != 0.0;
                for (g16, &v) in sc.iter().enumerate() {
                    kg.sc[g16][r] = v;
                }
                for h in 0..8 {
                    kg.off_sc[h][2 * r] = (off * sc[2 * h]) as i16;
                    kg.off_sc[h][2 * r + 1] = (off * sc[2 * h + 1]) as i16;
                    kg.min[h][2 * r] = mn[2 * h] as i16;
                    kg.min[h][2 * r + 1] = mn[2 * h + 1] as i16;
                }
                kg.d[r] = d;
                kg.dmin[r] = dmin;
                for c in 0..8 {
                    unpacked[128 * j + 16 * c + r] = if direct {
                        unpack_32(ty, xb, c)
                    } else {
                        // SAFETY: `q` has 256 bytes.
                        _mm256_add_epi8(
                            _mm256_loadu_si256(k.q[32 * c..].as_ptr() as *const __m256i),
                            _mm256_set1_epi8(off as i8),
                        )
                    };
                }
            }
        }
        for (j, kg) in groups.iter_mut().enumerate() {
            for c in 0..8 {
                for h in 0..2 {
                    let u: [__m256i; 8] = unpacked[128 * j + 16 * c + 8 * h..][..8]
                        .try_into()
                        .expect("8 rows");
                    for (i, t) in transpose_8x8_epi32(u).iter().enumerate() {
                        // SAFETY: `u` has 4096 bytes; group `8c + i` covers 64 of them.
                        _mm256_store_si256(
                            kg.u[64 * (8 * c + i) + 32 * h..].as_mut_ptr() as *mut __m256i,
                            *t,
                        );
                    }
                }
            }
        }
        let mut b = 0;
        while b < n {
            let mut put = |lanes: &[[f32; 16]]| {
                for (i, lanes) in lanes.iter().enumerate() {
                    for r in 0..gr {
                        out[(g + r) * n + b + i] = lanes[r];
                    }
                }
                lanes.len()
            };
            let ya = &xq[b * act_row..];
            // SAFETY: as this function's; `ya` holds two activation rows
            // (or one) from `b`, each with `nb` blocks.
            b += unsafe {
                if b + 2 <= n {
                    let o = [order(b), order(b + 1)];
                    put(&kquant_pass_vnni512::<2>(
                        &groups,
                        ya,
                        act_row,
                        o,
                        off != 0,
                        has_min,
                    ))
                } else {
                    let o = [order(b)];
                    put(&kquant_pass_vnni512::<1>(
                        &groups,
                        ya,
                        act_row,
                        o,
                        off != 0,
                        has_min,
                    ))
                }
            };
        }
    }
}

/// [`kquant_rows_vnni512`]'s products of one group of 16 weight rows with
/// `R` activation rows (`act_row` bytes apart from `y`), each in its order.
///
/// # Safety
/// The CPU must support AVX512-F, -BW, -VL and -VNNI; `y` holds `R` rows
/// of at least `groups.len()` block_q8_K blocks each.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
unsafe fn kquant_pass_vnni512<const R: usize>(
    groups: &[KGroup16],
    y: &[u8],
    act_row: usize,
    order: [KOrder; R],
    offset: bool,
    has_min: bool,
) -> [[f32; 16]; R] {
    let nb = groups.len();
    assert!(act_row >= nb * 292 && y.len() >= (R - 1) * act_row + nb * 292);
    let mut acc = [_mm512_setzero_ps(); R];
    let mut acc_min = [_mm512_setzero_ps(); R];
    // SAFETY (all loads here): each group holds 4096 quant bytes and whole
    // scale rows, 64-byte aligned; each activation block has 256 quants and
    // 16 bsums (checked above).
    unsafe {
        let ld = |v: &[i16; 32]| _mm512_load_si512(v.as_ptr() as *const __m512i);
        for (j, kg) in groups.iter().enumerate() {
            let yb: [*const u8; R] = std::array::from_fn(|r| y.as_ptr().add(r * act_row + 292 * j));
            let mut s = [[_mm512_setzero_si512(); 4]; R];
            let mut m = [[_mm512_setzero_si512(); 4]; R];
            for p in 0..4 {
                let mut a = [_mm512_setzero_si512(); R];
                for g16 in 4 * p..4 * p + 4 {
                    let mut t = [_mm512_setzero_si512(); R];
                    for i in 0..4 {
                        let kk = 4 * g16 + i;
                        let u = _mm512_load_si512(kg.u[64 * kk..].as_ptr() as *const __m512i);
                        for r in 0..R {
                            let yv = std::ptr::read_unaligned(yb[r].add(4 + 4 * kk) as *const i32);
                            t[r] = _mm512_dpbusd_epi32(t[r], u, _mm512_set1_epi32(yv));
                        }
                    }
                    let sc = _mm512_load_si512(kg.sc[g16].as_ptr() as *const __m512i);
                    for r in 0..R {
                        a[r] = _mm512_add_epi32(a[r], _mm512_mullo_epi32(t[r], sc));
                    }
                }
                for r in 0..R {
                    // bsums of groups 4p..4p + 4, two per 32-bit lane.
                    let bs = yb[r].add(260 + 8 * p);
                    let b0 = _mm512_set1_epi32(std::ptr::read_unaligned(bs as *const i32));
                    let b1 = _mm512_set1_epi32(std::ptr::read_unaligned(bs.add(4) as *const i32));
                    s[r][p] = if offset {
                        let o = _mm512_add_epi32(
                            _mm512_madd_epi16(ld(&kg.off_sc[2 * p]), b0),
                            _mm512_madd_epi16(ld(&kg.off_sc[2 * p + 1]), b1),
                        );
                        _mm512_sub_epi32(a[r], o)
                    } else {
                        a[r]
                    };
                    if has_min {
                        m[r][p] = _mm512_add_epi32(
                            _mm512_madd_epi16(ld(&kg.min[2 * p]), b0),
                            _mm512_madd_epi16(ld(&kg.min[2 * p + 1]), b1),
                        );
                    }
                }
            }
            let d = _mm512_load_ps(kg.d.as_ptr());
            let dmin = _mm512_load_ps(kg.dmin.as_ptr());
            let sum4 = |v: &[__m512i; 4]| {
                _mm512_add_epi32(_mm512_add_epi32(v[0], v[1]), _mm512_add_epi32(v[2], v[3]))
            };
            for r in 0..R {
                let dy = _mm512_set1_ps(f32::from_le_bytes(std::ptr::read_unaligned(
                    yb[r] as *const [u8; 4],
                )));
                let (s, m) = (&s[r], &m[r]);
                match order[r] {
                    KOrder::Tiled => {
                        let s1 = _mm512_cvtepi32_ps(sum4(s));
                        let s2 = _mm512_cvtepi32_ps(sum4(m));
                        let res = _mm512_fnmadd_ps(dmin, s2, _mm512_mul_ps(d, s1));
                        acc[r] = _mm512_fmadd_ps(res, dy, acc[r]);
                    }
                    KOrder::RepackGemv => {
                        let (dd, dm) = (_mm512_mul_ps(d, dy), _mm512_mul_ps(dmin, dy));
                        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum4(s)), dd, acc[r]);
                        acc_min[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum4(m)), dm, acc_min[r]);
                    }
                    KOrder::RepackGemm => {
                        let (dd, dm) = (_mm512_mul_ps(d, dy), _mm512_mul_ps(dmin, dy));
                        for p in 0..4 {
                            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[p]), dd, acc[r]);
                            acc_min[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(m[p]), dm, acc_min[r]);
                        }
                    }
                }
            }
        }
        std::array::from_fn(|r| {
            let mut lanes = [0.0f32; 16];
            _mm512_storeu_ps(lanes.as_mut_ptr(), _mm512_sub_ps(acc[r], acc_min[r]));
            lanes
        })
    }
}

/// [`super::q4_k_direct`] for a chunk of Q4_K rows (`out[i·n + b]`):
/// for one or two activation rows, where unpacking 8 rows into
/// [`KGroup`]s does not pay.
/// The integer sums come from AVX2, the float steps are the portable
/// [`accumulate`] itself.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` holds whole Q4_K rows of
/// `row_bytes`, `xq` `n` block_q8_K rows of `act_row` bytes, `out` `n`
/// values per weight row.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4_k_rows_direct(
    w: &[u8],
    row_bytes: usize,
    xq: &[u8],
    act_row: usize,
    n: usize,
    out: &mut [f32],
    order: &dyn Fn(usize) -> KOrder,
) {
    let nb = row_bytes / 144;
    assert!(xq.len() >= n * act_row && act_row >= nb * 292 && out.len() >= w.len() / row_bytes * n);
    for (wr, o) in w.chunks_exact(row_bytes).zip(out.chunks_mut(n)) {
        for c in (0..row_bytes).step_by(64) {
            prefetch(wr.as_ptr().wrapping_add(PREFETCH + c));
        }
        for (b, o) in o.iter_mut().enumerate() {
            let order = order(b);
            let (mut acc, mut acc_min) = (0.0f32, 0.0f32);
            let a = &xq[b * act_row..][..nb * 292];
            for (xb, yb) in wr.chunks_exact(144).zip(a.chunks_exact(292)) {
                let (s, m) = q4_k_sums(xb, yb);
                let dy = f32::from_le_bytes([yb[0], yb[1], yb[2], yb[3]]);
                let (d, dmin) = (f16c_at(xb, 0), f16c_at(xb, 2));
                accumulate(order, &s, &m, d, dmin, dy, &mut acc, &mut acc_min);
            }
            *o = acc - acc_min;
        }
    }
}

/// The exact scale and min sums per 64 elements of one Q4_K super-block
/// `xb` times one block_q8_K `yb`, as [`super::q4_k_direct`] forms them.
#[inline(always)]
unsafe fn q4_k_sums(xb: &[u8], yb: &[u8]) -> ([i32; 4], [i32; 4]) {
    assert!(xb.len() >= 144 && yb.len() >= 292);
    let bsum = |g: usize| i16::from_le_bytes([yb[260 + 2 * g], yb[261 + 2 * g]]) as i32;
    let mut m = [0i32; 4];
    let mut sv = [_mm256_setzero_si256(); 4];
    let m4 = _mm256_set1_epi8(0xf);
    for p in 0..4 {
        let (sc0, m0) = super::scale_min_k4(2 * p, &xb[4..16]);
        let (sc1, m1) = super::scale_min_k4(2 * p + 1, &xb[4..16]);
        m[p] = m0 * (bsum(4 * p) + bsum(4 * p + 1)) + m1 * (bsum(4 * p + 2) + bsum(4 * p + 3));
        // SAFETY: 32 bytes of nibbles at 16 + 32p, 64 activations at
        // 4 + 64p: inside the blocks (asserted lengths); u ≤ 15 and
        // scales ≤ 63 keep every partial sum far inside i16 / i32.
        unsafe {
            let q = _mm256_loadu_si256(xb[16 + 32 * p..].as_ptr() as *const __m256i);
            let y0 = _mm256_loadu_si256(yb[4 + 64 * p..].as_ptr() as *const __m256i);
            let y1 = _mm256_loadu_si256(yb[36 + 64 * p..].as_ptr() as *const __m256i);
            let lo = _mm256_maddubs_epi16(_mm256_and_si256(q, m4), y0);
            let hi = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), y1);
            sv[p] = _mm256_add_epi32(
                _mm256_madd_epi16(lo, _mm256_set1_epi16(sc0 as i16)),
                _mm256_madd_epi16(hi, _mm256_set1_epi16(sc1 as i16)),
            );
        }
    }
    // SAFETY: register operations.
    let s = unsafe {
        let h = _mm256_hadd_epi32(
            _mm256_hadd_epi32(sv[0], sv[1]),
            _mm256_hadd_epi32(sv[2], sv[3]),
        );
        let h = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
        let mut s = [0i32; 4];
        _mm_storeu_si128(s.as_mut_ptr() as *mut __m128i, h);
        s
    };
    (s, m)
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::super::kquant_rows_portable;
    use super::*;

    fn xorshift(seed: &mut u32) -> u32 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 17;
        *seed ^= *seed << 5;
        *seed
    }

    /// `rows` random rows of `blocks` blocks of `ty`, f16 scales at
    /// `scales` set to small finite values of either sign (zero now and then).
    fn random_rows(
        ty: GgmlType,
        rows: usize,
        blocks: usize,
        scales: &[usize],
        seed: u32,
    ) -> Vec<u8> {
        let mut seed = seed;
        let mut w: Vec<u8> = (0..rows * blocks * ty.type_size())
            .map(|_| xorshift(&mut seed) as u8)
            .collect();
        for b in w.chunks_mut(ty.type_size()) {
            for &o in scales {
                let r = xorshift(&mut seed);
                let v = if r.is_multiple_of(17) {
                    0.0
                } else {
                    (0.001 + (r % 1000) as f32 * 1e-5) * if r & 1 << 20 != 0 { -1.0 } else { 1.0 }
                };
                b[o..o + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
            }
        }
        w
    }

    fn activations(act: GgmlType, n: usize, cols: usize, seed: u32) -> Vec<u8> {
        let mut seed = seed;
        let from_float = quant_kernels::simd::from_float_for(act).unwrap();
        let row = cols / act.block_size() * act.type_size();
        let mut q = vec![0u8; n * row];
        for qb in q.chunks_mut(row) {
            let scale = 0.1 + (xorshift(&mut seed) % 100) as f32;
            let x: Vec<f32> = (0..cols)
                .map(|_| ((xorshift(&mut seed) % 20001) as f32 / 10000.0 - 1.0) * scale)
                .collect();
            from_float(&x, qb);
        }
        q
    }

    fn check(ty: GgmlType, scales: &[usize], blocks: usize) {
        let cols = blocks * ty.block_size();
        let row_bytes = blocks * ty.type_size();
        let act = super::super::super::act_type(ty).unwrap();
        let act_row = cols / act.block_size() * act.type_size();
        for (rows, seed) in [(13, 1u32), (8, 2), (21, 3)] {
            let w = random_rows(ty, rows, blocks, scales, seed * 7919);
            for n in 1..=13 {
                let xq = activations(act, n, cols, seed * 31 + n as u32);
                for repacked in [false, true] {
                    let mut want = vec![0.0f32; rows * n];
                    kquant_rows_portable(ty, &w, row_bytes, &xq, act_row, n, &mut want, repacked);
                    let mut got = vec![f32::NAN; rows * n];
                    if matches!(ty, GgmlType::Q4_0 | GgmlType::IQ4_NL) {
                        // SAFETY: checked avx2/fma by the caller; shapes as required.
                        unsafe { b32_rows_avx2(ty, &w, row_bytes, &xq, act_row, n, &mut got) };
                    } else {
                        let order = |b: usize| super::super::row_order(repacked, n, b);
                        // (Portable Q4_K below 8 rows is q4_k_direct, so
                        // this also checks the kernel against it.)
                        if ty == GgmlType::Q4_K {
                            let mut direct = vec![f32::NAN; rows * n];
                            // SAFETY: as below.
                            unsafe {
                                q4_k_rows_direct(
                                    &w,
                                    row_bytes,
                                    &xq,
                                    act_row,
                                    n,
                                    &mut direct,
                                    &order,
                                )
                            };
                            for (i, (g, e)) in direct.iter().zip(&want).enumerate() {
                                assert_eq!(g.to_bits(), e.to_bits(), "direct n={n} out[{i}]");
                            }
                        }
                        if quant_kernels::simd::features().avx512_vnni {
                            let mut wide = vec![f32::NAN; rows * n];
                            // SAFETY: as below, and the CPU has AVX512-VNNI.
                            unsafe {
                                kquant_rows_vnni512(
                                    ty, &w, row_bytes, &xq, act_row, n, &mut wide, &order,
                                )
                            };
                            for (i, (g, e)) in wide.iter().zip(&want).enumerate() {
                                assert_eq!(
                                    g.to_bits(),
                                    e.to_bits(),
                                    "vnni512 {ty:?} rows={rows} n={n} repacked={repacked} out[{i}]"
                                );
                            }
                        }
                        // SAFETY: as above.
                        unsafe {
                            kquant_rows_avx2(ty, &w, row_bytes, &xq, act_row, n, &mut got, &order)
                        };
                    }
                    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(
                            g.to_bits(),
                            e.to_bits(),
                            "{ty:?} rows={rows} n={n} repacked={repacked} out[{i}]: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }

    /// Every AVX2 kernel (and, where the CPU has AVX512-VNNI, the K-quants'
    /// VNNI kernel beside it, and the Q4_0 batches' in place of theirs:
    /// `STRATA_CPU_DISABLE=avx512` tests those) gives the portable code's bits, for every
    /// format, order (tiled, repacked gemm / gemv), batch size 1..=13 and
    /// row counts that leave a partial group of 8.
    #[test]
    fn avx2_kernels_match_portable_bit_for_bit() {
        if !(std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c"))
        {
            return;
        }
        check(GgmlType::Q4_0, &[0], 5);
        check(GgmlType::IQ4_NL, &[0], 5);
        check(GgmlType::Q2_K, &[80, 82], 3);
        check(GgmlType::Q3_K, &[108], 3);
        check(GgmlType::Q4_K, &[0, 2], 3);
        check(GgmlType::Q5_K, &[0, 2], 3);
        check(GgmlType::Q6_K, &[208], 3);
    }
}

#[cfg(test)]
mod props {
    use half::f16;
    use proptest::prelude::*;

    use super::super::kquant_rows_portable;
    use super::*;

    /// `rows` Q4_0 rows of `nb` blocks: random nibbles (or all 15, the
    /// largest products), scales from `scales` (cycled).
    fn q4_0_rows(rows: usize, nb: usize, nibbles: &[u8], extreme: bool, scales: &[f32]) -> Vec<u8> {
        let mut w = vec![0u8; rows * nb * 18];
        for (i, b) in w.chunks_exact_mut(18).enumerate() {
            b[..2].copy_from_slice(&f16::from_f32(scales[i % scales.len()]).to_le_bytes());
            for (k, q) in b[2..].iter_mut().enumerate() {
                *q = if extreme {
                    0xff
                } else {
                    nibbles[(i * 16 + k) % nibbles.len()]
                };
            }
        }
        w
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The one-row Q4_0 kernel gives the portable (ggml gemv) order's
        /// bits for any row count (partial groups of 8 included), any
        /// block count, any nibbles and activation quants in ggml's
        /// `-127..=127`, extremes included.
        #[test]
        fn q4_0_one_row_matches_portable(
            rows in 1usize..40,
            nb in 1usize..10,
            nibbles in proptest::collection::vec(any::<u8>(), 1..64),
            extreme in any::<bool>(),
            scales in proptest::collection::vec(-2.0f32..2.0, 1..8),
            y in proptest::collection::vec(-127i8..=127, 1..400),
            y_extreme in 0u8..3,
            da in proptest::collection::vec(1e-4f32..1.0, 1..8),
        ) {
            if !(std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c"))
            {
                return Ok(());
            }
            let row_bytes = nb * 18;
            let w = q4_0_rows(rows, nb, &nibbles, extreme, &scales);
            let mut xq = vec![0u8; nb * 34];
            for (j, ab) in xq.chunks_exact_mut(34).enumerate() {
                ab[..2].copy_from_slice(&f16::from_f32(da[j % da.len()]).to_le_bytes());
                for (k, q) in ab[2..].iter_mut().enumerate() {
                    let v = match y_extreme {
                        1 => 127,
                        2 => -127,
                        _ => y[(j * 32 + k) % y.len()],
                    };
                    *q = v as u8;
                }
            }
            let mut want = vec![0.0f32; rows];
            kquant_rows_portable(GgmlType::Q4_0, &w, row_bytes, &xq, 34 * nb, 1, &mut want, true);
            let mut got = vec![f32::NAN; rows];
            // SAFETY: AVX2, FMA and F16C checked above; whole rows, one
            // activation row of nb blocks, one output per row.
            unsafe { q4_0_rows_one_avx2(&w, row_bytes, &xq, &mut got) };
            for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                prop_assert_eq!(g.to_bits(), e.to_bits(), "row {}: {} vs {}", i, g, e);
            }
        }
    }
}
