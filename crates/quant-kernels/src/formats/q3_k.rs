//! Q3_K: 256-weight super-blocks of 3-bit quants with 6-bit scales.
//!
//! `x = d·(sc_j − 32)·(q − 4)` for sub-block `j` of 16 weights, `q ∈ [0, 7]`
//! (low 2 bits in `qs`, 3rd bit in `hmask`), `sc_j ∈ [0, 63]`: 3.4375 bits
//! per weight. Ported from ggml's `ggml-quants.c` (`quantize_row_q3_K_ref`,
//! `dequantize_row_q3_K`) and `ggml-cpu/quants.c`
//! (`ggml_vec_dot_q3_K_q8_K_generic`).

// Index loops mirror ggml's C line for line, which keeps the port auditable.
#![allow(clippy::needless_range_loop)]

use bytemuck::{Pod, Zeroable};
use gguf_format::GgmlType;
use half::f16;

use super::f16::{fp16_to_fp32, fp32_to_fp16};
use super::k_helpers::{
    accumulate_scaled_lanes, make_q3_quants, nearest_int, unpack_scales_q3_k, QK_K,
};
use super::q8_k::BlockQ8_K;
use super::FormatKernels;

/// One Q3_K super-block (ggml's `block_q3_K`), 110 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ3_K {
    /// High bits: bit `b` of byte `l` is set when weight `32b + l` has `q ≥ 4`.
    pub hmask: [u8; QK_K / 8],
    /// Low 2 bits, laid out as Q2_K's `qs`.
    pub qs: [u8; QK_K / 4],
    /// Sixteen 6-bit scales, packed: low nibbles in bytes 0–7, high 2 bits in bytes 8–11.
    pub scales: [u8; 12],
    /// Super-block scale.
    pub d: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ3_K>() == 110);

/// Dequantizes `x` into `y` (`y.len() == 256·x.len()`), bit-exact to ggml's `dequantize_row_q3_K`.
pub fn dequantize_row_q3_k(x: &[BlockQ3_K], y: &mut [f32]) {
    assert_eq!(y.len(), x.len() * QK_K);
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d_all = fp16_to_fp32(b.d);
        let scales = unpack_scales_q3_k(&b.scales);
        let hm = &b.hmask;
        for (h, q) in b.qs.chunks_exact(32).enumerate() {
            for shift in 0..4 {
                let k = 4 * h + shift;
                let m = 1u8 << k;
                for half in 0..2 {
                    let dl = d_all * (scales[2 * k + half] as i32 - 32) as f32;
                    let out = &mut y[32 * k + 16 * half..32 * k + 16 * half + 16];
                    for (i, o) in out.iter_mut().enumerate() {
                        let l = 16 * half + i;
                        let low = ((q[l] >> (2 * shift)) & 3) as i32;
                        let high = if hm[l] & m != 0 { 0 } else { 4 };
                        *o = dl * (low - high) as f32;
                    }
                }
            }
        }
    }
}

/// Quantizes `x` (`x.len() == 256·y.len()`) with ggml's `quantize_row_q3_K_ref`.
///
/// This is also what `llama-quantize` runs for Q3_K without an importance matrix.
pub fn quantize_row_q3_k_ref(x: &[f32], y: &mut [BlockQ3_K]) {
    assert_eq!(x.len(), y.len() * QK_K);
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    for (x, y) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut max_scale = 0.0f32;
        let mut amax = 0.0f32;
        for j in 0..QK_K / 16 {
            scales[j] = make_q3_quants(
                4,
                &x[16 * j..16 * j + 16],
                &mut l[16 * j..16 * j + 16],
                true,
            );
            let scale = scales[j].abs();
            if scale > amax {
                amax = scale;
                max_scale = scales[j];
            }
        }
        y.scales = [0; 12];
        if max_scale != 0.0 {
            let iscale = -32.0f32 / max_scale;
            for j in 0..QK_K / 16 {
                // ggml stores nearest_int's result in an int8_t before clamping.
                let q = nearest_int(iscale * scales[j]) as i8;
                let q = (q.clamp(-32, 31) + 32) as u8;
                if j < 8 {
                    y.scales[j] = q & 0xF;
                } else {
                    y.scales[j - 8] |= (q & 0xF) << 4;
                }
                y.scales[j % 4 + 8] |= (q >> 4) << (2 * (j / 4));
            }
            y.d = fp32_to_fp16(1.0 / iscale);
        } else {
            y.d = fp32_to_fp16(0.0);
        }
        let d_all = fp16_to_fp32(y.d);
        for j in 0..QK_K / 16 {
            let low = if j < 8 {
                y.scales[j] & 0xF
            } else {
                y.scales[j - 8] >> 4
            };
            let sc = (low | (((y.scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i32 - 32;
            let d = d_all * sc as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(x[16 * j + ii] / d).clamp(-4, 3);
                l[16 * j + ii] = (q + 4) as i8;
            }
        }
        y.hmask = [0; QK_K / 8];
        let mut m = 0;
        let mut hm = 1u8;
        for lj in l.iter_mut() {
            if *lj > 3 {
                y.hmask[m] |= hm;
                *lj -= 4;
            }
            m += 1;
            if m == QK_K / 8 {
                m = 0;
                hm = hm.wrapping_shl(1);
            }
        }
        for (c, q) in y.qs.chunks_exact_mut(32).enumerate() {
            let j = 128 * c;
            for i in 0..32 {
                q[i] =
                    (l[j + i] | (l[j + i + 32] << 2) | (l[j + i + 64] << 4) | (l[j + i + 96] << 6))
                        as u8;
            }
        }
    }
}

/// Dot product of Q3_K weights with Q8_K activations (ggml's `ggml_vec_dot_q3_K_q8_K_generic`).
pub fn vec_dot_q3_k_q8_k(x: &[BlockQ3_K], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sums = [0f32; 8];
    let mut aux8 = [0i8; QK_K];
    for (xb, yb) in x.iter().zip(y) {
        let hm = &xb.hmask;
        let mut m = 1u8;
        let mut a = aux8.chunks_exact_mut(32);
        for q3 in xb.qs.chunks_exact(32) {
            for shift in (0..8).step_by(2) {
                if let Some(a) = a.next() {
                    for l in 0..32 {
                        let high = if hm[l] & m != 0 { 0 } else { 4 };
                        a[l] = ((q3[l] >> shift) & 3) as i8 - high;
                    }
                }
                m = m.wrapping_shl(1);
            }
        }
        let scales = unpack_scales_q3_k(&xb.scales);
        let d = fp16_to_fp32(xb.d) * yb.d;
        accumulate_scaled_lanes(&aux8, &yb.qs, 16, |j| scales[j] as i32 - 32, d, &mut sums);
    }
    let mut sumf = 0.0f32;
    for s in sums {
        sumf += s;
    }
    sumf
}

/// Q3_K's row of the kernel table.
pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::Q3_K,
    vec_dot_type: GgmlType::Q8_K,
    dequantize,
    quantize: Some(quantize),
    vec_dot,
};

fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::dequantize_bytes(src, dst, dequantize_row_q3_k);
}

fn quantize(src: &[f32], dst: &mut [u8]) {
    super::quantize_bytes(src, dst, quantize_row_q3_k_ref);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK_K;
    let (wsz, asz) = (size_of::<BlockQ3_K>(), size_of::<BlockQ8_K>());
    super::vec_dot_bytes(&w[..nb * wsz], &a[..nb * asz], vec_dot_q3_k_q8_k)
}
