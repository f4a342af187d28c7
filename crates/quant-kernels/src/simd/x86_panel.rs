//! Weights with Q8_0 activations (Q8_0, Q5_0, Q4_0) against [`Q8_0x4`]
//! and [`Q8_0x8`] activation panels, and weights with Q8_1 activations
//! (Q4_1, Q5_1) against [`Q8_1x8`] panels (x86).
//!
//! The eight-row kernels with AVX512-VNNI work on 512-bit vectors: two
//! panel rows per instruction (a panel keeps rows `2j` and `2j + 1` side by
//! side, 64 bytes), the weight block's quants in both halves. Every lane
//! does what the 256-bit kernels' does, and each half is summed by
//! `hsum_float_8`, so the results are the same bits with half the
//! instructions.
//!
//! The Q8_1x8 kernels follow ggml's AVX2 `ggml_vec_dot_q{4,5}_1_q8_1` per
//! output (see [`super::Q8_1Panel`]); eight rows share each decoded weight
//! block, and with AVX-VNNI or AVX512-VNNI one `vpdpbusd` gives the exact
//! 32-bit sums of maddubs/madd. The rest of this comment is about the
//! Q8_0x4 kernels.
//!
//! The same products as [`super::x86`]'s ports of ggml's AVX2
//! `ggml_vec_dot_{q8_0,q5_0,q4_0}_q8_0` — per block, eight 32-bit sums of
//! four byte products converted to f32 and one FMA with `d_w·d_a`; ggml's
//! `hsum_float_8` at the end — so the results are bit-identical to ggml's
//! and to tinyBLAS's tiles. What differs is the work around them: the panel
//! holds the activation scales as f32 and its quants 32-byte aligned, so a
//! block costs no f16 gathers and no split loads; each weight block is
//! decoded once for four activation rows; and with AVX-VNNI one `vpdpbusd`
//! replaces sign/sign/maddubs/madd.

use std::arch::x86_64::*;

use super::x86::{
    bytes_from_bits_32, bytes_from_nibbles_32, hsum_float_8, mul_sum_us8_pairs_float,
};
use super::{Q8_0x16, Q8_0x16w, Q8_0x4, Q8_0x8, Q8_1x8};

/// Weight-format tags (a const parameter, so each kernel is compiled per
/// format; also `x86_rows.rs`'s).
pub(super) const Q8_0: u8 = 0;
pub(super) const Q5_0: u8 = 1;
pub(super) const Q4_0: u8 = 2;
pub(super) const Q4_1: u8 = 3;
pub(super) const Q5_1: u8 = 4;

/// Bytes of one block of format `T`.
pub(super) const fn block_bytes<const T: u8>() -> usize {
    match T {
        Q8_0 => 34,
        Q5_0 => 22,
        Q4_0 => 18,
        Q4_1 => 20,
        _ => 24,
    }
}

/// A weight block's 32 quants as signed bytes (what ggml's AVX2 kernel
/// feeds `mul_sum_i8_pairs_float`) and its scale as f32 in lane 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn weight_block<const T: u8>(blk: &[u8]) -> (__m256i, __m128) {
    assert!(blk.len() >= block_bytes::<T>());
    let d = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(u16::from_le_bytes([
        blk[0], blk[1],
    ]))));
    let qs = match T {
        // SAFETY: a Q8_0 block is 34 bytes, so bytes 2..34 are readable;
        // loadu has no alignment needs.
        Q8_0 => unsafe { _mm256_loadu_si256(blk.as_ptr().add(2).cast()) },
        Q5_0 => {
            let qh: &[u8; 4] = blk[2..6].try_into().expect("4 bytes");
            let qs: &[u8; 16] = blk[6..22].try_into().expect("16 bytes");
            // Where the fifth bit is clear, OR in 0xF0: the byte becomes q − 16.
            let bxhi = _mm256_andnot_si256(bytes_from_bits_32(qh), _mm256_set1_epi8(0xF0u8 as i8));
            _mm256_or_si256(bytes_from_nibbles_32(qs), bxhi)
        }
        _ => {
            let qs: &[u8; 16] = blk[2..18].try_into().expect("16 bytes");
            _mm256_sub_epi8(bytes_from_nibbles_32(qs), _mm256_set1_epi8(8))
        }
    };
    (qs, d)
}

/// `d_w·d_a[c]` in lane `c` (lanes 0..4) of a 256-bit vector: the f32
/// products ggml forms (`d_w` first; f16 to f32 is exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scales(dw: __m128, p: &Q8_0x4) -> __m256 {
    // SAFETY: `p.d` is 16-byte aligned (`Q8_0x4` is 32-byte aligned and
    // `d` its first field) and holds four f32.
    let da = unsafe { _mm_load_ps(p.d.as_ptr()) };
    _mm256_castps128_ps256(_mm_mul_ps(_mm_broadcastss_ps(dw), da))
}

/// Row `c`'s quants of a panel block, an aligned load.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn panel_qs(p: &Q8_0x4, c: usize) -> __m256i {
    // SAFETY: `qs[c]` is 32 bytes at offset 32 + 32c of a 32-byte aligned
    // struct, hence 32-byte aligned.
    unsafe { _mm256_load_si256(p.qs[c].as_ptr().cast()) }
}

/// Packs for [`dot_panel_avx2`]: the quants as they are.
pub(super) fn pack_avx2(a: [&[u8]; 4], out: &mut [Q8_0x4]) {
    super::pack_q8_0(&a, out, 0);
}

/// Packs for [`dot_panel_vnni`]: the quants biased to unsigned (`q ^ 0x80`
/// is `q + 128`), `vpdpbusd`'s unsigned operand.
pub(super) fn pack_vnni(a: [&[u8]; 4], out: &mut [Q8_0x4]) {
    super::pack_q8_0(&a, out, 0x80);
}

/// One weight row of format `T` times a panel packed by [`pack_avx2`]
/// (AVX2: the sign trick, maddubs and madd, as ggml).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_panel_avx2<const T: u8>(w: &[u8], p: &[Q8_0x4]) -> [f32; 4] {
    assert_eq!(w.len(), p.len() * block_bytes::<T>());
    let lane = [0, 1, 2, 3].map(|c| _mm256_set1_epi32(c));
    let mut acc = [_mm256_setzero_ps(); 4];
    for (blk, p) in w.chunks_exact(block_bytes::<T>()).zip(p) {
        let (sx, dw) = weight_block::<T>(blk);
        let ax = _mm256_sign_epi8(sx, sx);
        let d4 = scales(dw, p);
        for (c, acc) in acc.iter_mut().enumerate() {
            let d = _mm256_permutevar8x32_ps(d4, lane[c]);
            let q = mul_sum_us8_pairs_float(ax, _mm256_sign_epi8(panel_qs(p, c), sx));
            *acc = _mm256_fmadd_ps(d, q, *acc);
        }
    }
    acc.map(|a| hsum_float_8(a))
}

/// One weight row of format `T` times a panel packed by [`pack_vnni`],
/// with `$dpbusd` (AVX-VNNI's or AVX512-VNNI's, the same operation).
/// `vpdpbusd(s, a + 128, w)` adds `Σ a·w + 128·Σ w` to `s` per lane of four
/// bytes; starting from `s = −128·Σ w` (once per weight block) it yields
/// the same exact 32-bit sums as maddubs/madd.
macro_rules! dot_panel_vnni {
    ($(#[$doc:meta])* $name:ident, $features:literal, $dpbusd:ident) => {
        $(#[$doc])*
        #[target_feature(enable = $features)]
        pub(super) fn $name<const T: u8>(w: &[u8], p: &[Q8_0x4]) -> [f32; 4] {
            assert_eq!(w.len(), p.len() * block_bytes::<T>());
            let lane = [0, 1, 2, 3].map(|c| _mm256_set1_epi32(c));
            let bias = _mm256_set1_epi8(-128);
            let zero = _mm256_setzero_si256();
            let mut acc = [_mm256_setzero_ps(); 4];
            for (blk, p) in w.chunks_exact(block_bytes::<T>()).zip(p) {
                let (sx, dw) = weight_block::<T>(blk);
                let start = _mm256_sub_epi32(zero, $dpbusd(zero, bias, sx));
                let d4 = scales(dw, p);
                for (c, acc) in acc.iter_mut().enumerate() {
                    let d = _mm256_permutevar8x32_ps(d4, lane[c]);
                    let q = _mm256_cvtepi32_ps($dpbusd(start, panel_qs(p, c), sx));
                    *acc = _mm256_fmadd_ps(d, q, *acc);
                }
            }
            acc.map(|a| hsum_float_8(a))
        }
    };
}

dot_panel_vnni!(
    /// One weight row of format `T` times a panel packed by [`pack_vnni`] (AVX-VNNI).
    dot_panel_vnni,
    "avx2,fma,f16c,avxvnni",
    _mm256_dpbusd_avx_epi32
);
dot_panel_vnni!(
    /// One weight row of format `T` times a panel packed by [`pack_vnni`]
    /// (AVX512-VNNI on 256-bit vectors).
    dot_panel_vnni512,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl",
    _mm256_dpbusd_epi32
);

// ---------------------------------------------------------------------------
// Q4_1 and Q5_1 weights against Q8_1x8 panels.
// ---------------------------------------------------------------------------

/// A Q4_1/Q5_1 weight block's 32 quants as unsigned bytes (what ggml's
/// AVX2 kernel feeds `mul_sum_us8_pairs_float`), and its `d` and `m` as
/// f32, each broadcast to eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn weight_block_1<const T: u8>(blk: &[u8]) -> (__m256i, __m256, __m256) {
    assert!(blk.len() >= block_bytes::<T>());
    let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes([
        blk[0], blk[1], blk[2], blk[3],
    ])));
    let d = _mm256_broadcastss_ps(dm);
    let m = _mm256_broadcastss_ps(_mm_movehdup_ps(dm));
    let qs = match T {
        Q4_1 => bytes_from_nibbles_32(blk[4..20].try_into().expect("16 bytes")),
        _ => {
            let qh: &[u8; 4] = blk[4..8].try_into().expect("4 bytes");
            let bxhi = _mm256_and_si256(bytes_from_bits_32(qh), _mm256_set1_epi8(0x10));
            _mm256_or_si256(
                bytes_from_nibbles_32(blk[8..24].try_into().expect("16 bytes")),
                bxhi,
            )
        }
    };
    (qs, d, m)
}

/// Row `c`'s quants of a [`Q8_1x8`] block, an aligned load.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn panel8_qs(p: &Q8_1x8, c: usize) -> __m256i {
    // SAFETY: `qs[c]` is 32 bytes at offset 64 + 32c of a 64-byte aligned
    // struct, hence 32-byte aligned.
    unsafe { _mm256_load_si256(p.qs[c].as_ptr().cast()) }
}

/// Eight f32 at a 32-byte aligned address (a [`Q8_1x8`]'s `d` or `s`, a
/// [`Q8_0x8`]'s `d`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load8(v: &[f32; 8]) -> __m256 {
    // SAFETY: every caller passes a `Q8_1x8`'s `d` or `s` (offsets 0 and
    // 32) or a `Q8_0x8`'s `d` (offset 256) of a 64-byte aligned struct, so
    // each is 32-byte aligned and holds eight f32.
    unsafe { _mm256_load_ps(v.as_ptr()) }
}

/// One Q4_1/Q5_1 weight row times [`Q8_1x8`] panels, with `$mul_sum` as
/// the 32-bit sums of four unsigned × signed byte products, as f32. Per
/// column `c` and block: `d_w·d_a[c]` and `m_w·s_a[c]` are f32 products as
/// ggml forms them, the second added to the column's sum; the first
/// multiplies the block's eight sums into the column's accumulator with
/// one FMA; at the end `hsum_float_8` of the accumulator plus the sum.
macro_rules! dot_q8_1x8 {
    ($(#[$doc:meta])* $name:ident, $features:literal, $mul_sum:expr) => {
        $(#[$doc])*
        #[target_feature(enable = $features)]
        pub(super) fn $name<const T: u8>(w: &[u8], p: &[Q8_1x8]) -> [f32; 8] {
            assert_eq!(w.len(), p.len() * block_bytes::<T>());
            let mut acc = [_mm256_setzero_ps(); 8];
            let mut summs = _mm256_setzero_ps();
            #[repr(align(32))]
            struct Lanes([f32; 8]);
            let mut d = Lanes([0.0; 8]);
            for (blk, p) in w.chunks_exact(block_bytes::<T>()).zip(p) {
                let (qx, dw, mw) = weight_block_1::<T>(blk);
                summs = _mm256_add_ps(summs, _mm256_mul_ps(mw, load8(&p.s)));
                // SAFETY: `d` is 32-byte aligned and holds eight f32.
                unsafe { _mm256_store_ps(d.0.as_mut_ptr(), _mm256_mul_ps(dw, load8(&p.d))) };
                for (c, acc) in acc.iter_mut().enumerate() {
                    let xy = $mul_sum(qx, panel8_qs(p, c));
                    *acc = _mm256_fmadd_ps(_mm256_set1_ps(d.0[c]), xy, *acc);
                }
            }
            let mut m = Lanes([0.0; 8]);
            // SAFETY: `m` is 32-byte aligned and holds eight f32.
            unsafe { _mm256_store_ps(m.0.as_mut_ptr(), summs) };
            std::array::from_fn(|c| hsum_float_8(acc[c]) + m.0[c])
        }
    };
}

dot_q8_1x8!(
    /// One Q4_1/Q5_1 weight row times [`Q8_1x8`] panels (AVX2: maddubs and madd, as ggml).
    dot_q8_1x8_avx2,
    "avx2,fma,f16c",
    |qx, qy| mul_sum_us8_pairs_float(qx, qy)
);
dot_q8_1x8!(
    /// One Q4_1/Q5_1 weight row times [`Q8_1x8`] panels (AVX-VNNI: one
    /// `vpdpbusd` gives maddubs/madd's exact 32-bit sums; the weights'
    /// quants are the unsigned operand as they are).
    dot_q8_1x8_vnni,
    "avx2,fma,f16c,avxvnni",
    |qx, qy| _mm256_cvtepi32_ps(_mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), qx, qy))
);

/// Index vectors for `vpermps`: lanes 0..8 take element `2j`, lanes 8..16
/// element `2j + 1` (a row pair's scales from a vector of eight).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
fn pair_index() -> [__m512i; 4] {
    [0, 1, 2, 3].map(|j| {
        let (a, b) = (2 * j, 2 * j + 1);
        _mm512_set_epi32(b, b, b, b, b, b, b, b, a, a, a, a, a, a, a, a)
    })
}

/// Rows `2j` and `2j + 1` of a panel block: 64 bytes at `p`.
///
/// # Safety
/// `p` must point at 64 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
unsafe fn load_pair(p: *const u8) -> __m512i {
    // SAFETY: the caller's promise; loadu has no alignment needs.
    unsafe { _mm512_loadu_si512(p.cast()) }
}

/// The two halves of a 512-bit accumulator, each summed as ggml's
/// `hsum_float_8` sums a 256-bit one.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
fn hsum_halves(acc: __m512) -> [f32; 2] {
    let lo = _mm512_castps512_ps256(acc);
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(acc)));
    [hsum_float_8(lo), hsum_float_8(hi)]
}

/// One Q4_1/Q5_1 weight row times [`Q8_1x8`] panels with AVX512-VNNI on
/// 512-bit vectors (see the module comment): per lane `vpdpbusd` from
/// zero, the conversion and one FMA with `d_w·d_a[c]`, as
/// [`dot_q8_1x8_vnni`] does on 256-bit vectors; the same bits.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
pub(super) fn dot_q8_1x8_vnni512<const T: u8>(w: &[u8], p: &[Q8_1x8]) -> [f32; 8] {
    assert_eq!(w.len(), p.len() * block_bytes::<T>());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut summs = _mm256_setzero_ps();
    let zero = _mm512_setzero_si512();
    let idx = pair_index();
    for (blk, p) in w.chunks_exact(block_bytes::<T>()).zip(p) {
        let (qx, dw, mw) = weight_block_1::<T>(blk);
        summs = _mm256_add_ps(summs, _mm256_mul_ps(mw, load8(&p.s)));
        let d = _mm512_castps256_ps512(_mm256_mul_ps(dw, load8(&p.d)));
        let qx2 = _mm512_broadcast_i64x4(qx);
        for (j, acc) in acc.iter_mut().enumerate() {
            // SAFETY: `qs[2j]` and `qs[2j + 1]` are 64 adjacent bytes.
            let qy = unsafe { load_pair(p.qs[2 * j].as_ptr()) };
            let xy = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, qx2, qy));
            *acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx[j], d), xy, *acc);
        }
    }
    #[repr(align(32))]
    struct Lanes([f32; 8]);
    let mut m = Lanes([0.0; 8]);
    // SAFETY: `m` is 32-byte aligned and holds eight f32.
    unsafe { _mm256_store_ps(m.0.as_mut_ptr(), summs) };
    let mut out = [0.0; 8];
    for (j, acc) in acc.into_iter().enumerate() {
        let [lo, hi] = hsum_halves(acc);
        out[2 * j] = lo + m.0[2 * j];
        out[2 * j + 1] = hi + m.0[2 * j + 1];
    }
    out
}

// ---------------------------------------------------------------------------
// Q8_0, Q5_0 and Q4_0 weights against Q8_0x8 panels.
// ---------------------------------------------------------------------------

/// Row `c`'s quants of a [`Q8_0x8`] block, an aligned load.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn panel8_0_qs(p: &Q8_0x8, c: usize) -> __m256i {
    // SAFETY: `qs[c]` is 32 bytes at offset 32c of a 64-byte aligned
    // struct, hence 32-byte aligned.
    unsafe { _mm256_load_si256(p.qs[c].as_ptr().cast()) }
}

/// `d_w·d_a[c]` in lane `c` of a 256-bit vector (`d_w` first, as ggml
/// forms the product; f16 to f32 is exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scales8(dw: __m128, p: &Q8_0x8) -> __m256 {
    _mm256_mul_ps(_mm256_broadcastss_ps(dw), load8(&p.d))
}

/// One weight row of format `T` times [`Q8_0x8`] panels, with `$prep`
/// forming from the block's signed quants what `$mul_sum` (the 32-bit sums
/// of each row's four byte products, as f32) needs: the same operations per
/// row as the [`Q8_0x4`] kernels (and ggml's), eight rows per weight block.
macro_rules! dot_q8_0x8 {
    ($(#[$doc:meta])* $name:ident, $features:literal, $prep:expr, $mul_sum:expr) => {
        $(#[$doc])*
        #[target_feature(enable = $features)]
        pub(super) fn $name<const T: u8>(w: &[u8], p: &[Q8_0x8]) -> [f32; 8] {
            assert_eq!(w.len(), p.len() * block_bytes::<T>());
            let mut acc = [_mm256_setzero_ps(); 8];
            #[repr(align(32))]
            struct Lanes([f32; 8]);
            let mut d = Lanes([0.0; 8]);
            for (blk, p) in w.chunks_exact(block_bytes::<T>()).zip(p) {
                let (sx, dw) = weight_block::<T>(blk);
                let prep = $prep(sx);
                // SAFETY: `d` is 32-byte aligned and holds eight f32.
                unsafe { _mm256_store_ps(d.0.as_mut_ptr(), scales8(dw, p)) };
                for (c, acc) in acc.iter_mut().enumerate() {
                    let q = $mul_sum(prep, sx, panel8_0_qs(p, c));
                    *acc = _mm256_fmadd_ps(_mm256_set1_ps(d.0[c]), q, *acc);
                }
            }
            acc.map(|a| hsum_float_8(a))
        }
    };
}

dot_q8_0x8!(
    /// One weight row of format `T` times [`Q8_0x8`] panels packed as they
    /// are (AVX2: the sign trick, maddubs and madd, as ggml).
    dot_q8_0x8_avx2,
    "avx2,fma,f16c",
    |sx| _mm256_sign_epi8(sx, sx),
    |ax, sx, qy| mul_sum_us8_pairs_float(ax, _mm256_sign_epi8(qy, sx))
);
dot_q8_0x8!(
    /// One weight row of format `T` times [`Q8_0x8`] panels packed biased
    /// by 128 (AVX-VNNI; see [`dot_panel_vnni`] for the bias's correction).
    dot_q8_0x8_vnni,
    "avx2,fma,f16c,avxvnni",
    |sx| {
        let zero = _mm256_setzero_si256();
        _mm256_sub_epi32(zero, _mm256_dpbusd_avx_epi32(zero, _mm256_set1_epi8(-128), sx))
    },
    |start, sx, qy| _mm256_cvtepi32_ps(_mm256_dpbusd_avx_epi32(start, qy, sx))
);

/// One weight row of format `T` times [`Q8_0x8`] panels packed biased by
/// 128, with AVX512-VNNI on 512-bit vectors (see the module comment): per
/// lane what [`dot_q8_0x8_vnni`] does, the same bits.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
pub(super) fn dot_q8_0x8_vnni512<const T: u8>(w: &[u8], p: &[Q8_0x8]) -> [f32; 8] {
    assert_eq!(w.len(), p.len() * block_bytes::<T>());
    let mut acc = [_mm512_setzero_ps(); 4];
    let zero = _mm256_setzero_si256();
    let bias = _mm256_set1_epi8(-128);
    let idx = pair_index();
    for (blk, p) in w.chunks_exact(block_bytes::<T>()).zip(p) {
        let (sx, dw) = weight_block::<T>(blk);
        let start = _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, bias, sx));
        let start2 = _mm512_broadcast_i64x4(start);
        let sx2 = _mm512_broadcast_i64x4(sx);
        let d = _mm512_castps256_ps512(scales8(dw, p));
        for (j, acc) in acc.iter_mut().enumerate() {
            // SAFETY: `qs[2j]` and `qs[2j + 1]` are 64 adjacent bytes.
            let qy = unsafe { load_pair(p.qs[2 * j].as_ptr()) };
            let q = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start2, qy, sx2));
            *acc = _mm512_fmadd_ps(_mm512_permutexvar_ps(idx[j], d), q, *acc);
        }
    }
    let mut out = [0.0; 8];
    for (j, acc) in acc.into_iter().enumerate() {
        [out[2 * j], out[2 * j + 1]] = hsum_halves(acc);
    }
    out
}

// ---------------------------------------------------------------------------
// Q8_0, Q5_0 and Q4_0 weights against lane-major Q8_0x16 panels.
// ---------------------------------------------------------------------------

/// A weight block decoded for [`dot_q8_0x16_vnni512`]: its 32 quants as
/// signed bytes (eight lanes of four) and each lane's `−128·Σ w`.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct LaneBlock {
    qs: [i32; 8],
    start: [i32; 8],
}

/// Weight blocks decoded at a time (a 4 KiB buffer on the stack).
const LANE_CHUNK: usize = 64;

/// `vpdpbusd(splat(*s), a, splat(*w))` on 512-bit vectors: the i32 at `s`
/// and the four bytes at `w` broadcast from memory. (Written with
/// intrinsics, the compiler forwards the decoding's stores into registers
/// and spends two shuffles per broadcast instead of none.)
///
/// # Safety
/// `s` and `w` must point at four readable bytes each.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
unsafe fn dpbusd_splat(s: *const i32, a: __m512i, w: *const i32) -> __m512i {
    let r: __m512i;
    // SAFETY: the caller's promise; the asm reads the two i32 and writes `r` only.
    unsafe {
        std::arch::asm!(
            "vpbroadcastd {r}, dword ptr [{s}]",
            "vpdpbusd {r}, {a}, dword ptr [{w}]{{1to16}}",
            r = out(zmm_reg) r,
            s = in(reg) s,
            a = in(zmm_reg) a,
            w = in(reg) w,
            options(pure, readonly, nostack, preserves_flags),
        );
    }
    r
}

/// Weight rows of format `T` times [`Q8_0x16`] panels packed biased by
/// 128, with AVX512-VNNI.
///
/// ggml's kernel keeps one accumulator per output whose lane `l` adds, block
/// by block, `fma(d_w·d_a, Σ_{t<4} w[4l+t]·a[4l+t], ·)`, and ends with
/// `hsum_float_8`. Here vector `l` holds lane `l` of all sixteen outputs:
/// the panel keeps bytes `4l..4l+4` of the sixteen rows side by side, the
/// weights' four bytes are broadcast, and one `vpdpbusd` from `−128·Σ w`
/// (the bias's correction, see [`dot_panel_vnni`]) gives lane `l`'s exact
/// sums for all sixteen rows. The scales are one product per block, with no
/// permutes; at the end `hsum_float_8`'s additions run across the eight
/// vectors in its order. So every output has ggml's bits, with three
/// instructions per lane and block for sixteen rows.
///
/// `w` holds `rows` weight rows, one after another, and `p` one or more
/// panels of a row's blocks each; `out[i·panels + g]` is row `i` times
/// panel `g`. Rows are taken two at a time, so each panel register serves
/// both, and each pair is decoded once for all the panels (for rows of up
/// to [`LANE_CHUNK`] blocks; longer ones once per panel).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
pub(super) fn dot_q8_0x16_vnni512<const T: u8>(
    w: &[u8],
    rows: usize,
    p: &[Q8_0x16],
    out: &mut [[f32; 16]],
) {
    assert!(rows > 0 && w.len().is_multiple_of(rows * block_bytes::<T>()));
    let row = w.len() / rows;
    let nb = row / block_bytes::<T>();
    assert!(nb > 0 && p.len().is_multiple_of(nb));
    let panels = p.len() / nb;
    assert_eq!(out.len(), rows * panels);
    let mut pairs = out.chunks_exact_mut(2 * panels);
    for (w, out) in w.chunks_exact(2 * row).zip(&mut pairs) {
        let (w0, w1) = w.split_at(row);
        let (o0, o1) = out.split_at_mut(panels);
        dot_q8_0x16_rows::<T, 2>([w0, w1], p, [o0, o1]);
    }
    let last = pairs.into_remainder();
    if !last.is_empty() {
        dot_q8_0x16_rows::<T, 1>([&w[w.len() - row..]], p, [last]);
    }
}

/// Decoded weight blocks of `R` rows: [`LaneBlock`]s and scales.
type Decoded<const R: usize> = (
    [[std::mem::MaybeUninit<LaneBlock>; LANE_CHUNK]; R],
    [[f32; LANE_CHUNK]; R],
);

/// Decodes blocks `from..from + k` (`k <= LANE_CHUNK`) of each row of `w`
/// into `dec`'s first `k` entries.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
fn decode_lanes<const T: u8, const R: usize>(
    w: [&[u8]; R],
    from: usize,
    k: usize,
    dec: &mut Decoded<R>,
) {
    let zero = _mm256_setzero_si256();
    let bias = _mm256_set1_epi8(-128);
    let bytes = block_bytes::<T>();
    for (w, (bufs, dws)) in w.iter().zip(dec.0.iter_mut().zip(&mut dec.1)) {
        let wc = &w[from * bytes..(from + k) * bytes];
        for ((blk, b), dwo) in wc.chunks_exact(bytes).zip(bufs).zip(dws) {
            let (sx, dw) = weight_block::<T>(blk);
            let b = b.as_mut_ptr();
            // SAFETY: `b` points at a 64-byte aligned `LaneBlock`, whose
            // fields are 32 bytes each.
            unsafe {
                _mm256_store_si256((&raw mut (*b).qs).cast(), sx);
                _mm256_store_si256(
                    (&raw mut (*b).start).cast(),
                    _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, bias, sx)),
                );
            }
            *dwo = _mm_cvtss_f32(dw);
        }
    }
}

/// Adds the products of `pc.len()` decoded blocks of `dec` with panel
/// blocks `pc` into `acc` (per row, per lane `l`; see the module comment).
#[inline]
#[allow(clippy::needless_range_loop)] // `acc[r][l]`: two indices per step.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
fn accumulate_lanes<const R: usize>(dec: &Decoded<R>, pc: &[Q8_0x16], acc: &mut [[__m512; 8]; R]) {
    assert!(pc.len() <= LANE_CHUNK);
    for (i, p) in pc.iter().enumerate() {
        // SAFETY: `p.d` is 64-byte aligned and holds sixteen f32.
        let pd = unsafe { _mm512_load_ps(p.d.as_ptr()) };
        let d: [__m512; R] =
            std::array::from_fn(|r| _mm512_mul_ps(_mm512_set1_ps(dec.1[r][i]), pd));
        for l in 0..8 {
            // SAFETY: `qs[l]` is 64 bytes, 64-byte aligned.
            let a = unsafe { _mm512_load_si512(p.qs[l].as_ptr().cast()) };
            for r in 0..R {
                // SAFETY: the caller decoded `dec`'s first `pc.len()`
                // blocks; `start[l]` and `qs[l]` are four bytes each.
                let q = unsafe {
                    let b = dec.0[r][i].assume_init_ref();
                    dpbusd_splat(&b.start[l], a, &b.qs[l])
                };
                acc[r][l] = _mm512_fmadd_ps(d[r], _mm512_cvtepi32_ps(q), acc[r][l]);
            }
        }
    }
}

/// Each row's sixteen outputs from its lane accumulators: `hsum_float_8`'s
/// additions across the eight vectors, in its order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
fn finish_lanes(acc: &[__m512; 8]) -> [f32; 16] {
    let w = [0, 1, 2, 3].map(|i| _mm512_add_ps(acc[i + 4], acc[i]));
    let sum = _mm512_add_ps(_mm512_add_ps(w[0], w[2]), _mm512_add_ps(w[1], w[3]));
    let mut out = [0.0; 16];
    // SAFETY: `out` holds sixteen f32; storeu has no alignment needs.
    unsafe { _mm512_storeu_ps(out.as_mut_ptr(), sum) };
    out
}

/// [`dot_q8_0x16_vnni512`] for `R` weight rows times every panel of `p`
/// (each a row's blocks long): `out[r][g]` is row `r` times panel `g`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
fn dot_q8_0x16_rows<const T: u8, const R: usize>(
    w: [&[u8]; R],
    p: &[Q8_0x16],
    mut out: [&mut [[f32; 16]]; R],
) {
    let nb = w[0].len() / block_bytes::<T>();
    for w in w {
        assert_eq!(w.len(), nb * block_bytes::<T>());
    }
    let mut dec: Decoded<R> = (
        [[std::mem::MaybeUninit::uninit(); LANE_CHUNK]; R],
        [[0.0; LANE_CHUNK]; R],
    );
    let whole = nb <= LANE_CHUNK;
    if whole {
        decode_lanes::<T, R>(w, 0, nb, &mut dec);
    }
    for (g, pg) in p.chunks_exact(nb).enumerate() {
        let mut acc = [[_mm512_setzero_ps(); 8]; R];
        for (c, pc) in pg.chunks(LANE_CHUNK).enumerate() {
            if !whole {
                decode_lanes::<T, R>(w, c * LANE_CHUNK, pc.len(), &mut dec);
            }
            accumulate_lanes::<R>(&dec, pc, &mut acc);
        }
        for (out, acc) in out.iter_mut().zip(&acc) {
            out[g] = finish_lanes(acc);
        }
    }
}

// ---------------------------------------------------------------------------
// Q8_0 weights against widened Q8_0x16w panels with AVX2.
// ---------------------------------------------------------------------------

/// A weight block decoded once a row for [`lanes8w_avx2`]: its quants
/// widened to i16, two to a word (word `j` holds quants `2j` and `2j + 1`,
/// so lane `l`'s are words `2l` and `2l + 1`), and its scale.
#[repr(C)]
#[derive(Clone, Copy)]
struct WideBlock {
    w: [i32; 16],
    d: f32,
}

thread_local! {
    /// Each thread's buffer of decoded weight rows for
    /// [`dot_q8_0x16w_avx2`] (grows once, then reused).
    static WIDE_ROWS: std::cell::Cell<Vec<WideBlock>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Weight rows of `T` (Q8_0, Q5_0, Q4_0) times [`Q8_0x16w`] panels (AVX2):
/// `out[i·panels + g]` is row `i` times panel `g`.
///
/// ggml's AVX2 kernel keeps one accumulator per output whose lane `l`
/// adds, block by block, `fma(d_w·d_a, Σ_{t<4} w[4l+t]·a[4l+t], ·)` (the
/// exact 32-bit sum, from the sign trick, maddubs and madd), and ends with
/// `hsum_float_8`. Here vector `l` holds lane `l` of eight outputs (eight
/// activation rows against one weight row): the panel keeps the rows'
/// quants `4l, 4l + 1` as i16 pairs side by side and `4l + 2, 4l + 3`
/// likewise, the weight's two pairs are broadcast, and two `vpmaddwd` and
/// one `vpaddd` give the same exact sums (no product or sum comes near
/// i16 or i32 limits), then the conversion and one FMA with `d_w·d_a`;
/// at the end `hsum_float_8`'s additions run across the eight vectors in
/// its order. So every output has ggml's bits. Against the sign trick on
/// bytes (sign, maddubs, madd: three instructions for ports 0 and 1) a
/// lane costs two such instructions and an add that port 5 also takes.
///
/// The rows are decoded once ([`WideBlock`]) for all their passes (every
/// panel, both halves), and each panel meets every row in turn while it
/// is in L1.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_q8_0x16w_avx2<const T: u8>(
    w: &[u8],
    rows: usize,
    p: &[Q8_0x16w],
    out: &mut [[f32; 16]],
) {
    let row_bytes = w.len() / rows.max(1);
    assert_eq!(w.len(), rows * row_bytes);
    let nb = row_bytes / block_bytes::<T>();
    assert_eq!(row_bytes, nb * block_bytes::<T>());
    assert!(nb > 0 && p.len().is_multiple_of(nb));
    let panels = p.len() / nb;
    assert_eq!(out.len(), rows * panels);
    // A call made while this thread's buffer is out (none does) would
    // find it empty and grow its own.
    let mut dec = WIDE_ROWS.take();
    dec.clear();
    dec.extend(w.chunks_exact(block_bytes::<T>()).map(|blk| {
        let (qs, d) = weight_block::<T>(blk);
        let mut b = WideBlock {
            w: [0; 16],
            d: _mm_cvtss_f32(d),
        };
        let lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(qs));
        let hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(qs));
        // SAFETY: `b.w` is 64 bytes; storeu has no alignment needs.
        unsafe {
            _mm256_storeu_si256(b.w.as_mut_ptr().cast(), lo);
            _mm256_storeu_si256(b.w.as_mut_ptr().add(8).cast(), hi);
        }
        b
    }));
    // Panel by panel, every row against it while it is in L1.
    for (g, pg) in p.chunks_exact(nb).enumerate() {
        for (i, row) in dec.chunks_exact(nb).enumerate() {
            let out = &mut out[i * panels + g];
            for (h, out) in out.chunks_exact_mut(8).enumerate() {
                out.copy_from_slice(&lanes8w_avx2(row, pg, h));
            }
        }
    }
    WIDE_ROWS.set(dec);
}

/// One decoded weight row times activation rows `8h..8h + 8` of a panel
/// (see [`dot_q8_0x16w_avx2`]).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn lanes8w_avx2(w: &[WideBlock], p: &[Q8_0x16w], h: usize) -> [f32; 8] {
    assert!(h < 2);
    let mut acc = [_mm256_setzero_ps(); 8];
    for (db, p) in w.iter().zip(p) {
        let d = _mm256_mul_ps(_mm256_set1_ps(db.d), load8_at(&p.d, 8 * h));
        for (l, acc) in acc.iter_mut().enumerate() {
            let q = &p.qs[h][l];
            // SAFETY: `qs[h][l]` is 64 bytes at offset 512h + 64l of a
            // 64-byte aligned struct: two 32-byte aligned halves.
            let (a01, a23) = unsafe {
                (
                    _mm256_load_si256(q.as_ptr().cast()),
                    _mm256_load_si256(q.as_ptr().add(16).cast()),
                )
            };
            let s = _mm256_add_epi32(
                _mm256_madd_epi16(a01, _mm256_set1_epi32(db.w[2 * l])),
                _mm256_madd_epi16(a23, _mm256_set1_epi32(db.w[2 * l + 1])),
            );
            *acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), *acc);
        }
    }
    // hsum_float_8's additions, lane by lane (written out: a closure here
    // is not inlined, and the accumulators then live in memory).
    let s0 = _mm256_add_ps(acc[4], acc[0]);
    let s1 = _mm256_add_ps(acc[5], acc[1]);
    let s2 = _mm256_add_ps(acc[6], acc[2]);
    let s3 = _mm256_add_ps(acc[7], acc[3]);
    let sum = _mm256_add_ps(_mm256_add_ps(s0, s2), _mm256_add_ps(s1, s3));
    let mut out = [0.0; 8];
    // SAFETY: `out` holds eight f32; storeu has no alignment needs.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
    out
}

/// `v[at..at + 8]` of a panel's sixteen scales, an aligned load.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load8_at(v: &[f32; 16], at: usize) -> __m256 {
    assert!(at == 0 || at == 8);
    // SAFETY: `v` is a `Q8_0x16w`'s `d` (offset 1024 of a 64-byte aligned
    // struct), so `v[at]` is 32-byte aligned, and eight f32 follow it.
    unsafe { _mm256_load_ps(v.as_ptr().add(at)) }
}
