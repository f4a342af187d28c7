//! x86-64 kernels: AVX2 + FMA + F16C.
//!
//! Each kernel is an `unsafe fn` with `#[target_feature]`, wrapped by a safe
//! byte-level adapter that is only handed out by [`vec_dot`] / [`from_float`]
//! after the features were detected at run time.

use gguf_format::GgmlType;

use super::{Features, FromFloatFn, VecDotFn};

/// The native dot product for weights of `ty`, if there is one for `f`.
pub(super) fn vec_dot(ty: GgmlType, f: Features) -> Option<VecDotFn> {
    match ty {
        _ => super::x86_kquants::vec_dot(ty, f),
    }
}

/// The native activation quantizer producing `ty`, if there is one for `f`.
pub(super) fn from_float(ty: GgmlType, f: Features) -> Option<FromFloatFn> {
    match ty {
        _ => {
            let _ = f;
            None
        }
    }
}
