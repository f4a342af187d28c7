//! IQ4_NL: 32-weight blocks of 4-bit indices into a fixed non-linear table.
//!
//! `x = d·K[q]` with `K` = [`KVALUES_IQ4NL`] (16 levels in `[−127, 113]`),
//! `q ∈ [0, 15]`: 4.5 bits per weight. Ported from ggml's `ggml-quants.c`
//! (`quantize_row_iq4_nl_impl`, `quantize_iq4_nl`, `quantize_row_iq4_nl_ref`,
//! `dequantize_row_iq4_nl`) and `ggml-cpu/quants.c`
//! (`ggml_vec_dot_iq4_nl_q8_0_generic`).

use bytemuck::{Pod, Zeroable};
use gguf_format::GgmlType;
use half::f16;

use super::f16::{fp16_to_fp32, fp32_to_fp16};
pub use super::k_helpers::KVALUES_IQ4NL;
use super::k_helpers::{best_index_int8, nearest_int, GROUP_MAX_EPS};
use super::q8_0::BlockQ8_0;
use super::FormatKernels;

/// Weights per IQ4_NL block (`QK4_NL`).
pub const QK4_NL: usize = 32;

/// One IQ4_NL block (ggml's `block_iq4_nl`), 18 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockIQ4_NL {
    /// Block scale.
    pub d: f16,
    /// Indices: byte `l` holds weight `l` (low nibble) and `l + 16` (high nibble).
    pub qs: [u8; QK4_NL / 2],
}

const _: () = assert!(std::mem::size_of::<BlockIQ4_NL>() == 18);

/// Dequantizes `x` into `y` (`y.len() == 32·x.len()`), bit-exact to ggml's `dequantize_row_iq4_nl`.
pub fn dequantize_row_iq4_nl(x: &[BlockIQ4_NL], y: &mut [f32]) {
    assert_eq!(y.len(), x.len() * QK4_NL);
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK4_NL)) {
        let d = fp16_to_fp32(b.d);
        for j in 0..QK4_NL / 2 {
            y[j] = d * KVALUES_IQ4NL[(b.qs[j] & 0xF) as usize] as f32;
            y[j + QK4_NL / 2] = d * KVALUES_IQ4NL[(b.qs[j] >> 4) as usize] as f32;
        }
    }
}

/// Where [`quantize_iq4_impl`] stores a super-block's 6-bit sub-block scales (IQ4_XS only).
pub(crate) struct SubScales<'a> {
    /// High 2 bits of each scale.
    pub(crate) high: &'a mut u16,
    /// Low 4 bits of each scale, two per byte.
    pub(crate) low: &'a mut [u8; 4],
}

/// ggml's `quantize_row_iq4_nl_impl` for 16 levels, 32-weight blocks and no
/// importance weights: quantizes one super-block of `x.len()` weights (32 for
/// IQ4_NL, 256 for IQ4_XS, which passes `sub` for its sub-block scales).
///
/// `ntry > 0` searches `2·ntry + 1` extra scales per block (what
/// `quantize_iq4_nl`/`quantize_iq4_xs` do); `ntry = -1` is the cheaper
/// `quantize_row_iq4_nl_ref`.
pub(crate) fn quantize_iq4_impl(
    x: &[f32],
    dh: &mut f16,
    q4: &mut [u8],
    sub: Option<SubScales<'_>>,
    ntry: i32,
) {
    const BLOCK: usize = 32;
    let values = &KVALUES_IQ4NL;
    let super_block_size = x.len();
    let n_blocks = super_block_size / BLOCK;
    debug_assert!(n_blocks <= 8 && q4.len() == super_block_size / 2);
    let mut scales = [0f32; 8];
    let mut weight = [0f32; BLOCK];
    let mut l = [0u8; 256];

    q4.fill(0);
    *dh = fp32_to_fp16(0.0);

    let mut max_scale = 0.0f32;
    let mut amax_scale = 0.0f32;
    for ib in 0..n_blocks {
        let xb = &x[ib * BLOCK..ib * BLOCK + BLOCK];
        let lb = &mut l[ib * BLOCK..ib * BLOCK + BLOCK];
        for (w, &v) in weight.iter_mut().zip(xb) {
            *w = v * v;
        }
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in xb {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax < GROUP_MAX_EPS {
            scales[ib] = 0.0;
            lb.fill(0);
            continue;
        }
        let v0 = values[0] as f32;
        let mut d = if ntry > 0 { -max / v0 } else { max / v0 };
        let mut id = 1.0 / d;
        let mut sumqx = 0.0f32;
        let mut sumq2 = 0.0f32;
        for j in 0..BLOCK {
            let al = id * xb[j];
            let idx = best_index_int8(values, al);
            lb[j] = idx as u8;
            let q = values[idx] as f32;
            let w = weight[j];
            sumqx += w * q * xb[j];
            sumq2 += w * q * q;
        }
        d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        let mut best = d * sumqx;
        for itry in -ntry..=ntry {
            id = (itry + values[0] as i32) as f32 / max;
            sumqx = 0.0;
            sumq2 = 0.0;
            for j in 0..BLOCK {
                let al = id * xb[j];
                let q = values[best_index_int8(values, al)] as f32;
                let w = weight[j];
                sumqx += w * q * xb[j];
                sumq2 += w * q * q;
            }
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        scales[ib] = d;
        let abs_d = d.abs();
        if abs_d > amax_scale {
            amax_scale = abs_d;
            max_scale = d;
        }
    }

    if let Some(sub) = sub.filter(|_| n_blocks > 1) {
        *sub.high = 0;
        let d = -max_scale / 32.0;
        *dh = fp32_to_fp16(d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for ib in 0..n_blocks {
            let q = nearest_int(id * scales[ib]).clamp(-32, 31);
            let dl = d * q as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            let xb = &x[ib * BLOCK..ib * BLOCK + BLOCK];
            for (lj, &v) in l[ib * BLOCK..ib * BLOCK + BLOCK].iter_mut().zip(xb) {
                *lj = best_index_int8(values, idl * v) as u8;
            }
            let q = (q + 32) as u8;
            let (l_l, l_h) = (q & 0xF, q >> 4);
            if ib % 2 == 0 {
                sub.low[ib / 2] = l_l;
            } else {
                sub.low[ib / 2] |= l_l << 4;
            }
            *sub.high |= (l_h as u16) << (2 * (ib % 8));
        }
    } else {
        *dh = fp32_to_fp16(scales[0]);
        if ntry > 0 {
            let id = if scales[0] != 0.0 {
                1.0 / scales[0]
            } else {
                0.0
            };
            for (lj, &v) in l[..super_block_size].iter_mut().zip(x) {
                *lj = best_index_int8(values, id * v) as u8;
            }
        }
    }

    for i in 0..super_block_size / 32 {
        for j in 0..16 {
            q4[16 * i + j] = l[32 * i + j] | (l[32 * i + 16 + j] << 4);
        }
    }
}

/// Quantizes `x` (`x.len() == 32·y.len()`) with ggml's `quantize_row_iq4_nl_ref`
/// (one scale guess per block, no search).
pub fn quantize_row_iq4_nl_ref(x: &[f32], y: &mut [BlockIQ4_NL]) {
    assert_eq!(x.len(), y.len() * QK4_NL);
    for (x, b) in x.chunks_exact(QK4_NL).zip(y.iter_mut()) {
        quantize_iq4_impl(x, &mut b.d, &mut b.qs, None, -1);
    }
}

/// Quantizes `x` (`x.len() == 32·y.len()`) as `llama-quantize` does without an
/// importance matrix: ggml's `quantize_iq4_nl` (scale search over 15 candidates).
pub fn quantize_iq4_nl(x: &[f32], y: &mut [BlockIQ4_NL]) {
    assert_eq!(x.len(), y.len() * QK4_NL);
    for (x, b) in x.chunks_exact(QK4_NL).zip(y.iter_mut()) {
        quantize_iq4_impl(x, &mut b.d, &mut b.qs, None, 7);
    }
}

/// Dot product of IQ4_NL weights with Q8_0 activations (ggml's `ggml_vec_dot_iq4_nl_q8_0_generic`).
pub fn vec_dot_iq4_nl_q8_0(x: &[BlockIQ4_NL], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let d = fp16_to_fp32(yb.d) * fp16_to_fp32(xb.d);
        let mut sumi1 = 0i32;
        let mut sumi2 = 0i32;
        for j in 0..QK4_NL / 2 {
            sumi1 += yb.qs[j] as i32 * KVALUES_IQ4NL[(xb.qs[j] & 0xF) as usize] as i32;
            sumi2 += yb.qs[j + QK4_NL / 2] as i32 * KVALUES_IQ4NL[(xb.qs[j] >> 4) as usize] as i32;
        }
        sumf += d * (sumi1 + sumi2) as f32;
    }
    sumf
}

/// IQ4_NL's row of the kernel table. Its quantizer is [`quantize_iq4_nl`],
/// the one `llama-quantize` uses, so that files made here match llama.cpp's.
pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::IQ4_NL,
    vec_dot_type: GgmlType::Q8_0,
    dequantize,
    quantize: Some(quantize),
    vec_dot,
};

fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::dequantize_bytes(src, dst, dequantize_row_iq4_nl);
}

fn quantize(src: &[f32], dst: &mut [u8]) {
    super::quantize_bytes(src, dst, quantize_iq4_nl);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK4_NL;
    let (wsz, asz) = (size_of::<BlockIQ4_NL>(), size_of::<BlockQ8_0>());
    super::vec_dot_bytes(&w[..nb * wsz], &a[..nb * asz], vec_dot_iq4_nl_q8_0)
}
