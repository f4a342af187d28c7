//! llama.cpp's orders for quantized weights: the repacked Q4_0 / IQ4_NL /
//! Q4_K kernels (`ggml-cpu/repack.cpp`) and the tiled K-quant kernel.

use gguf_format::GgmlType;
use half::f16;

use super::TILED_MIN_BATCH;

#[cfg(target_arch = "x86_64")]
#[path = "kquant_x86.rs"]
mod x86;

/// ggml's `kvalues_iq4nl`: the 16 levels of IQ4_NL (and IQ4_XS).
pub(super) const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// ggml's `get_scale_min_k4`: sub-block `j`'s 6-bit scale and min.
#[inline(always)]
pub(super) fn scale_min_k4(j: usize, q: &[u8]) -> (i32, i32) {
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
pub(super) struct KBlock {
    pub(super) q: [i8; 256],
    pub(super) scale: [i32; 16],
    pub(super) min: [i32; 16],
    pub(super) d: f32,
    pub(super) dmin: f32,
}

impl KBlock {
    pub(super) const ZERO: KBlock = KBlock {
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
pub(super) struct KRow {
    pub(super) w: [i16; 256],
    pub(super) min16: [i32; 16],
    pub(super) d: f32,
    pub(super) dmin: f32,
}

impl KRow {
    pub(super) const ZERO: KRow = KRow {
        w: [0; 256],
        min16: [0; 16],
        d: 0.0,
        dmin: 0.0,
    };

    #[inline(always)]
    pub(super) fn new(k: &KBlock, sb: usize) -> KRow {
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
pub(super) fn sub_block_len(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q2_K | GgmlType::Q3_K | GgmlType::Q6_K => 16,
        _ => 32,
    }
}

/// The f16 at `b[i..i + 2]` as f32.
#[inline(always)]
pub(super) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Decodes one super-block of `ty` (a K-quant or IQ4_XS) into `k`, as
/// ggml's `dequantize_row_<fmt>` lays it out.
#[inline(always)]
pub(super) fn decode_kblock(ty: GgmlType, xb: &[u8], k: &mut KBlock) {
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
pub(super) enum KOrder {
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
pub(super) fn idot64(w: &[i16; 64], y: &[u8; 64]) -> i32 {
    w.iter()
        .zip(y)
        .map(|(&a, &b)| a as i32 * (b as i8 as i16) as i32)
        .sum()
}

/// One output: prepared weight row `blocks` times the block_q8_K row `a`,
/// summed in `order`.
#[inline(always)]
pub(super) fn kquant_dot(blocks: &[KRow], a: &[u8], order: KOrder) -> f32 {
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
pub(super) fn accumulate(
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
pub(super) fn q4_k_direct(w: &[u8], a: &[u8], order: KOrder) -> f32 {
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
pub(super) fn b32_rows(
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

/// The order [`kquant_rows`] gives activation row `b` of `n`: repacked
/// matrices take the gemm's on the first `n - n % 4` rows and the gemv's on
/// the rest; others the tiled kernel's.
#[inline(always)]
fn row_order(repacked: bool, n: usize, b: usize) -> KOrder {
    match (repacked, b < n - n % 4) {
        (false, _) => KOrder::Tiled,
        (true, true) => KOrder::RepackGemm,
        (true, false) => KOrder::RepackGemv,
    }
}

/// The portable [`kquant_rows`]: the specification the AVX2 kernels
/// reproduce bit for bit, and their fallback.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn kquant_rows_portable(
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
    let order = |b: usize| row_order(repacked, n, b);
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

/// A K-quant product for a chunk of weight rows: `out[i·n + b]` for weight
/// row `i` of `w` and activation row `b` of `xq` (`act_row` bytes each).
/// With AVX2 (+FMA, F16C) the integer sums run 16 weight rows per
/// activation broadcast (`kquant_x86.rs`); the float steps are
/// [`kquant_rows_portable`]'s, bit for bit. IQ4_XS (signed levels that
/// `maddubs` cannot take unsigned) stays on the portable code.
#[allow(clippy::too_many_arguments)]
pub(super) fn kquant_rows(
    ty: GgmlType,
    w: &[u8],
    row_bytes: usize,
    xq: &[u8],
    act_row: usize,
    n: usize,
    out: &mut [f32],
    repacked: bool,
) {
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
            kquant_rows_portable(ty, w, row_bytes, xq, act_row, n, out, repacked)
        }
        // AVX2 with FMA and F16C, unless turned off (`STRATA_CPU_DISABLE`).
        if quant_kernels::simd::features().avx2 {
            if matches!(ty, GgmlType::Q4_0 | GgmlType::IQ4_NL) {
                // SAFETY: AVX2, FMA and F16C are present; the shapes are
                // matmul_float's (whole rows, n activation rows each).
                return unsafe { x86::b32_rows_avx2(ty, w, row_bytes, xq, act_row, n, out) };
            }
            if x86::kquant_avx2_handles(ty) {
                let order = |b: usize| row_order(repacked, n, b);
                if ty == GgmlType::Q4_K && n <= 2 {
                    // One or two activation rows (decoding) do not repay
                    // unpacking 8 weight rows (measured: ~1.5x at n = 1,
                    // even at n = 2).
                    // SAFETY: as above; the rows are Q4_K.
                    return unsafe {
                        x86::q4_k_rows_direct(w, row_bytes, xq, act_row, n, out, &order)
                    };
                }
                if quant_kernels::simd::features().avx512_vnni {
                    // SAFETY: as below, and the CPU has AVX512-VNNI (with F, BW, VL).
                    return unsafe {
                        x86::kquant_rows_vnni512(ty, w, row_bytes, xq, act_row, n, out, &order)
                    };
                }
                // SAFETY: as above, and `ty` is one the kernel handles.
                return unsafe {
                    x86::kquant_rows_avx2(ty, w, row_bytes, xq, act_row, n, out, &order)
                };
            }
            // SAFETY: the CPU supports AVX2 and FMA, all that `avx2` enables;
            // the integer sums are exact and the float steps are the same
            // `mul_add`s either way, so the result does not depend on it.
            return unsafe { avx2(ty, w, row_bytes, xq, act_row, n, out, repacked) };
        }
    }
    kquant_rows_portable(ty, w, row_bytes, xq, act_row, n, out, repacked)
}
