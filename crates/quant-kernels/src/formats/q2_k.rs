//! Q2_K: 256-weight super-blocks of 2-bit quants with 4-bit scales and mins.
//!
//! `x = d·sc_j·q − dmin·m_j` for sub-block `j` of 16 weights, `q ∈ [0, 3]`,
//! `sc_j, m_j ∈ [0, 15]`: 2.625 bits per weight. Ported from ggml's
//! `ggml-quants.c` (`quantize_row_q2_K_ref`, `dequantize_row_q2_K`) and
//! `ggml-cpu/quants.c` (`ggml_vec_dot_q2_K_q8_K_generic`).

// Index loops mirror ggml's C line for line, which keeps the port auditable.
#![allow(clippy::needless_range_loop)]

use bytemuck::{Pod, Zeroable};
use gguf_format::GgmlType;
use half::f16;

use super::f16::{fp16_to_fp32, fp32_to_fp16};
use super::k_helpers::{make_qkx2_quants, nearest_int, QK_K};
use super::q8_k::BlockQ8_K;
use super::FormatKernels;

/// One Q2_K super-block (ggml's `block_q2_K`), 84 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ2_K {
    /// Per 16 weights: scale in the low nibble, min in the high nibble.
    pub scales: [u8; QK_K / 16],
    /// 2-bit quants: per 128 weights, bits `2s..2s+2` of byte `l` hold weight `32s + l`.
    pub qs: [u8; QK_K / 4],
    /// Super-block scale of the quantized scales.
    pub d: f16,
    /// Super-block scale of the quantized mins.
    pub dmin: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ2_K>() == 84);

/// Dequantizes `x` into `y` (`y.len() == 256·x.len()`), bit-exact to ggml's `dequantize_row_q2_K`.
pub fn dequantize_row_q2_k(x: &[BlockQ2_K], y: &mut [f32]) {
    assert_eq!(y.len(), x.len() * QK_K);
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = fp16_to_fp32(b.d);
        let min = fp16_to_fp32(b.dmin);
        for (h, q) in b.qs.chunks_exact(32).enumerate() {
            for shift in 0..4 {
                let k = 4 * h + shift;
                for half in 0..2 {
                    let sc = b.scales[2 * k + half];
                    let dl = d * (sc & 0xF) as f32;
                    let ml = min * (sc >> 4) as f32;
                    let out = &mut y[32 * k + 16 * half..32 * k + 16 * half + 16];
                    for (o, &qv) in out.iter_mut().zip(&q[16 * half..16 * half + 16]) {
                        *o = dl * ((qv >> (2 * shift)) & 3) as f32 - ml;
                    }
                }
            }
        }
    }
}

/// Quantizes `x` (`x.len() == 256·y.len()`) with ggml's `quantize_row_q2_K_ref`.
///
/// This is also what `llama-quantize` runs for Q2_K without an importance matrix.
pub fn quantize_row_q2_k_ref(x: &[f32], y: &mut [BlockQ2_K]) {
    assert_eq!(x.len(), y.len() * QK_K);
    const Q4SCALE: f32 = 15.0;
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 16];
    let mut weights = [0f32; 16];
    let mut mins = [0f32; QK_K / 16];
    let mut scales = [0f32; QK_K / 16];
    for (x, y) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut max_scale = 0.0f32;
        let mut max_min = 0.0f32;
        for j in 0..QK_K / 16 {
            let xs = &x[16 * j..16 * j + 16];
            for (w, &v) in weights.iter_mut().zip(xs) {
                *w = v.abs();
            }
            scales[j] = make_qkx2_quants(
                3,
                xs,
                &weights,
                &mut l[16 * j..16 * j + 16],
                &mut mins[j],
                &mut laux,
                -0.5,
                0.1,
                15,
                true,
            );
            if scales[j] > max_scale {
                max_scale = scales[j];
            }
            if mins[j] > max_min {
                max_min = mins[j];
            }
        }
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for j in 0..QK_K / 16 {
                y.scales[j] = nearest_int(iscale * scales[j]) as u8;
            }
            y.d = fp32_to_fp16(max_scale / Q4SCALE);
        } else {
            y.scales = [0; QK_K / 16];
            y.d = fp32_to_fp16(0.0);
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for j in 0..QK_K / 16 {
                let m = nearest_int(iscale * mins[j]);
                y.scales[j] |= (m << 4) as u8;
            }
            y.dmin = fp32_to_fp16(max_min / Q4SCALE);
        } else {
            y.dmin = fp32_to_fp16(0.0);
        }
        let d_all = fp16_to_fp32(y.d);
        let dmin_all = fp16_to_fp32(y.dmin);
        for j in 0..QK_K / 16 {
            let d = d_all * (y.scales[j] & 0xF) as f32;
            if d == 0.0 {
                continue;
            }
            let dm = dmin_all * (y.scales[j] >> 4) as f32;
            for ii in 0..16 {
                let q = nearest_int((x[16 * j + ii] + dm) / d);
                l[16 * j + ii] = q.clamp(0, 3) as u8;
            }
        }
        for (c, q) in y.qs.chunks_exact_mut(32).enumerate() {
            let j = 128 * c;
            for i in 0..32 {
                q[i] =
                    l[j + i] | (l[j + i + 32] << 2) | (l[j + i + 64] << 4) | (l[j + i + 96] << 6);
            }
        }
    }
}

/// Dot product of Q2_K weights with Q8_K activations (ggml's `ggml_vec_dot_q2_K_q8_K_generic`).
pub fn vec_dot_q2_k_q8_k(x: &[BlockQ2_K], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let sc = &xb.scales;
        let mut summs = 0i32;
        for j in 0..16 {
            summs += yb.bsums[j] as i32 * (sc[j] >> 4) as i32;
        }
        let dall = yb.d * fp16_to_fp32(xb.d);
        let dmin = yb.d * fp16_to_fp32(xb.dmin);
        let mut isum = 0i32;
        let mut is = 0;
        let mut q8 = yb.qs.chunks_exact(16);
        for q2 in xb.qs.chunks_exact(32) {
            for shift in (0..8).step_by(2) {
                for half in 0..2 {
                    let d = (sc[is] & 0xF) as i32;
                    is += 1;
                    let a = q8.next().unwrap_or(&[0; 16]);
                    let mut isuml = 0i32;
                    for l in 0..16 {
                        isuml += a[l] as i32 * ((q2[16 * half + l] >> shift) & 3) as i32;
                    }
                    isum += d * isuml;
                }
            }
        }
        sumf += dall * isum as f32 - dmin * summs as f32;
    }
    sumf
}

/// Q2_K's row of the kernel table.
pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::Q2_K,
    vec_dot_type: GgmlType::Q8_K,
    dequantize,
    quantize: Some(quantize),
    vec_dot,
};

fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::dequantize_bytes(src, dst, dequantize_row_q2_k);
}

fn quantize(src: &[f32], dst: &mut [u8]) {
    super::quantize_bytes(src, dst, quantize_row_q2_k_ref);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK_K;
    let (wsz, asz) = (size_of::<BlockQ2_K>(), size_of::<BlockQ8_K>());
    super::vec_dot_bytes(&w[..nb * wsz], &a[..nb * asz], vec_dot_q2_k_q8_k)
}
