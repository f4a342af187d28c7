//! Kernels chosen once at run time from the CPU's features.
//!
//! [`vec_dot_for`] and [`from_float_for`] hand out function pointers from a
//! table built on first use: for each type, the architecture module
//! (`x86.rs`, `aarch64.rs`) is asked for a native kernel given the detected
//! [`Features`], and the portable kernel of [`crate::formats`] is used
//! otherwise. To add a native kernel for a format, add one row to the
//! `vec_dot` (or `from_float`) match of the architecture module.
//! [`q8_0_panel`] and [`q8_1_panel`] serve [`crate::matmul`]: one weight row
//! against activation rows interleaved four, eight or sixteen (lane-major
//! with AVX512-VNNI; widened to i16 with AVX2 for Q8_0 weights) ([`Q8_0x4`],
//! [`Q8_0x8`], [`Q8_0x16`], [`Q8_0x16w`], for the
//! formats whose activations are Q8_0) or eight ([`Q8_1x8`], for Q4_1 and
//! Q5_1) at a time, each weight block decoded once, bit-identical to single
//! calls.
//! [`rows_dot_for`] serves [`crate::matmul::matvec`]: several weight rows
//! against one activation row, bit-identical to the single products.
//! The features can be narrowed with `STRATA_CPU_DISABLE` ([`Features::from_env`]).
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
/// ggml's `hsum_float_8`: the eight lanes of an AVX register summed in the
/// order every ggml AVX2 kernel ends with (needs AVX2, FMA and F16C).
#[cfg(target_arch = "x86_64")]
pub use x86::hsum_float_8;
#[cfg(target_arch = "x86_64")]
mod x86_iquants;
#[cfg(target_arch = "x86_64")]
mod x86_kquants;
#[cfg(target_arch = "x86_64")]
mod x86_lowbit;
#[cfg(target_arch = "x86_64")]
mod x86_panel;
#[cfg(target_arch = "x86_64")]
mod x86_rows;

/// A fused dot product of `n` weights (bytes of a weight format) with `n`
/// activations (bytes of its `vec_dot_type`).
pub type VecDotFn = fn(n: usize, w: &[u8], a: &[u8]) -> f32;

/// Several weight rows times one activation row (a matrix-vector product's
/// inner loop): `w` holds `rows` rows one after another, each as many
/// blocks as the activation row `a` (bytes of the weight format's
/// `vec_dot_type`) has, and `out[i]` (`out.len() == rows`) is bit-identical
/// to [`VecDotFn`]'s product of row `i` with `a`.
pub type RowsDotFn = fn(w: &[u8], rows: usize, a: &[u8], out: &mut [f32]);

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
    /// x86 AVX-VNNI (`vpdpbusd` on 256-bit vectors, VEX-encoded), together with AVX2.
    pub avx_vnni: bool,
    /// x86 AVX512-VNNI with AVX512-VL (`vpdpbusd` on 256-bit vectors,
    /// EVEX-encoded: AMD Zen 4, Intel Ice Lake and later servers), together
    /// with AVX2.
    pub avx512_vnni: bool,
    /// AArch64 Advanced SIMD (always present on AArch64).
    pub neon: bool,
}

impl Features {
    /// The environment variable naming features to leave unused.
    pub const DISABLE_VAR: &'static str = "STRATA_CPU_DISABLE";

    /// [`Features::detect`], less the features named in `STRATA_CPU_DISABLE`
    /// (comma-separated: `avx2`, `avx512`, `avx_vnni`, `avx512_vnni`, `neon`) — for
    /// comparing kernels on one machine, or with a reference built for fewer
    /// instruction sets. What every crate's kernels are chosen by.
    pub fn from_env() -> Result<Features, String> {
        let f = Features::detect();
        match std::env::var(Self::DISABLE_VAR) {
            Ok(list) => f.without(&list),
            Err(_) => Ok(f),
        }
    }

    /// These features less those named in `list` (comma-separated; see
    /// [`Features::from_env`]). Turning `avx2` off turns `avx_vnni` and
    /// `avx512_vnni` off too, as their kernels also need AVX2; turning
    /// `avx512` off turns `avx512_vnni` off. An unknown name is an error.
    pub fn without(mut self, list: &str) -> Result<Features, String> {
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match name {
                "avx2" => {
                    self.avx2 = false;
                    self.avx_vnni = false;
                    self.avx512_vnni = false;
                }
                "avx512" => {
                    self.avx512 = false;
                    self.avx512_vnni = false;
                }
                "avx_vnni" => self.avx_vnni = false,
                "avx512_vnni" => self.avx512_vnni = false,
                "neon" => self.neon = false,
                other => {
                    return Err(format!(
                        "{}: unknown CPU feature `{other}` (known: avx2, avx512, avx_vnni, avx512_vnni, neon)",
                        Self::DISABLE_VAR
                    ))
                }
            }
        }
        Ok(self)
    }

    /// Detects the running CPU's features.
    pub fn detect() -> Features {
        #[cfg(target_arch = "x86_64")]
        {
            Features {
                avx2: is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c"),
                avx512: is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw"),
                avx_vnni: is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
                    && is_x86_feature_detected!("avxvnni"),
                avx512_vnni: is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
                    && is_x86_feature_detected!("avx512vl"),
                neon: false,
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            Features {
                avx2: false,
                avx512: false,
                avx_vnni: false,
                avx512_vnni: false,
                neon: std::arch::is_aarch64_feature_detected!("neon"),
            }
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            Features::default()
        }
    }
}

/// One more than the largest type id: the size of the tables below.
const N_TYPES: usize = {
    let mut n = 0;
    let mut i = 0;
    while i < GgmlType::ALL.len() {
        let end = GgmlType::ALL[i] as usize + 1;
        if end > n {
            n = end;
        }
        i += 1;
    }
    n
};

struct Dispatch {
    features: Features,
    vec_dot: [Option<VecDotFn>; N_TYPES],
    from_float: [Option<FromFloatFn>; N_TYPES],
    rows_dot: [Option<RowsDotFn>; N_TYPES],
    q8_0_panel: Option<Q8_0Panel>,
    q8_1_panel: Option<Q8_1Panel>,
}

static DISPATCH: OnceLock<Dispatch> = OnceLock::new();

fn dispatch() -> &'static Dispatch {
    DISPATCH.get_or_init(|| {
        let features = Features::from_env().unwrap_or_else(|e| {
            // A mistyped setting must not go unnoticed, nor stop a library
            // that runs fine without it: say so once, use every feature.
            eprintln!("warning: {e}; using every detected feature");
            Features::detect()
        });
        let mut vec_dot = [None; N_TYPES];
        let mut from_float = [None; N_TYPES];
        let mut rows_dot = [None; N_TYPES];
        for ty in GgmlType::ALL {
            rows_dot[ty.id() as usize] = native_rows_dot(ty, features);
            vec_dot[ty.id() as usize] =
                native_vec_dot(ty, features).or_else(|| portable_vec_dot(ty));
            from_float[ty.id() as usize] =
                native_from_float(ty, features).or_else(|| portable_from_float(ty));
        }
        Dispatch {
            features,
            vec_dot,
            from_float,
            rows_dot,
            q8_0_panel: q8_0_panel_for(features),
            q8_1_panel: q8_1_panel_for(features),
        }
    })
}

/// The features the kernels were chosen for: [`Features::from_env`]. Other
/// crates' kernels (tensor-core's) are chosen by these too.
pub fn features() -> Features {
    dispatch().features
}

/// The fastest dot product for weights of `ty` on this CPU, with
/// activations of `ty`'s `vec_dot_type`; `None` if `ty` is unsupported.
pub fn vec_dot_for(ty: GgmlType) -> Option<VecDotFn> {
    dispatch().vec_dot[ty.id() as usize]
}

/// The several-rows product ([`RowsDotFn`]) for weights of `ty` on this
/// CPU, where there is a native one (a matrix-vector product then calls it
/// instead of [`vec_dot_for`]'s kernel row by row).
pub fn rows_dot_for(ty: GgmlType) -> Option<RowsDotFn> {
    dispatch().rows_dot[ty.id() as usize]
}

/// The native several-rows product of `ty` for features `f`: for tests
/// that compare it with the single-row kernels.
pub fn native_rows_dot_for(ty: GgmlType, f: Features) -> Option<RowsDotFn> {
    native_rows_dot(ty, f)
}

#[cfg(target_arch = "x86_64")]
fn native_rows_dot(ty: GgmlType, f: Features) -> Option<RowsDotFn> {
    x86::rows_dot(ty, f)
}

#[cfg(not(target_arch = "x86_64"))]
fn native_rows_dot(_: GgmlType, _: Features) -> Option<RowsDotFn> {
    None
}

/// How far ahead of the weights it is reading a streaming product asks the
/// cache for more ([`prefetch`]), in bytes. Weights usually come from a
/// memory map of 4 KiB pages, where the hardware prefetcher stops at every
/// page boundary; 2 KiB ahead measured best for single-row products.
pub const PREFETCH_AHEAD: usize = 2048;

/// Asks the cache for the `len` bytes of `data` that lie
/// [`PREFETCH_AHEAD`] bytes past `start`, stopping at `end`: a single-row
/// product streams the weights once, and without this it waits on memory
/// at the start of every mapped page.
///
/// ```
/// let w = vec![0u8; 8192];
/// // While row 0 (1 KiB) is multiplied, ask for what follows 2 KiB on.
/// quant_kernels::simd::prefetch_ahead(&w, 0, 1024, w.len());
/// ```
#[inline(always)]
pub fn prefetch_ahead(data: &[u8], start: usize, len: usize, end: usize) {
    let from = start + PREFETCH_AHEAD;
    let to = (from + len).min(end);
    for at in (from..to).step_by(64) {
        prefetch(data.as_ptr().wrapping_add(at));
    }
}

/// Asks the cache for the line holding `p`: a hint that never faults,
/// whatever the address (so `p` may point past the end of the data).
#[inline(always)]
pub fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    prefetch_hint::<{ std::arch::x86_64::_MM_HINT_T0 }>(p);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// As [`prefetch`], into the L2 cache only (`PREFETCHT1`). A core has
/// more L2 misses in flight than L1 ones, so for a stream read from
/// memory this keeps more lines coming: a matrix-vector product over a
/// memory-mapped F16 matrix, tiles of 4 rows prefetching 2 tiles ahead,
/// read 22.5 GB/s on one Zen 4 core with `PREFETCHT1` against 16.7 with
/// `PREFETCHT0` (a plain sequential read: 23).
#[inline(always)]
pub fn prefetch_l2(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    prefetch_hint::<{ std::arch::x86_64::_MM_HINT_T1 }>(p);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// `PREFETCH` with hint `HINT` (`_MM_HINT_T0`, `_MM_HINT_T1`) for the line
/// holding `p`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_hint<const HINT: i32>(p: *const u8) {
    // SAFETY: PREFETCHh only hints the cache; it reads nothing into a
    // register and never faults, whatever the address.
    unsafe { std::arch::x86_64::_mm_prefetch::<HINT>(p as *const i8) };
}

/// Four Q8_0 activation rows interleaved block by block for a
/// [`Q8_0Panel`]: block `i` of each row side by side, the scales widened to
/// f32 and every row's 32 quants 32-byte aligned, so a product reads them
/// without f16 conversions or cache-line-splitting loads.
#[repr(C, align(32))]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Q8_0x4 {
    /// The four rows' block scales, as f32 (exact: they were f16).
    pub d: [f32; 4],
    /// Keeps `qs` 32-byte aligned.
    pad: [f32; 4],
    /// The four rows' quants, in the encoding of the panel's kernel
    /// ([`Q8_0Panel::pack`] says which).
    pub qs: [[u8; 32]; 4],
}

/// One weight row times a [`Q8_0x4`] panel: `out[c]` is bit-identical to
/// `vec_dot(n, w, a[c])` for the panel's four activation rows `a`.
pub type PanelDotFn = fn(w: &[u8], p: &[Q8_0x4]) -> [f32; 4];

/// Eight Q8_0 activation rows interleaved block by block for a
/// [`Q8_0Panel`]'s eight-row kernels: block `i` of each row side by side,
/// every row's 32 quants 32-byte aligned (rows `2j` and `2j + 1` 64 bytes
/// together, 64-byte aligned) and the scales widened to f32. A panel of
/// fewer than eight rows has zeros in the others ([`Q8_0Panel::pack8`]).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Q8_0x8 {
    /// The eight rows' quants, in the encoding of the panel's kernel
    /// ([`Q8_0Panel::pack8`] says which).
    pub qs: [[u8; 32]; 8],
    /// The eight rows' block scales, as f32 (exact: they were f16).
    pub d: [f32; 8],
}
const _: () = assert!(std::mem::size_of::<Q8_0x8>() == 320);

/// One weight row times a [`Q8_0x8`] panel: `out[c]` is bit-identical to
/// `vec_dot(n, w, a[c])` for the panel's eight activation rows `a`.
pub type Panel8x0DotFn = fn(w: &[u8], p: &[Q8_0x8]) -> [f32; 8];

/// Sixteen Q8_0 activation rows interleaved lane-major for a
/// [`Q8_0Panel`]'s sixteen-row kernels: `qs[l]` holds bytes `4l..4l + 4`
/// of each row's block, row after row (64 bytes, 64-byte aligned), and
/// the scales are widened to f32. A panel of fewer than sixteen rows has
/// zeros in the others ([`Q8_0Panel::pack16`]).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Q8_0x16 {
    /// The rows' quants, lane-major, in the encoding of the panel's kernel.
    pub qs: [[u8; 64]; 8],
    /// The sixteen rows' block scales, as f32 (exact: they were f16).
    pub d: [f32; 16],
}
const _: () = assert!(std::mem::size_of::<Q8_0x16>() == 576);

impl Default for Q8_0x16 {
    fn default() -> Self {
        Q8_0x16 {
            qs: [[0; 64]; 8],
            d: [0.0; 16],
        }
    }
}

/// Sixteen Q8_0 activation rows widened to i16 for a [`Q8_0Panel`]'s
/// sixteen-row AVX2 kernels, which multiply them with `vpmaddwd`: for rows
/// `8h..8h + 8` and lane `l` (quants `4l..4l + 4` of a block),
/// `qs[h][l][..16]` holds each row's quants `4l` and `4l + 1` in turn
/// (row `r` at `2r`, `2r + 1`) and `qs[h][l][16..]` its quants `4l + 2`
/// and `4l + 3`; the scales are widened to f32. A panel of fewer than
/// sixteen rows has zeros in the others ([`Q8_0Panel::pack16w`]).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Q8_0x16w {
    /// The rows' quants, pair-interleaved per lane (see above).
    pub qs: [[[i16; 32]; 8]; 2],
    /// The sixteen rows' block scales, as f32 (exact: they were f16).
    pub d: [f32; 16],
}
const _: () = assert!(std::mem::size_of::<Q8_0x16w>() == 1088);

impl Default for Q8_0x16w {
    fn default() -> Self {
        Q8_0x16w {
            qs: [[[0; 32]; 8]; 2],
            d: [0.0; 16],
        }
    }
}

/// Packs up to sixteen Q8_0 activation rows into sixteen-row panel blocks
/// (`P`: [`Q8_0x16`] or [`Q8_0x16w`]).
pub type Pack16Fn<P = Q8_0x16> = fn(a: &[&[u8]], out: &mut [P]);

/// `rows` weight rows (one after another in `w`) times one or more
/// sixteen-row panels (`P`: [`Q8_0x16`] or [`Q8_0x16w`]; `p`: each a row's
/// blocks long, one after another): `out[i·panels + g][c]` is
/// bit-identical to `vec_dot(n, w_i, a_g[c])` for panel `g`'s sixteen
/// activation rows `a_g`.
pub type Panel16x0DotFn<P = Q8_0x16> = fn(w: &[u8], rows: usize, p: &[P], out: &mut [[f32; 16]]);

/// The matrix-product kernels over [`Q8_0x4`] panels, for the weight formats
/// whose activations are Q8_0 and whose ggml kernel is one FMA per block
/// (Q8_0, Q5_0, Q4_0): what [`crate::matmul`] uses for them.
#[derive(Clone, Copy, Debug)]
pub struct Q8_0Panel {
    /// Packs four Q8_0 activation rows (`nb` blocks of 34 bytes each) into
    /// `nb` panel blocks (`out.len() == nb`). The quants are stored as they
    /// are, or biased by 128 for a kernel whose instruction wants them
    /// unsigned (AVX-VNNI).
    pub pack: fn(a: [&[u8]; 4], out: &mut [Q8_0x4]),
    /// Packs up to eight Q8_0 activation rows (`nb` blocks of 34 bytes
    /// each) into `nb` [`Q8_0x8`] blocks, the quants encoded as
    /// [`Q8_0Panel::pack`] encodes them; the rows past `a.len()` are zeros
    /// (scale zero), whose products are zeros.
    pub pack8: fn(a: &[&[u8]], out: &mut [Q8_0x8]),
    /// Which instruction set: `"avx2"`, `"avx-vnni"` or `"avx512-vnni"`.
    pub isa: &'static str,
    q8_0: PanelDotFn,
    q5_0: PanelDotFn,
    q4_0: PanelDotFn,
    q8_0x8: Panel8x0DotFn,
    q5_0x8: Panel8x0DotFn,
    q4_0x8: Panel8x0DotFn,
    /// Packs up to sixteen Q8_0 activation rows into [`Q8_0x16`] blocks
    /// for [`Q8_0Panel::dot16_for`]'s kernels, where the instruction set
    /// has them; the rows past `a.len()` are zeros.
    pub pack16: Option<Pack16Fn>,
    /// Sixteen-row kernels (Q8_0, Q5_0, Q4_0), where the instruction set has them.
    x16: [Option<Panel16x0DotFn>; 3],
    /// Packs up to sixteen Q8_0 activation rows widened to i16
    /// ([`Q8_0x16w`]) for [`Q8_0Panel::dot16w_for`]'s kernels, where the
    /// instruction set has them; the rows past `a.len()` are zeros.
    pub pack16w: Option<Pack16Fn<Q8_0x16w>>,
    /// Sixteen-row kernels over widened panels (Q8_0, Q5_0, Q4_0), where
    /// the instruction set has them.
    x16w: [Option<Panel16x0DotFn<Q8_0x16w>>; 3],
}

impl Q8_0Panel {
    /// The product of weights of `ty` (`nb` blocks per row) with panels
    /// from this [`Q8_0Panel::pack`]; `None` for other formats.
    pub fn dot_for(&self, ty: GgmlType) -> Option<PanelDotFn> {
        match ty {
            GgmlType::Q8_0 => Some(self.q8_0),
            GgmlType::Q5_0 => Some(self.q5_0),
            GgmlType::Q4_0 => Some(self.q4_0),
            _ => None,
        }
    }

    /// The product of weights of `ty` with [`Q8_0x8`] panels from this
    /// [`Q8_0Panel::pack8`]; `None` for other formats.
    pub fn dot8_for(&self, ty: GgmlType) -> Option<Panel8x0DotFn> {
        match ty {
            GgmlType::Q8_0 => Some(self.q8_0x8),
            GgmlType::Q5_0 => Some(self.q5_0x8),
            GgmlType::Q4_0 => Some(self.q4_0x8),
            _ => None,
        }
    }

    /// The product of weights of `ty` with [`Q8_0x16`] panels from
    /// [`Q8_0Panel::pack16`], where the instruction set has one.
    pub fn dot16_for(&self, ty: GgmlType) -> Option<Panel16x0DotFn> {
        let [q8_0, q5_0, q4_0] = self.x16;
        match ty {
            GgmlType::Q8_0 => q8_0,
            GgmlType::Q5_0 => q5_0,
            GgmlType::Q4_0 => q4_0,
            _ => None,
        }
    }

    /// The product of weights of `ty` with [`Q8_0x16w`] panels from
    /// [`Q8_0Panel::pack16w`], where the instruction set has one.
    pub fn dot16w_for(&self, ty: GgmlType) -> Option<Panel16x0DotFn<Q8_0x16w>> {
        let [q8_0, q5_0, q4_0] = self.x16w;
        match ty {
            GgmlType::Q8_0 => q8_0,
            GgmlType::Q5_0 => q5_0,
            GgmlType::Q4_0 => q4_0,
            _ => None,
        }
    }
}

/// The fastest [`Q8_0Panel`] for this CPU, if it has one.
pub fn q8_0_panel() -> Option<Q8_0Panel> {
    dispatch().q8_0_panel
}

/// The [`Q8_0Panel`] chosen for features `f` (for tests that compare every
/// variant with the single products).
pub fn q8_0_panel_for(f: Features) -> Option<Q8_0Panel> {
    #[cfg(target_arch = "x86_64")]
    {
        use x86_panel::{Q4_0, Q5_0, Q8_0};
        // SAFETY (every closure): the kernels need exactly the features
        // checked by their guard.
        // AVX512-VNNI first: where a CPU has both (Sapphire Rapids), its
        // 512-bit kernels and the sixteen-row panels took SmolLM2 Q8_0
        // pp128 from 575 to 991 t/s, Q4_K_M from 546 to 965 (two threads,
        // `STRATA_CPU_DISABLE=avx_vnni` against none, interleaved).
        if f.avx512_vnni {
            return Some(Q8_0Panel {
                pack: x86_panel::pack_vnni,
                pack8: |a, out| pack_q8_0(a, out, 0x80),
                isa: "avx512-vnni",
                q8_0: |w, p| unsafe { x86_panel::dot_panel_vnni512::<Q8_0>(w, p) },
                q5_0: |w, p| unsafe { x86_panel::dot_panel_vnni512::<Q5_0>(w, p) },
                q4_0: |w, p| unsafe { x86_panel::dot_panel_vnni512::<Q4_0>(w, p) },
                q8_0x8: |w, p| unsafe { x86_panel::dot_q8_0x8_vnni512::<Q8_0>(w, p) },
                q5_0x8: |w, p| unsafe { x86_panel::dot_q8_0x8_vnni512::<Q5_0>(w, p) },
                q4_0x8: |w, p| unsafe { x86_panel::dot_q8_0x8_vnni512::<Q4_0>(w, p) },
                pack16: Some(|a, out| pack_q8_0(a, out, 0x80)),
                x16: [
                    Some(|w, r, p, o| unsafe {
                        x86_panel::dot_q8_0x16_vnni512::<Q8_0>(w, r, p, o)
                    }),
                    Some(|w, r, p, o| unsafe {
                        x86_panel::dot_q8_0x16_vnni512::<Q5_0>(w, r, p, o)
                    }),
                    Some(|w, r, p, o| unsafe {
                        x86_panel::dot_q8_0x16_vnni512::<Q4_0>(w, r, p, o)
                    }),
                ],
                pack16w: None,
                x16w: [None; 3],
            });
        }
        if f.avx_vnni {
            return Some(Q8_0Panel {
                pack: x86_panel::pack_vnni,
                pack8: |a, out| pack_q8_0(a, out, 0x80),
                isa: "avx-vnni",
                q8_0: |w, p| unsafe { x86_panel::dot_panel_vnni::<Q8_0>(w, p) },
                q5_0: |w, p| unsafe { x86_panel::dot_panel_vnni::<Q5_0>(w, p) },
                q4_0: |w, p| unsafe { x86_panel::dot_panel_vnni::<Q4_0>(w, p) },
                q8_0x8: |w, p| unsafe { x86_panel::dot_q8_0x8_vnni::<Q8_0>(w, p) },
                q5_0x8: |w, p| unsafe { x86_panel::dot_q8_0x8_vnni::<Q5_0>(w, p) },
                q4_0x8: |w, p| unsafe { x86_panel::dot_q8_0x8_vnni::<Q4_0>(w, p) },
                pack16: None,
                x16: [None; 3],
                pack16w: None,
                x16w: [None; 3],
            });
        }
        if f.avx2 {
            return Some(Q8_0Panel {
                pack: x86_panel::pack_avx2,
                pack8: |a, out| pack_q8_0(a, out, 0),
                isa: "avx2",
                q8_0: |w, p| unsafe { x86_panel::dot_panel_avx2::<Q8_0>(w, p) },
                q5_0: |w, p| unsafe { x86_panel::dot_panel_avx2::<Q5_0>(w, p) },
                q4_0: |w, p| unsafe { x86_panel::dot_panel_avx2::<Q4_0>(w, p) },
                q8_0x8: |w, p| unsafe { x86_panel::dot_q8_0x8_avx2::<Q8_0>(w, p) },
                q5_0x8: |w, p| unsafe { x86_panel::dot_q8_0x8_avx2::<Q5_0>(w, p) },
                q4_0x8: |w, p| unsafe { x86_panel::dot_q8_0x8_avx2::<Q4_0>(w, p) },
                pack16: None,
                x16: [None; 3],
                pack16w: Some(|a, out| pack_q8_0(a, out, 0)),
                x16w: [
                    Some(|w, r, p, o| unsafe { x86_panel::dot_q8_0x16w_avx2::<Q8_0>(w, r, p, o) }),
                    None,
                    None,
                ],
            });
        }
    }
    let _ = f;
    None
}

/// Eight Q8_1 activation rows interleaved block by block for a
/// [`Q8_1Panel`] (the activations of Q4_1 and Q5_1 weights): block `i` of
/// each row side by side, the scales `d` and sums `s` widened to f32 (exact:
/// they were f16) and every row's 32 quants 32-byte aligned (rows `2j` and
/// `2j + 1` 64 bytes together, 64-byte aligned). A panel of fewer than
/// eight rows has zeros in the others ([`pack_q8_1x8`]).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Q8_1x8 {
    /// The eight rows' block scales.
    pub d: [f32; 8],
    /// The eight rows' block sums (`d·Σq`, as Q8_1 stores them).
    pub s: [f32; 8],
    /// The eight rows' quants, as they are.
    pub qs: [[u8; 32]; 8],
}
const _: () = assert!(std::mem::size_of::<Q8_1x8>() == 320);

/// One weight row times a [`Q8_1x8`] panel: `out[c]` is bit-identical to
/// `vec_dot(n, w, a[c])` for the panel's eight activation rows `a`.
pub type Panel8DotFn = fn(w: &[u8], p: &[Q8_1x8]) -> [f32; 8];

/// The matrix-product kernels over [`Q8_1x8`] panels, for the weight
/// formats whose activations are Q8_1 (Q4_1, Q5_1): what [`crate::matmul`]
/// uses for them. Per output the operations are ggml's AVX2
/// `ggml_vec_dot_q{4,5}_1_q8_1` — per block eight 32-bit sums of four byte
/// products converted to f32, one FMA with `d_w·d_a`, the f32 sum of
/// `m_w·s_a` beside; `hsum_float_8` plus that sum at the end — so results
/// are bit-identical; each weight block is decoded once for eight rows.
#[derive(Clone, Copy, Debug)]
pub struct Q8_1Panel {
    /// Which instruction set: `"avx2"`, `"avx-vnni"` or `"avx512-vnni"`.
    pub isa: &'static str,
    q4_1: Panel8DotFn,
    q5_1: Panel8DotFn,
}

impl Q8_1Panel {
    /// The product of weights of `ty` with [`Q8_1x8`] panels; `None` for
    /// formats other than Q4_1 and Q5_1.
    pub fn dot_for(&self, ty: GgmlType) -> Option<Panel8DotFn> {
        match ty {
            GgmlType::Q4_1 => Some(self.q4_1),
            GgmlType::Q5_1 => Some(self.q5_1),
            _ => None,
        }
    }
}

/// The fastest [`Q8_1Panel`] for this CPU, if it has one.
pub fn q8_1_panel() -> Option<Q8_1Panel> {
    dispatch().q8_1_panel
}

/// The [`Q8_1Panel`] chosen for features `f` (for tests that compare every
/// variant with the single products).
pub fn q8_1_panel_for(f: Features) -> Option<Q8_1Panel> {
    #[cfg(target_arch = "x86_64")]
    {
        use x86_panel::{Q4_1, Q5_1};
        // SAFETY (every closure): the kernels need exactly the features
        // checked by their guard.
        // AVX512-VNNI first, as for the Q8_0 panels.
        if f.avx512_vnni {
            return Some(Q8_1Panel {
                isa: "avx512-vnni",
                q4_1: |w, p| unsafe { x86_panel::dot_q8_1x8_vnni512::<Q4_1>(w, p) },
                q5_1: |w, p| unsafe { x86_panel::dot_q8_1x8_vnni512::<Q5_1>(w, p) },
            });
        }
        if f.avx_vnni {
            return Some(Q8_1Panel {
                isa: "avx-vnni",
                q4_1: |w, p| unsafe { x86_panel::dot_q8_1x8_vnni::<Q4_1>(w, p) },
                q5_1: |w, p| unsafe { x86_panel::dot_q8_1x8_vnni::<Q5_1>(w, p) },
            });
        }
        if f.avx2 {
            return Some(Q8_1Panel {
                isa: "avx2",
                q4_1: |w, p| unsafe { x86_panel::dot_q8_1x8_avx2::<Q4_1>(w, p) },
                q5_1: |w, p| unsafe { x86_panel::dot_q8_1x8_avx2::<Q5_1>(w, p) },
            });
        }
    }
    let _ = f;
    None
}

/// Interleaves up to eight Q8_1 activation rows (`out.len()` blocks of 36
/// bytes each) into `out`; the rows past `a.len()` are zeros, whose
/// products are zeros.
pub fn pack_q8_1x8(a: &[&[u8]], out: &mut [Q8_1x8]) {
    const BLOCK: usize = 36;
    assert!(a.len() <= 8, "Q8_1 panel: {} rows, at most 8", a.len());
    let f32_of = |lo: u8, hi: u8| half::f16::from_bits(u16::from_le_bytes([lo, hi])).to_f32();
    for (c, a) in a.iter().enumerate() {
        assert_eq!(
            a.len(),
            out.len() * BLOCK,
            "Q8_1 panel: row {c} is not {} blocks",
            out.len()
        );
        for (p, blk) in out.iter_mut().zip(a.chunks_exact(BLOCK)) {
            p.d[c] = f32_of(blk[0], blk[1]);
            p.s[c] = f32_of(blk[2], blk[3]);
            p.qs[c].copy_from_slice(&blk[4..]);
        }
    }
    for p in out.iter_mut() {
        for c in a.len()..8 {
            p.d[c] = 0.0;
            p.s[c] = 0.0;
            p.qs[c] = [0; 32];
        }
    }
}

/// A block of a Q8_0 activation panel ([`Q8_0x4`], [`Q8_0x8`],
/// [`Q8_0x16`]): where one row's scale and quants go.
trait Q8_0PanelBlock {
    /// Activation rows a panel holds.
    const ROWS: usize;
    /// Row `c`'s block: its scale and its 32 quants, XORed with `bias`.
    fn put(&mut self, c: usize, d: f32, qs: &[u8], bias: u8);
    /// Row `c` as zeros with scale zero (a panel of fewer rows).
    fn clear(&mut self, c: usize);
}

/// The row-major panels ([`Q8_0x4`], [`Q8_0x8`]): row `c`'s quants in
/// `qs[c]`, as they are (XORed with the bias).
macro_rules! row_major_panel {
    ($panel:ty, $rows:literal) => {
        impl Q8_0PanelBlock for $panel {
            const ROWS: usize = $rows;
            fn put(&mut self, c: usize, d: f32, qs: &[u8], bias: u8) {
                self.d[c] = d;
                for (q, &b) in self.qs[c].iter_mut().zip(qs) {
                    *q = b ^ bias;
                }
            }
            fn clear(&mut self, c: usize) {
                self.d[c] = 0.0;
                self.qs[c] = [0; 32];
            }
        }
    };
}
row_major_panel!(Q8_0x4, 4);
row_major_panel!(Q8_0x8, 8);

impl Q8_0PanelBlock for Q8_0x16 {
    const ROWS: usize = 16;
    /// Lane-major: bytes `4l..4l + 4` of the row's quants into `qs[l]`.
    fn put(&mut self, c: usize, d: f32, qs: &[u8], bias: u8) {
        self.d[c] = d;
        for (l, q) in qs.chunks_exact(4).enumerate() {
            for (t, &b) in q.iter().enumerate() {
                self.qs[l][4 * c + t] = b ^ bias;
            }
        }
    }
    fn clear(&mut self, c: usize) {
        self.d[c] = 0.0;
        for l in 0..8 {
            self.qs[l][4 * c..4 * c + 4].fill(0);
        }
    }
}

impl Q8_0PanelBlock for Q8_0x16w {
    const ROWS: usize = 16;
    /// Widened, pair-interleaved: quants `4l + t` of row `c = 8h + r` at
    /// `qs[h][l][16·(t / 2) + 2r + t % 2]`. The quants are stored as they
    /// are (`bias` must be 0: the kernels multiply signed words).
    fn put(&mut self, c: usize, d: f32, qs: &[u8], bias: u8) {
        assert_eq!(bias, 0, "Q8_0x16w holds the quants as they are");
        self.d[c] = d;
        let (h, r) = (c / 8, c % 8);
        for (l, q) in qs.chunks_exact(4).enumerate() {
            for (t, &b) in q.iter().enumerate() {
                self.qs[h][l][16 * (t / 2) + 2 * r + t % 2] = i16::from(b as i8);
            }
        }
    }
    fn clear(&mut self, c: usize) {
        self.d[c] = 0.0;
        let (h, r) = (c / 8, c % 8);
        for l in 0..8 {
            for t in 0..4 {
                self.qs[h][l][16 * (t / 2) + 2 * r + t % 2] = 0;
            }
        }
    }
}

/// Interleaves up to `P::ROWS` Q8_0 rows (`out.len()` blocks of 34 bytes
/// each) into `out`, quants XORed with `bias`; the rows past `a.len()` are
/// zeros with scale zero, whose products are zeros.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn pack_q8_0<P: Q8_0PanelBlock>(a: &[&[u8]], out: &mut [P], bias: u8) {
    const BLOCK: usize = 34;
    assert!(
        a.len() <= P::ROWS,
        "Q8_0 panel: {} rows, at most {}",
        a.len(),
        P::ROWS
    );
    for (c, a) in a.iter().enumerate() {
        assert_eq!(
            a.len(),
            out.len() * BLOCK,
            "Q8_0 panel: row {c} is not {} blocks",
            out.len()
        );
        for (p, blk) in out.iter_mut().zip(a.chunks_exact(BLOCK)) {
            let d = half::f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32();
            p.put(c, d, &blk[2..], bias);
        }
    }
    for p in out.iter_mut() {
        for c in a.len()..P::ROWS {
            p.clear(c);
        }
    }
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
