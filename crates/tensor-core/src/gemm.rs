//! Products whose summation order must be llama.cpp's own: float weights (F32,
//! F16, BF16), the formats llama.cpp repacks (Q4_0, Q4_K, IQ4_NL) and the
//! K-quants its tiled kernel multiplies (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
//! IQ4_XS).
//!
//! quant-kernels multiplies every format; for float weights the order of
//! the additions decides the last bits, and those bits decide later f16
//! roundings (the KV cache), so they are visible in the logits. llama.cpp's
//! x86 (AVX2) build routes F32, F16 and BF16 products through llamafile's
//! tinyBLAS, which accumulates element `i` of a dot product into lane `i % 8`
//! with fused multiply-adds and adds the 8 lanes pairwise at the end.
//! Mirroring that order makes the logits of synth-F32, -F16 and -BF16
//! bit-identical to llama.cpp's. (tinyBLAS would use 16 lanes in an AVX-512
//! build, so the reference build is AVX2 only; that also rules out the
//! AVX-512-only Q2_K repack.)
//!
//! Q4_0, Q4_K and IQ4_NL matrices with a multiple of 8 rows are repacked at
//! load time by llama.cpp's x86 CPU backend (`ggml-cpu/repack.cpp`) and
//! multiplied by `ggml_gemm_*_8x8` on the first `n - n % 4` activation rows
//! and `ggml_gemv_*_8x8` on the rest. Both sum each 32-element block's
//! integer products exactly and add `sumi · (d_w·d_a)` into one accumulator
//! per output with a fused multiply-add; Q4_K adds scale-weighted sub-block
//! sums per super-block in the gemv but per pair of sub-blocks in the gemm,
//! its mins into a second accumulator subtracted at the end.
//!
//! The other K-quants (and Q4_K matrices that are not repacked) go through
//! ggml's tiled kernel (`ggml-cpu/tiled`) when a batch has 8 or more rows:
//! per super-block the exact integer sums `s1 = Σ scale·Σq·q8` and
//! `s2 = Σ min·bsum` become `res = d·s1`, `res = fma(-dmin, s2, res)`,
//! `acc = fma(res, d_a, acc)`. Smaller batches use `ggml_vec_dot_*`, which
//! quant-kernels' AVX2 kernels reproduce bit for bit (its goldens come from
//! ggml's x86 `quants.c`).
//!
//! The synthetic model amplifies a last-bit difference in any of these into
//! a mean KLD of ~3e-4; with these orders every synth file's logits are
//! bit-identical to llama.cpp's. As in llama.cpp, one activation row and a
//! batch take different kernels, so a quantized model's logits for a token
//! depend on whether it was decoded alone or in a batch.

use gguf_format::GgmlType;
use half::{bf16, f16};
use rayon::prelude::*;

use crate::fma::with_fma;

/// ggml's `hsum_float_8`: the pairwise order in which AVX sums 8 lanes.
#[inline(always)]
fn hsum8(a: &[f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

with_fma!(dot_lanes8_f32, fn(w: &[f32], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (wc, xc) in w.chunks_exact(8).zip(x.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] = wc[i].mul_add(xc[i], acc[i]);
        }
    }
    hsum8(&acc)
});

/// ggml's `kvalues_iq4nl`: the 16 levels of IQ4_NL (and IQ4_XS).
const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// ggml's `get_scale_min_k4`: sub-block `j`'s 6-bit scale and min.
#[inline(always)]
fn scale_min_k4(j: usize, q: &[u8]) -> (i32, i32) {
    if j < 4 {
        ((q[j] & 63) as i32, (q[j + 4] & 63) as i32)
    } else {
        (
            ((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4)) as i32,
            ((q[j + 4] >> 4) | ((q[j] >> 6) << 4)) as i32,
        )
    }
}

/// One K-quant super-block (256 weights) as [`decode_kblock`] unpacks it:
/// each element's quant, each sub-block's scale and min.
#[derive(Clone, Copy)]
struct KBlock {
    q: [i8; 256],
    scale: [i32; 16],
    min: [i32; 16],
    d: f32,
    dmin: f32,
}

impl KBlock {
    const ZERO: KBlock = KBlock {
        q: [0; 256],
        scale: [0; 16],
        min: [0; 16],
        d: 0.0,
        dmin: 0.0,
    };
}

/// A super-block prepared once per weight row so that each activation row
/// does one integer pass: `w = scale·q` per element (at most 4064 in
/// magnitude for every format here, so it fits an i16) and the min of each
/// 16-element group (the granularity of Q8_K's `bsums`).
#[derive(Clone, Copy)]
struct KRow {
    w: [i16; 256],
    min16: [i32; 16],
    d: f32,
    dmin: f32,
}

impl KRow {
    const ZERO: KRow = KRow {
        w: [0; 256],
        min16: [0; 16],
        d: 0.0,
        dmin: 0.0,
    };

    #[inline(always)]
    fn new(k: &KBlock, sb: usize) -> KRow {
        let mut r = KRow {
            w: [0; 256],
            min16: [0; 16],
            d: k.d,
            dmin: k.dmin,
        };
        for (i, (w, &q)) in r.w.iter_mut().zip(&k.q).enumerate() {
            *w = (k.scale[i / sb] * q as i32) as i16;
        }
        for (g, m) in r.min16.iter_mut().enumerate() {
            *m = k.min[g * 16 / sb];
        }
        r
    }
}

/// Elements per sub-block (one scale) of a K-quant format.
fn sub_block_len(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q6_K => 16,
        _ => 32,
    }
}

/// The f16 at `b[i..i + 2]` as f32.
#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Decodes one super-block of `ty` (a K-quant or IQ4_XS) into `k`, as
/// ggml's `dequantize_row_<fmt>` lays it out.
#[inline(always)]
fn decode_kblock(ty: GgmlType, xb: &[u8], k: &mut KBlock) {
    match ty {
        GgmlType::Q2_K => {
            // scales[16] (low nibble scale, high nibble min), qs[64], f16 d,
            // f16 dmin; sub-block s = 8n + 2j + h holds bits 2j of
            // qs[32n + 16h..][..16].
            for s in 0..16 {
                let (n, j, h) = (s / 8, (s % 8) / 2, s % 2);
                k.scale[s] = (xb[s] & 0xf) as i32;
                k.min[s] = (xb[s] >> 4) as i32;
                for l in 0..16 {
                    k.q[16 * s + l] = ((xb[16 + 32 * n + 16 * h + l] >> (2 * j)) & 3) as i8;
                }
            }
            (k.d, k.dmin) = (f16_at(xb, 80), f16_at(xb, 82));
        }
        GgmlType::Q3_K => {
            // hmask[32], qs[64], scales[12] (16 six-bit values, offset 32),
            // f16 d; sub-block s = 8n + 2j + h: bits 2j of qs[32n + 16h..],
            // minus 4 where bit 4n + j of hmask[16h..] is clear.
            let sc = &xb[96..108];
            for s in 0..16 {
                let (n, j, h) = (s / 8, (s % 8) / 2, s % 2);
                let lo = (sc[s % 8] >> (4 * (s / 8))) & 0xf;
                let hi = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
                k.scale[s] = (lo | (hi << 4)) as i32 - 32;
                k.min[s] = 0;
                for l in 0..16 {
                    let q = ((xb[32 + 32 * n + 16 * h + l] >> (2 * j)) & 3) as i8;
                    let high = xb[16 * h + l] & (1 << (4 * n + j)) != 0;
                    k.q[16 * s + l] = if high { q } else { q - 4 };
                }
            }
            (k.d, k.dmin) = (f16_at(xb, 108), 0.0);
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            // f16 d, f16 dmin, scales[12], [Q5_K: qh[32]], qs[128]; sub-block
            // j, element l: nibble j % 2 of qs[32(j/2) + l] (Q5_K: plus 16 if
            // bit j of qh[l]).
            let q5 = ty == GgmlType::Q5_K;
            let qs = if q5 { &xb[48..176] } else { &xb[16..144] };
            for j in 0..8 {
                (k.scale[j], k.min[j]) = scale_min_k4(j, &xb[4..16]);
                for l in 0..32 {
                    let mut q = (qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 0xf;
                    if q5 {
                        q |= ((xb[16 + l] >> j) & 1) << 4;
                    }
                    k.q[32 * j + l] = q as i8;
                }
            }
            (k.d, k.dmin) = (f16_at(xb, 0), f16_at(xb, 2));
        }
        GgmlType::Q6_K => {
            // ql[128], qh[64], scales[16] (i8), f16 d; element 128h + 32j + l:
            // nibble j / 2 of ql[64h + 32(j % 2) + l] under bits 2j of
            // qh[32h + l], minus 32.
            for i in 0..256 {
                let (h, j, l) = (i / 128, (i % 128) / 32, i % 32);
                let lo = (xb[64 * h + 32 * (j % 2) + l] >> (4 * (j / 2))) & 0xf;
                let hi = (xb[128 + 32 * h + l] >> (2 * j)) & 3;
                k.q[i] = (lo | (hi << 4)) as i8 - 32;
            }
            for s in 0..16 {
                k.scale[s] = xb[192 + s] as i8 as i32;
                k.min[s] = 0;
            }
            (k.d, k.dmin) = (f16_at(xb, 208), 0.0);
        }
        _ => {
            // IQ4_XS: f16 d, u16 scales_h, scales_l[4], qs[128]; sub-block
            // j's scale is its 6 bits minus 32; element l < 16 the low
            // nibble of qs[16j + l], l ≥ 16 the high one of qs[16j + l - 16],
            // through the IQ4_NL table.
            let scales_h = u16::from_le_bytes([xb[2], xb[3]]);
            for j in 0..8 {
                let lo = (xb[4 + j / 2] >> (4 * (j % 2))) & 0xf;
                let hi = ((scales_h >> (2 * j)) & 3) as u8;
                k.scale[j] = (lo | (hi << 4)) as i32 - 32;
                k.min[j] = 0;
                for l in 0..16 {
                    let b = xb[8 + 16 * j + l];
                    k.q[32 * j + l] = KVALUES_IQ4NL[(b & 0xf) as usize];
                    k.q[32 * j + l + 16] = KVALUES_IQ4NL[(b >> 4) as usize];
                }
            }
            (k.d, k.dmin) = (f16_at(xb, 0), 0.0);
        }
    }
}

/// How llama.cpp adds up a K-quant row's exact integer block sums.
#[derive(Clone, Copy)]
enum KOrder {
    /// The tiled kernel (8+ activation rows, matrix not repacked): per
    /// super-block `res = d·s1`, `res = fma(-dmin, s2, res)`,
    /// `acc = fma(res, d_a, acc)`.
    Tiled,
    /// `ggml_gemv_q4_K_8x8_q8_K`: `acc = fma(s1, d·d_a, acc)` and
    /// `acc_min = fma(s2, dmin·d_a, acc_min)` per super-block, `acc - acc_min`.
    RepackGemv,
    /// `ggml_gemm_q4_K_8x8_q8_K`: as the gemv, one step per pair of
    /// 32-element sub-blocks.
    RepackGemm,
}

/// `Σ w·y` over 64 elements, exact (the order of integer additions is free).
#[inline(always)]
fn idot64(w: &[i16; 64], y: &[u8; 64]) -> i32 {
    w.iter()
        .zip(y)
        .map(|(&a, &b)| a as i32 * (b as i8 as i16) as i32)
        .sum()
}

/// One output: prepared weight row `blocks` times the block_q8_K row `a`,
/// summed in `order`.
#[inline(always)]
fn kquant_dot(blocks: &[KRow], a: &[u8], order: KOrder) -> f32 {
    let (mut acc, mut acc_min) = (0.0f32, 0.0f32);
    for (k, yb) in blocks.iter().zip(a.chunks_exact(292)) {
        // block_q8_K: f32 d, qs[256] (i8), bsums[16] (i16, per 16 elements).
        let dy = f32::from_le_bytes([yb[0], yb[1], yb[2], yb[3]]);
        // Sums per 64 elements (a pair of 32-element sub-blocks).
        let mut s = [0i32; 4];
        let mut m = [0i32; 4];
        for p in 0..4 {
            let w = k.w[64 * p..][..64].try_into().expect("64 weights");
            let y = yb[4 + 64 * p..][..64].try_into().expect("64 activations");
            s[p] = idot64(w, y);
        }
        if k.dmin != 0.0 {
            for (g, &min) in k.min16.iter().enumerate() {
                m[g / 4] += min * i16::from_le_bytes([yb[260 + 2 * g], yb[261 + 2 * g]]) as i32;
            }
        }
        accumulate(order, &s, &m, k.d, k.dmin, dy, &mut acc, &mut acc_min);
    }
    acc - acc_min
}

/// The float steps of `order` for one super-block: `s` and `m` are its
/// exact scale and min sums per 64 elements, `d`/`dmin` the weight's
/// scales, `dy` the activation's.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn accumulate(
    order: KOrder,
    s: &[i32; 4],
    m: &[i32; 4],
    d: f32,
    dmin: f32,
    dy: f32,
    acc: &mut f32,
    acc_min: &mut f32,
) {
    match order {
        KOrder::Tiled => {
            let (s1, s2): (i32, i32) = (s.iter().sum(), m.iter().sum());
            let res = (-dmin).mul_add(s2 as f32, d * s1 as f32);
            *acc = res.mul_add(dy, *acc);
        }
        KOrder::RepackGemv => {
            let (s1, s2): (i32, i32) = (s.iter().sum(), m.iter().sum());
            *acc = (s1 as f32).mul_add(d * dy, *acc);
            *acc_min = (s2 as f32).mul_add(dmin * dy, *acc_min);
        }
        KOrder::RepackGemm => {
            for p in 0..4 {
                *acc = (s[p] as f32).mul_add(d * dy, *acc);
                *acc_min = (m[p] as f32).mul_add(dmin * dy, *acc_min);
            }
        }
    }
}

/// Q4_K straight from its bytes, for batches too small to repay
/// [`KRow`]'s preparation (decoding tokens one at a time).
#[inline(always)]
fn q4_k_direct(w: &[u8], a: &[u8], order: KOrder) -> f32 {
    let (mut acc, mut acc_min) = (0.0f32, 0.0f32);
    for (xb, yb) in w.chunks_exact(144).zip(a.chunks_exact(292)) {
        let bsum = |g: usize| i16::from_le_bytes([yb[260 + 2 * g], yb[261 + 2 * g]]) as i32;
        let (mut s, mut m) = ([0i32; 4], [0i32; 4]);
        for p in 0..4 {
            let qs: &[u8; 32] = xb[16 + 32 * p..][..32].try_into().expect("32 bytes");
            let y: &[u8; 64] = yb[4 + 64 * p..][..64].try_into().expect("64 bytes");
            let (mut lo, mut hi) = (0i32, 0i32);
            for l in 0..32 {
                lo += ((qs[l] & 0xf) as i16 * y[l] as i8 as i16) as i32;
                hi += ((qs[l] >> 4) as i16 * y[32 + l] as i8 as i16) as i32;
            }
            let (sc0, m0) = scale_min_k4(2 * p, &xb[4..16]);
            let (sc1, m1) = scale_min_k4(2 * p + 1, &xb[4..16]);
            s[p] = sc0 * lo + sc1 * hi;
            m[p] = m0 * (bsum(4 * p) + bsum(4 * p + 1)) + m1 * (bsum(4 * p + 2) + bsum(4 * p + 3));
        }
        let dy = f32::from_le_bytes([yb[0], yb[1], yb[2], yb[3]]);
        accumulate(
            order,
            &s,
            &m,
            f16_at(xb, 0),
            f16_at(xb, 2),
            dy,
            &mut acc,
            &mut acc_min,
        );
    }
    acc - acc_min
}

/// `ggml_gemm_q4_0_8x8_q8_0` / `ggml_gemm_iq4_nl_8x8_q8_0` and their gemv
/// twins (the same order) for a chunk of weight rows: each 32-element
/// block's integer products summed exactly, then `acc = fma(sumi, d_w·d_a,
/// acc)`. Each weight row is unpacked to bytes once.
#[inline(always)]
fn b32_rows(
    ty: GgmlType,
    w: &[u8],
    row_bytes: usize,
    xq: &[u8],
    act_row: usize,
    n: usize,
    out: &mut [f32],
) {
    // block_q4_0 / block_iq4_nl: f16 d, 16 bytes of nibbles (low: elements
    // 0..16, high: 16..32; Q4_0 subtracts 8, IQ4_NL looks them up);
    // block_q8_0: f16 d, 32 i8.
    let lut: [i8; 16] = if ty == GgmlType::Q4_0 {
        std::array::from_fn(|v| v as i8 - 8)
    } else {
        KVALUES_IQ4NL
    };
    let nb = row_bytes / 18;
    let (mut q, mut d) = (vec![[0i8; 32]; nb], vec![0.0f32; nb]);
    // The activations' scales, converted once per chunk rather than per product.
    let da: Vec<f32> = xq[..n * act_row]
        .chunks_exact(34)
        .map(|ab| f16_at(ab, 0))
        .collect();
    for (wr, o) in w.chunks_exact(row_bytes).zip(out.chunks_mut(n)) {
        for ((xb, q), d) in wr.chunks_exact(18).zip(&mut q).zip(&mut d) {
            *d = f16_at(xb, 0);
            for j in 0..16 {
                q[j] = lut[(xb[2 + j] & 0xf) as usize];
                q[j + 16] = lut[(xb[2 + j] >> 4) as usize];
            }
        }
        for (b, o) in o.iter_mut().enumerate() {
            let mut acc = 0.0f32;
            let da = &da[b * nb..][..nb];
            for (((ab, q), &dw), &da) in xq[b * act_row..][..act_row]
                .chunks_exact(34)
                .zip(&q)
                .zip(&d)
                .zip(da)
            {
                let y: &[u8; 32] = ab[2..34].try_into().expect("32 bytes");
                // |q·y| ≤ 127·127: the products fit an i16.
                let mut sumi = 0i32;
                for j in 0..32 {
                    sumi += (q[j] as i16 * y[j] as i8 as i16) as i32;
                }
                acc = (sumi as f32).mul_add(dw * da, acc);
            }
            *o = acc;
        }
    }
}

/// A K-quant product for a chunk of weight rows: `out[i·n + b]` for weight
/// row `i` of `w` and activation row `b` of `xq` (`act_row` bytes each).
/// Each weight row is decoded once; the integer work vectorizes under AVX2.
#[allow(clippy::too_many_arguments)]
fn kquant_rows(
    ty: GgmlType,
    w: &[u8],
    row_bytes: usize,
    xq: &[u8],
    act_row: usize,
    n: usize,
    out: &mut [f32],
    repacked: bool,
) {
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn body(
        ty: GgmlType,
        w: &[u8],
        row_bytes: usize,
        xq: &[u8],
        act_row: usize,
        n: usize,
        out: &mut [f32],
        repacked: bool,
    ) {
        let sb = sub_block_len(ty);
        let block_bytes = ty.type_size();
        let gemm_rows = n - n % 4;
        let order = |b: usize| match (repacked, b < gemm_rows) {
            (false, _) => KOrder::Tiled,
            (true, true) => KOrder::RepackGemm,
            (true, false) => KOrder::RepackGemv,
        };
        if matches!(ty, GgmlType::Q4_0 | GgmlType::IQ4_NL) {
            return b32_rows(ty, w, row_bytes, xq, act_row, n, out);
        }
        if ty == GgmlType::Q4_K && n < TILED_MIN_BATCH {
            for (wr, o) in w.chunks_exact(row_bytes).zip(out.chunks_mut(n)) {
                for (b, o) in o.iter_mut().enumerate() {
                    *o = q4_k_direct(wr, &xq[b * act_row..][..act_row], order(b));
                }
            }
            return;
        }
        let mut k = KBlock::ZERO;
        let mut blocks = vec![KRow::ZERO; row_bytes / block_bytes];
        for (wr, o) in w.chunks_exact(row_bytes).zip(out.chunks_mut(n)) {
            for (r, xb) in blocks.iter_mut().zip(wr.chunks_exact(block_bytes)) {
                decode_kblock(ty, xb, &mut k);
                *r = KRow::new(&k, sb);
            }
            for (b, o) in o.iter_mut().enumerate() {
                *o = kquant_dot(&blocks, &xq[b * act_row..][..act_row], order(b));
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn avx2(
            ty: GgmlType,
            w: &[u8],
            row_bytes: usize,
            xq: &[u8],
            act_row: usize,
            n: usize,
            out: &mut [f32],
            repacked: bool,
        ) {
            body(ty, w, row_bytes, xq, act_row, n, out, repacked)
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA, all that `avx2` enables;
            // the integer sums are exact and the float steps are the same
            // `mul_add`s either way, so the result does not depend on it.
            return unsafe { avx2(ty, w, row_bytes, xq, act_row, n, out, repacked) };
        }
    }
    body(ty, w, row_bytes, xq, act_row, n, out, repacked)
}

/// tinyBLAS F16: both operands f16 (products exact in f32, so plain
/// multiply-add rounds like FMA), 8 lanes, pairwise lane sum.
fn dot_lanes8_f16(w: &[f16], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (wc, xc) in w.chunks_exact(8).zip(x.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += wc[i].to_f32() * xc[i];
        }
    }
    hsum8(&acc)
}

/// tinyBLAS BF16 (AVX2): as F16.
fn dot_lanes8_bf16(w: &[bf16], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (wc, xc) in w.chunks_exact(8).zip(x.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += wc[i].to_f32() * xc[i];
        }
    }
    hsum8(&acc)
}

/// The activation format ggml pairs with weights of `ty` on these paths
/// (`vec_dot_type`), or `None` for float weights.
fn act_type(ty: GgmlType) -> Option<GgmlType> {
    match ty {
        GgmlType::Q4_0 | GgmlType::IQ4_NL => Some(GgmlType::Q8_0),
        GgmlType::Q2_K
        | GgmlType::Q3_K
        | GgmlType::Q4_K
        | GgmlType::Q5_K
        | GgmlType::Q6_K
        | GgmlType::IQ4_XS => Some(GgmlType::Q8_K),
        _ => None,
    }
}

/// Whether llama.cpp's x86 CPU backend repacks a `rows`-row matrix of `ty`
/// (`ggml_repack_get_optimal_repack_type`: Q4_0, Q4_K and IQ4_NL with AVX2
/// and a multiple of 8 rows; Q2_K only in AVX-512 builds, which llama.cpp's
/// F32 products show the reference build is not).
fn repacked(ty: GgmlType, rows: usize) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_K | GgmlType::IQ4_NL)
        && rows.is_multiple_of(8)
        && avx2()
}

/// Whether llama.cpp multiplies `ty` with its tiled K-quant kernel when the
/// batch has at least [`TILED_MIN_BATCH`] rows (and the matrix is not repacked).
fn tiled(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q2_K
            | GgmlType::Q3_K
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
            | GgmlType::IQ4_XS
    )
}

/// `ggml_tiled_min_batch`: smaller batches go through `vec_dot`.
const TILED_MIN_BATCH: usize = 8;

fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether [`matmul_float`] handles weights of type `ty` in a `rows × cols`
/// matrix (tinyBLAS needs whole lanes of 8; the quantized paths mirror
/// llama.cpp's x86 AVX2 build and need its activation quantizer).
pub fn handles(ty: GgmlType, rows: usize, cols: usize) -> bool {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => cols.is_multiple_of(8),
        _ => match act_type(ty) {
            Some(act) => {
                avx2()
                    && cols.is_multiple_of(ty.block_size())
                    && (repacked(ty, rows) || tiled(ty))
                    && quant_kernels::simd::from_float_for(act).is_some()
                    && quant_kernels::simd::vec_dot_for(ty).is_some()
            }
            None => false,
        },
    }
}

/// `y[b, r] = Σ_c W[r, c]·x[b, c]` for weights `w` (`rows × cols`, row-major
/// bytes of `ty`) and `n` activation rows, activations rounded to the weight
/// type first (ggml's `vec_dot_type`). Requires [`handles`]`(ty, rows, cols)`.
///
/// For repacked weights llama.cpp runs its gemm on the first `n - n % 4`
/// activation rows (four at a time) and its gemv on the rest; the two sum
/// Q4_K in different groupings, so the row index decides the order here too.
/// Other K-quants take the tiled kernel's order from 8 rows on, and
/// `vec_dot`'s below (quant-kernels' AVX2 kernels, which are ggml's).
pub fn matmul_float(
    ty: GgmlType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) {
    assert!(handles(ty, rows, cols) && x.len() == n * cols && y.len() == n * rows);
    let xr: Vec<f32> = match ty {
        GgmlType::F16 => x.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
        GgmlType::BF16 => x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
        _ => Vec::new(),
    };
    let x = if xr.is_empty() { x } else { &xr[..] };
    // Quantized weights pair with Q8_0 / Q8_K activations, quantized as
    // ggml's x86 build does (its 4-row interleaved quantizer for the gemm
    // gives the same values: where +amax and -amax tie it may flip the sign
    // of every quant and of the scale, which leaves each product unchanged).
    let mut xq = Vec::new();
    let mut act_row = 0;
    if let Some(act_ty) = act_type(ty) {
        let from_float = quant_kernels::simd::from_float_for(act_ty).expect("checked by handles");
        act_row = cols / act_ty.block_size() * act_ty.type_size();
        xq = vec![0u8; n * act_row];
        for (q, xb) in xq.chunks_mut(act_row).zip(x.chunks(cols)) {
            from_float(xb, q);
        }
    }
    let is_repacked = repacked(ty, rows);
    let is_tiled = !is_repacked && tiled(ty) && n >= TILED_MIN_BATCH;
    let vec_dot = quant_kernels::simd::vec_dot_for(ty);
    let row_bytes = cols / ty.block_size() * ty.type_size();
    // out is rows × n: each task owns whole weight rows, read once per batch.
    let mut out = vec![0.0f32; rows * n];
    let chunk = rows.div_ceil(rayon::current_num_threads() * 4).max(1);
    if is_tiled || is_repacked {
        out.par_chunks_mut(chunk * n)
            .zip(w.par_chunks(chunk * row_bytes))
            .for_each(|(out, w)| kquant_rows(ty, w, row_bytes, &xq, act_row, n, out, is_repacked));
    } else {
        out.par_chunks_mut(chunk * n)
            .enumerate()
            .for_each(|(c, out)| {
                for (i, o) in out.chunks_mut(n).enumerate() {
                    let wr = &w[(c * chunk + i) * row_bytes..][..row_bytes];
                    for (b, o) in o.iter_mut().enumerate() {
                        let xb = &x[b * cols..(b + 1) * cols];
                        let ab = if xq.is_empty() {
                            &[][..]
                        } else {
                            &xq[b * act_row..][..act_row]
                        };
                        *o = match ty {
                            GgmlType::F32 => dot_lanes8_f32(bytemuck::cast_slice(wr), xb),
                            GgmlType::F16 => dot_lanes8_f16(bytemuck::cast_slice(wr), xb),
                            GgmlType::BF16 => dot_lanes8_bf16(bytemuck::cast_slice(wr), xb),
                            _ => vec_dot.expect("checked by handles")(cols, wr, ab),
                        };
                    }
                }
            });
    }
    for (b, yb) in y.chunks_mut(rows).enumerate() {
        for (r, v) in yb.iter_mut().enumerate() {
            *v = out[r * n + b];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `rows` rows of `blocks` random super-blocks of `ty` with small finite
    /// f16 scales at the given byte offsets.
    fn random_rows(ty: GgmlType, rows: usize, blocks: usize, scales: &[usize]) -> Vec<u8> {
        let mut seed = 0x2545_f491u32;
        let mut w: Vec<u8> = (0..rows * blocks * ty.type_size())
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                seed as u8
            })
            .collect();
        for (i, b) in w.chunks_mut(ty.type_size()).enumerate() {
            for (k, &o) in scales.iter().enumerate() {
                let v = f16::from_f32(0.01 + 0.001 * ((i + k) % 7) as f32);
                b[o..o + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
        w
    }

    fn q8k(x: &[f32]) -> Vec<u8> {
        let from_float = quant_kernels::simd::portable_from_float(GgmlType::Q8_K).unwrap();
        let mut q = vec![0u8; x.len() / 256 * 292];
        from_float(x, &mut q);
        q
    }

    fn prepared(ty: GgmlType, row: &[u8]) -> Vec<KRow> {
        let mut k = KBlock::ZERO;
        row.chunks_exact(ty.type_size())
            .map(|xb| {
                decode_kblock(ty, xb, &mut k);
                KRow::new(&k, sub_block_len(ty))
            })
            .collect()
    }

    /// The prepared rows decode every format as ggml lays it out: the
    /// tiled order lands within rounding of ggml's portable `vec_dot`.
    #[test]
    fn prepared_rows_agree_with_portable_vec_dot() {
        let cases: [(GgmlType, &[usize]); 6] = [
            (GgmlType::Q2_K, &[80, 82]),
            (GgmlType::Q3_K, &[108]),
            (GgmlType::Q4_K, &[0, 2]),
            (GgmlType::Q5_K, &[0, 2]),
            (GgmlType::Q6_K, &[208]),
            (GgmlType::IQ4_XS, &[0]),
        ];
        let x: Vec<f32> = (0..1024)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let a = q8k(&x);
        for (ty, scales) in cases {
            let w = random_rows(ty, 8, 4, scales);
            let vec_dot = quant_kernels::simd::portable_vec_dot(ty).unwrap();
            for row in w.chunks(4 * ty.type_size()) {
                let ours = kquant_dot(&prepared(ty, row), &a, KOrder::Tiled);
                let theirs = vec_dot(1024, row, &a);
                assert!(
                    (ours - theirs).abs() <= 1e-4 * (1.0 + theirs.abs()),
                    "{ty:?}: {ours} vs {theirs}"
                );
            }
        }
    }

    /// Q4_K read directly and through prepared rows gives the same bits in
    /// every order.
    #[test]
    fn q4_k_direct_matches_prepared_rows() {
        let w = random_rows(GgmlType::Q4_K, 8, 4, &[0, 2]);
        let x: Vec<f32> = (0..1024)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 9.0)
            .collect();
        let a = q8k(&x);
        for row in w.chunks(4 * 144) {
            let blocks = prepared(GgmlType::Q4_K, row);
            for order in [KOrder::Tiled, KOrder::RepackGemv, KOrder::RepackGemm] {
                let direct = q4_k_direct(row, &a, order);
                let prep = kquant_dot(&blocks, &a, order);
                assert_eq!(direct.to_bits(), prep.to_bits());
            }
        }
    }
    /// [`matmul_float`] picks llama.cpp's kernel by batch size: repacked
    /// Q4_K takes the gemm order on rows `0..n - n % 4` and the gemv's on
    /// the rest; Q5_K and Q6_K take `vec_dot` below 8 rows and the tiled
    /// order from 8.
    #[test]
    fn matmul_float_follows_llama_cpp_kernel_choice() {
        if !avx2() {
            return;
        }
        let (rows, cols) = (8, 512);
        let x: Vec<f32> = (0..9 * cols)
            .map(|i| ((i * 29 % 83) as f32 - 41.0) / 11.0)
            .collect();
        let from_float = quant_kernels::simd::from_float_for(GgmlType::Q8_K).unwrap();
        let a: Vec<Vec<u8>> = x
            .chunks(cols)
            .map(|r| {
                let mut q = vec![0u8; cols / 256 * 292];
                from_float(r, &mut q);
                q
            })
            .collect();
        let check =
            |ty: GgmlType, scales: &[usize], n: usize, want: &dyn Fn(&[u8], usize) -> f32| {
                let w = random_rows(ty, rows, cols / 256, scales);
                let mut y = vec![0.0f32; n * rows];
                matmul_float(ty, &w, rows, cols, &x[..n * cols], n, &mut y);
                for (r, wr) in w.chunks(w.len() / rows).enumerate() {
                    for b in 0..n {
                        assert_eq!(
                            y[b * rows + r].to_bits(),
                            want(wr, b).to_bits(),
                            "{ty:?} n={n} b={b}"
                        );
                    }
                }
            };
        let q4k = |wr: &[u8], b: usize, n: usize| {
            let order = if b < n - n % 4 {
                KOrder::RepackGemm
            } else {
                KOrder::RepackGemv
            };
            q4_k_direct(wr, &a[b], order)
        };
        check(GgmlType::Q4_K, &[0, 2], 1, &|wr, b| q4k(wr, b, 1));
        check(GgmlType::Q4_K, &[0, 2], 6, &|wr, b| q4k(wr, b, 6));
        check(GgmlType::Q4_K, &[0, 2], 9, &|wr, b| q4k(wr, b, 9));
        let vec_dot = quant_kernels::simd::vec_dot_for(GgmlType::Q5_K).unwrap();
        check(GgmlType::Q5_K, &[0, 2], 7, &|wr, b| {
            vec_dot(cols, wr, &a[b])
        });
        check(GgmlType::Q5_K, &[0, 2], 8, &|wr, b| {
            kquant_dot(&prepared(GgmlType::Q5_K, wr), &a[b], KOrder::Tiled)
        });
        let vec_dot = quant_kernels::simd::vec_dot_for(GgmlType::Q6_K).unwrap();
        check(GgmlType::Q6_K, &[208], 3, &|wr, b| vec_dot(cols, wr, &a[b]));
    }
}
