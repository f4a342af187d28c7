//! The WGSL shaders, their binding layouts, and the cache key of each
//! specialised pipeline.

use gguf_format::GgmlType;

/// A WGSL source file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shader {
    /// `quant.wgsl`: matvec, matmul, get_rows over raw block bytes.
    Quant,
    /// `norm.wgsl`: RMSNorm.
    Norm,
    /// `rope.wgsl`: rotary embedding.
    Rope,
    /// `attention.wgsl` with `attn_wg.wgsl`: causal GQA attention over the
    /// KV cache.
    Attention,
    /// `attention.wgsl` with `attn_sg.wgsl`: its exchanges and reductions
    /// through 32-wide subgroups (as [`Shader::QuantSg`]).
    AttentionSg,
    /// `norm.wgsl` with `act_sg.wgsl`: reductions through 32-wide subgroups.
    NormSg,
    /// `elementwise.wgsl` with `act_sg.wgsl`.
    ElementwiseSg,
    /// `act_quant.wgsl` with `act_sg.wgsl`.
    ActQuantSg,
    /// `elementwise.wgsl`: add, SwiGLU, argmax.
    Elementwise,
    /// `act_quant.wgsl`: activation rounding to Q8_0/Q8_1/Q8_K.
    ActQuant,
    /// `quant.wgsl` and `quant_sg.wgsl` (subgroup operations): the exact
    /// products of single tokens with 32-wide subgroups (only compiled on devices
    /// that have them, [`crate::DeviceCaps::subgroup32`]).
    QuantSg,
    /// `quant_tg.wgsl`: the exact products of a single token with Q4_K and
    /// Q6_K matrices through 16-byte loads, with 32-wide subgroups (as
    /// [`Shader::QuantSg`]).
    QuantTg,
    /// `quant_tg.wgsl` and `tg_rope.wgsl`: a single token's Q4_K query/key
    /// (/value) projection with RoPE and the KV-cache writes in its epilogue
    /// (as [`Shader::QuantTg`]).
    QuantTgRope,
    /// `quant_tg.wgsl` and `tg_q8.wgsl`: a single token's Q8_0 product
    /// through 16-byte loads (as [`Shader::QuantTg`]).
    QuantTgQ8,
    /// `quant_tg.wgsl` and `tg_fused.wgsl` with `tg_emu.wgsl`: the fast
    /// mode's single-token Q4_K, Q5_K and Q6_K products, each workgroup
    /// rounding the activations (a norm, SwiGLU or GeGLU made as they are
    /// read) into workgroup memory, the lane exchanges of the 32-wide
    /// kernels through workgroup memory (any device).
    QuantTgFused,
    /// The same with `tg_sg.wgsl`: the exchanges through 32-wide subgroups
    /// (as [`Shader::QuantTg`]).
    QuantTgFusedSg,
    /// `scale.wgsl`: GEGLU, scaling, soft-capping, per-row scaling.
    Scale,
    /// `quant.wgsl` and `fast.wgsl`: the fast mode's single-token product
    /// over float activations, a norm or SwiGLU made as they are read.
    QuantFast,
    /// `attn_fast.wgsl`: the fast mode's single-token attention (f32,
    /// online softmax).
    AttentionFast,
    /// `attn_flash.wgsl`: the fast mode's attention for a batch (tiles of
    /// queries and keys, online softmax; binds as [`Shader::Attention`]).
    AttentionFlash,
    /// `fast_wide.wgsl`: the fast mode's single-token product through
    /// 16-byte loads (Q4_K, Q5_K, F16, Q8_0), prologues as
    /// [`Shader::QuantFast`].
    QuantWide,
    /// `fast_wide.wgsl` with `wide_sg.wgsl`: its reduction through 32-wide
    /// subgroups (as [`Shader::QuantSg`]).
    QuantWideSg,
    /// `quant.wgsl` and `mm_fast.wgsl`: the fast mode's product of a batch
    /// over float activations (`mm_fast`, portable).
    MmFast,
    /// `coop_enable.wgsl`, `quant.wgsl` and `mm_coop.wgsl`: the same through
    /// cooperative matrices (`mm_coop`; only compiled on devices that offer
    /// them, [`crate::DeviceCaps::coop_f16_16`]).
    MmCoop,
    /// `quant.wgsl` and `moe.wgsl`: the fast mode's mixture-of-experts
    /// block (router, routing, the chosen experts' products, their sum).
    Moe,
}

/// Every shader, for the naga validation test.
pub const ALL_SHADERS: [Shader; 25] = [
    Shader::Quant,
    Shader::Norm,
    Shader::Rope,
    Shader::Attention,
    Shader::AttentionSg,
    Shader::NormSg,
    Shader::ElementwiseSg,
    Shader::ActQuantSg,
    Shader::Elementwise,
    Shader::ActQuant,
    Shader::QuantSg,
    Shader::QuantTg,
    Shader::QuantTgRope,
    Shader::QuantTgQ8,
    Shader::QuantTgFused,
    Shader::QuantTgFusedSg,
    Shader::Scale,
    Shader::QuantFast,
    Shader::AttentionFast,
    Shader::AttentionFlash,
    Shader::QuantWide,
    Shader::QuantWideSg,
    Shader::MmFast,
    Shader::MmCoop,
    Shader::Moe,
];

/// The type of one binding slot.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Bind {
    /// `var<storage, read>`.
    Read,
    /// `var<storage, read_write>`.
    ReadWrite,
    /// `var<uniform>`.
    Uniform,
}

impl Bind {
    pub(crate) fn binding_type(self) -> wgpu::BindingType {
        match self {
            Bind::Read | Bind::ReadWrite => wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage {
                    read_only: matches!(self, Bind::Read),
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            Bind::Uniform => wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
        }
    }
}

impl Shader {
    /// The variant of this shader a device compiles: where its subgroups are
    /// 32 wide, the one whose reductions and exchanges go through them.
    pub(crate) fn for_device(self, subgroup32: bool) -> Shader {
        match (self, subgroup32) {
            (Shader::Attention, true) => Shader::AttentionSg,
            (Shader::Norm, true) => Shader::NormSg,
            (Shader::Elementwise, true) => Shader::ElementwiseSg,
            (Shader::ActQuant, true) => Shader::ActQuantSg,
            (Shader::QuantWide, true) => Shader::QuantWideSg,
            (Shader::QuantTgFused, true) => Shader::QuantTgFusedSg,
            (s, _) => s,
        }
    }

    /// The shader whose bind-group layout this one shares (its variants
    /// bind what it binds).
    pub(crate) fn layout_base(self) -> Shader {
        match self {
            Shader::QuantSg
            | Shader::QuantTg
            | Shader::QuantTgQ8
            | Shader::QuantTgFused
            | Shader::QuantTgFusedSg
            | Shader::QuantFast
            | Shader::QuantWide
            | Shader::QuantWideSg
            | Shader::Moe => Shader::Quant,
            Shader::MmCoop => Shader::MmFast,
            Shader::AttentionSg | Shader::AttentionFlash => Shader::Attention,
            Shader::NormSg => Shader::Norm,
            Shader::ElementwiseSg => Shader::Elementwise,
            Shader::ActQuantSg => Shader::ActQuant,
            s => s,
        }
    }

    /// The WGSL source: `fma.wgsl` first, then where activations are
    /// rounded `act_wg.wgsl` or `act_sg.wgsl` (the lane exchanges) and
    /// `act_common.wgsl`, where RoPE is applied `rope_common.wgsl`, then
    /// the file itself (attention: then `attn_wg.wgsl` or `attn_sg.wgsl`).
    pub fn source(self) -> &'static str {
        macro_rules! with_fma {
            ($($f:literal),*) => {
                concat!(include_str!("shaders/fma.wgsl"), $(include_str!(concat!("shaders/", $f))),*)
            };
        }
        match self {
            Shader::Quant => with_fma!("quant_io.wgsl", "quant.wgsl", "x_plain.wgsl"),
            Shader::QuantFast => with_fma!("quant_io.wgsl", "quant.wgsl", "fast.wgsl"),
            Shader::Moe => with_fma!("quant_io.wgsl", "quant.wgsl", "moe.wgsl"),
            Shader::MmFast => with_fma!(
                "quant_io.wgsl",
                "quant.wgsl",
                "x_plain.wgsl",
                "mm_fast.wgsl",
                "mm_split.wgsl"
            ),
            // Enable directives come first.
            Shader::MmCoop => concat!(
                include_str!("shaders/coop_enable.wgsl"),
                include_str!("shaders/fma.wgsl"),
                include_str!("shaders/quant_io.wgsl"),
                include_str!("shaders/quant.wgsl"),
                include_str!("shaders/x_plain.wgsl"),
                include_str!("shaders/mm_coop.wgsl"),
                include_str!("shaders/mm_split.wgsl")
            ),
            Shader::AttentionFast => with_fma!("rope_common.wgsl", "attn_fast.wgsl"),
            Shader::AttentionFlash => with_fma!("attn_flash.wgsl"),
            Shader::QuantWide => with_fma!("quant_io.wgsl", "fast_wide.wgsl", "wide_wg.wgsl"),
            Shader::QuantWideSg => with_fma!("quant_io.wgsl", "fast_wide.wgsl", "wide_sg.wgsl"),
            Shader::Norm => with_fma!("act_wg.wgsl", "act_common.wgsl", "norm.wgsl"),
            Shader::NormSg => with_fma!("act_sg.wgsl", "act_common.wgsl", "norm.wgsl"),
            Shader::Rope => with_fma!("rope_common.wgsl", "rope.wgsl"),
            Shader::Attention => with_fma!("attention.wgsl", "attn_wg.wgsl"),
            Shader::AttentionSg => with_fma!("attention.wgsl", "attn_sg.wgsl"),
            Shader::Elementwise => with_fma!("act_wg.wgsl", "act_common.wgsl", "elementwise.wgsl"),
            Shader::ElementwiseSg => {
                with_fma!("act_sg.wgsl", "act_common.wgsl", "elementwise.wgsl")
            }
            Shader::ActQuant => with_fma!("act_wg.wgsl", "act_common.wgsl", "act_quant.wgsl"),
            Shader::ActQuantSg => with_fma!("act_sg.wgsl", "act_common.wgsl", "act_quant.wgsl"),
            Shader::QuantSg => {
                with_fma!(
                    "quant_io.wgsl",
                    "quant.wgsl",
                    "x_plain.wgsl",
                    "quant_sg.wgsl"
                )
            }
            Shader::QuantTg => with_fma!(
                "quant_io.wgsl",
                "tg_sg.wgsl",
                "quant_tg.wgsl",
                "tg_x.wgsl",
                "tg_exact.wgsl"
            ),
            Shader::QuantTgRope => with_fma!(
                "quant_io.wgsl",
                "tg_sg.wgsl",
                "quant_tg.wgsl",
                "tg_x.wgsl",
                "rope_common.wgsl",
                "tg_rope.wgsl"
            ),
            Shader::QuantTgQ8 => with_fma!(
                "quant_io.wgsl",
                "tg_sg.wgsl",
                "quant_tg.wgsl",
                "tg_x.wgsl",
                "tg_q8.wgsl"
            ),
            Shader::QuantTgFused => with_fma!(
                "quant_io.wgsl",
                "tg_emu.wgsl",
                "quant_tg.wgsl",
                "tg_fused.wgsl"
            ),
            Shader::QuantTgFusedSg => with_fma!(
                "quant_io.wgsl",
                "tg_sg.wgsl",
                "quant_tg.wgsl",
                "tg_fused.wgsl"
            ),
            Shader::Scale => with_fma!("scale.wgsl"),
        }
    }

    /// File name, used as a label.
    pub fn name(self) -> &'static str {
        match self {
            Shader::Quant => "quant.wgsl",
            Shader::Norm => "norm.wgsl",
            Shader::Rope => "rope.wgsl",
            Shader::Attention => "attention.wgsl",
            Shader::AttentionSg => "attention.wgsl+attn_sg.wgsl",
            Shader::NormSg => "norm.wgsl+act_sg.wgsl",
            Shader::ElementwiseSg => "elementwise.wgsl+act_sg.wgsl",
            Shader::ActQuantSg => "act_quant.wgsl+act_sg.wgsl",
            Shader::Elementwise => "elementwise.wgsl",
            Shader::ActQuant => "act_quant.wgsl",
            Shader::QuantSg => "quant_sg.wgsl",
            Shader::QuantTg => "quant_tg.wgsl",
            Shader::QuantTgRope => "quant_tg.wgsl+tg_rope.wgsl",
            Shader::QuantTgQ8 => "quant_tg.wgsl+tg_q8.wgsl",
            Shader::QuantTgFused => "quant_tg.wgsl+tg_fused.wgsl",
            Shader::QuantTgFusedSg => "quant_tg.wgsl+tg_fused.wgsl+tg_sg.wgsl",
            Shader::Scale => "scale.wgsl",
            Shader::QuantFast => "quant.wgsl+fast.wgsl",
            Shader::AttentionFast => "attn_fast.wgsl",
            Shader::AttentionFlash => "attn_flash.wgsl",
            Shader::QuantWide => "fast_wide.wgsl",
            Shader::QuantWideSg => "fast_wide.wgsl+wide_sg.wgsl",
            Shader::MmFast => "quant.wgsl+mm_fast.wgsl+mm_split.wgsl",
            Shader::MmCoop => "quant.wgsl+mm_coop.wgsl+mm_split.wgsl",
            Shader::Moe => "quant.wgsl+moe.wgsl",
        }
    }

    /// Binding slots 0.. of group 0, shared by all entry points of the file.
    pub(crate) fn bindings(self) -> &'static [Bind] {
        use Bind::*;
        match self {
            // w, x, y, params, step, ids
            Shader::Quant
            | Shader::QuantSg
            | Shader::QuantTg
            | Shader::QuantTgQ8
            | Shader::QuantTgFused
            | Shader::QuantTgFusedSg
            | Shader::QuantFast
            | Shader::QuantWide
            | Shader::QuantWideSg
            | Shader::Moe => &[Read, Read, ReadWrite, Uniform, Uniform, Read],
            // as Quant, then the split products' partials (mm_split.wgsl;
            // y where nothing splits)
            Shader::MmFast | Shader::MmCoop => {
                &[Read, Read, ReadWrite, Uniform, Uniform, Read, ReadWrite]
            }
            // as Quant, then the cos/sin table, queries, key cache, value
            // cache, rope params
            Shader::QuantTgRope => &[
                Read, Read, ReadWrite, Uniform, Uniform, Read, Read, ReadWrite, ReadWrite,
                ReadWrite, Uniform,
            ],
            // x, weight, y, params, step
            Shader::Norm | Shader::NormSg => &[Read, Read, ReadWrite, Uniform, Uniform],
            // x, y, params, step, cos/sin table, y2, y3
            Shader::Rope => &[
                Read, ReadWrite, Uniform, Uniform, Read, ReadWrite, ReadWrite,
            ],
            // q, k_cache, v_cache, out, params, step
            // as Attention (the caches writable), then the cos/sin table,
            // attn_rope_decode's RopeFuse, the per-split results and
            // attn_rope_decode's per-head norm weights
            Shader::AttentionFast => &[
                Read, ReadWrite, ReadWrite, ReadWrite, Uniform, Uniform, Read, Uniform, ReadWrite,
                Read,
            ],
            Shader::Attention | Shader::AttentionSg | Shader::AttentionFlash => {
                &[Read, Read, Read, ReadWrite, Uniform, Uniform]
            }
            // a, b, y, params, step, token
            Shader::Elementwise | Shader::ElementwiseSg => {
                &[Read, Read, ReadWrite, Uniform, Uniform, ReadWrite]
            }
            // x, y, params, step
            Shader::ActQuant | Shader::ActQuantSg => &[Read, ReadWrite, Uniform, Uniform],
            // a, b, y, params, step, gelu table
            Shader::Scale => &[Read, Read, ReadWrite, Uniform, Uniform, Read],
        }
    }
}

/// Weight types with GPU kernels (the `FORMAT` cases of `quant.wgsl`).
pub const GPU_TYPES: [GgmlType; 15] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
];

/// Whether the fast mode's single-token product of a `ty` matrix with rows
/// of `row_bytes` takes `fast_wide.wgsl` (Q4_K, Q5_K and F16 in whole
/// 16-byte vectors a row; Q6_K in an even number of 210-byte blocks; the
/// 32-weight blocks, read by words, any row).
pub fn wide_fits(ty: GgmlType, row_bytes: u32) -> bool {
    match ty {
        GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::F16 => row_bytes.is_multiple_of(16),
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => true,
        GgmlType::Q6_K => row_bytes.is_multiple_of(2 * 210),
        _ => false,
    }
}

/// Whether the fast mode's single-token products of `ty` matrices keep the
/// exact kernels (activations rounded to ggml's 8-bit blocks, integer dot
/// products: quant_tg.wgsl's `q4k_tg`, `q5k_tg`, `q6k_tg`, which need
/// 32-wide subgroups) rather than `fmv_wide` on float activations. On an
/// H100 (TinyLlama-1.1B Q4_K_M, 2026-12-07) they decoded at 582 t/s with a
/// read-back per token against `fmv_wide`'s 461, although the step took
/// 233 dispatches instead of 154 (the norms, SwiGLU and the attention's
/// output rounded in dispatches of their own): `fmv_wide`'s Q4_K gate/up
/// product took 31.7 µs a dispatch, `q4k_tg`'s 17.3. (The program keeps
/// them only where the input's producer rounds it: `GpuProgram`'s
/// `float_product`.) Q8_0 stays on
/// `fmv_wide` (its exact kernel decoded at 427 t/s against 506), as do the
/// formats without such a kernel. `STRATA_FAST_PRODUCTS=float` makes every
/// product take the float kernels, for measurements.
pub fn fast_keeps_exact(ty: GgmlType, subgroup32: bool) -> bool {
    subgroup32
        && matches!(ty, GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K)
        && std::env::var("STRATA_FAST_PRODUCTS").map_or(true, |v| v != "float")
}

/// The largest row length `tg_fused.wgsl` takes (its workgroup copy of
/// the activations: 640 vectors, the quants and the scales of 8,192 values).
pub const TG_FUSED_MAX_K: u32 = 8192;

/// Whether the fast mode's single-token products of a `ty` matrix (Q4_K,
/// Q5_K, Q6_K, Q8_0) with rows of `k` values take `tg_fused.wgsl` (the exact
/// K-quant kernels' integer dot products, Q8_0's a block a lane, the
/// activations made and rounded in each workgroup, so that the norm, SwiGLU
/// or rounding before them takes no dispatch): where the row fits its
/// workgroup copy, on devices with 32-wide subgroups (`subgroup32`,
/// [`Shader::QuantTgFusedSg`]). On an H100 (TinyLlama shape, tg128 with a
/// read-back per token, two interleaved rounds) it decoded Q4_K_M at 721
/// t/s against 617 with `q4k_tg`/`q6k_tg` and their norm and SwiGLU
/// dispatches, Q8_0 at 740 against 531 with `fmv_wide`. Elsewhere its
/// exchanges go through workgroup memory ([`Shader::QuantTgFused`]), which
/// is how CI's llvmpipe checks its arithmetic: `STRATA_TG_FUSED=1` takes it
/// there too, `STRATA_TG_FUSED=0` leaves it everywhere (measurements).
pub fn tg_fused_fits(ty: GgmlType, k: u32, subgroup32: bool) -> bool {
    let wanted = match std::env::var("STRATA_TG_FUSED").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => subgroup32,
    };
    wanted
        && matches!(
            ty,
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K | GgmlType::Q8_0
        )
        && k.is_multiple_of(256)
        && k <= TG_FUSED_MAX_K
}

/// Rows each lane set of `fmv_wide` takes at once over a `ty` matrix
/// (fast_wide.wgsl's `WIDE_ROWS`): one for F16 (measured on an H100,
/// TinyLlama-1.1B: four rows a lane set decoded F16 at 414 t/s against one
/// row's 482) and for Q6_K (whose rows are staged through workgroup memory
/// one at a time), four for the rest (Q8_0 decoded at 308 t/s against 226).
/// `STRATA_WIDE_ROWS` (1, 2 or 4) overrides the choice, for measurements.
pub fn wide_rows(ty: GgmlType) -> u32 {
    if ty == GgmlType::Q6_K {
        return 1;
    }
    if let Some(r) = std::env::var("STRATA_WIDE_ROWS")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|r| matches!(r, 1 | 2 | 4))
    {
        return r;
    }
    match ty {
        GgmlType::F16 => 1,
        _ => 4,
    }
}

/// Rows per workgroup of `fmv_wide`: four lane sets of [`wide_rows`].
pub fn wide_rows_per_workgroup(ty: GgmlType) -> u32 {
    4 * wide_rows(ty)
}

/// Whether `ty` has GPU kernels.
pub fn is_gpu_type(ty: GgmlType) -> bool {
    GPU_TYPES.contains(&ty)
}

/// The rounding ggml's CPU applies to activations before a dot product with
/// weights of `ty` (its `vec_dot_type`), when that rounding is a quantization
/// the GPU reproduces (`act_quant.wgsl`): Q8_0, Q8_1 or Q8_K. `None` for
/// F32, F16 and BF16 weights, whose products the GPU takes in f32.
pub fn act_type(ty: GgmlType) -> Option<GgmlType> {
    use GgmlType::*;
    match ty {
        Q4_0 | Q5_0 | Q8_0 | IQ4_NL => Some(Q8_0),
        Q4_1 | Q5_1 => Some(Q8_1),
        Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | IQ4_XS => Some(Q8_K),
        F16 => Some(F16),
        BF16 => Some(BF16),
        _ => None,
    }
}

/// Whether products with a `rows`-row matrix of `ty` are exact (`quant.wgsl`'s
/// `qdot`/`kdot`: ggml's integer block sums in llama.cpp's float order), so
/// that their activations go through `act_quant.wgsl`'s packed layout.
pub fn is_exact(ty: GgmlType, rows: u32) -> bool {
    exact_order(ty, rows, 1).is_some()
}

/// The float order in which the exact product sums a `rows`-row matrix of
/// `ty` for a batch of `n_tokens`, or `None` when `ty` goes through the
/// dequantizing kernels instead:
/// - 0: ggml's `vec_dot` lanes (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0; `qdot`);
/// - 1: the gemm/gemv of the matrices llama.cpp's x86 backend repacks (Q4_0
///   and IQ4_NL with a multiple of 8 rows; `qdot`);
/// - 2: the K-quants' AVX2 `vec_dot` lanes, for fewer than 8 tokens (`kdot`);
/// - 3: ggml's tiled K-quant kernel, for 8 tokens or more (`kdot`);
/// - 4: the repacked Q4_K gemm/gemv (Q4_K with a multiple of 8 rows; `kdot`).
pub fn exact_order(ty: GgmlType, rows: u32, n_tokens: u32) -> Option<u32> {
    use GgmlType::*;
    match ty {
        Q4_0 | IQ4_NL if rows.is_multiple_of(8) => Some(1),
        Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 => Some(0),
        Q4_K if rows.is_multiple_of(8) => Some(4),
        Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | IQ4_XS => Some(if n_tokens < KQUANT_TILED_MIN_BATCH {
            2
        } else {
            3
        }),
        _ => None,
    }
}

/// ggml's `ggml_tiled_min_batch`: K-quant batches this large take the tiled
/// kernel's order, smaller ones `vec_dot`'s.
pub const KQUANT_TILED_MIN_BATCH: u32 = 8;

/// Tokens per tile of `kmm`, the tiled exact K-quant product for batches
/// (and of `qmm1`, the tiled repacked-order product: order 1).
pub(crate) const KMM_TOKENS: u32 = 64;

/// Tokens per tile of `qmm`, the tiled exact product in `vec_dot` lane order
/// (order 0) for batches.
pub(crate) const QMM_TOKENS: u32 = 32;

/// One specialised compute pipeline: the cache key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kernel {
    /// Matrix-vector product of a `ty` matrix.
    Matvec(GgmlType),
    /// Matrix-matrix product of a `ty` matrix.
    Matmul(GgmlType),
    /// Row lookup of a `ty` matrix.
    GetRows(GgmlType),
    /// RMSNorm, its output rounded to an activation type (or not; `true`:
    /// written in the packed layout the exact products read), with ggml's
    /// f64 sum and correctly rounded scale (`false`) or the fast mode's f32
    /// (`true`, norm.wgsl's `FAST`).
    RmsNorm(Option<(GgmlType, bool)>, bool),
    /// RoPE.
    Rope,
    /// Attention.
    Attention,
    /// a + b.
    Add,
    /// silu(a)·b, rounded to an activation type (or not); `true`: packed.
    Swiglu(Option<(GgmlType, bool)>),
    /// Greedy argmax.
    Argmax,
    /// Activation rounding to the given Q8 type; `true`: the packed layout
    /// the exact products read.
    QuantizeAct(GgmlType, bool),
    /// Exact product of a `ty` matrix in float order `order`
    /// ([`exact_order`]; `qdot` for orders 0 and 1, `kdot` above), `tokens`
    /// consecutive tokens per row in a workgroup ([`KMM_TOKENS`]: the tiled
    /// `kmm`, orders 3 and 4; [`QMM_TOKENS`] with order 0: the tiled `qmm`).
    Qdot(GgmlType, u32, u32),
    /// `qdot` (orders 0, 1) or `kdot` (2 to 4) with a 32-wide subgroup per
    /// output (`quant_sg.wgsl`), `tokens` as in `Qdot`.
    Sg(GgmlType, u32, u32),
    /// A single token's exact product with a Q4_K (order 4), Q5_K or Q6_K
    /// (order 2) matrix (`quant_tg.wgsl`: `q4k_tg`, `q5k_tg`, `q6k_tg`), or
    /// a Q8_0 (order 0) or Q4_0 (order 1) one (`tg_q8.wgsl`: `q8_0_tg`,
    /// `q4_0_tg`).
    Tg(GgmlType),
    /// The fast mode's single-token product of a `ty` matrix (Q4_K, Q5_K,
    /// Q6_K, Q8_0) through `tg_fused.wgsl`, with prologue 0 (x), 1 (RMSNorm), 2
    /// (SwiGLU) or 3 (GeGLU).
    TgFused(GgmlType, u32),
    /// `Tg(Q4_K)` with RoPE and the cache writes of a stacked query/key
    /// (/value) projection (`tg_rope.wgsl`: `q4k_tg_rope`).
    TgRope,
    /// gelu(a)·b through ggml's f16 table (`scale.wgsl`).
    Geglu,
    /// y *= s (`scale.wgsl`).
    Scale,
    /// y = cap·tanh(y/cap) (`scale.wgsl`).
    Softcap,
    /// Each row of y times its factor (`scale.wgsl`).
    ScaleRows,
    /// y = b + RMSNorm(a)·weight, the fast step's post-norm and residual
    /// sum (`scale.wgsl`).
    NormAdd,
    /// The fast mode's single-token product of a `ty` matrix (`fast.wgsl`'s
    /// `fmv`) with prologue 0 (x), 1 (RMSNorm), 2 (SwiGLU) or 3 (GeGLU).
    Fmv(GgmlType, u32),
    /// The same through 16-byte loads (`fast_wide.wgsl`'s `fmv_wide`:
    /// Q4_K, Q5_K, F16, Q8_0, Q6_K; [`wide_fits`]), [`wide_rows`] rows a
    /// lane set.
    FmvWide(GgmlType, u32, u32),
    /// The fast mode's single-token attention (`attn_fast.wgsl`): split
    /// over the positions (`false`, [`Kernel::AttentionCombine`] after it),
    /// or one workgroup a head writing the output itself (`true`: `SOLO`).
    AttentionFast(bool),
    /// The same with the token's query, key and value from a stacked
    /// projection: RoPE and the cache writes inside (`attn_rope_decode`).
    AttentionFastRope(bool),
    /// The fast attention's second dispatch: each head's output from its
    /// splits (`attn_combine`).
    AttentionCombine,
    /// The fast mode's attention for a batch (`attn_flash.wgsl`), each
    /// invocation owning `NC` output vec4 columns (ceil(head_dim / 64)).
    AttentionFlash(u32),
    /// The fast mode's product of a batch of float activations with a `ty`
    /// matrix, [`MM_FAST_TOKENS`] tokens × [`MM_FAST_ROWS`] rows a
    /// workgroup: `mm_fast.wgsl`'s `mm_fast` ([`MmKind::Portable`]) or, on
    /// devices with cooperative matrices, `mm_coop.wgsl`'s `mm_coop`.
    MmFast(GgmlType, MmKind),
    /// `mm_split.wgsl`'s `mm_reduce`: the partial sums of a [`Kernel::MmFast`]
    /// product split over k, added and stored (the dispatch after it).
    MmReduce,
    /// `moe.wgsl`'s `moe_mv` with a `ty` matrix: the router's product
    /// (`false`) or the routed experts' (`true`), with prologue 0 (x) or 2
    /// (SwiGLU of a row's two halves).
    MoeMv(GgmlType, bool, u32),
    /// [`Kernel::MmFast`]'s entry point in its gathered mode (quant.wgsl's
    /// `MM_GATHER`): a mixture of experts' grouped product over the pairs
    /// `moe.wgsl`'s `moe_bucket` listed for each expert, with prologue 0
    /// (x) or 2 (SwiGLU of a row's two halves).
    MoeMm(GgmlType, MmKind, u32),
    /// `moe.wgsl`'s `moe_bucket`: each expert's (token, slot) pairs.
    MoeBucket,
    /// `moe.wgsl`'s `moe_route`: gating 0 (softmax), 1 (sigmoid) or 2
    /// (softmax of the chosen), renormalised or not.
    MoeRoute(u32, bool),
    /// `moe.wgsl`'s `moe_sum`: the weighted sum of a token's experts.
    MoeSum,
}

/// Which entry point a [`Kernel::MmFast`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum MmKind {
    /// `mm_fast.wgsl`'s `mm_fast` (portable).
    Portable,
    /// `mm_coop.wgsl`'s `mm_coop` (cooperative matrices, tiles of 128 rows ×
    /// 64 tokens).
    Coop,
}

/// Tokens per workgroup of [`Kernel::MmFast`] (every entry point).
pub(crate) const MM_FAST_TOKENS: u32 = 64;

/// Rows per workgroup of [`Kernel::MmFast`]'s portable entry point
/// (`mm_fast`).
pub(crate) const MM_FAST_ROWS: u32 = 64;

/// Rows per workgroup of `mm_coop` ([`MmKind::Coop`]).
pub(crate) const MM_COOP_ROWS: u32 = 128;

impl MmKind {
    /// Rows per workgroup of the entry point.
    pub(crate) fn rows(self) -> u32 {
        match self {
            MmKind::Portable => MM_FAST_ROWS,
            MmKind::Coop => MM_COOP_ROWS,
        }
    }
}

impl Kernel {
    pub(crate) fn shader(self) -> Shader {
        match self {
            Kernel::Matvec(_) | Kernel::Matmul(_) | Kernel::GetRows(_) | Kernel::Qdot(..) => {
                Shader::Quant
            }
            Kernel::RmsNorm(..) => Shader::Norm,
            Kernel::Rope => Shader::Rope,
            Kernel::Attention => Shader::Attention,
            Kernel::Add | Kernel::Swiglu(_) | Kernel::Argmax => Shader::Elementwise,
            Kernel::QuantizeAct(..) => Shader::ActQuant,
            Kernel::Sg(..) => Shader::QuantSg,
            Kernel::Tg(GgmlType::Q8_0 | GgmlType::Q4_0) => Shader::QuantTgQ8,
            Kernel::Tg(..) => Shader::QuantTg,
            Kernel::TgRope => Shader::QuantTgRope,
            Kernel::TgFused(..) => Shader::QuantTgFused,
            Kernel::Geglu
            | Kernel::Scale
            | Kernel::Softcap
            | Kernel::ScaleRows
            | Kernel::NormAdd => Shader::Scale,
            Kernel::Fmv(..) => Shader::QuantFast,
            Kernel::FmvWide(..) => Shader::QuantWide,
            Kernel::AttentionFast(_) | Kernel::AttentionFastRope(_) | Kernel::AttentionCombine => {
                Shader::AttentionFast
            }
            Kernel::AttentionFlash(_) => Shader::AttentionFlash,
            Kernel::MmFast(_, MmKind::Portable) | Kernel::MoeMm(_, MmKind::Portable, _) => {
                Shader::MmFast
            }
            Kernel::MmFast(_, _) | Kernel::MoeMm(..) => Shader::MmCoop,
            Kernel::MmReduce => Shader::MmFast,
            Kernel::MoeMv(..) | Kernel::MoeRoute(..) | Kernel::MoeSum | Kernel::MoeBucket => {
                Shader::Moe
            }
        }
    }

    pub(crate) fn entry_point(self) -> &'static str {
        match self {
            Kernel::Matvec(_) => "matvec",
            // Float weights in tinyBLAS's lane order, the CPU's bits.
            Kernel::Matmul(GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) => "fmatmul",
            Kernel::Matmul(_) => "matmul",
            Kernel::GetRows(_) => "get_rows",
            Kernel::RmsNorm(..) => "rms_norm",
            Kernel::Rope => "rope",
            Kernel::Attention => "attention",
            Kernel::Add => "add",
            Kernel::Swiglu(_) => "swiglu",
            Kernel::Argmax => "argmax",
            Kernel::QuantizeAct(..) => "quantize_act",
            Kernel::Tg(GgmlType::Q6_K) => "q6k_tg",
            Kernel::Tg(GgmlType::Q5_K) => "q5k_tg",
            Kernel::Tg(GgmlType::Q8_0) => "q8_0_tg",
            Kernel::Tg(GgmlType::Q4_0) => "q4_0_tg",
            Kernel::Tg(..) => "q4k_tg",
            Kernel::TgRope => "q4k_tg_rope",
            Kernel::TgFused(..) => "tg_fused",
            Kernel::Geglu => "geglu",
            Kernel::Scale => "scale",
            Kernel::Softcap => "softcap",
            Kernel::ScaleRows => "scale_rows",
            Kernel::NormAdd => "norm_add",
            Kernel::Fmv(..) => "fmv",
            Kernel::FmvWide(..) => "fmv_wide",
            Kernel::AttentionFast(_) => "attn_decode",
            Kernel::AttentionFastRope(_) => "attn_rope_decode",
            Kernel::AttentionCombine => "attn_combine",
            Kernel::AttentionFlash(_) => "attn_flash",
            Kernel::MmFast(_, MmKind::Portable) | Kernel::MoeMm(_, MmKind::Portable, _) => {
                "mm_fast"
            }
            Kernel::MmFast(_, MmKind::Coop) | Kernel::MoeMm(_, MmKind::Coop, _) => "mm_coop",
            Kernel::MmReduce => "mm_reduce",
            Kernel::MoeMv(..) => "moe_mv",
            Kernel::MoeBucket => "moe_bucket",
            Kernel::MoeRoute(..) => "moe_route",
            Kernel::MoeSum => "moe_sum",
            Kernel::Qdot(_, 1, KMM_TOKENS) => "qmm1",
            Kernel::Qdot(_, _, KMM_TOKENS) => "kmm",
            Kernel::Qdot(_, 0, QMM_TOKENS) => "qmm",
            Kernel::Sg(_, order, _) => {
                if order >= 2 {
                    "kdot_sg"
                } else {
                    "qdot_sg"
                }
            }
            Kernel::Qdot(_, order, _) => {
                if order >= 2 {
                    "kdot"
                } else {
                    "qdot"
                }
            }
        }
    }

    /// Override constants: the ggml type id for the block decoders.
    pub(crate) fn constants(self) -> Vec<(&'static str, f64)> {
        match self {
            Kernel::Matvec(t) | Kernel::Matmul(t) | Kernel::GetRows(t) => {
                vec![
                    ("FORMAT", f64::from(t.id())),
                    ("MV_LANES", f64::from(crate::ops::MATVEC_LANES)),
                ]
            }
            Kernel::FmvWide(t, prologue, rows) => vec![
                ("FORMAT", f64::from(t.id())),
                ("PROLOGUE", f64::from(prologue)),
                ("WIDE_ROWS", f64::from(rows)),
            ],
            Kernel::TgFused(t, prologue) => vec![
                ("FORMAT", f64::from(t.id())),
                ("PROLOGUE", f64::from(prologue)),
            ],
            Kernel::MmFast(t, _) => vec![("FORMAT", f64::from(t.id()))],
            // Gathered rows (1), with SwiGLU made as they load (2).
            Kernel::MoeMm(t, _, prologue) => vec![
                ("FORMAT", f64::from(t.id())),
                ("MM_GATHER", f64::from(if prologue == 2 { 2 } else { 1 })),
            ],
            Kernel::AttentionFlash(nc) => vec![("NC", f64::from(nc))],
            Kernel::AttentionFast(solo) | Kernel::AttentionFastRope(solo) => {
                vec![("SOLO", f64::from(u8::from(solo)))]
            }
            Kernel::MoeMv(t, routed, prologue) => vec![
                ("FORMAT", f64::from(t.id())),
                ("MV_LANES", f64::from(crate::ops::MATVEC_LANES)),
                ("ROUTED", f64::from(u8::from(routed))),
                ("PROLOGUE", f64::from(prologue)),
            ],
            Kernel::MoeRoute(gating, normalize) => vec![
                ("GATING", f64::from(gating)),
                ("NORMALIZE", f64::from(u8::from(normalize))),
            ],
            Kernel::Fmv(t, prologue) => vec![
                ("FORMAT", f64::from(t.id())),
                ("MV_LANES", f64::from(crate::ops::MATVEC_LANES)),
                ("PROLOGUE", f64::from(prologue)),
            ],
            Kernel::QuantizeAct(t, packed) => {
                vec![
                    ("ACT", f64::from(t.id())),
                    ("PACKED", f64::from(u8::from(packed))),
                ]
            }
            Kernel::Qdot(t, order, tokens) | Kernel::Sg(t, order, tokens) => vec![
                ("FORMAT", f64::from(t.id())),
                ("ORDER", f64::from(order)),
                ("QDOT_TOKENS", f64::from(tokens)),
            ],
            Kernel::Swiglu(t) => vec![
                ("ACT", f64::from(t.map_or(0, |t| t.0.id()))),
                ("PACKED", f64::from(u8::from(t.is_some_and(|t| t.1)))),
            ],
            Kernel::RmsNorm(t, fast) => vec![
                ("ACT", f64::from(t.map_or(0, |t| t.0.id()))),
                ("PACKED", f64::from(u8::from(t.is_some_and(|t| t.1)))),
                ("FAST", f64::from(u8::from(fast))),
            ],
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shader parses and validates with naga, and declares the
    /// bindings its Rust layout describes.
    #[test]
    fn shaders_validate_with_naga() {
        for shader in ALL_SHADERS {
            let module = naga::front::wgsl::parse_str(shader.source()).unwrap_or_else(|e| {
                panic!("{}: {}", shader.name(), e.emit_to_string(shader.source()))
            });
            let mut validator = naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                // unpack2x16float needs this; wgpu grants it on every
                // Vulkan, Metal and DX12 device.
                // (and subgroups, for quant_sg.wgsl, which only devices
                // with them compile), f16 and cooperative matrices for
                // mm_coop.wgsl (likewise).
                naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32
                    | naga::valid::Capabilities::SUBGROUP
                    | naga::valid::Capabilities::SHADER_FLOAT16
                    | naga::valid::Capabilities::COOPERATIVE_MATRIX,
            );
            validator.validate(&module).unwrap_or_else(|e| {
                panic!("{}: {}", shader.name(), e.emit_to_string(shader.source()))
            });
            // The cooperative-matrix shader, which no CI device compiles,
            // also goes through naga's SPIR-V writer as wgpu's Vulkan
            // backend takes it (with every entry point's overrides at their
            // defaults, and in each gathered mode: MoeMm's MM_GATHER).
            if shader == Shader::MmCoop {
                let info = validator.validate(&module).expect("validated above");
                for gather in [None, Some(1.0), Some(2.0)] {
                    let constants: naga::back::PipelineConstants = gather
                        .map(|g| ("MM_GATHER".to_string(), g))
                        .into_iter()
                        .collect();
                    let (module, info) = naga::back::pipeline_constants::process_overrides(
                        &module, &info, None, &constants,
                    )
                    .expect("overrides");
                    let opts = naga::back::spv::Options {
                        lang_version: (1, 3),
                        ..Default::default()
                    };
                    naga::back::spv::write_vec(&module, &info, &opts, None).unwrap_or_else(|e| {
                        panic!("{} (MM_GATHER {gather:?}): SPIR-V: {e}", shader.name());
                    });
                }
            }
            let n = shader.bindings().len() as u32;
            for (_, var) in module.global_variables.iter() {
                if let Some(b) = &var.binding {
                    assert_eq!(b.group, 0, "{}: {:?}", shader.name(), var.name);
                    assert!(
                        b.binding < n,
                        "{}: {:?} at binding {} has no layout slot",
                        shader.name(),
                        var.name,
                        b.binding
                    );
                }
            }
        }
    }
}
