//! Every block format, described once: one file per format and one row per
//! format in [`kernels`].
//!
//! Each `formats/<fmt>.rs` holds the `#[repr(C)]` block struct with its size
//! asserted at compile time, the reference codecs ported from ggml
//! (`dequantize_row_<fmt>`, `quantize_row_<fmt>_ref`), the portable fused dot
//! product (`vec_dot_<fmt>_<act>`), and a `KERNELS` constant that adapts them
//! to raw bytes. Adding a format means adding one file and one row below.

use std::cell::RefCell;

use bytemuck::Pod;
use gguf_format::GgmlType;

use crate::QuantError;

pub mod bf16;
pub mod f16;
pub mod f32;
pub mod q4_0;
pub mod q4_1;
pub mod q5_0;
pub mod q5_1;
pub mod q8_0;
pub mod q8_1;
pub mod q8_k;

pub mod iq4_nl;
pub mod iq4_xs;
pub(crate) mod k_helpers;
pub mod q2_k;
pub mod q3_k;
pub mod q4_k;
pub mod q5_k;
pub mod q6_k;

pub mod iq1_m;
pub mod iq1_s;
pub mod iq2_s;
pub mod iq2_xs;
pub mod iq2_xxs;
pub mod iq3_s;
pub mod iq3_xxs;
pub(crate) mod iq_grids;
pub mod mxfp4;
pub mod nvfp4;
pub mod q1_0;
pub mod q2_0;
pub mod tq1_0;
pub mod tq2_0;

/// A byte-level reference quantizer: `src.len()` floats into `dst`, which
/// holds exactly their blocks.
pub type QuantizeFn = fn(src: &[f32], dst: &mut [u8]);

/// Kernels of one block format (ggml's type_traits row).
pub struct FormatKernels {
    /// The format these kernels implement.
    pub ty: GgmlType,
    /// Activation format this weight format's dot product pairs with (Q8_0, Q8_1, Q8_K, F32, F16, BF16).
    pub vec_dot_type: GgmlType,
    /// Reference dequantization of whole blocks: src.len() == n/block_size*type_size bytes, dst.len() == n.
    pub dequantize: fn(src: &[u8], dst: &mut [f32]),
    /// Reference quantization (ggml's quantize_row_*_ref), if the format has one.
    pub quantize: Option<QuantizeFn>,
    /// Portable fused dot product of n weights (bytes of ty) with n activations (bytes of vec_dot_type).
    pub vec_dot: fn(n: usize, w: &[u8], a: &[u8]) -> f32,
}

/// The kernels of `ty`, or `None` when this crate does not support it.
pub fn kernels(ty: GgmlType) -> Option<&'static FormatKernels> {
    match ty {
        GgmlType::F32 => Some(&f32::KERNELS),
        GgmlType::F16 => Some(&f16::KERNELS),
        GgmlType::BF16 => Some(&bf16::KERNELS),
        GgmlType::Q4_0 => Some(&q4_0::KERNELS),
        GgmlType::Q4_1 => Some(&q4_1::KERNELS),
        GgmlType::Q5_0 => Some(&q5_0::KERNELS),
        GgmlType::Q5_1 => Some(&q5_1::KERNELS),
        GgmlType::Q8_0 => Some(&q8_0::KERNELS),
        GgmlType::Q8_1 => Some(&q8_1::KERNELS),
        GgmlType::Q8_K => Some(&q8_k::KERNELS),
        GgmlType::Q2_K => Some(&q2_k::KERNELS),
        GgmlType::Q3_K => Some(&q3_k::KERNELS),
        GgmlType::Q4_K => Some(&q4_k::KERNELS),
        GgmlType::Q5_K => Some(&q5_k::KERNELS),
        GgmlType::Q6_K => Some(&q6_k::KERNELS),
        GgmlType::IQ4_NL => Some(&iq4_nl::KERNELS),
        GgmlType::IQ4_XS => Some(&iq4_xs::KERNELS),
        GgmlType::IQ2_XXS => Some(&iq2_xxs::KERNELS),
        GgmlType::IQ2_XS => Some(&iq2_xs::KERNELS),
        GgmlType::IQ2_S => Some(&iq2_s::KERNELS),
        GgmlType::IQ3_XXS => Some(&iq3_xxs::KERNELS),
        GgmlType::IQ3_S => Some(&iq3_s::KERNELS),
        GgmlType::IQ1_S => Some(&iq1_s::KERNELS),
        GgmlType::IQ1_M => Some(&iq1_m::KERNELS),
        GgmlType::TQ1_0 => Some(&tq1_0::KERNELS),
        GgmlType::TQ2_0 => Some(&tq2_0::KERNELS),
        GgmlType::MXFP4 => Some(&mxfp4::KERNELS),
        GgmlType::NVFP4 => Some(&nvfp4::KERNELS),
        GgmlType::Q1_0 => Some(&q1_0::KERNELS),
        GgmlType::Q2_0 => Some(&q2_0::KERNELS),
        _ => None,
    }
}

/// Whether this crate can dequantize `ty` and multiply with it.
pub fn is_supported(ty: GgmlType) -> bool {
    kernels(ty).is_some()
}

/// Bytes taken by a row of `n` elements of `ty`, or `None` when `n` is not a
/// whole number of blocks or the size overflows.
pub fn row_bytes(ty: GgmlType, n: usize) -> Option<usize> {
    let bs = ty.block_size();
    if !n.is_multiple_of(bs) {
        return None;
    }
    (n / bs).checked_mul(ty.type_size())
}

/// Checks that `bytes` holds exactly `n` elements of `ty`.
fn check_len(ty: GgmlType, what: &'static str, n: usize, bytes: usize) -> Result<(), QuantError> {
    let block_size = ty.block_size();
    let expected = row_bytes(ty, n).ok_or(QuantError::PartialBlock { ty, n, block_size })?;
    if bytes != expected {
        return Err(QuantError::BadLength {
            ty,
            what,
            n,
            expected,
            actual: bytes,
        });
    }
    Ok(())
}

/// Dequantizes `dst.len()` elements of `ty` from `src` with ggml's reference
/// algorithm (bit-exact to ggml's `dequantize_row_<fmt>`).
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    let k = kernels(ty).ok_or(QuantError::UnsupportedType(ty))?;
    check_len(ty, "source", dst.len(), src.len())?;
    (k.dequantize)(src, dst);
    Ok(())
}

/// Quantizes `src` to `ty` with ggml's reference quantizer
/// (`quantize_row_<fmt>_ref`), writing `dst`.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    let quantize = kernels(ty)
        .and_then(|k| k.quantize)
        .ok_or(QuantError::UnsupportedType(ty))?;
    check_len(ty, "destination", src.len(), dst.len())?;
    quantize(src, dst);
    Ok(())
}

// ---------------------------------------------------------------------------
// Byte adapters. Tensor data arrives as bytes borrowed from a memory map;
// GGUF aligns tensors to 32 bytes, so the cast almost always succeeds in
// place. A 1-aligned slice is legal in principle, so instead of panicking the
// blocks are copied into a per-thread buffer aligned to 8 (enough for every
// block type: the widest field is Q8_K's f32) that grows once and is reused.
// ---------------------------------------------------------------------------

thread_local! {
    static UNALIGNED: [RefCell<Vec<u64>>; 2] = const { [RefCell::new(Vec::new()), RefCell::new(Vec::new())] };
}

/// Calls `f` with `bytes` viewed as blocks of type `B`, copying them into an
/// aligned per-thread buffer (slot 0 or 1) only when `bytes` is misaligned.
///
/// Panics when `bytes.len()` is not a multiple of the block size: callers
/// pass checked shapes.
pub(crate) fn with_blocks<B: Pod, R>(bytes: &[u8], slot: usize, f: impl FnOnce(&[B]) -> R) -> R {
    let size = std::mem::size_of::<B>();
    assert!(
        bytes.len().is_multiple_of(size),
        "{} bytes is not a whole number of {size}-byte blocks",
        bytes.len()
    );
    if let Ok(blocks) = bytemuck::try_cast_slice::<u8, B>(bytes) {
        return f(blocks);
    }
    debug_assert!(std::mem::align_of::<B>() <= 8);
    UNALIGNED.with(|bufs| {
        // A nested call on the same slot (not done by this crate) would find
        // the buffer borrowed; it then gets its own temporary buffer.
        let mut own = Vec::new();
        let mut guard = bufs[slot].try_borrow_mut();
        let buf: &mut Vec<u64> = match guard.as_deref_mut() {
            Ok(b) => b,
            Err(_) => &mut own,
        };
        buf.clear();
        buf.resize(bytes.len().div_ceil(8), 0);
        let dst = &mut bytemuck::cast_slice_mut::<u64, u8>(buf)[..bytes.len()];
        dst.copy_from_slice(bytes);
        f(bytemuck::cast_slice::<u8, B>(dst))
    })
}

/// Calls `f` with `bytes` viewed mutably as blocks of type `B`; a misaligned
/// destination is written through an aligned per-thread buffer.
pub(crate) fn with_blocks_mut<B: Pod, R>(
    bytes: &mut [u8],
    slot: usize,
    f: impl FnOnce(&mut [B]) -> R,
) -> R {
    let size = std::mem::size_of::<B>();
    assert!(
        bytes.len().is_multiple_of(size),
        "{} bytes is not a whole number of {size}-byte blocks",
        bytes.len()
    );
    if let Ok(blocks) = bytemuck::try_cast_slice_mut::<u8, B>(bytes) {
        return f(blocks);
    }
    UNALIGNED.with(|bufs| {
        let mut own = Vec::new();
        let mut guard = bufs[slot].try_borrow_mut();
        let buf: &mut Vec<u64> = match guard.as_deref_mut() {
            Ok(b) => b,
            Err(_) => &mut own,
        };
        buf.clear();
        buf.resize(bytes.len().div_ceil(8), 0);
        let tmp = &mut bytemuck::cast_slice_mut::<u64, u8>(buf)[..bytes.len()];
        let r = f(bytemuck::cast_slice_mut::<u8, B>(tmp));
        bytes.copy_from_slice(tmp);
        r
    })
}

/// Adapts a typed dequantizer to bytes.
pub(crate) fn dequantize_bytes<B: Pod>(src: &[u8], dst: &mut [f32], f: fn(&[B], &mut [f32])) {
    with_blocks(src, 0, |blocks| f(blocks, dst))
}

/// Adapts a typed quantizer to bytes.
pub(crate) fn quantize_bytes<B: Pod>(src: &[f32], dst: &mut [u8], f: fn(&[f32], &mut [B])) {
    with_blocks_mut(dst, 0, |blocks| f(src, blocks))
}

/// Adapts a typed dot product to bytes.
pub(crate) fn vec_dot_bytes<W: Pod, A: Pod>(w: &[u8], a: &[u8], f: fn(&[W], &[A]) -> f32) -> f32 {
    with_blocks(w, 0, |w| with_blocks(a, 1, |a| f(w, a)))
}
