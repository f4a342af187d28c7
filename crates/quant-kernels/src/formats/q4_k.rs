//! Q4_K: 256-weight super-blocks of 4-bit quants with 6-bit scales and mins.
//!
//! `x = d·sc_j·q − dmin·m_j` for sub-block `j` of 32 weights, `q ∈ [0, 15]`,
//! `sc_j, m_j ∈ [0, 63]`: 4.5 bits per weight. Ported from ggml's
//! `ggml-quants.c` (`quantize_row_q4_K_ref`, `dequantize_row_q4_K`) and
//! `ggml-cpu/quants.c` (`ggml_vec_dot_q4_K_q8_K_generic`).

// Index loops mirror ggml's C line for line, which keeps the port auditable.
#![allow(clippy::needless_range_loop)]

use bytemuck::{Pod, Zeroable};
use gguf_format::GgmlType;
use half::f16;

use super::f16::{fp16_to_fp32, fp32_to_fp16};
use super::k_helpers::{
    accumulate_scaled_lanes, get_scale_min_k4, make_qkx2_quants, nearest_int, pack_scale_min_k4,
    unpack_scales_mins_k4, QK_K,
};
use super::q8_k::BlockQ8_K;
use super::FormatKernels;

/// One Q4_K super-block (ggml's `block_q4_K`), 144 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_K {
    /// Super-block scale of the quantized scales.
    pub d: f16,
    /// Super-block scale of the quantized mins.
    pub dmin: f16,
    /// Eight 6-bit scales and eight 6-bit mins, packed (see `get_scale_min_k4`).
    pub scales: [u8; 12],
    /// 4-bit quants: byte `32·c + l` holds weight `64·c + l` (low nibble) and `64·c + 32 + l` (high).
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_K>() == 144);

/// Dequantizes `x` into `y` (`y.len() == 256·x.len()`), bit-exact to ggml's `dequantize_row_q4_K`.
pub fn dequantize_row_q4_k(x: &[BlockQ4_K], y: &mut [f32]) {
    assert_eq!(y.len(), x.len() * QK_K);
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = fp16_to_fp32(b.d);
        let min = fp16_to_fp32(b.dmin);
        for (c, (q, y)) in
            b.qs.chunks_exact(32)
                .zip(y.chunks_exact_mut(64))
                .enumerate()
        {
            let (sc, m) = get_scale_min_k4(2 * c, &b.scales);
            let d1 = d * sc as f32;
            let m1 = min * m as f32;
            let (sc, m) = get_scale_min_k4(2 * c + 1, &b.scales);
            let d2 = d * sc as f32;
            let m2 = min * m as f32;
            for l in 0..32 {
                y[l] = d1 * (q[l] & 0xF) as f32 - m1;
                y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

/// Quantizes `x` (`x.len() == 256·y.len()`) with ggml's `quantize_row_q4_K_ref`.
///
/// This is also what `llama-quantize` runs for Q4_K without an importance matrix.
pub fn quantize_row_q4_k_ref(x: &[f32], y: &mut [BlockQ4_K]) {
    assert_eq!(x.len(), y.len() * QK_K);
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 32];
    let mut weights = [0f32; 32];
    let mut mins = [0f32; QK_K / 32];
    let mut scales = [0f32; QK_K / 32];
    for (x, y) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut max_scale = 0.0f32;
        let mut max_min = 0.0f32;
        for j in 0..QK_K / 32 {
            let xs = &x[32 * j..32 * j + 32];
            let mut sum_x2 = 0.0f32;
            for &v in xs {
                sum_x2 += v * v;
            }
            let av_x = (sum_x2 / 32.0).sqrt();
            for (w, &v) in weights.iter_mut().zip(xs) {
                *w = av_x + v.abs();
            }
            scales[j] = make_qkx2_quants(
                15,
                xs,
                &weights,
                &mut l[32 * j..32 * j + 32],
                &mut mins[j],
                &mut laux,
                -1.0,
                0.1,
                20,
                false,
            );
            if scales[j] > max_scale {
                max_scale = scales[j];
            }
            if mins[j] > max_min {
                max_min = mins[j];
            }
        }
        let inv_scale = if max_scale > 0.0 {
            63.0 / max_scale
        } else {
            0.0
        };
        let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
        y.scales = [0; 12];
        for j in 0..QK_K / 32 {
            // ggml stores nearest_int's result in a uint8_t before clamping.
            let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
            let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
            pack_scale_min_k4(j, ls, lm, &mut y.scales);
        }
        y.d = fp32_to_fp16(max_scale / 63.0);
        y.dmin = fp32_to_fp16(max_min / 63.0);
        let d_all = fp16_to_fp32(y.d);
        let dmin_all = fp16_to_fp32(y.dmin);
        for j in 0..QK_K / 32 {
            let (sc, m) = get_scale_min_k4(j, &y.scales);
            let d = d_all * sc as f32;
            if d == 0.0 {
                continue;
            }
            let dm = dmin_all * m as f32;
            for ii in 0..32 {
                let q = nearest_int((x[32 * j + ii] + dm) / d);
                l[32 * j + ii] = q.clamp(0, 15) as u8;
            }
        }
        for (c, q) in y.qs.chunks_exact_mut(32).enumerate() {
            let j = 64 * c;
            for i in 0..32 {
                q[i] = l[j + i] | (l[j + i + 32] << 4);
            }
        }
    }
}

/// Dot product of Q4_K weights with Q8_K activations (ggml's `ggml_vec_dot_q4_K_q8_K_generic`).
pub fn vec_dot_q4_k_q8_k(x: &[BlockQ4_K], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sums = [0f32; 8];
    let mut sumf = 0.0f32;
    let mut aux8 = [0i8; QK_K];
    for (xb, yb) in x.iter().zip(y) {
        for (c, q4) in xb.qs.chunks_exact(32).enumerate() {
            for l in 0..32 {
                aux8[64 * c + l] = (q4[l] & 0xF) as i8;
                aux8[64 * c + 32 + l] = (q4[l] >> 4) as i8;
            }
        }
        let sm = unpack_scales_mins_k4(&xb.scales);
        let mut sumi = 0i32;
        for j in 0..QK_K / 16 {
            sumi += yb.bsums[j] as i32 * sm[8 + j / 2] as i32;
        }
        let d = fp16_to_fp32(xb.d) * yb.d;
        accumulate_scaled_lanes(&aux8, &yb.qs, 32, |j| sm[j] as i32, d, &mut sums);
        let dmin = fp16_to_fp32(xb.dmin) * yb.d;
        sumf -= dmin * sumi as f32;
    }
    for s in sums {
        sumf += s;
    }
    sumf
}

/// Q4_K's row of the kernel table.
pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::Q4_K,
    vec_dot_type: GgmlType::Q8_K,
    dequantize,
    quantize: Some(quantize),
    vec_dot,
};

fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::dequantize_bytes(src, dst, dequantize_row_q4_k);
}

fn quantize(src: &[f32], dst: &mut [u8]) {
    super::quantize_bytes(src, dst, quantize_row_q4_k_ref);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK_K;
    let (wsz, asz) = (size_of::<BlockQ4_K>(), size_of::<BlockQ8_K>());
    super::vec_dot_bytes(&w[..nb * wsz], &a[..nb * asz], vec_dot_q4_k_q8_k)
}
