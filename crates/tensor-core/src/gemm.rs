//! Products whose summation order must be llama.cpp's own: float weights (F32,
//! F16, BF16), repacked Q4_0, and Q6_K.
//!
//! quant-kernels multiplies every format; for float weights the order of
//! the additions decides the last bits, and those bits decide later f16
//! roundings (the KV cache), so they are visible in the logits. llama.cpp's
//! x86 (AVX2) build routes F32, F16 and BF16 products through llamafile's
//! tinyBLAS, which accumulates element `i` of a dot product into lane `i % 8`
//! with fused multiply-adds and adds the 8 lanes pairwise at the end.
//! Mirroring that order makes the logits of synth-F32, -F16 and -BF16
//! bit-identical to llama.cpp's.
//!
//! Q4_0 weights are repacked at load time by llama.cpp's x86 CPU backend
//! (`block_q4_0x8`) and multiplied by `ggml_gemm_q4_0_8x8_q8_0`, which sums
//! each block's 32 integer products exactly and adds `sumi · (d_w·d_a)` into
//! one accumulator with a fused multiply-add; quant-kernels' `vec_dot`
//! spreads blocks over 8 float lanes instead. The synthetic model amplifies
//! that last-bit difference into a mean KLD of 3.5e-4; with the repack order
//! synth-Q4_0 agrees with llama.cpp to 5e-6 in every logit.
//!
//! Q6_K goes through `ggml_vec_dot_q6_K_q8_K` (AVX2): lane `m` of an 8-lane
//! integer accumulator collects the products of elements `i` with
//! `(i % 32) / 4 == m` (the `maddubs`/`madd` pairing), each block adds
//! `d · lane` into float lane `m` with a fused multiply-add, and the lanes are
//! summed pairwise at the end. That order gives synth-Q6_K a mean KLD of
//! 1.6e-13 against llama.cpp; quant-kernels' AVX2 Q6_K kernel (another lane
//! layout) gives 4.7e-4. Once quant-kernels sums in this order, this copy can go.
//!
//! Decoding uses the same order as prompt batches, so a token's logits do
//! not depend on how the prompt was split.

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
        GgmlType::Q4_K | GgmlType::Q6_K => Some(GgmlType::Q8_K),
        _ => None,
    }
}

/// Whether llama.cpp's x86 CPU backend repacks a `rows`-row matrix of `ty`
/// (`ggml_repack_get_optimal_repack_type`: Q4_0, Q4_K and IQ4_NL with AVX2
/// and a multiple of 8 rows).
fn repacked(ty: GgmlType, rows: usize) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_K | GgmlType::IQ4_NL)
        && rows.is_multiple_of(8)
        && avx2()
}

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
/// llama.cpp's x86 build and need its activation quantizer).
pub fn handles(ty: GgmlType, rows: usize, cols: usize) -> bool {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => cols.is_multiple_of(8),
        GgmlType::Q6_K => {
            cols.is_multiple_of(256)
                && quant_kernels::simd::from_float_for(GgmlType::Q8_K).is_some()
        }
        GgmlType::Q4_0 | GgmlType::IQ4_NL => {
            cols.is_multiple_of(32)
                && repacked(ty, rows)
                && quant_kernels::simd::from_float_for(GgmlType::Q8_0).is_some()
        }
        GgmlType::Q4_K => {
            cols.is_multiple_of(256)
                && repacked(ty, rows)
                && quant_kernels::simd::from_float_for(GgmlType::Q8_K).is_some()
        }
        _ => false,
    }
}

/// `y[b, r] = Σ_c W[r, c]·x[b, c]` for weights `w` (`rows × cols`, row-major
/// bytes of `ty`) and `n` activation rows, activations rounded to the weight
/// type first (ggml's `vec_dot_type`). Requires [`handles`]`(ty, rows, cols)`.
///
/// For repacked weights llama.cpp runs its gemm on the first `n - n % 4`
/// activation rows (four at a time) and its gemv on the rest; the two sum
/// Q4_K in different groupings, so the row index decides the order here too.
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
                        GgmlType::Q6_K => dot_q6_k_q8_k(wr, ab),
                        GgmlType::Q4_0 => dot_q4_0_q8_0_repacked(wr, ab),
                        GgmlType::IQ4_NL => dot_iq4_nl_q8_0_repacked(wr, ab),
                        GgmlType::Q4_K => dot_q4_k_q8_k_repacked(wr, ab, b < gemm_rows),
                        GgmlType::F32 => dot_lanes8_f32(bytemuck::cast_slice(wr), xb),
                        GgmlType::F16 => dot_lanes8_f16(bytemuck::cast_slice(wr), xb),
                        _ => dot_lanes8_bf16(bytemuck::cast_slice(wr), xb),
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
