//! Kernels chosen once at run time from the CPU's features.
//!
//! [`vec_dot_for`] and [`from_float_for`] hand out function pointers from a
//! table built on first use: for each type, the architecture module
//! (`x86.rs`, `aarch64.rs`) is asked for a native kernel given the detected
//! [`Features`], and the portable kernel of [`crate::formats`] is used
//! otherwise. To add a native kernel for a format, add one row to the
//! `vec_dot` (or `vec_dot_x4`, `from_float`) match of the architecture
//! module. [`vec_dot_x4_for`] serves [`crate::matmul`]: one weight row
//! against four activation rows, bit-identical to four single calls.
//!
//! Every native kernel has its portable twin as test oracle: activation
//! quantizers must give identical bytes, dot products agree to rounding.

use std::sync::OnceLock;

use gguf_format::GgmlType;

use crate::formats::{self, bf16, q8_0, q8_1, q8_k};

#[cfg(target_arch = "aarch64")]
mod aarch64;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_iquants;
#[cfg(target_arch = "x86_64")]
mod x86_kquants;

/// A fused dot product of `n` weights (bytes of a weight format) with `n`
/// activations (bytes of its `vec_dot_type`).
pub type VecDotFn = fn(n: usize, w: &[u8], a: &[u8]) -> f32;

/// Dot products of one weight row with four activation rows:
/// `out[k]` is bit-identical to `vec_dot(n, w, a[k])`, but each weight block
/// is unpacked once for all four (what makes [`crate::matmul`] compute-bound).
pub type VecDotX4Fn = fn(n: usize, w: &[u8], a: [&[u8]; 4]) -> [f32; 4];

/// Activation quantization of an f32 row into bytes of an activation format
/// (ggml's `from_float`); `dst` holds exactly the row's bytes.
pub type FromFloatFn = fn(src: &[f32], dst: &mut [u8]);

/// The CPU features the dispatcher found (all false on other architectures).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// x86 AVX2 together with FMA and F16C.
    pub avx2: bool,
    /// x86 AVX-512 F and BW.
    pub avx512: bool,
    /// AArch64 Advanced SIMD (always present on AArch64).
    pub neon: bool,
}

impl Features {
    /// Detects the running CPU's features.
    pub fn detect() -> Features {
        #[cfg(target_arch = "x86_64")]
        {
            Features {
                avx2: is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c"),
                avx512: is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw"),
                neon: false,
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            Features {
                avx2: false,
                avx512: false,
                neon: std::arch::is_aarch64_feature_detected!("neon"),
            }
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            Features::default()
        }
    }
}

/// Type ids run from 0 to 39.
const N_TYPES: usize = 40;

struct Dispatch {
    features: Features,
    vec_dot: [Option<VecDotFn>; N_TYPES],
    vec_dot_x4: [Option<VecDotX4Fn>; N_TYPES],
    from_float: [Option<FromFloatFn>; N_TYPES],
}

static DISPATCH: OnceLock<Dispatch> = OnceLock::new();

fn dispatch() -> &'static Dispatch {
    DISPATCH.get_or_init(|| {
        let features = Features::detect();
        let mut vec_dot = [None; N_TYPES];
        let mut from_float = [None; N_TYPES];
        let mut vec_dot_x4 = [None; N_TYPES];
        for ty in GgmlType::ALL {
            vec_dot[ty.id() as usize] =
                native_vec_dot(ty, features).or_else(|| portable_vec_dot(ty));
            vec_dot_x4[ty.id() as usize] = native_vec_dot_x4(ty, features);
            from_float[ty.id() as usize] =
                native_from_float(ty, features).or_else(|| portable_from_float(ty));
        }
        Dispatch {
            features,
            vec_dot,
            vec_dot_x4,
            from_float,
        }
    })
}

/// The features the kernels were chosen for.
pub fn features() -> Features {
    dispatch().features
}

/// The fastest dot product for weights of `ty` on this CPU, with
/// activations of `ty`'s `vec_dot_type`; `None` if `ty` is unsupported.
pub fn vec_dot_for(ty: GgmlType) -> Option<VecDotFn> {
    dispatch().vec_dot[ty.id() as usize]
}

/// A four-column dot product for weights of `ty` on this CPU, if there is
/// a native one (matmul falls back to four [`vec_dot_for`] calls).
pub fn vec_dot_x4_for(ty: GgmlType) -> Option<VecDotX4Fn> {
    dispatch().vec_dot_x4[ty.id() as usize]
}

/// The fastest activation quantizer producing `ty` (an activation format:
/// Q8_0, Q8_1, Q8_K, F16, BF16, F32) on this CPU, byte-identical to the
/// portable one; `None` if `ty` is not an activation format.
pub fn from_float_for(ty: GgmlType) -> Option<FromFloatFn> {
    dispatch().from_float[ty.id() as usize]
}

/// The portable dot product of `ty` (its [`formats::FormatKernels`] row).
pub fn portable_vec_dot(ty: GgmlType) -> Option<VecDotFn> {
    formats::kernels(ty).map(|k| k.vec_dot)
}

/// The portable activation quantizer producing `ty`: what ggml's CPU
/// backend uses as `from_float` for that type on x86.
pub fn portable_from_float(ty: GgmlType) -> Option<FromFloatFn> {
    match ty {
        GgmlType::F32 => Some(from_float_f32),
        GgmlType::F16 => Some(from_float_f16),
        GgmlType::BF16 => Some(from_float_bf16),
        GgmlType::Q8_0 => Some(from_float_q8_0),
        GgmlType::Q8_1 => Some(from_float_q8_1),
        GgmlType::Q8_K => Some(from_float_q8_k),
        _ => None,
    }
}

fn from_float_f32(src: &[f32], dst: &mut [u8]) {
    dst.copy_from_slice(bytemuck::cast_slice(src));
}

/// ggml's CPU `from_float` for F16 converts with F16C (`ggml_cpu_fp32_to_fp16`),
/// which `half::f16::from_f32` reproduces bit for bit, NaN payloads included;
/// the reference row conversion differs only for NaN.
fn from_float_f16(src: &[f32], dst: &mut [u8]) {
    fn convert(x: &[f32], y: &mut [half::f16]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = half::f16::from_f32(x);
        }
    }
    formats::quantize_bytes(src, dst, convert);
}

fn from_float_bf16(src: &[f32], dst: &mut [u8]) {
    formats::quantize_bytes(src, dst, bf16::quantize_row_bf16_ref);
}

fn from_float_q8_0(src: &[f32], dst: &mut [u8]) {
    formats::quantize_bytes(src, dst, q8_0::quantize_row_q8_0);
}

fn from_float_q8_1(src: &[f32], dst: &mut [u8]) {
    formats::quantize_bytes(src, dst, q8_1::quantize_row_q8_1);
}

fn from_float_q8_k(src: &[f32], dst: &mut [u8]) {
    formats::quantize_bytes(src, dst, q8_k::quantize_row_q8_k_ref);
}

#[cfg(target_arch = "x86_64")]
fn native_vec_dot(ty: GgmlType, f: Features) -> Option<VecDotFn> {
    x86::vec_dot(ty, f)
}

#[cfg(target_arch = "x86_64")]
fn native_vec_dot_x4(ty: GgmlType, f: Features) -> Option<VecDotX4Fn> {
    x86::vec_dot_x4(ty, f)
}

#[cfg(not(target_arch = "x86_64"))]
fn native_vec_dot_x4(_: GgmlType, _: Features) -> Option<VecDotX4Fn> {
    None
}

#[cfg(target_arch = "x86_64")]
fn native_from_float(ty: GgmlType, f: Features) -> Option<FromFloatFn> {
    x86::from_float(ty, f)
}

#[cfg(target_arch = "aarch64")]
fn native_vec_dot(ty: GgmlType, f: Features) -> Option<VecDotFn> {
    aarch64::vec_dot(ty, f)
}

#[cfg(target_arch = "aarch64")]
fn native_from_float(ty: GgmlType, f: Features) -> Option<FromFloatFn> {
    aarch64::from_float(ty, f)
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn native_vec_dot(_: GgmlType, _: Features) -> Option<VecDotFn> {
    None
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn native_from_float(_: GgmlType, _: Features) -> Option<FromFloatFn> {
    None
}

/// The native kernel of `ty` for features `f`, without the portable
/// fallback: for tests that compare every native kernel with its twin.
pub fn native_vec_dot_for(ty: GgmlType, f: Features) -> Option<VecDotFn> {
    native_vec_dot(ty, f)
}

/// The native activation quantizer of `ty` for features `f`, without the
/// portable fallback: for tests.
pub fn native_from_float_for(ty: GgmlType, f: Features) -> Option<FromFloatFn> {
    native_from_float(ty, f)
}
