//! AArch64 kernels: NEON (ported from ggml's `ggml-cpu/arch/arm/quants.c`,
//! the path without the dot-product extension, whose integer results are
//! the same).
//!
//! The activation quantizers deliberately follow ggml's *x86* arithmetic
//! (`id = 127/amax`, round half to even) rather than ggml's ARM one
//! (`id = 1/d`): every machine then quantizes activations to the same bytes
//! as the portable twin and as the x86 machine that made the goldens.
//!
//! Kernels are safe `#[target_feature(enable = "neon")]` functions on typed
//! blocks; the byte-level wrappers handed out by [`vec_dot`] / [`from_float`]
//! call them in `unsafe` blocks, sound because those functions only hand a
//! wrapper out when [`Features::neon`] was detected at run time.

use std::arch::aarch64::*;

use gguf_format::GgmlType;
use half::f16;

use super::{Features, FromFloatFn, VecDotFn};
use crate::formats::{
    self, f16::fp16_to_fp32, q4_0::BlockQ4_0, q4_1::BlockQ4_1, q8_0::BlockQ8_0, q8_1::BlockQ8_1,
};

/// The native dot product for weights of `ty`, if there is one for `f`.
pub(super) fn vec_dot(ty: GgmlType, f: Features) -> Option<VecDotFn> {
    match ty {
        GgmlType::F32 if f.neon => Some(vec_dot_f32),
        GgmlType::Q4_0 if f.neon => Some(vec_dot_q4_0),
        GgmlType::Q4_1 if f.neon => Some(vec_dot_q4_1),
        GgmlType::Q8_0 if f.neon => Some(vec_dot_q8_0),
        _ => None,
    }
}

/// The native activation quantizer producing `ty`, if there is one for `f`.
pub(super) fn from_float(ty: GgmlType, f: Features) -> Option<FromFloatFn> {
    match ty {
        GgmlType::Q8_0 if f.neon => Some(from_float_q8_0),
        GgmlType::Q8_1 if f.neon => Some(from_float_q8_1),
        _ => None,
    }
}

// SAFETY (for every `unsafe` call in this section): these wrappers are only
// reachable through `vec_dot`/`from_float` above, which return them only when
// `Features::neon` was detected at run time.

fn vec_dot_f32(n: usize, w: &[u8], a: &[u8]) -> f32 {
    formats::vec_dot_bytes(&w[..n * 4], &a[..n * 4], |x: &[f32], y: &[f32]| {
        // SAFETY: see the section comment.
        unsafe { dot_f32_neon(x, y) }
    })
}

fn vec_dot_q4_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    formats::vec_dot_bytes(&w[..nb * 18], &a[..nb * 34], |x, y| {
        // SAFETY: see the section comment.
        unsafe { vec_dot_q4_0_q8_0_neon(x, y) }
    })
}

fn vec_dot_q4_1(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    formats::vec_dot_bytes(&w[..nb * 20], &a[..nb * 36], |x, y| {
        // SAFETY: see the section comment.
        unsafe { vec_dot_q4_1_q8_1_neon(x, y) }
    })
}

fn vec_dot_q8_0(n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = n / 32;
    formats::vec_dot_bytes(&w[..nb * 34], &a[..nb * 34], |x, y| {
        // SAFETY: see the section comment.
        unsafe { vec_dot_q8_0_q8_0_neon(x, y) }
    })
}

fn from_float_q8_0(src: &[f32], dst: &mut [u8]) {
    formats::quantize_bytes(src, dst, |x, y| {
        // SAFETY: see the section comment.
        unsafe { quantize_row_q8_0_neon(x, y) }
    })
}

fn from_float_q8_1(src: &[f32], dst: &mut [u8]) {
    formats::quantize_bytes(src, dst, |x, y| {
        // SAFETY: see the section comment.
        unsafe { quantize_row_q8_1_neon(x, y) }
    })
}

/// ggml's `ggml_vdotq_s32` without the dot-product extension: products of
/// 16 i8 pairs summed into 4 i32 lanes.
#[inline]
#[target_feature(enable = "neon")]
fn vdotq_s32_compat(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let p0 = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    let p1 = vmull_s8(vget_high_s8(a), vget_high_s8(b));
    vaddq_s32(acc, vaddq_s32(vpaddlq_s16(p0), vpaddlq_s16(p1)))
}

#[inline]
#[target_feature(enable = "neon")]
fn load_u8x16(p: &[u8; 16]) -> uint8x16_t {
    // SAFETY: 16 readable bytes.
    unsafe { vld1q_u8(p.as_ptr()) }
}

#[inline]
#[target_feature(enable = "neon")]
fn load_i8x32(p: &[i8; 32]) -> (int8x16_t, int8x16_t) {
    // SAFETY: 32 readable bytes.
    unsafe { (vld1q_s8(p.as_ptr()), vld1q_s8(p.as_ptr().add(16))) }
}

/// Port of ggml's `ggml_vec_dot_q4_0_q8_0`, NEON branch (one block a step).
#[target_feature(enable = "neon")]
pub fn vec_dot_q4_0_q8_0_neon(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len());
    let m4b = vdupq_n_u8(0x0F);
    let s8b = vdupq_n_s8(0x8);
    let mut sumv = vdupq_n_f32(0.0);
    for (x, y) in x.iter().zip(y) {
        let v0 = load_u8x16(&x.qs);
        let v0l = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v0, m4b)), s8b);
        let v0h = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(v0)), s8b);
        let (v1l, v1h) = load_i8x32(&y.qs);
        let p = vdotq_s32_compat(vdotq_s32_compat(vdupq_n_s32(0), v0l, v1l), v0h, v1h);
        sumv = vmlaq_n_f32(
            sumv,
            vcvtq_f32_s32(p),
            fp16_to_fp32(x.d) * fp16_to_fp32(y.d),
        );
    }
    vaddvq_f32(sumv)
}

/// Port of ggml's `ggml_vec_dot_q4_1_q8_1`, NEON branch (one block a step).
#[target_feature(enable = "neon")]
pub fn vec_dot_q4_1_q8_1_neon(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    assert_eq!(x.len(), y.len());
    let m4b = vdupq_n_u8(0x0F);
    let mut sumv = vdupq_n_f32(0.0);
    let mut summs = 0.0f32;
    for (x, y) in x.iter().zip(y) {
        summs += fp16_to_fp32(x.m) * fp16_to_fp32(y.s);
        let v0 = load_u8x16(&x.qs);
        let v0l = vreinterpretq_s8_u8(vandq_u8(v0, m4b));
        let v0h = vreinterpretq_s8_u8(vshrq_n_u8::<4>(v0));
        let (v1l, v1h) = load_i8x32(&y.qs);
        let p = vdotq_s32_compat(vdotq_s32_compat(vdupq_n_s32(0), v0l, v1l), v0h, v1h);
        sumv = vmlaq_n_f32(
            sumv,
            vcvtq_f32_s32(p),
            fp16_to_fp32(x.d) * fp16_to_fp32(y.d),
        );
    }
    vaddvq_f32(sumv) + summs
}

/// Port of ggml's `ggml_vec_dot_q8_0_q8_0`, NEON branch (one block a step).
#[target_feature(enable = "neon")]
pub fn vec_dot_q8_0_q8_0_neon(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    assert_eq!(x.len(), y.len());
    let mut sumv = vdupq_n_f32(0.0);
    for (x, y) in x.iter().zip(y) {
        let (x0, x1) = load_i8x32(&x.qs);
        let (y0, y1) = load_i8x32(&y.qs);
        let p = vdotq_s32_compat(vdotq_s32_compat(vdupq_n_s32(0), x0, y0), x1, y1);
        sumv = vmlaq_n_f32(
            sumv,
            vcvtq_f32_s32(p),
            fp16_to_fp32(x.d) * fp16_to_fp32(y.d),
        );
    }
    vaddvq_f32(sumv)
}

/// Port of ggml's `ggml_vec_dot_f32` (NEON: four 4-wide accumulators over
/// steps of 16, leftovers summed in f64).
#[target_feature(enable = "neon")]
pub fn dot_f32_neon(x: &[f32], y: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len());
    let n = x.len();
    let np = n & !15;
    let mut sum = [vdupq_n_f32(0.0); 4];
    for i in (0..np).step_by(16) {
        for (j, s) in sum.iter_mut().enumerate() {
            // SAFETY: i + 4j + 4 ≤ np ≤ n for both slices.
            let (ax, ay) = unsafe {
                (
                    vld1q_f32(x.as_ptr().add(i + 4 * j)),
                    vld1q_f32(y.as_ptr().add(i + 4 * j)),
                )
            };
            *s = vfmaq_f32(*s, ax, ay);
        }
    }
    let s = vaddq_f32(vaddq_f32(sum[0], sum[2]), vaddq_f32(sum[1], sum[3]));
    let mut sumf = f64::from(vaddvq_f32(s));
    for i in np..n {
        sumf += f64::from(x[i] * y[i]);
    }
    sumf as f32
}

/// max |x| of 32 floats and the 32 floats scaled by 127/max, rounded half
/// to even: the x86 arithmetic, see the module docs.
#[inline]
#[target_feature(enable = "neon")]
fn quantize_block_32(x: &[f32], qs: &mut [i8; 32]) -> (f32, i32) {
    assert!(x.len() >= 32);
    // SAFETY: 32 readable floats.
    let v: [float32x4_t; 8] = std::array::from_fn(|j| unsafe { vld1q_f32(x.as_ptr().add(4 * j)) });
    let mut m = vabsq_f32(v[0]);
    for v in &v[1..] {
        m = vmaxq_f32(m, vabsq_f32(*v));
    }
    let amax = vmaxvq_f32(m);
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = vdupq_n_s32(0);
    for (j, pair) in v.chunks_exact(2).enumerate() {
        let a = vcvtnq_s32_f32(vmulq_n_f32(pair[0], id));
        let b = vcvtnq_s32_f32(vmulq_n_f32(pair[1], id));
        sum = vaddq_s32(sum, vaddq_s32(a, b));
        let h = vcombine_s16(vqmovn_s32(a), vqmovn_s32(b));
        let q = vqmovn_s16(h);
        // SAFETY: 8 writable bytes at qs[8j..8j+8].
        unsafe { vst1_s8(qs.as_mut_ptr().add(8 * j), q) };
    }
    (amax, vaddvq_s32(sum))
}

/// Activation quantizer to Q8_0, byte-identical to the portable twin.
#[target_feature(enable = "neon")]
pub fn quantize_row_q8_0_neon(x: &[f32], y: &mut [BlockQ8_0]) {
    assert_eq!(y.len() * 32, x.len());
    for (x, b) in x.chunks_exact(32).zip(y.iter_mut()) {
        let (amax, _) = quantize_block_32(x, &mut b.qs);
        b.d = f16::from_f32(amax / 127.0);
    }
}

/// Activation quantizer to Q8_1, byte-identical to the portable twin.
#[target_feature(enable = "neon")]
pub fn quantize_row_q8_1_neon(x: &[f32], y: &mut [BlockQ8_1]) {
    assert_eq!(y.len() * 32, x.len());
    for (x, b) in x.chunks_exact(32).zip(y.iter_mut()) {
        let (amax, sum) = quantize_block_32(x, &mut b.qs);
        let d = amax / 127.0;
        b.d = f16::from_f32(d);
        b.s = f16::from_f32(d * sum as f32);
    }
}
