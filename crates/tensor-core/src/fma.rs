//! Compiling a kernel twice, with and without FMA instructions.

/// Runs `$body` compiled with FMA instructions when the CPU has them (so
/// `mul_add` is one instruction, not a libm call); same results either way.
macro_rules! with_fma {
    ($vis:vis $name:ident, fn($($arg:ident: $ty:ty),*) $body:block) => {
        with_fma!($vis $name, fn($($arg: $ty),*) -> () $body);
    };
    ($vis:vis $name:ident, fn($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        $vis fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn body($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "fma")]
                unsafe fn fma($($arg: $ty),*) -> $ret {
                    body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports FMA, the only feature `fma` enables.
                    return unsafe { fma($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

pub(crate) use with_fma;
