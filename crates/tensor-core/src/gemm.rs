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

/// Whether [`matmul_float`] handles weights of type `ty` with a `cols`-long row
/// (tinyBLAS needs whole lanes of 8).
pub fn handles(ty: GgmlType, cols: usize) -> bool {
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => cols.is_multiple_of(8),
        GgmlType::Q6_K => {
            cols.is_multiple_of(256)
                && quant_kernels::simd::from_float_for(GgmlType::Q8_K).is_some()
        }
        GgmlType::Q4_0 => {
            cols.is_multiple_of(32) && quant_kernels::simd::from_float_for(GgmlType::Q8_0).is_some()
        }
        _ => false,
    }
}

/// `y[b, r] = Σ_c W[r, c]·x[b, c]` for weights `w` (`rows × cols`, row-major
/// bytes of `ty`) and `n` activation rows, activations rounded to the weight
/// type first (ggml's `vec_dot_type`). Requires [`handles`]`(ty, cols)`.
pub fn matmul_float(
    ty: GgmlType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) {
    assert!(handles(ty, cols) && x.len() == n * cols && y.len() == n * rows);
    let xr: Vec<f32> = match ty {
        GgmlType::F16 => x.iter().map(|&v| f16::from_f32(v).to_f32()).collect(),
        GgmlType::BF16 => x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect(),
        _ => Vec::new(),
    };
    let x = if xr.is_empty() { x } else { &xr[..] };
    // Q4_0 pairs with Q8_0 activations, quantized as ggml's x86 build does.
    let act_row = cols / 32 * 34;
    let mut xq = Vec::new();
    if ty == GgmlType::Q4_0 {
        let from_float =
            quant_kernels::simd::from_float_for(GgmlType::Q8_0).expect("checked by handles");
        xq = vec![0u8; n * act_row];
        for (q, xb) in xq.chunks_mut(act_row).zip(x.chunks(cols)) {
            from_float(xb, q);
        }
    }
    // Q6_K pairs with Q8_K activations.
    let act_row = if ty == GgmlType::Q6_K {
        cols / 256 * 292
    } else {
        act_row
    };
    if ty == GgmlType::Q6_K {
        let from_float =
            quant_kernels::simd::from_float_for(GgmlType::Q8_K).expect("checked by handles");
        xq = vec![0u8; n * act_row];
        for (q, xb) in xq.chunks_mut(act_row).zip(x.chunks(cols)) {
            from_float(xb, q);
        }
    }
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
                    *o = match ty {
                        GgmlType::Q6_K => dot_q6_k_q8_k(wr, &xq[b * act_row..][..act_row]),
                        GgmlType::Q4_0 => dot_q4_0_q8_0_repacked(wr, &xq[b * act_row..][..act_row]),
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
