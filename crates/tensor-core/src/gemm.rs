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
//! `acc = fma(res, d_a, acc)`. Smaller batches use `vec_dot`: Q6_K's AVX2
//! order is copied here (lane `(i % 32) / 4` of an 8-lane accumulator, one
//! FMA per block, lanes summed pairwise; quant-kernels' AVX2 Q6_K kernel
//! uses another lane layout), the others call quant-kernels' AVX2 kernels,
//! which are ggml's.
//!
//! The synthetic model amplifies a last-bit difference in any of these into
//! a mean KLD of ~3e-4; with these orders every synth file's logits are
//! bit-identical to llama.cpp's. Like llama.cpp's, a K-quant model's logits
//! for a token therefore depend on whether it was decoded alone or in a batch.

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

with_fma!(dot_q4_0_q8_0_repacked, fn(w: &[u8], a: &[u8]) -> f32 {
    // block_q4_0: f16 d, 16 bytes of nibbles (low: elements 0..16, high: 16..32);
    // block_q8_0: f16 d, 32 signed bytes.
    let mut acc = 0.0f32;
    for (wb, ab) in w.chunks_exact(18).zip(a.chunks_exact(34)) {
        let dw = f16::from_le_bytes([wb[0], wb[1]]).to_f32();
        let da = f16::from_le_bytes([ab[0], ab[1]]).to_f32();
        let mut sumi = 0i32;
        for j in 0..16 {
            let lo = (wb[2 + j] & 0x0f) as i32 - 8;
            let hi = (wb[2 + j] >> 4) as i32 - 8;
            sumi += lo * ab[2 + j] as i8 as i32 + hi * ab[18 + j] as i8 as i32;
        }
        acc = (sumi as f32).mul_add(dw * da, acc);
    }
    acc
});

with_fma!(dot_q6_k_q8_k, fn(w: &[u8], a: &[u8]) -> f32 {
    // block_q6_K: ql[128] (low nibbles), qh[64] (high 2 bits), scales[16] (i8), f16 d;
    // block_q8_K: f32 d, qs[256] (i8), bsums[16].
    let mut acc = [0.0f32; 8];
    let mut q = [0i8; 256];
    for (xb, yb) in w.chunks_exact(210).zip(a.chunks_exact(292)) {
        let (ql, qh, sc) = (&xb[..128], &xb[128..192], &xb[192..208]);
        for half in 0..2 {
            let (l4, h, o) = (&ql[64 * half..], &qh[32 * half..], 128 * half);
            for l in 0..32 {
                q[o + l] = ((l4[l] & 0xf) | ((h[l] & 3) << 4)) as i8 - 32;
                q[o + l + 32] = ((l4[l + 32] & 0xf) | (((h[l] >> 2) & 3) << 4)) as i8 - 32;
                q[o + l + 64] = ((l4[l] >> 4) | (((h[l] >> 4) & 3) << 4)) as i8 - 32;
                q[o + l + 96] = ((l4[l + 32] >> 4) | (((h[l] >> 6) & 3) << 4)) as i8 - 32;
            }
        }
        let q8 = &yb[4..260];
        let mut sumi = [0i32; 8];
        for (i, (&qi, &yi)) in q.iter().zip(q8).enumerate() {
            sumi[(i % 32) / 4] += sc[i / 16] as i8 as i32 * (qi as i32 * yi as i8 as i32);
        }
        let dx = f16::from_le_bytes([xb[208], xb[209]]).to_f32();
        let dy = f32::from_le_bytes([yb[0], yb[1], yb[2], yb[3]]);
        let d = dy * dx;
        for (acc, &s) in acc.iter_mut().zip(&sumi) {
            *acc = d.mul_add(s as f32, *acc);
        }
    }
    hsum8(&acc)
});

with_fma!(dot_iq4_nl_q8_0_repacked, fn(w: &[u8], a: &[u8]) -> f32 {
    // block_iq4_nl: f16 d, 16 bytes of 4-bit indices into KVALUES_IQ4NL (low
    // nibbles: elements 0..16, high: 16..32); block_q8_0: f16 d, 32 i8.
    let mut acc = 0.0f32;
    for (wb, ab) in w.chunks_exact(18).zip(a.chunks_exact(34)) {
        let dw = f16::from_le_bytes([wb[0], wb[1]]).to_f32();
        let da = f16::from_le_bytes([ab[0], ab[1]]).to_f32();
        let mut sumi = 0i32;
        for j in 0..16 {
            let lo = KVALUES_IQ4NL[(wb[2 + j] & 0x0f) as usize] as i32;
            let hi = KVALUES_IQ4NL[(wb[2 + j] >> 4) as usize] as i32;
            sumi += lo * ab[2 + j] as i8 as i32 + hi * ab[18 + j] as i8 as i32;
        }
        acc = (sumi as f32).mul_add(dw * da, acc);
    }
    acc
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

/// `ggml_gemv_q4_K_8x8_q8_K` / `ggml_gemm_q4_K_8x8_q8_K` (x86) for one
/// output: each 32-element sub-block's integer dot product times its scale
/// is exact; the gemv (one activation row, `per_pair == false`) adds them
/// up per super-block and does one fused multiply-add with `d_w·d_a`, the
/// gemm (rows in groups of four, `per_pair == true`) one per pair of
/// sub-blocks. Mins go into a second accumulator the same way, subtracted at
/// the end.
fn dot_q4_k_q8_k_repacked(w: &[u8], a: &[u8], per_pair: bool) -> f32 {
    if per_pair {
        dot_q4_k_q8_k_pairs(w, a)
    } else {
        dot_q4_k_q8_k_blocks(w, a)
    }
}

/// Sub-block `j`'s exact `scale·Σq·q8` and `min·bsum` of a Q4_K × Q8_K block pair.
#[inline(always)]
fn q4_k_sub_block(xb: &[u8], yb: &[u8], j: usize) -> (i32, i32) {
    // block_q4_K: f16 d, f16 dmin, scales[12], qs[128] (sub-block 2p: low
    // nibbles of qs[32p..32p+32], 2p+1: high nibbles);
    // block_q8_K: f32 d, qs[256] (i8), bsums[16] (i16, per 16 elements).
    let (sc, m) = scale_min_k4(j, &xb[4..16]);
    let qs = &xb[16 + 32 * (j / 2)..][..32];
    let q8 = &yb[4 + 32 * j..][..32];
    let shift = 4 * (j % 2);
    let mut dot = 0i32;
    for (&q, &y) in qs.iter().zip(q8) {
        dot += ((q >> shift) & 0xf) as i32 * y as i8 as i32;
    }
    let bsum = |k: usize| i16::from_le_bytes([yb[260 + 2 * k], yb[261 + 2 * k]]) as i32;
    (sc * dot, m * (bsum(2 * j) + bsum(2 * j + 1)))
}

with_fma!(dot_q4_k_q8_k_blocks, fn(w: &[u8], a: &[u8]) -> f32 {
    let (mut acc, mut acc_min) = (0.0f32, 0.0f32);
    for (xb, yb) in w.chunks_exact(144).zip(a.chunks_exact(292)) {
        let (mut sumi, mut summ) = (0i32, 0i32);
        for j in 0..8 {
            let (s, m) = q4_k_sub_block(xb, yb, j);
            sumi += s;
            summ += m;
        }
        let dy = f32::from_le_bytes([yb[0], yb[1], yb[2], yb[3]]);
        let d = f16::from_le_bytes([xb[0], xb[1]]).to_f32() * dy;
        let dmin = f16::from_le_bytes([xb[2], xb[3]]).to_f32() * dy;
        acc = (sumi as f32).mul_add(d, acc);
        acc_min = (summ as f32).mul_add(dmin, acc_min);
    }
    acc - acc_min
});

with_fma!(dot_q4_k_q8_k_pairs, fn(w: &[u8], a: &[u8]) -> f32 {
    let (mut acc, mut acc_min) = (0.0f32, 0.0f32);
    for (xb, yb) in w.chunks_exact(144).zip(a.chunks_exact(292)) {
        let dy = f32::from_le_bytes([yb[0], yb[1], yb[2], yb[3]]);
        let d = f16::from_le_bytes([xb[0], xb[1]]).to_f32() * dy;
        let dmin = f16::from_le_bytes([xb[2], xb[3]]).to_f32() * dy;
        for p in 0..4 {
            let (s0, m0) = q4_k_sub_block(xb, yb, 2 * p);
            let (s1, m1) = q4_k_sub_block(xb, yb, 2 * p + 1);
            acc = ((s0 + s1) as f32).mul_add(d, acc);
            acc_min = ((m0 + m1) as f32).mul_add(dmin, acc_min);
        }
    }
    acc - acc_min
});

// ggml's tiled K-quant matmul (`ggml-cpu/tiled`, x86 AVX2), which llama.cpp
// runs for batches of 8 or more activation rows on the K-quants it does not
// repack. Per 256-element block it forms two exact integer sums, `s1 =
// Σ scale·Σ q·q8` and (formats with mins) `s2 = Σ min·bsum`, then
// `res = d·s1` (rounded), `res = fma(-dmin, s2, res)`, `acc = fma(res, d8, acc)`.

/// The exact per-block sums of one weight block against one block_q8_K, and
/// the weight's `d` and `dmin` (0 for formats without mins).
type BlockSums = fn(xb: &[u8], yb: &[u8]) -> (i32, i32, f32, f32);

/// The tiled kernel's float steps over a row of `wb`-byte weight blocks.
#[inline(always)]
fn tiled_row(w: &[u8], a: &[u8], wb: usize, sums: BlockSums) -> f32 {
    let mut acc = 0.0f32;
    for (xb, yb) in w.chunks_exact(wb).zip(a.chunks_exact(292)) {
        let (s1, s2, d, dmin) = sums(xb, yb);
        let dy = f32::from_le_bytes([yb[0], yb[1], yb[2], yb[3]]);
        let res = (-dmin).mul_add(s2 as f32, d * s1 as f32);
        acc = res.mul_add(dy, acc);
    }
    acc
}

/// `bsums[k]` of a block_q8_K (sum of its elements 16k..16k+16).
#[inline(always)]
fn q8k_bsum(yb: &[u8], k: usize) -> i32 {
    i16::from_le_bytes([yb[260 + 2 * k], yb[261 + 2 * k]]) as i32
}

/// The f16 at `b[i..i + 2]` as f32.
#[inline(always)]
fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

#[inline(always)]
fn q2_k_sums(xb: &[u8], yb: &[u8]) -> (i32, i32, f32, f32) {
    // block_q2_K: scales[16] (low nibble scale, high nibble min), qs[64],
    // f16 d, f16 dmin; sub-block s = 8n + 2k + h holds bits 2k of
    // qs[32n + 16h..][..16].
    let (sc, qs) = (&xb[..16], &xb[16..80]);
    let (mut s1, mut s2) = (0i32, 0i32);
    for s in 0..16 {
        let (n, k, h) = (s / 8, (s % 8) / 2, s % 2);
        let q8 = &yb[4 + 16 * s..][..16];
        let mut dot = 0i32;
        for (&q, &y) in qs[32 * n + 16 * h..][..16].iter().zip(q8) {
            dot += ((q >> (2 * k)) & 3) as i32 * y as i8 as i32;
        }
        s1 += (sc[s] & 0xf) as i32 * dot;
        s2 += (sc[s] >> 4) as i32 * q8k_bsum(yb, s);
    }
    (s1, s2, f16_at(xb, 80), f16_at(xb, 82))
}

#[inline(always)]
fn q3_k_sums(xb: &[u8], yb: &[u8]) -> (i32, i32, f32, f32) {
    // block_q3_K: hmask[32], qs[64], scales[12] (16 six-bit values, offset
    // 32), f16 d; sub-block s = 8n + 2k + h: bits 2k of qs[32n + 16h..][..16]
    // minus 4 where bit 4n + k of hmask[16h..][..16] is clear.
    let (hm, qs) = (&xb[..32], &xb[32..96]);
    let sc = &xb[96..108];
    let (mut s1, s2) = (0i32, 0i32);
    for s in 0..16 {
        let (n, k, h) = (s / 8, (s % 8) / 2, s % 2);
        let lo = (sc[s % 8] >> (4 * (s / 8))) & 0xf;
        let hi = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
        let scale = (lo | (hi << 4)) as i32 - 32;
        let q8 = &yb[4 + 16 * s..][..16];
        let mut dot = 0i32;
        for l in 0..16 {
            let q = ((qs[32 * n + 16 * h + l] >> (2 * k)) & 3) as i32;
            let q = if hm[16 * h + l] & (1 << (4 * n + k)) != 0 {
                q
            } else {
                q - 4
            };
            dot += q * q8[l] as i8 as i32;
        }
        s1 += scale * dot;
    }
    (s1, s2, f16_at(xb, 108), 0.0)
}

#[inline(always)]
fn q4_k_sums(xb: &[u8], yb: &[u8]) -> (i32, i32, f32, f32) {
    let (mut s1, mut s2) = (0i32, 0i32);
    for j in 0..8 {
        let (s, m) = q4_k_sub_block(xb, yb, j);
        s1 += s;
        s2 += m;
    }
    (s1, s2, f16_at(xb, 0), f16_at(xb, 2))
}

#[inline(always)]
fn q5_k_sums(xb: &[u8], yb: &[u8]) -> (i32, i32, f32, f32) {
    // block_q5_K: f16 d, f16 dmin, scales[12], qh[32], qs[128]; sub-block j,
    // element l: nibble j % 2 of qs[32·(j/2) + l], plus 16 if bit j of qh[l].
    let (qh, qs) = (&xb[16..48], &xb[48..176]);
    let (mut s1, mut s2) = (0i32, 0i32);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &xb[4..16]);
        let q8 = &yb[4 + 32 * j..][..32];
        let mut dot = 0i32;
        for l in 0..32 {
            let q = ((qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 0xf) | (((qh[l] >> j) & 1) << 4);
            dot += q as i32 * q8[l] as i8 as i32;
        }
        s1 += sc * dot;
        s2 += m * (q8k_bsum(yb, 2 * j) + q8k_bsum(yb, 2 * j + 1));
    }
    (s1, s2, f16_at(xb, 0), f16_at(xb, 2))
}

#[inline(always)]
fn q6_k_sums(xb: &[u8], yb: &[u8]) -> (i32, i32, f32, f32) {
    // block_q6_K: ql[128], qh[64], scales[16] (i8), f16 d; element
    // 128h + 32k + l of half h: nibble k / 2 of ql[64h + 32(k % 2) + l] with
    // bits 2k of qh[32h + l] above it, minus 32.
    let (ql, qh, sc) = (&xb[..128], &xb[128..192], &xb[192..208]);
    let mut s1 = 0i32;
    for i in 0..256 {
        let (h, k, l) = (i / 128, (i % 128) / 32, i % 32);
        let lo = (ql[64 * h + 32 * (k % 2) + l] >> (4 * (k / 2))) & 0xf;
        let hi = (qh[32 * h + l] >> (2 * k)) & 3;
        let q = (lo | (hi << 4)) as i32 - 32;
        s1 += sc[i / 16] as i8 as i32 * (q * yb[4 + i] as i8 as i32);
    }
    (s1, 0, f16_at(xb, 208), 0.0)
}

#[inline(always)]
fn iq4_xs_sums(xb: &[u8], yb: &[u8]) -> (i32, i32, f32, f32) {
    // block_iq4_xs: f16 d, u16 scales_h, scales_l[4], qs[128]; sub-block j's
    // scale is its 6 bits minus 32, element l < 16 the low nibble of
    // qs[16j + l] (l ≥ 16: high nibble of qs[16j + l - 16]) through the table.
    let scales_h = u16::from_le_bytes([xb[2], xb[3]]);
    let mut s1 = 0i32;
    for j in 0..8 {
        let lo = (xb[4 + j / 2] >> (4 * (j % 2))) & 0xf;
        let hi = ((scales_h >> (2 * j)) & 3) as u8;
        let scale = (lo | (hi << 4)) as i32 - 32;
        let qs = &xb[8 + 16 * j..][..16];
        let q8 = &yb[4 + 32 * j..][..32];
        let mut dot = 0i32;
        for l in 0..16 {
            dot += KVALUES_IQ4NL[(qs[l] & 0xf) as usize] as i32 * q8[l] as i8 as i32
                + KVALUES_IQ4NL[(qs[l] >> 4) as usize] as i32 * q8[l + 16] as i8 as i32;
        }
        s1 += scale * dot;
    }
    (s1, 0, f16_at(xb, 0), 0.0)
}

with_fma!(dot_q2_k_tiled, fn(w: &[u8], a: &[u8]) -> f32 { tiled_row(w, a, 84, q2_k_sums) });
with_fma!(dot_q3_k_tiled, fn(w: &[u8], a: &[u8]) -> f32 { tiled_row(w, a, 110, q3_k_sums) });
with_fma!(dot_q4_k_tiled, fn(w: &[u8], a: &[u8]) -> f32 { tiled_row(w, a, 144, q4_k_sums) });
with_fma!(dot_q5_k_tiled, fn(w: &[u8], a: &[u8]) -> f32 { tiled_row(w, a, 176, q5_k_sums) });
with_fma!(dot_q6_k_tiled, fn(w: &[u8], a: &[u8]) -> f32 { tiled_row(w, a, 210, q6_k_sums) });
with_fma!(dot_iq4_xs_tiled, fn(w: &[u8], a: &[u8]) -> f32 { tiled_row(w, a, 136, iq4_xs_sums) });

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
/// `vec_dot`'s below (quant-kernels' AVX2 kernels are ggml's, except Q6_K's).
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
    let gemm_rows = n - n % 4;
    let row_bytes = cols / ty.block_size() * ty.type_size();
    // out is rows × n: each task owns whole weight rows, read once per batch.
    let mut out = vec![0.0f32; rows * n];
    let chunk = rows.div_ceil(rayon::current_num_threads() * 4).max(1);
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
                        GgmlType::Q4_0 => dot_q4_0_q8_0_repacked(wr, ab),
                        GgmlType::IQ4_NL => dot_iq4_nl_q8_0_repacked(wr, ab),
                        GgmlType::Q4_K if is_repacked => {
                            dot_q4_k_q8_k_repacked(wr, ab, b < gemm_rows)
                        }
                        _ if is_tiled => match ty {
                            GgmlType::Q2_K => dot_q2_k_tiled(wr, ab),
                            GgmlType::Q3_K => dot_q3_k_tiled(wr, ab),
                            GgmlType::Q4_K => dot_q4_k_tiled(wr, ab),
                            GgmlType::Q5_K => dot_q5_k_tiled(wr, ab),
                            GgmlType::Q6_K => dot_q6_k_tiled(wr, ab),
                            _ => dot_iq4_xs_tiled(wr, ab),
                        },
                        GgmlType::Q6_K => dot_q6_k_q8_k(wr, ab),
                        _ => vec_dot.expect("checked by handles")(cols, wr, ab),
                    };
                }
            }
        });
    for (b, yb) in y.chunks_mut(rows).enumerate() {
        for (r, v) in yb.iter_mut().enumerate() {
            *v = out[r * n + b];
        }
    }
}
