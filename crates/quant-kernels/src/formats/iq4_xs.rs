//! IQ4_XS: 256-weight super-blocks of IQ4_NL's non-linear 4-bit values with 6-bit scales.
//!
//! `x = d·(ls_j − 32)·K[q]` for sub-block `j` of 32 weights, `K` =
//! [`KVALUES_IQ4NL`], `ls_j ∈ [0, 63]`: 4.25 bits per weight. Ported from
//! ggml's `ggml-quants.c` (`quantize_iq4_xs`, `quantize_row_iq4_xs_ref`,
//! `dequantize_row_iq4_xs`) and `ggml-cpu/quants.c`
//! (`ggml_vec_dot_iq4_xs_q8_K_generic`).

use bytemuck::{Pod, Zeroable};
use gguf_format::GgmlType;
use half::f16;

use super::f16::fp16_to_fp32;
use super::iq4_nl::{quantize_iq4_impl, SubScales};
pub use super::k_helpers::KVALUES_IQ4NL;
use super::k_helpers::QK_K;
use super::q8_k::BlockQ8_K;
use super::FormatKernels;

/// One IQ4_XS super-block (ggml's `block_iq4_xs`), 136 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockIQ4_XS {
    /// Super-block scale.
    pub d: f16,
    /// High 2 bits of the eight sub-block scales (bits `2j..2j+2` for sub-block `j`).
    pub scales_h: u16,
    /// Low 4 bits of the eight sub-block scales, two per byte.
    pub scales_l: [u8; QK_K / 64],
    /// Indices: per 32 weights, byte `l` holds weight `l` (low nibble) and `l + 16` (high).
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockIQ4_XS>() == 136);

/// The 6-bit scale of sub-block `ib`, minus 32.
#[inline(always)]
fn sub_scale(b: &BlockIQ4_XS, ib: usize) -> i32 {
    let ls = ((b.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF) as i32
        | ((((b.scales_h >> (2 * ib)) & 3) as i32) << 4);
    ls - 32
}

/// Dequantizes `x` into `y` (`y.len() == 256·x.len()`), bit-exact to ggml's `dequantize_row_iq4_xs`.
pub fn dequantize_row_iq4_xs(x: &[BlockIQ4_XS], y: &mut [f32]) {
    assert_eq!(y.len(), x.len() * QK_K);
    for (b, y) in x.iter().zip(y.chunks_exact_mut(QK_K)) {
        let d = fp16_to_fp32(b.d);
        for (ib, (qs, y)) in
            b.qs.chunks_exact(16)
                .zip(y.chunks_exact_mut(32))
                .enumerate()
        {
            let dl = d * sub_scale(b, ib) as f32;
            for j in 0..16 {
                y[j] = dl * KVALUES_IQ4NL[(qs[j] & 0xF) as usize] as f32;
                y[j + 16] = dl * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as f32;
            }
        }
    }
}

/// Quantizes `x` (`x.len() == 256·y.len()`) with ggml's `quantize_row_iq4_xs_ref`,
/// which is `quantize_iq4_xs` without importance weights: also what
/// `llama-quantize` runs for IQ4_XS without an importance matrix.
pub fn quantize_row_iq4_xs_ref(x: &[f32], y: &mut [BlockIQ4_XS]) {
    assert_eq!(x.len(), y.len() * QK_K);
    for (x, b) in x.chunks_exact(QK_K).zip(y.iter_mut()) {
        let sub = SubScales {
            high: &mut b.scales_h,
            low: &mut b.scales_l,
        };
        quantize_iq4_impl(x, &mut b.d, &mut b.qs, Some(sub), 7);
    }
}

/// Dot product of IQ4_XS weights with Q8_K activations (ggml's `ggml_vec_dot_iq4_xs_q8_K_generic`).
pub fn vec_dot_iq4_xs_q8_k(x: &[BlockIQ4_XS], y: &[BlockQ8_K]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sumf = 0.0f32;
    for (xb, yb) in x.iter().zip(y) {
        let d4d8 = fp16_to_fp32(xb.d) * yb.d;
        for ib in 0..QK_K / 32 {
            let dl = d4d8 * sub_scale(xb, ib) as f32;
            let qs = &xb.qs[16 * ib..16 * ib + 16];
            let q8 = &yb.qs[32 * ib..32 * ib + 32];
            let mut sumi1 = 0i32;
            let mut sumi2 = 0i32;
            for j in 0..16 {
                sumi1 += q8[j] as i32 * KVALUES_IQ4NL[(qs[j] & 0xF) as usize] as i32;
                sumi2 += q8[j + 16] as i32 * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as i32;
            }
            sumf += dl * (sumi1 + sumi2) as f32;
        }
    }
    sumf
}

/// IQ4_XS's row of the kernel table.
pub(crate) const KERNELS: FormatKernels = FormatKernels {
    ty: GgmlType::IQ4_XS,
    vec_dot_type: GgmlType::Q8_K,
    dequantize,
    quantize: Some(quantize),
    vec_dot,
};

fn dequantize(src: &[u8], dst: &mut [f32]) {
    super::dequantize_bytes(src, dst, dequantize_row_iq4_xs);
}

fn quantize(src: &[f32], dst: &mut [u8]) {
    super::quantize_bytes(src, dst, quantize_row_iq4_xs_ref);
}

fn vec_dot(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / QK_K;
    let (wsz, asz) = (size_of::<BlockIQ4_XS>(), size_of::<BlockQ8_K>());
    super::vec_dot_bytes(&w[..nb * wsz], &a[..nb * asz], vec_dot_iq4_xs_q8_k)
}
