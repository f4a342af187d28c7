//! tinyBLAS's order for float weights: element `i` of a dot product into
//! lane `i % 8` with fused multiply-adds, the 8 lanes summed pairwise.

use gguf_format::GgmlType;
use half::{bf16, f16};

use crate::fma::with_fma;

/// ggml's `hsum_float_8`: the pairwise order in which AVX sums 8 lanes.
#[inline(always)]
pub(super) fn hsum8(a: &[f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

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

/// tinyBLAS BF16 (AVX2): as F16.
pub(super) fn dot_lanes8_bf16(w: &[bf16], x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (wc, xc) in w.chunks_exact(8).zip(x.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += wc[i].to_f32() * xc[i];
        }
    }
    hsum8(&acc)
}

/// Float weights (`F32`, `F16` or `BF16`, by `ty`) for a chunk of weight
/// rows: `out[i·n + b]` = row `i` of `w` (`cols` elements each) times
/// activation row `b` of `x` (already rounded to the weight type).
pub(super) fn float_rows(
    ty: GgmlType,
    w: &[u8],
    cols: usize,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) {
    let row_bytes = cols * ty.type_size();
    for (wr, o) in w.chunks_exact(row_bytes).zip(out.chunks_mut(n)) {
        for (b, o) in o.iter_mut().enumerate() {
            let xb = &x[b * cols..(b + 1) * cols];
            *o = match ty {
                GgmlType::F32 => dot_lanes8_f32(bytemuck::cast_slice(wr), xb),
                GgmlType::F16 => dot_lanes8_f16(bytemuck::cast_slice(wr), xb),
                _ => dot_lanes8_bf16(bytemuck::cast_slice(wr), xb),
            };
        }
    }
}
