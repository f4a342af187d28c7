//! Q6_K: 256-weight super-blocks of 6-bit quants with 8-bit scales.
//!
//! `x = d·sc_j·(q − 32)` for sub-block `j` of 16 weights, `q ∈ [0, 63]`
//! (low 4 bits in `ql`, high 2 in `qh`), `sc_j ∈ [−128, 127]`: 6.5625 bits
//! per weight. Ported from ggml's `ggml-quants.c` (`quantize_row_q6_K_ref`,
//! `dequantize_row_q6_K`) and `ggml-cpu/quants.c`
//! (`ggml_vec_dot_q6_K_q8_K_generic`).

// Index loops mirror ggml's C line for line, which keeps the port auditable.
#![allow(clippy::needless_range_loop)]

use bytemuck::{Pod, Zeroable};
use gguf_format::GgmlType;
use half::f16;

use super::f16::{fp16_to_fp32, fp32_to_fp16};
use super::k_helpers::{accumulate_scaled_lanes, make_qx_quants, nearest_int, GROUP_MAX_EPS, QK_K};
use super::q8_k::BlockQ8_K;
use super::FormatKernels;

/// One Q6_K super-block (ggml's `block_q6_K`), 210 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ6_K {
    /// Low 4 bits: per 128 weights, byte `l` holds weights `l` / `l+64`, byte `32+l` weights `l+32` / `l+96`.
    pub ql: [u8; QK_K / 2],
    /// High 2 bits: per 128 weights, byte `l` holds those of weights `l`, `l+32`, `l+64`, `l+96`.
    pub qh: [u8; QK_K / 4],
    /// Sixteen 8-bit scales, one per 16 weights.
    pub scales: [i8; QK_K / 16],
    /// Super-block scale.
    pub d: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ6_K>() == 210);

/// Dequantizes `x` into `y` (`y.len() == 256·x.len()`), bit-exact to ggml's `dequantize_row_q6_K`.
pub fn dequantize_row_q6_k(x: &[BlockQ6_K], y: &mut [f32]) {
    assert_eq!(y.len(), x.len() * QK_K);
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = fp16_to_fp32(b.d);
        for (h, y) in y.chunks_exact_mut(128).enumerate() {
            let ql = &b.ql[64 * h..64 * h + 64];
            let qh = &b.qh[32 * h..32 * h + 32];
            let sc = &b.scales[8 * h..8 * h + 8];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                y[l] = d * sc[is] as f32 * q1 as f32;
                y[l + 32] = d * sc[is + 2] as f32 * q2 as f32;
                y[l + 64] = d * sc[is + 4] as f32 * q3 as f32;
                y[l + 96] = d * sc[is + 6] as f32 * q4 as f32;
            }
        }
    }
}

/// Quantizes `x` (`x.len() == 256·y.len()`) with ggml's `quantize_row_q6_K_ref`.
///
/// This is also what `llama-quantize` runs for Q6_K without an importance matrix.
pub fn quantize_row_q6_k_ref(x: &[f32], y: &mut [BlockQ6_K]) {
    assert_eq!(x.len(), y.len() * QK_K);
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    for (x, y) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let mut max_scale = 0.0f32;
        let mut max_abs_scale = 0.0f32;
        for ib in 0..QK_K / 16 {
            let scale = make_qx_quants(
                32,
                &x[16 * ib..16 * ib + 16],
                &mut l[16 * ib..16 * ib + 16],
                1,
                None,
            );
            scales[ib] = scale;
            let abs_scale = scale.abs();
            if abs_scale > max_abs_scale {
                max_abs_scale = abs_scale;
                max_scale = scale;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            *y = BlockQ6_K::zeroed();
            continue;
        }
        let iscale = -128.0f32 / max_scale;
        y.d = fp32_to_fp16(1.0 / iscale);
        for ib in 0..QK_K / 16 {
            y.scales[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
        }
        let d_all = fp16_to_fp32(y.d);
        for j in 0..QK_K / 16 {
            let d = d_all * y.scales[j] as f32;
            if d == 0.0 {
                continue;
            }
            for ii in 0..16 {
                let q = nearest_int(x[16 * j + ii] / d).clamp(-32, 31);
                l[16 * j + ii] = (q + 32) as i8;
            }
        }
        for h in 0..2 {
            let j = 128 * h;
            let ql = &mut y.ql[64 * h..64 * h + 64];
            for i in 0..32 {
                let q1 = l[j + i] as u8 & 0xF;
                let q2 = l[j + i + 32] as u8 & 0xF;
                let q3 = l[j + i + 64] as u8 & 0xF;
                let q4 = l[j + i + 96] as u8 & 0xF;
                ql[i] = q1 | (q3 << 4);
                ql[i + 32] = q2 | (q4 << 4);
            }
            let qh = &mut y.qh[32 * h..32 * h + 32];
            for i in 0..32 {
                qh[i] = (l[j + i] as u8 >> 4)
                    | ((l[j + i + 32] as u8 >> 4) << 2)
                    | ((l[j + i + 64] as u8 >> 4) << 4)
                    | ((l[j + i + 96] as u8 >> 4) << 6);
            }
        }
    }
}

/// Dot product of Q6_K weights with Q8_K activations (ggml's `ggml_vec_dot_q6_K_q8_K_generic`).
pub fn vec_dot_q6_k_q8_k(x: &[BlockQ6_K], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sums = [0f32; 8];
    let mut aux8 = [0i8; QK_K];
    for (xb, yb) in x.iter().zip(y) {
        for h in 0..2 {
            let q4 = &xb.ql[64 * h..64 * h + 64];
            let qh = &xb.qh[32 * h..32 * h + 32];
            let a = &mut aux8[128 * h..128 * h + 128];
            for l in 0..32 {
                a[l] = ((q4[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                a[l + 32] = ((q4[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                a[l + 64] = ((q4[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                a[l + 96] = ((q4[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            }
        }
        let d = fp16_to_fp32(xb.d) * yb.d;
        accumulate_scaled_lanes(&aux8, &yb.qs, 16, |j| xb.scales[j] as i32, d, &mut sums);
    }
    let mut sumf = 0.0f32;
    for s in sums {
        sumf += s;
    }
    sumf
}

/// Q6_K's row of the kernel table.
pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::Q6_K,
    vec_dot_type: GgmlType::Q8_K,
    dequantize,
    quantize: Some(quantize),
    vec_dot,
};

fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::dequantize_bytes(src, dst, dequantize_row_q6_k);
}

fn quantize(src: &[f32], dst: &mut [u8]) {
    super::quantize_bytes(src, dst, quantize_row_q6_k_ref);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK_K;
    let (wsz, asz) = (size_of::<BlockQ6_K>(), size_of::<BlockQ8_K>());
    super::vec_dot_bytes(&w[..nb * wsz], &a[..nb * asz], vec_dot_q6_k_q8_k)
}
