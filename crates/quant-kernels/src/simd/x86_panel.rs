//! Weights with Q8_0 activations (Q8_0, Q5_0, Q4_0) against [`Q8_0x4`]
//! activation panels (x86).
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
use super::Q8_0x4;

/// Weight-format tags (a const parameter, so each kernel is compiled per format).
pub(super) const Q8_0: u8 = 0;
pub(super) const Q5_0: u8 = 1;
pub(super) const Q4_0: u8 = 2;

/// Bytes of one block of format `T`.
const fn block_bytes<const T: u8>() -> usize {
    match T {
        Q8_0 => 34,
        Q5_0 => 22,
        _ => 18,
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
    super::pack_q8_0x4(a, out, 0);
}

/// Packs for [`dot_panel_vnni`]: the quants biased to unsigned (`q ^ 0x80`
/// is `q + 128`), `vpdpbusd`'s unsigned operand.
pub(super) fn pack_vnni(a: [&[u8]; 4], out: &mut [Q8_0x4]) {
    super::pack_q8_0x4(a, out, 0x80);
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

/// One weight row of format `T` times a panel packed by [`pack_vnni`]
/// (AVX-VNNI). `vpdpbusd(s, a + 128, w)` adds `Σ a·w + 128·Σ w` to `s` per
/// lane of four bytes; starting from `s = −128·Σ w` (once per weight block)
/// it yields the same exact 32-bit sums as maddubs/madd.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub(super) fn dot_panel_vnni<const T: u8>(w: &[u8], p: &[Q8_0x4]) -> [f32; 4] {
    assert_eq!(w.len(), p.len() * block_bytes::<T>());
    let lane = [0, 1, 2, 3].map(|c| _mm256_set1_epi32(c));
    let bias = _mm256_set1_epi8(-128);
    let zero = _mm256_setzero_si256();
    let mut acc = [_mm256_setzero_ps(); 4];
    for (blk, p) in w.chunks_exact(block_bytes::<T>()).zip(p) {
        let (sx, dw) = weight_block::<T>(blk);
        let start = _mm256_sub_epi32(zero, _mm256_dpbusd_avx_epi32(zero, bias, sx));
        let d4 = scales(dw, p);
        for (c, acc) in acc.iter_mut().enumerate() {
            let d = _mm256_permutevar8x32_ps(d4, lane[c]);
            let q = _mm256_cvtepi32_ps(_mm256_dpbusd_avx_epi32(start, panel_qs(p, c), sx));
            *acc = _mm256_fmadd_ps(d, q, *acc);
        }
    }
    acc.map(|a| hsum_float_8(a))
}
