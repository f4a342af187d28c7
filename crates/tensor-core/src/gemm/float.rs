//! tinyBLAS's order for float weights: element `i` of a dot product into
//! lane `i % 8` with fused multiply-adds, the 8 lanes summed pairwise.
//!
//! The portable functions here are the reference (and the fallback off
//! x86-64); [`avx2`] computes the same sums with a register-tiled
//! micro-kernel, as tinyBLAS does: a tile of weight rows × activation rows
//! keeps one 8-lane accumulator per output, so each output still sees its
//! own products in order `k = 0, 8, 16, …` per lane — the tiling changes
//! which outputs share a loop, never the operations of any one of them.

use std::mem::MaybeUninit;

use gguf_format::GgmlType;
use half::{bf16, f16};
use quant_kernels::pool::ColumnBlock;

use crate::fma::with_fma;
use crate::ops::hsum8;

with_fma!(pub(super) dot_lanes8_f32, fn(w: &[f32], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (wc, xc) in w.chunks_exact(8).zip(x.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] = wc[i].mul_add(xc[i], acc[i]);
        }
    }
    hsum8(&acc)
});

/// tinyBLAS F16: both operands f16 (products exact in f32, so plain
/// multiply-add rounds like FMA), 8 lanes, pairwise lane sum.
pub(super) fn dot_lanes8_f16(w: &[f16], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (wc, xc) in w.chunks_exact(8).zip(x.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += wc[i].to_f32() * xc[i];
        }
    }
    hsum8(&acc)
}

with_fma!(pub(super) dot_lanes8_bf16, fn(w: &[bf16], x: &[f32]) -> f32 {
    // tinyBLAS BF16 (AVX2): as F16, but fused — the product of two bf16
    // values is exact unless it leaves f32's exponent range, and there
    // tinyBLAS's FMA is what decides the rounding.
    let mut acc = [0.0f32; 8];
    for (wc, xc) in w.chunks_exact(8).zip(x.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] = wc[i].to_f32().mul_add(xc[i], acc[i]);
        }
    }
    hsum8(&acc)
});

/// `GGML_F32_VEC_REDUCE` (AVX): the 4 accumulators pairwise, then the 8
/// lanes with two horizontal adds.
fn reduce_4x8(a: &[[f32; 8]; 4]) -> f32 {
    let x: [f32; 8] = std::array::from_fn(|i| (a[0][i] + a[2][i]) + (a[1][i] + a[3][i]));
    let t = [x[0] + x[4], x[1] + x[5], x[2] + x[6], x[3] + x[7]];
    (t[0] + t[1]) + (t[2] + t[3])
}

with_fma!(pub(super) vec_dot_ggml_f32, fn(w: &[f32], x: &[f32]) -> f32 {
    // ggml_vec_dot_f32 (AVX2): blocks of 32 over 4 accumulators of 8 lanes
    // (element i: accumulator (i / 8) % 4, lane i % 8), fused; the reduce;
    // the leftovers into the float sum, fused (GCC contracts `sumf += x*y`).
    let n32 = w.len() / 32 * 32;
    let mut acc = [[0.0f32; 8]; 4];
    for (i, (&a, &b)) in w[..n32].iter().zip(&x[..n32]).enumerate() {
        let (r, l) = ((i / 8) % 4, i % 8);
        acc[r][l] = a.mul_add(b, acc[r][l]);
    }
    let mut sum = reduce_4x8(&acc);
    for (&a, &b) in w[n32..].iter().zip(&x[n32..]) {
        sum = a.mul_add(b, sum);
    }
    sum
});

/// `ggml_vec_dot_f16` (AVX2) of f16 weights with activations already rounded
/// to f16: [`vec_dot_ggml_f32`]'s blocks (a product of two f16 values is
/// exact, so multiply-add rounds as FMA does), the leftovers added in `f64`.
pub(super) fn vec_dot_ggml_f16(w: &[f16], x: &[f32]) -> f32 {
    let n32 = w.len() / 32 * 32;
    let mut acc = [[0.0f32; 8]; 4];
    for (i, (&a, &b)) in w[..n32].iter().zip(&x[..n32]).enumerate() {
        let (r, l) = ((i / 8) % 4, i % 8);
        acc[r][l] += a.to_f32() * b;
    }
    let mut sum = reduce_4x8(&acc) as f64;
    for (&a, &b) in w[n32..].iter().zip(&x[n32..]) {
        sum += (a.to_f32() * b) as f64;
    }
    sum as f32
}

/// The activations `x` rounded to the weight type `ty` and back (ggml's
/// `vec_dot_type` conversion, round to nearest even), for F16 and BF16.
pub(super) fn round_activations(ty: GgmlType, x: &[f32]) -> Vec<f32> {
    let mut out = Vec::new();
    round_activations_into(ty, x, &mut out);
    out
}

/// [`round_activations`] into `out` (its contents replaced by `x.len()`
/// values), so that a caller can reuse one buffer: a fresh one for every
/// product of a prompt cost its page faults, on the calling thread alone,
/// while the pool's other threads waited (5.5% of the samples of one
/// SmolLM2 F16 pp128 profile, a loaded machine). The values are written
/// once, without zeroing the buffer first, and a batch is split between
/// the pool's threads (as ggml converts `src1` to `vec_dot_type`).
pub(super) fn round_activations_into(ty: GgmlType, x: &[f32], out: &mut Vec<f32>) {
    /// Floats per task of a batch's conversion.
    const CHUNK: usize = 16 * 1024;
    out.clear();
    out.reserve(x.len());
    let dst = &mut out.spare_capacity_mut()[..x.len()];
    let convert = |c: usize, d: &mut [MaybeUninit<f32>]| {
        let src = &x[c * CHUNK..][..d.len()];
        #[cfg(target_arch = "x86_64")]
        if avx2::available() {
            // SAFETY: the CPU has AVX2, FMA and F16C, all `round_activations` enables.
            return unsafe { avx2::round_activations(ty, src, d) };
        }
        for (d, v) in d.iter_mut().zip(round_activations_portable(ty, src)) {
            d.write(v);
        }
    };
    if x.len() <= CHUNK {
        convert(0, dst);
    } else {
        quant_kernels::pool::for_each_chunk_mut(dst, CHUNK, convert);
    }
    // SAFETY: every one of the first `x.len()` elements was written above.
    unsafe { out.set_len(x.len()) };
}

/// [`round_activations`] one element at a time (the reference).
pub(super) fn round_activations_portable(ty: GgmlType, x: &[f32]) -> Vec<f32> {
    match ty {
        GgmlType::F16 => x.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
        _ => x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
    }
}

/// Float weights (`F32`, `F16` or `BF16`, by `ty`) for a chunk of weight
/// rows: element `i` of `out`'s run `b` = row `i` of `w` (`cols` elements
/// each, a multiple of 8) times activation row `b` of `x` (already rounded
/// to the weight type), for `out.nrows()` rows and `n = out.n()`.
pub(super) fn float_rows(
    ty: GgmlType,
    w: &[u8],
    cols: usize,
    x: &[f32],
    n: usize,
    out: ColumnBlock<'_>,
) {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU has AVX2, FMA and F16C, all `avx2::float_rows`
        // enables, and AVX-512 where `wide`.
        unsafe {
            avx2::float_rows(
                ty,
                w,
                cols,
                x,
                n,
                out,
                avx2::wide_available(),
                avx2::zmm_fma(),
            )
        };
        return;
    }
    float_rows_portable(ty, w, cols, x, n, out)
}

/// [`float_rows`] one dot product at a time (the reference order).
pub(super) fn float_rows_portable(
    ty: GgmlType,
    w: &[u8],
    cols: usize,
    x: &[f32],
    n: usize,
    mut out: ColumnBlock<'_>,
) {
    let row_bytes = cols * ty.type_size();
    let rows = out.nrows();
    assert_eq!(out.n(), n);
    for (i, wr) in w.chunks_exact(row_bytes).take(rows).enumerate() {
        for b in 0..n {
            let xb = &x[b * cols..(b + 1) * cols];
            out.row_mut(b)[i] = match ty {
                GgmlType::F32 => dot_lanes8_f32(bytemuck::cast_slice(wr), xb),
                GgmlType::F16 => dot_lanes8_f16(bytemuck::cast_slice(wr), xb),
                _ => dot_lanes8_bf16(bytemuck::cast_slice(wr), xb),
            };
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    //! The AVX2 + FMA + F16C micro-kernel. A tile of `RM ≤ 4` weight rows ×
    //! `RN ≤ 3` activation rows holds its 12 accumulators, the 3 activation
    //! vectors of the current step and one weight vector in AVX2's 16 ymm
    //! registers. With more than one activation tile, each group of 4 f16 /
    //! bf16 weight rows is first converted to f32 and interleaved by step
    //! (`[step][row][8]`), so the conversion happens once per weight rather
    //! than once per activation tile, and the tile reads one sequential
    //! stream from L1. On CPUs with AVX-512 the packed path takes 8 × 3
    //! tiles instead ([`tile_wide`]): still 256-bit FMAs, in the 32
    //! registers AVX-512 provides.
    //!
    //! A matrix-vector product (one activation row, token-by-token
    //! decoding) is bound by memory: it takes 4-row tiles and prefetches
    //! the weights two tiles ahead while it computes (measured ~3× on a
    //! matrix that does not fit in L2, against no prefetch).
    //!
    //! Measured on the 2-core Xeon (AVX-512) this was written on, one
    //! thread, F16 weights, 128 activation rows: ~108 GFLOPS with 4 × 3
    //! tiles, ~115 with 8 × 3 — about the FMA peak of the core.

    use std::arch::x86_64::*;

    use std::mem::MaybeUninit;

    use gguf_format::GgmlType;
    use quant_kernels::pool::ColumnBlock;

    use crate::ops::x86::hsum_float_8;

    /// Weight rows per tile.
    const MR: usize = 4;
    /// Weight rows per tile for a single activation row (a matrix-vector
    /// product, bound by memory): 4 rows, each tile prefetching the
    /// weights of the tile [`PF_TILES`] on, as it goes. Measured on the
    /// 2-core Zen 4 (SmolLM2 F16, tg64, 2 threads, best of 3 interleaved
    /// rounds): 8 rows prefetching the next tile 72.8 t/s, 8 rows two tiles
    /// on 76.5, 4 rows three tiles on 76.8, 4 rows two tiles on 79.7 —
    /// fewer streams at once, the same distance ahead in bytes.
    const MR1: usize = 4;
    /// How many tiles ahead a matrix-vector tile prefetches, into L2
    /// ([`quant_kernels::simd::prefetch_l2`]: more misses in flight than
    /// into L1, ~1.35× the read rate of one core).
    const PF_TILES: usize = 2;
    /// Activation rows per tile.
    const NR: usize = 3;

    /// Element tags (a const parameter, so each kernel is compiled per type).
    const F32: u8 = 0;
    const F16: u8 = 1;
    const BF16: u8 = 2;

    /// Whether the CPU has what this module's kernels use.
    pub(in super::super) fn available() -> bool {
        // AVX2 with FMA and F16C, unless turned off (`STRATA_CPU_DISABLE`).
        quant_kernels::simd::features().avx2
    }

    /// Bytes per element of tag `T`.
    const fn elem_bytes<const T: u8>() -> usize {
        if T == F32 {
            4
        } else {
            2
        }
    }

    /// 8 elements of tag `T` at `p` as f32 lanes (exact).
    ///
    /// # Safety
    /// `p` must be valid for reading 8 elements.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8<const T: u8>(p: *const u8) -> __m256 {
        // SAFETY: the caller guarantees 8 readable elements; unaligned loads.
        unsafe {
            match T {
                F32 => _mm256_loadu_ps(p as *const f32),
                F16 => _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)),
                _ => {
                    // bf16 is the high half of an f32.
                    let h = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
                    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(h))
                }
            }
        }
    }

    /// One `RM × RN` tile: `out[j·out_row + i]` = weight row `i` · activation
    /// row `j` over `steps` steps of 8 elements, in tinyBLAS's order.
    ///
    /// Weight row `i`, step `s` is at byte `w + i·w_row + s·w_step` (tag
    /// `T`); activation row `j` at element `x + j·x_row`. With `PF`, each
    /// step also prefetches as many bytes as it reads, from `pf` on (the
    /// next tile of a matrix-vector product; prefetches never fault).
    ///
    /// # Safety
    /// Every address above must be readable for 8 elements, and `out` writable
    /// at the `RM × RN` outputs.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile<const T: u8, const RM: usize, const RN: usize, const PF: bool>(
        w: *const u8,
        w_row: usize,
        w_step: usize,
        x: *const f32,
        x_row: usize,
        steps: usize,
        out: *mut f32,
        out_row: usize,
        pf: *const u8,
    ) {
        let mut acc = [[_mm256_setzero_ps(); RN]; RM];
        // Bytes of weights one step reads (when the rows are contiguous).
        let step_bytes = RM * 8 * elem_bytes::<T>();
        let mut pf = pf;
        // SAFETY: in bounds by the caller's contract.
        unsafe {
            let mut wp = w;
            let mut xp = x;
            for _ in 0..steps {
                let mut xv = [_mm256_setzero_ps(); RN];
                for (j, v) in xv.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(xp.add(j * x_row));
                }
                for (i, acc) in acc.iter_mut().enumerate() {
                    let wv = load8::<T>(wp.add(i * w_row));
                    for (a, &v) in acc.iter_mut().zip(&xv) {
                        *a = _mm256_fmadd_ps(wv, v, *a);
                    }
                }
                if PF {
                    for l in (0..step_bytes).step_by(64) {
                        quant_kernels::simd::prefetch_l2(pf.wrapping_add(l));
                    }
                    pf = pf.wrapping_add(step_bytes);
                }
                wp = wp.add(w_step);
                xp = xp.add(8);
            }
            for (i, acc) in acc.iter().enumerate() {
                for (j, &a) in acc.iter().enumerate() {
                    *out.add(j * out_row + i) = hsum_float_8(a);
                }
            }
        }
    }

    /// The tile for `rm ≤ MR` (= `MR1`) weight rows and `rn ≤ NR` activation
    /// rows (the edges of a block use smaller tiles of the same kernel).
    ///
    /// # Safety
    /// As [`tile`].
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_any<const T: u8>(
        rm: usize,
        rn: usize,
        w: *const u8,
        w_row: usize,
        w_step: usize,
        x: *const f32,
        x_row: usize,
        steps: usize,
        out: *mut f32,
        out_row: usize,
        pf: *const u8,
    ) {
        macro_rules! go {
            ($m:literal, $n:literal) => {
                if pf.is_null() {
                    tile::<T, $m, $n, false>(w, w_row, w_step, x, x_row, steps, out, out_row, pf)
                } else {
                    tile::<T, $m, $n, true>(w, w_row, w_step, x, x_row, steps, out, out_row, pf)
                }
            };
        }
        // SAFETY: forwarded contract.
        unsafe {
            match (rm, rn) {
                (4, 3) => go!(4, 3),
                (4, 2) => go!(4, 2),
                (4, 1) => go!(4, 1),
                (3, 3) => go!(3, 3),
                (3, 2) => go!(3, 2),
                (3, 1) => go!(3, 1),
                (2, 3) => go!(2, 3),
                (2, 2) => go!(2, 2),
                (2, 1) => go!(2, 1),
                (1, 3) => go!(1, 3),
                (1, 2) => go!(1, 2),
                (1, 1) => go!(1, 1),
                _ => unreachable!("tile {rm}×{rn} exceeds {MR}×{NR}"),
            }
        }
    }

    /// Weight rows per wide (AVX-512 registers) tile.
    const WIDE_MR: usize = 8;
    /// Activation rows per wide tile.
    const WIDE_NR: usize = 3;

    /// Whether the CPU has what the wide tiles use.
    pub(in super::super) fn wide_available() -> bool {
        available()
            && quant_kernels::simd::features().avx512
            && is_x86_feature_detected!("avx512vl")
    }

    /// An 8 × `RN` tile for CPUs with AVX-512: the same 8-lane FMAs as
    /// [`tile`], but AVX-512's 32 vector registers (ymm16–31, EVEX-encoded)
    /// hold 8 weight rows' accumulators, so each activation vector loaded
    /// feeds 8 outputs instead of 4 (half the activation traffic from L2).
    /// 512-bit registers did not help on the Xeon this was measured on (its
    /// 512-bit FMA rate is its 256-bit one; an 8 × 4 tile of zmm row pairs
    /// measured 15–40% slower).
    ///
    /// # Safety
    /// The CPU supports AVX-512 F and VL; `w` holds `steps` steps of
    /// 8 rows × 8 floats; activation row `j < RN` is readable at
    /// `x + j·x_row` for `8·steps` floats; outputs `j·out_row + i` writable.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
    unsafe fn tile_wide<const RN: usize>(
        w: *const f32,
        x: *const f32,
        x_row: usize,
        steps: usize,
        out: *mut f32,
        out_row: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); RN]; WIDE_MR];
        // SAFETY: in bounds by the caller's contract.
        unsafe {
            let mut wp = w;
            let mut xp = x;
            for _ in 0..steps {
                let mut xv = [_mm256_setzero_ps(); RN];
                for (j, v) in xv.iter_mut().enumerate() {
                    *v = _mm256_loadu_ps(xp.add(j * x_row));
                }
                for (i, acc) in acc.iter_mut().enumerate() {
                    let wv = _mm256_loadu_ps(wp.add(8 * i));
                    for (a, &v) in acc.iter_mut().zip(&xv) {
                        *a = _mm256_fmadd_ps(wv, v, *a);
                    }
                }
                wp = wp.add(8 * WIDE_MR);
                xp = xp.add(8);
            }
            for (i, acc) in acc.iter().enumerate() {
                for (j, &a) in acc.iter().enumerate() {
                    *out.add(j * out_row + i) = hsum_float_8(a);
                }
            }
        }
    }

    /// [`tile_wide`] on 512-bit registers: weight rows `2p` and `2p + 1`
    /// side by side in one register (the packed step's 16 floats), each
    /// activation vector in both halves, so every lane makes the FMAs of
    /// [`tile_wide`]'s lane for its row, in the same order: the same bits
    /// with half the instructions, for CPUs that run 512-bit FMAs at twice
    /// the 256-bit rate ([`zmm_fma`]).
    ///
    /// # Safety
    /// As [`tile_wide`].
    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma,f16c")]
    unsafe fn tile_zmm<const RN: usize>(
        w: *const f32,
        x: *const f32,
        x_row: usize,
        steps: usize,
        out: *mut f32,
        out_row: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); RN]; WIDE_MR / 2];
        // SAFETY: in bounds by the caller's contract.
        unsafe {
            let mut wp = w;
            let mut xp = x;
            for _ in 0..steps {
                let mut xv = [_mm512_setzero_ps(); RN];
                for (j, v) in xv.iter_mut().enumerate() {
                    let h = _mm256_castps_pd(_mm256_loadu_ps(xp.add(j * x_row)));
                    *v = _mm512_castpd_ps(_mm512_broadcast_f64x4(h));
                }
                for (p, acc) in acc.iter_mut().enumerate() {
                    let wv = _mm512_loadu_ps(wp.add(16 * p));
                    for (a, &v) in acc.iter_mut().zip(&xv) {
                        *a = _mm512_fmadd_ps(wv, v, *a);
                    }
                }
                wp = wp.add(8 * WIDE_MR);
                xp = xp.add(8);
            }
            for (p, acc) in acc.iter().enumerate() {
                for (j, &a) in acc.iter().enumerate() {
                    let hi = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a));
                    *out.add(j * out_row + 2 * p) = hsum_float_8(_mm512_castps512_ps256(a));
                    *out.add(j * out_row + 2 * p + 1) = hsum_float_8(_mm256_castpd_ps(hi));
                }
            }
        }
    }

    /// Whether the wide tiles should take 512-bit registers ([`tile_zmm`]): on
    /// CPUs with AVX512-FP16 (Sapphire Rapids and later, two 512-bit FMA
    /// ports). The Xeon the 256-bit [`tile_wide`] was measured on ran an
    /// 8 × 4 tile of register row pairs 15–40% slower; on a Sapphire
    /// Rapids the pairs took SmolLM2 F16 pp128 (two threads, best of
    /// three interleaved rounds) from 566 to 743 t/s.
    pub(in super::super) fn zmm_fma() -> bool {
        wide_available() && is_x86_feature_detected!("avx512fp16")
    }

    /// [`tile_wide`] (or with `zmm` [`tile_zmm`]) for `rn ≤ WIDE_NR`
    /// activation rows.
    ///
    /// # Safety
    /// As [`tile_wide`].
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_wide_any(
        zmm: bool,
        rn: usize,
        w: *const f32,
        x: *const f32,
        x_row: usize,
        steps: usize,
        out: *mut f32,
        out_row: usize,
    ) {
        // SAFETY: forwarded contract.
        unsafe {
            if zmm {
                return match rn {
                    3 => tile_zmm::<3>(w, x, x_row, steps, out, out_row),
                    2 => tile_zmm::<2>(w, x, x_row, steps, out, out_row),
                    1 => tile_zmm::<1>(w, x, x_row, steps, out, out_row),
                    _ => unreachable!("wide tile of {rn} activation rows"),
                };
            }
            match rn {
                3 => tile_wide::<3>(w, x, x_row, steps, out, out_row),
                2 => tile_wide::<2>(w, x, x_row, steps, out, out_row),
                1 => tile_wide::<1>(w, x, x_row, steps, out, out_row),
                _ => unreachable!("wide tile of {rn} activation rows"),
            }
        }
    }

    /// [`super::round_activations`] 8 at a time, each value written to
    /// `out` (as long as `x`): F16C's conversion for F16;
    /// for BF16 ggml's `GGML_FP32_TO_BF16` (add `0x7fff` plus the lowest
    /// kept bit, truncate; a NaN is truncated and made quiet).
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in super::super) unsafe fn round_activations(
        ty: GgmlType,
        x: &[f32],
        out: &mut [MaybeUninit<f32>],
    ) {
        assert_eq!(x.len(), out.len());
        let mut c = out.chunks_exact_mut(8);
        for (c, xc) in (&mut c).zip(x.chunks_exact(8)) {
            // SAFETY: `xc` holds 8 floats.
            let v = unsafe { _mm256_loadu_ps(xc.as_ptr()) };
            let r = if ty == GgmlType::F16 {
                _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v))
            } else {
                let u = _mm256_castps_si256(v);
                let odd = _mm256_and_si256(_mm256_srli_epi32::<16>(u), _mm256_set1_epi32(1));
                let bias = _mm256_add_epi32(_mm256_set1_epi32(0x7fff), odd);
                let rounded = _mm256_add_epi32(u, bias);
                let quiet = _mm256_or_si256(u, _mm256_set1_epi32(0x0040_0000));
                let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
                let r = _mm256_blendv_epi8(rounded, quiet, nan);
                _mm256_castsi256_ps(_mm256_and_si256(r, _mm256_set1_epi32(-65536)))
            };
            // SAFETY: `c` holds 8 floats' room (`MaybeUninit<f32>` is laid
            // out as `f32`).
            unsafe { _mm256_storeu_ps(c.as_mut_ptr() as *mut f32, r) };
        }
        let rest = c.into_remainder();
        let tail = super::round_activations_portable(ty, &x[x.len() - rest.len()..]);
        for (d, v) in rest.iter_mut().zip(tail) {
            d.write(v);
        }
    }

    /// [`super::float_rows`] with the tiled kernel: with `wide` 8-row tiles
    /// in AVX-512's 32 registers, with `zmm` too on 512-bit registers.
    ///
    /// # Safety
    /// The CPU must support AVX2, FMA and F16C; AVX-512 F and VL where
    /// `wide` or `zmm`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in super::super) unsafe fn float_rows(
        ty: GgmlType,
        w: &[u8],
        cols: usize,
        x: &[f32],
        n: usize,
        out: ColumnBlock<'_>,
        wide: bool,
        zmm: bool,
    ) {
        // SAFETY: `wide` and `zmm` only where the caller saw AVX-512 F and VL.
        unsafe {
            match ty {
                GgmlType::F32 => rows::<F32>(w, cols, x, n, out, wide, zmm),
                GgmlType::F16 => rows::<F16>(w, cols, x, n, out, wide, zmm),
                _ => rows::<BF16>(w, cols, x, n, out, wide, zmm),
            }
        }
    }

    /// [`float_rows`] for weights of tag `T`.
    ///
    /// # Safety
    /// With `wide` or `zmm` (the wide tiles on 512-bit registers,
    /// [`tile_zmm`]), the CPU must support AVX-512 F and VL.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows<const T: u8>(
        w: &[u8],
        cols: usize,
        x: &[f32],
        n: usize,
        mut out: ColumnBlock<'_>,
        wide: bool,
        zmm: bool,
    ) {
        assert!(cols.is_multiple_of(8) && n > 0 && out.n() == n);
        let rows = out.nrows();
        let stride = out.stride();
        let out = out.as_mut_ptr();
        let row_bytes = cols * elem_bytes::<T>();
        assert!(w.len() >= rows * row_bytes && x.len() >= n * cols);
        let steps = cols / 8;
        // Converting pays off once the weights are read more than once.
        let pack = T != F32 && n > NR;
        let wide = wide && pack;
        let mut packed = if pack {
            vec![0.0f32; MR.max(WIDE_MR) * cols]
        } else {
            Vec::new()
        };
        let mr = if n == 1 { MR1 } else { MR };
        if n == 1 {
            // Each tile prefetches the one `PF_TILES` on, so nothing asks
            // for the first tiles of a chunk: ask now (measured +5% on
            // SmolLM2 F16 decoding).
            let head = &w[..(PF_TILES * mr).min(rows) * row_bytes];
            for l in (0..head.len()).step_by(64) {
                quant_kernels::simd::prefetch_l2(head.as_ptr().wrapping_add(l));
            }
        }
        let mut r = 0;
        while r < rows {
            // Wide tiles take 8 rows; the last rows take the AVX2 tiles.
            let rm = if wide && rows - r >= WIDE_MR {
                WIDE_MR
            } else {
                mr.min(rows - r)
            };
            let wide_tile = wide && rm == WIDE_MR;
            let nr = if wide_tile { WIDE_NR } else { NR };
            let wr = &w[r * row_bytes..][..rm * row_bytes];
            // The next tile's weights come from memory: ask for them a few
            // cache lines per activation tile while this one computes.
            let next = &w[(r + rm) * row_bytes..][..rm.min(rows - r - rm) * row_bytes];
            let n_tiles = n.div_ceil(nr);
            let per_tile = next.len().div_ceil(64).div_ceil(n_tiles);
            if pack {
                let buf = &mut packed[..rm * cols];
                for s in 0..steps {
                    for i in 0..rm {
                        // SAFETY: row i, step s lies inside `wr`; the
                        // destination's 8 floats inside `buf`.
                        unsafe {
                            let v = load8::<T>(
                                wr.as_ptr().add(i * row_bytes + s * 8 * elem_bytes::<T>()),
                            );
                            _mm256_storeu_ps(buf.as_mut_ptr().add((s * rm + i) * 8), v);
                        }
                    }
                }
            }
            let mut b = 0;
            while b < n {
                let rn = nr.min(n - b);
                let xb = x[b * cols..][..rn * cols].as_ptr();
                // SAFETY: run `b`, element `r`, inside the block.
                let o = unsafe { out.add(b * stride + r) };
                if pack {
                    let line0 = b / nr * per_tile;
                    for l in line0..(line0 + per_tile).min(next.len().div_ceil(64)) {
                        quant_kernels::simd::prefetch(next.as_ptr().wrapping_add(64 * l));
                    }
                }
                // SAFETY: `rm` weight rows of `steps · 8` elements (packed:
                // `rm · cols` floats interleaved by step), `rn` activation
                // rows of `cols`, and outputs `(b + j)·stride + r + i` for
                // `i < rm, j < rn`, all inside the slices and the block
                // checked above.
                unsafe {
                    if wide_tile {
                        tile_wide_any(zmm, rn, packed.as_ptr(), xb, cols, steps, o, stride);
                    } else if pack {
                        let p = packed.as_ptr() as *const u8;
                        let pf = std::ptr::null();
                        tile_any::<F32>(rm, rn, p, 32, rm * 32, xb, cols, steps, o, stride, pf);
                    } else {
                        let step = 8 * elem_bytes::<T>();
                        // Unpacked, the weights come from memory for the
                        // first activation tile: it fetches those of the
                        // tile `PF_TILES` on.
                        let pf = if b == 0 {
                            wr.as_ptr().wrapping_add(PF_TILES * rm * row_bytes)
                        } else {
                            std::ptr::null()
                        };
                        tile_any::<T>(
                            rm,
                            rn,
                            wr.as_ptr(),
                            row_bytes,
                            step,
                            xb,
                            cols,
                            steps,
                            o,
                            stride,
                            pf,
                        );
                    }
                }
                b += rn;
            }
            r += rm;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift values in about ±4, rounded to what `ty` holds.
    fn random(seed: &mut u32, len: usize, ty: GgmlType) -> Vec<f32> {
        (0..len)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 17;
                *seed ^= *seed << 5;
                let v = (*seed as f32 / u32::MAX as f32 - 0.5) * 8.0;
                match ty {
                    GgmlType::F16 => f16::from_f32(v).to_f32(),
                    GgmlType::BF16 => bf16::from_f32(v).to_f32(),
                    _ => v,
                }
            })
            .collect()
    }

    fn weight_bytes(ty: GgmlType, w: &[f32]) -> Vec<u8> {
        match ty {
            GgmlType::F32 => bytemuck::cast_slice(w).to_vec(),
            GgmlType::F16 => w
                .iter()
                .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                .collect(),
            _ => w
                .iter()
                .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                .collect(),
        }
    }

    /// The vector rounding of activations is `half`'s, on random values
    /// (enough to be split between threads), ties, subnormals, overflow,
    /// infinities and NaNs (in the last, single-threaded task).
    #[test]
    fn round_activations_matches_portable_bits() {
        let mut seed = 0x0bad_cafeu32;
        let mut x: Vec<f32> = (0..40_099)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                f32::from_bits(seed)
            })
            .collect();
        x.extend([
            0.0,
            -0.0,
            1.0,
            65504.0,
            65520.0,
            1e6,
            -1e-8,
            6e-8,
            3e-5,
            1.000_488_3,
            1.000_976_6,
        ]);
        x.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::MIN_POSITIVE,
        ]);
        x.extend([
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            f32::MAX,
            f32::from_bits(0x7f80_0001),
        ]);
        for ty in [GgmlType::F16, GgmlType::BF16] {
            let want = round_activations_portable(ty, &x);
            let got = round_activations(ty, &x);
            for ((g, w), v) in got.iter().zip(&want).zip(&x) {
                assert_eq!(g.to_bits(), w.to_bits(), "{ty:?} {v:e}: {g:e} vs {w:e}");
            }
        }
    }

    /// The tiled kernel gives the reference's bits for every tile edge:
    /// batches 1..=13 (packed and not), rows not a multiple of 4, columns
    /// multiples of 8 but not of 32.
    #[test]
    fn tiled_kernel_matches_portable_bits() {
        #[cfg(target_arch = "x86_64")]
        if !avx2::available() {
            return;
        }
        let mut seed = 0x9e37_79b9u32;
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
            for (rows, cols) in [(1, 8), (7, 40), (13, 72), (4, 264), (9, 136), (27, 56)] {
                let w = weight_bytes(ty, &random(&mut seed, rows * cols, ty));
                for n in 1..=13 {
                    let x = random(&mut seed, n * cols, ty);
                    let mut want = vec![0.0f32; rows * n];
                    float_rows_portable(ty, &w, cols, &x, n, ColumnBlock::new(&mut want, n));
                    let mut got = vec![0.0f32; rows * n];
                    float_rows(ty, &w, cols, &x, n, ColumnBlock::new(&mut got, n));
                    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(
                            g.to_bits(),
                            e.to_bits(),
                            "{ty:?} rows={rows} cols={cols} n={n} out {i}: {g} vs {e}"
                        );
                    }
                    // Every x86 variant, whichever `float_rows` picked.
                    #[cfg(target_arch = "x86_64")]
                    for (wide, zmm) in [(false, false), (true, false), (true, true)] {
                        if wide && !avx2::wide_available() {
                            continue;
                        }
                        got.fill(0.0);
                        // SAFETY: checked above (AVX2; AVX-512 where `wide`).
                        unsafe {
                            avx2::float_rows(
                                ty,
                                &w,
                                cols,
                                &x,
                                n,
                                ColumnBlock::new(&mut got, n),
                                wide,
                                zmm,
                            )
                        };
                        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                            assert_eq!(
                                g.to_bits(),
                                e.to_bits(),
                                "{ty:?} wide={wide} zmm={zmm} rows={rows} cols={cols} n={n} out {i}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// `matmul_float` end to end (activation rounding, row chunks, the
    /// transposed output) gives each output the reference dot product's bits.
    #[test]
    fn matmul_float_matches_reference_dots() {
        let mut seed = 0x5eed_1234u32;
        for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16] {
            for (rows, cols, n) in [(37, 72, 21), (16, 40, 16), (5, 8, 1), (70, 24, 3)] {
                let w_f32 = random(&mut seed, rows * cols, ty);
                let w = weight_bytes(ty, &w_f32);
                let x = random(&mut seed, n * cols, GgmlType::F32);
                let mut y = vec![0.0f32; n * rows];
                super::super::matmul_float(ty, &w, rows, cols, &x, n, &mut y);
                let xr = match ty {
                    GgmlType::F32 => x.clone(),
                    _ => round_activations_portable(ty, &x),
                };
                for b in 0..n {
                    for r in 0..rows {
                        let (wr, xb) = (&w_f32[r * cols..][..cols], &xr[b * cols..][..cols]);
                        // tinyBLAS takes a multiple of 4 rows; ggml's vec_dot the rest.
                        let tiny = rows % 4 == 0;
                        let want = match ty {
                            GgmlType::F32 if tiny => dot_lanes8_f32(wr, xb),
                            GgmlType::F32 => vec_dot_ggml_f32(wr, xb),
                            GgmlType::F16 => {
                                let h: Vec<f16> = wr.iter().map(|&v| f16::from_f32(v)).collect();
                                if tiny {
                                    dot_lanes8_f16(&h, xb)
                                } else {
                                    vec_dot_ggml_f16(&h, xb)
                                }
                            }
                            _ => {
                                let h: Vec<bf16> = wr.iter().map(|&v| bf16::from_f32(v)).collect();
                                dot_lanes8_bf16(&h, xb)
                            }
                        };
                        let got = y[b * rows + r];
                        assert_eq!(
                            got.to_bits(),
                            want.to_bits(),
                            "{ty:?} {rows}x{cols} n={n} [{b}, {r}]"
                        );
                    }
                }
            }
        }
    }
}
