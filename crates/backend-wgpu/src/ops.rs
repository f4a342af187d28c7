//! GPU tensors and the recorded operations of a forward pass.
//!
//! An `Op` is built once (pipeline, bind group, parameters in a uniform
//! buffer) and recorded into every step; only the shared step uniform
//! (tokens in the batch, first position) changes between steps.

use bytemuck::{Pod, Zeroable};
use gguf_format::GgmlType;

use crate::device::GpuContext;
use crate::error::{Result, WgpuError};
use crate::kernels::{
    exact_order, is_exact, is_gpu_type, Kernel, MmKind, Shader, KMM_TOKENS, KQUANT_TILED_MIN_BATCH,
    MM_FAST_ROWS, MM_FAST_TOKENS, QMM_TOKENS,
};

/// Up to this many tokens a linear layer runs as matrix-vector products
/// (64 invocations per row, 4 rows per workgroup); above it, as a tiled
/// matrix product.
pub const MATVEC_MAX_TOKENS: u32 = 4;

/// From this many tokens on, the fast mode's batches multiply with
/// `mm_fast.wgsl`/`mm_coop.wgsl` over float
/// activations; smaller ones keep the exact mode's kernels.
pub const FAST_MM_MIN_TOKENS: u32 = 16;

/// From this many tokens on, the fast mode's mixtures of experts multiply
/// each expert's (token, slot) pairs as one batch (`moe.wgsl`'s
/// `moe_bucket`, then `mm_fast`/`mm_coop` gathered: llama.cpp's
/// mul_mat_id); smaller
/// batches and single tokens keep one matrix-vector product a pair
/// (`moe_mv`), which reads no more weights than a batch of so few pairs
/// spread over the experts would.
pub const MOE_MM_MIN_TOKENS: u32 = FAST_MM_MIN_TOKENS;

/// Invocations per row of `quant.wgsl`'s matvec (`MV_LANES`): on an H100,
/// TinyLlama Q4_K_M generated 215, 273, 330, 349, 340 and 303 tokens/s with
/// 8, 16, 32, 64, 128 and 256 (Q8_0: 204, 284, 419, 440, 414, 350).
pub(crate) const MATVEC_LANES: u32 = 64;

/// Rows per workgroup of `quant_tg.wgsl`'s kernels (its `TG_ROWS`).
const TG_ROWS: u32 = 4;
// tg_rope.wgsl pairs rows 2s and 2s + 1 of a workgroup.
const _: () = assert!(TG_ROWS.is_multiple_of(2));

/// Per-step values shared by every op (`struct Step` in the shaders).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct StepUniform {
    pub n_tokens: u32,
    pub pos: u32,
    pub n_kv: u32,
    /// Always 0; the shaders OR it into products they must not fuse (fma.wgsl).
    pub zero: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct MatParams {
    pub k: u32,
    pub m: u32,
    pub row_bytes: u32,
    pub x_stride: u32,
    pub y_stride: u32,
    pub y_base: u32,
    pub accumulate: u32,
    pub at_pos: u32,
    pub corr_base: u32,
    pub pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct NormParams {
    pub n: u32,
    pub x_stride: u32,
    pub y_stride: u32,
    pub last_only: u32,
    pub eps: f32,
    pub zero: u32,
    /// With a packed output: the word offset of the blocks' scales in y.
    pub corr_base: u32,
    /// The first row: workgroup z normalises row `row0 + z` (a call over
    /// more rows than one dispatch's z can count is split in chunks).
    pub row0: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct RopeParams {
    pub n_heads: u32,
    pub head_dim: u32,
    pub n_dims: u32,
    pub neox: u32,
    pub x_stride: u32,
    pub y_stride: u32,
    pub y_base: u32,
    pub at_pos: u32,
    pub x_base: u32,
    /// Heads after the first `n_heads` of x that go to the second output.
    pub n_heads2: u32,
    pub y2_stride: u32,
    pub at_pos2: u32,
    /// Heads after those, copied unrotated to the third output (values
    /// with queries and keys).
    pub n_heads3: u32,
    pub y3_stride: u32,
    pub at_pos3: u32,
    pub pad: u32,
}

/// [`OpBuilder::fuse_rope`]'s parameters (`tg_rope.wgsl`'s `TgRopeParams`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct TgRopeParams {
    /// Query rows (heads · head_dim).
    pub n_q: u32,
    /// Key rows (KV heads · head_dim), also floats per cache position.
    pub n_k: u32,
    /// Value rows stacked after the keys (0: none).
    pub n_v: u32,
    pub head_dim: u32,
    /// Rotated dimensions of each head.
    pub n_dims: u32,
    /// Cache writes: 1 f32 cache, 2 f16 cache.
    pub at_pos: u32,
    pub pad: [u32; 2],
}

/// cos/sin of every (position, pair) for positions `0..n_pos`, as
/// tensor-core's CPU RoPE computes them, in the layout `rope.wgsl` reads.
pub(crate) fn rope_table(p: &tensor_core::RopeParams, n_pos: usize) -> Vec<f32> {
    let mut table = vec![0f32; n_pos * p.n_dims];
    for (pos, row) in table.chunks_mut(p.n_dims.max(1)).enumerate() {
        tensor_core::rope::rope_cache(pos, p, None, row);
    }
    table
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct AttnParams {
    pub n_head: u32,
    pub n_kv_head: u32,
    pub head_dim: u32,
    pub q_stride: u32,
    pub kv_stride: u32,
    pub out_stride: u32,
    pub scale: f32,
    pub kv_f16: u32,
    /// Sliding window: a query at position p sees positions j with
    /// p − j < window (0: every position up to p).
    pub window: u32,
    /// Logit soft-cap: K·Q becomes softcap·tanh(K·Q · inv_cap) before the
    /// scale (0: none).
    pub softcap: f32,
    /// 1/softcap, as the host rounds it.
    pub inv_cap: f32,
    /// The fast kernel's workgroups per head ([`attention_splits`]); set by
    /// [`OpBuilder::attention`], unread by the exact kernel.
    pub splits: u32,
}

impl AttnParams {
    /// The parameters of a graph's attention `p` over a cache whose
    /// positions are `kv_stride` floats apart, in f16 (`kv_f16`) or f32;
    /// one split (the fast decoding op sets its own).
    pub fn of(p: &tensor_core::AttentionParams, kv_stride: u32, kv_f16: bool) -> AttnParams {
        let qw = (p.n_head * p.head_dim) as u32;
        AttnParams {
            n_head: p.n_head as u32,
            n_kv_head: p.n_head_kv as u32,
            head_dim: p.head_dim as u32,
            q_stride: qw,
            kv_stride,
            out_stride: qw,
            scale: p.scale,
            kv_f16: kv_f16 as u32,
            window: p.window.map_or(0, |w| w.clamp(1, u32::MAX as usize) as u32),
            softcap: p.softcap.unwrap_or(0.0),
            inv_cap: p.softcap.map_or(0.0, |c| 1.0 / c),
            splits: 1,
        }
    }
}

/// The longest context (positions after the step) for which the fast
/// decoding attention takes one workgroup a head and one dispatch
/// (`attn_fast.wgsl`'s `SOLO`) rather than splits and a combining
/// dispatch: one tile of the kernel's 256 positions, which the splits
/// (of at least 64 positions each) would have walked in one pass too.
pub(crate) const SOLO_MAX_KV: u32 = 256;

/// Workgroups per head of the fast single-token attention (split-K): enough
/// that the heads of a long context fill a large GPU (about 512
/// workgroups), at most 32; shorter contexts leave the later ones idle
/// (`attn_fast.wgsl`'s `MIN_CHUNK`). A split's workgroup walks its
/// positions one after another for the products with V, so shorter splits
/// finish sooner, but more of them take longer to combine: on an H100,
/// TinyLlama's 32 heads decoding after 4,096 tokens, 16 splits (256
/// positions each) ran at 351 t/s with a read-back per token, 64 splits at
/// 332.
pub(crate) fn attention_splits(n_head: u32) -> u32 {
    (512 / n_head.max(1)).clamp(1, 32)
}

/// Bytes of the fast attention's per-split results for these heads
/// (`attn_fast.wgsl`'s `part`).
pub(crate) fn attention_partials_bytes(p: &AttnParams) -> u64 {
    let splits = attention_splits(p.n_head) as u64;
    p.n_head as u64 * splits * (p.head_dim as u64 + 2) * 4
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct EwParams {
    pub n: u32,
    pub a_stride: u32,
    pub b_stride: u32,
    pub y_stride: u32,
    pub a_base: u32,
    pub b_base: u32,
    /// SwiGLU with a packed output: the word offset of the blocks' scales in y.
    pub corr_base: u32,
    /// `add`: bit 0, a's row is the step's last token's; bit 1, a copy of a.
    pub mode: u32,
}

/// `scale.wgsl`'s parameters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct ScaleParams {
    /// Values.
    pub n: u32,
    /// `scale_rows`: values per row.
    pub width: u32,
    /// `scale`: the factor; `softcap`: the cap.
    pub s: f32,
    /// `softcap`: 1/cap.
    pub inv: f32,
    /// `geglu` over rows (`n` = 0): row z of a at `a_base + z·a_stride`,
    /// of b at `b_base + z·b_stride`.
    pub a_base: u32,
    pub a_stride: u32,
    pub b_base: u32,
    pub b_stride: u32,
}

/// One row range of a weight matrix, in one buffer.
#[derive(Clone, Debug)]
pub struct MatrixPart {
    /// Raw GGUF block bytes of rows `first_row .. first_row + rows`.
    pub buffer: wgpu::Buffer,
    /// Index of its first row in the whole matrix.
    pub first_row: u32,
    /// Rows it holds.
    pub rows: u32,
}

/// A weight matrix uploaded once as raw GGUF block bytes (`m` rows of `k`
/// weights of type `ty`), split by rows into parts that each fit in one
/// storage binding.
#[derive(Clone, Debug)]
pub struct GpuMatrix {
    /// Block format.
    pub ty: GgmlType,
    /// Weights per row.
    pub k: u32,
    /// Rows.
    pub m: u32,
    /// Bytes per row.
    pub row_bytes: u32,
    /// The row ranges.
    pub parts: Vec<MatrixPart>,
}

impl GpuMatrix {
    /// Uploads `bytes` (`m` rows of `k` weights of `ty`, as GGUF stores
    /// them). `name` is used in errors and labels.
    pub fn upload(
        ctx: &GpuContext,
        name: &str,
        ty: GgmlType,
        k: u64,
        m: u64,
        bytes: &[u8],
    ) -> Result<GpuMatrix> {
        Self::upload_with_limit(ctx, name, ty, k, m, bytes, ctx.max_binding())
    }

    /// [`GpuMatrix::upload`] with an explicit part size limit in bytes (so
    /// that tests can exercise the split on any device).
    pub fn upload_with_limit(
        ctx: &GpuContext,
        name: &str,
        ty: GgmlType,
        k: u64,
        m: u64,
        bytes: &[u8],
        max_part_bytes: u64,
    ) -> Result<GpuMatrix> {
        let bad = |what: String| WgpuError::BadShape {
            tensor: name.to_string(),
            what,
        };
        if !is_gpu_type(ty) {
            return Err(WgpuError::UnsupportedType {
                tensor: name.to_string(),
                ty,
            });
        }
        if k == 0 || !k.is_multiple_of(32) || !k.is_multiple_of(ty.block_size() as u64) {
            return Err(bad(format!(
                "row length {k} is not a positive multiple of 32 and of the {ty} block size {}",
                ty.block_size()
            )));
        }
        let row_bytes = k / ty.block_size() as u64 * ty.type_size() as u64;
        if m.checked_mul(row_bytes) != Some(bytes.len() as u64) {
            return Err(bad(format!(
                "{m} rows of {k} {ty} weights need {} bytes, got {}",
                m.saturating_mul(row_bytes),
                bytes.len()
            )));
        }
        if k > u32::MAX as u64 || m > u32::MAX as u64 {
            return Err(bad(format!("shape {k}×{m} is too large")));
        }
        // Parts are indexed with 32-bit byte offsets in the shader; the
        // spare word covers unaligned reads at the end.
        let limit = max_part_bytes.min(u32::MAX as u64) - 8;
        let rows_per_part = (limit / row_bytes).max(1);
        if row_bytes > limit {
            return Err(bad(format!(
                "one row of {row_bytes} bytes exceeds the device's storage binding limit"
            )));
        }
        let mut parts = Vec::new();
        let mut first = 0u64;
        while first < m {
            let rows = rows_per_part.min(m - first);
            let slice = &bytes[(first * row_bytes) as usize..((first + rows) * row_bytes) as usize];
            parts.push(MatrixPart {
                buffer: ctx.try_upload(name, slice)?,
                first_row: first as u32,
                rows: rows as u32,
            });
            first += rows;
        }
        Ok(GpuMatrix {
            ty,
            k: k as u32,
            m: m as u32,
            row_bytes: row_bytes as u32,
            parts,
        })
    }

    /// Bytes of weights (what one full pass over the matrix reads).
    pub fn n_bytes(&self) -> u64 {
        self.m as u64 * self.row_bytes as u64
    }
}

/// How many workgroups an op launches, given the batch size.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Grid {
    /// `[x, y]` workgroups per token (z = tokens).
    PerToken([u32; 2]),
    /// As `PerToken`, for batches only: a single token skips the op (an
    /// earlier op does its work, as a fused projection does RoPE's).
    BatchOnly([u32; 2]),
    /// `[x, y, z]` regardless of the batch.
    Fixed([u32; 3]),
    /// A linear layer of `m` rows: matvec or matmul by batch size.
    Linear { m: u32 },
    /// An exact product (`qdot`/`kdot`) of `m` rows: [`Op::variants`].
    Qdot { m: u32 },
    /// The fast mode's single-token product through `fmv_wide` (one token
    /// only): `m` rows, `rows` a workgroup.
    Wide { m: u32, rows: u32 },
    /// `[x, y]` workgroups per row of `k` rows a token (z = tokens · k:
    /// per-head norms).
    PerTokenTimes([u32; 2], u32),
    /// As `PerTokenTimes`, for batches of fewer than the last number of
    /// tokens only (a mixture of experts' products of one pair each, which
    /// larger batches group: [`MOE_MM_MIN_TOKENS`]).
    SmallBatchTimes([u32; 2], u32, u32),
    /// `[ceil(n_tokens / tile), y, experts]` for batches of `min_tokens` or
    /// more only: a mixture of experts' grouped product (tiles of pairs
    /// over rows over experts; `tile` = `u32::MAX` gives one workgroup in
    /// x, `moe_bucket`'s one per expert).
    Experts {
        tile: u32,
        y: u32,
        experts: u32,
        min_tokens: u32,
    },
    /// As `PerToken`, for batches of fewer than the given number of tokens
    /// only: the fast mode's activation rounding, which only the exact
    /// kernels of small batches read (larger ones take [`Kernel::MmFast`]
    /// over the float activations).
    SmallBatch([u32; 2], u32),
    /// As `PerToken`, for batches of at least the given number of tokens
    /// only (the fast mode's f32 norms, which those batches run instead of
    /// the exact ones that smaller batches keep).
    LargeBatch([u32; 2], u32),
    /// `[ceil(n_tokens / tile), y, 1]` for batches of `min_tokens` or more
    /// only (the fast mode's batch attention, [`Kernel::AttentionFlash`]).
    TokenTiles { tile: u32, y: u32, min_tokens: u32 },
    /// As `PerToken`, only for steps after which the context holds at most
    /// (`true`) or more than (`false`) the given number of positions (the
    /// fast decoding attention's variants, [`SOLO_MAX_KV`]).
    Context([u32; 2], u32, bool),
}

/// One pipeline of an exact product, for batches of `min_tokens` or more
/// (the op takes the last variant whose `min_tokens` the batch reaches).
#[derive(Debug)]
pub(crate) struct QdotVariant {
    pub min_tokens: u32,
    pub pipeline: wgpu::ComputePipeline,
    /// The float order ([`exact_order`]).
    pub order: u32,
    /// Consecutive tokens per row in a workgroup.
    pub tokens: u32,
    /// Rows per workgroup.
    pub rows: u32,
    /// The kernel.
    pub kernel: Kernel,
    /// A bind group of the variant's own, where its kernel binds more
    /// than the op's ([`OpBuilder::fuse_rope`]), and what it alone binds.
    pub own: Option<(wgpu::BindGroup, wgpu::Buffer)>,
    /// Split-K, where the variant's bind group has a partials buffer
    /// (`mm_split.wgsl`): batches whose tiles are too few take it.
    pub split: Option<MmSplit>,
}

impl QdotVariant {
    /// The variant's grid for a batch of `n_tokens` over `m` rows: tokens
    /// by x, rows by y, and by z the splits over k where it splits
    /// (with its split then).
    fn grid(&self, n_tokens: u32, m: u32) -> ([u32; 3], Option<&MmSplit>) {
        let z = self
            .split
            .as_ref()
            .map_or(1, |sp| mm_splits(n_tokens, m, sp.k, sp.target));
        let g = [n_tokens.div_ceil(self.tokens), m.div_ceil(self.rows), z];
        (g, self.split.as_ref().filter(|_| z > 1))
    }
}

/// A [`Kernel::MmFast`] variant's split over k ([`mm_splits`]).
#[derive(Debug)]
pub(crate) struct MmSplit {
    /// `mm_reduce`, the dispatch after a split product.
    pub reduce: wgpu::ComputePipeline,
    /// The product's k.
    pub k: u32,
    /// The workgroups a split product aims at ([`mm_split_target`]).
    pub target: u32,
}

/// The fewest chunks of 32 weights of k a split of a batch product takes.
pub(crate) const MM_SPLIT_MIN_CHUNKS: u32 = 8;

/// The tiles of 64 × 64 a batch product's split over k aims at (0: never
/// split; `mm_coop`'s workgroups take two such tiles each). A TinyLlama
/// prompt of 512 tokens has 256 tiles of 64 × 64 in its ffn_down and its
/// attention output, 384 in the stacked q/k/v products, 1,408 in
/// ffn_gate+up. On an H100 (2026-12-07 23:10, pp512 best of 3, two
/// rounds) F16 ran at 20,930 t/s with no split, 23,793 with 1,024, 22,742
/// with 2,048; Q4_K_M 15,268 / 17,751 / 16,968. `STRATA_MM_SPLIT` sets it
/// (measurement only).
pub(crate) fn mm_split_target() -> u32 {
    static TARGET: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *TARGET.get_or_init(|| {
        std::env::var("STRATA_MM_SPLIT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1024)
    })
}

/// Splits over k of a batch product of `n_tokens` tokens and `m` rows of
/// `k` weights (`mm_split.wgsl`): 1 where its 64 × 64 tiles are half of
/// `target` or more, else enough that tiles × splits reach `target`, each
/// split at least [`MM_SPLIT_MIN_CHUNKS`] chunks, at most 8 splits. Tiles
/// × splits stay below 1.5 × target, so that the partials fit
/// [`mm_part_floats`].
pub(crate) fn mm_splits(n_tokens: u32, m: u32, k: u32, target: u32) -> u32 {
    let tiles = n_tokens.div_ceil(MM_FAST_TOKENS) * m.div_ceil(MM_FAST_ROWS);
    if target == 0 || tiles == 0 || 2 * tiles >= target {
        return 1;
    }
    target
        .div_ceil(tiles)
        .min((k / 32) / MM_SPLIT_MIN_CHUNKS)
        .clamp(1, 8)
}

/// Floats of a partials buffer that serves every split product for
/// `target` ([`mm_splits`]): the header's 4, then splits × tokens × rows
/// ≤ splits × tiles × 64 × 64, below 1.5 × target tiles.
pub(crate) fn mm_part_floats(target: u32) -> u64 {
    4 + (3 * target as u64).div_ceil(2) * (MM_FAST_TOKENS * MM_FAST_ROWS) as u64
}

/// Tokens per row in a `qdot` workgroup for a batch of `n_tokens`.
pub(crate) fn qdot_tokens(n_tokens: u32) -> u32 {
    if n_tokens == 1 {
        1
    } else {
        4
    }
}

/// A recorded operation.
#[derive(Debug)]
pub(crate) struct Op {
    pub label: &'static str,
    pub pipeline: wgpu::ComputePipeline,
    /// For linear ops, the matmul pipeline (used above [`MATVEC_MAX_TOKENS`]).
    pub pipeline_mm: Option<wgpu::ComputePipeline>,
    /// For exact products, the pipeline per batch size.
    pub variants: Vec<QdotVariant>,
    pub bind_group: wgpu::BindGroup,
    pub grid: Grid,
    /// Keeps the op's parameter buffer alive.
    pub _params: wgpu::Buffer,
}

/// Workgroup grid covering `n` rows, one workgroup each (x ≤ 65535).
fn rows_grid(n: u32) -> [u32; 2] {
    let x = n.clamp(1, 65535);
    [x, n.div_ceil(x)]
}

impl Op {
    /// The op for batches only ([`Grid::BatchOnly`]): a single token skips
    /// it.
    pub fn batch_only(mut self) -> Op {
        if let Grid::PerToken(g) = self.grid {
            self.grid = Grid::BatchOnly(g);
        }
        self
    }

    /// Whether the op is a matrix product (a linear layer).
    pub fn is_product(&self) -> bool {
        matches!(
            self.grid,
            Grid::Linear { .. } | Grid::Qdot { .. } | Grid::Wide { .. }
        )
    }

    /// Whether the op dispatches anything for a batch of `n_tokens` after
    /// which the context holds `n_kv` positions.
    pub fn runs(&self, n_tokens: u32, n_kv: u32) -> bool {
        match self.grid {
            Grid::BatchOnly(_) => n_tokens > 1,
            Grid::SmallBatch(_, limit) | Grid::SmallBatchTimes(_, _, limit) => n_tokens < limit,
            Grid::LargeBatch(_, limit) => n_tokens >= limit,
            Grid::Experts { min_tokens, .. } => n_tokens >= min_tokens,
            Grid::TokenTiles { min_tokens, .. } => n_tokens >= min_tokens,
            Grid::Context(_, max_kv, short) => (n_kv <= max_kv) == short,
            _ => true,
        }
    }

    /// Only for batches of fewer than `limit` tokens ([`Grid::SmallBatch`],
    /// [`Grid::SmallBatchTimes`]).
    pub fn small_batches_only(mut self, limit: u32) -> Op {
        match self.grid {
            Grid::PerToken(g) => self.grid = Grid::SmallBatch(g, limit),
            Grid::PerTokenTimes(g, k) => self.grid = Grid::SmallBatchTimes(g, k, limit),
            _ => {}
        }
        self
    }

    /// Only for batches of `limit` tokens or more ([`Grid::LargeBatch`]).
    pub fn large_batches_only(mut self, limit: u32) -> Op {
        if let Grid::PerToken(g) = self.grid {
            self.grid = Grid::LargeBatch(g, limit);
        }
        self
    }

    /// Records the op for a batch of `n_tokens` after which the context
    /// holds `n_kv` positions.
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>, n_tokens: u32, n_kv: u32) {
        let mut bind_group = &self.bind_group;
        // A batch product split over k (`mm_reduce` after it) and its rows.
        let mut split: Option<(&MmSplit, u32)> = None;
        let (pipeline, g) = match self.grid {
            Grid::Context(_, max_kv, short) if (n_kv <= max_kv) != short => return,
            Grid::Context([x, y], ..) => (&self.pipeline, [x, y, n_tokens]),
            Grid::PerToken([x, y]) => (&self.pipeline, [x, y, n_tokens]),
            Grid::PerTokenTimes([x, y], k) => (&self.pipeline, [x, y, n_tokens * k]),
            Grid::BatchOnly(_) if n_tokens == 1 => return,
            Grid::BatchOnly([x, y]) => (&self.pipeline, [x, y, n_tokens]),
            Grid::SmallBatch(_, limit) if n_tokens >= limit => return,
            Grid::SmallBatch([x, y], _) => (&self.pipeline, [x, y, n_tokens]),
            Grid::SmallBatchTimes(_, _, limit) if n_tokens >= limit => return,
            Grid::SmallBatchTimes([x, y], k, _) => (&self.pipeline, [x, y, n_tokens * k]),
            Grid::Experts { min_tokens, .. } if n_tokens < min_tokens => return,
            Grid::Experts {
                tile, y, experts, ..
            } => (&self.pipeline, [n_tokens.div_ceil(tile), y, experts]),
            Grid::LargeBatch(_, limit) if n_tokens < limit => return,
            Grid::LargeBatch([x, y], _) => (&self.pipeline, [x, y, n_tokens]),
            Grid::TokenTiles { min_tokens, .. } if n_tokens < min_tokens => return,
            Grid::TokenTiles { tile, y, .. } => (&self.pipeline, [n_tokens.div_ceil(tile), y, 1]),
            Grid::Fixed(g) => (&self.pipeline, g),
            // A batch variant (the fast mode's MmFast) where the batch
            // reaches it.
            Grid::Linear { m } if self.variants.iter().any(|v| v.min_tokens <= n_tokens) => {
                let v = self
                    .variants
                    .iter()
                    .rev()
                    .find(|v| v.min_tokens <= n_tokens)
                    .expect("checked");
                if let Some((bg, _)) = &v.own {
                    bind_group = bg;
                }
                let (g, sp) = v.grid(n_tokens, m);
                split = sp.map(|sp| (sp, m));
                (&v.pipeline, g)
            }
            Grid::Linear { m } => {
                if n_tokens <= MATVEC_MAX_TOKENS {
                    let [x, y] = rows_grid(m.div_ceil(256 / MATVEC_LANES));
                    (&self.pipeline, [x, y, n_tokens])
                } else {
                    (
                        self.pipeline_mm.as_ref().unwrap_or(&self.pipeline),
                        [m.div_ceil(64), n_tokens.div_ceil(64), 1],
                    )
                }
            }
            Grid::Wide { m, rows } => {
                let [x, y] = rows_grid(m.div_ceil(rows));
                (&self.pipeline, [x, y, 1])
            }
            Grid::Qdot { m } => {
                let v = self
                    .variants
                    .iter()
                    .rev()
                    .find(|v| v.min_tokens <= n_tokens)
                    .unwrap_or(&self.variants[0]);
                if let Some((bg, _)) = &v.own {
                    bind_group = bg;
                }
                let (g, sp) = v.grid(n_tokens, m);
                split = sp.map(|sp| (sp, m));
                (&v.pipeline, g)
            }
        };
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(g[0], g[1], g[2]);
        if let Some((sp, m)) = split {
            // Same bind group: the partials, y, the op's parameters.
            pass.set_pipeline(&sp.reduce);
            pass.dispatch_workgroups(m.div_ceil(256), n_tokens, 1);
        }
    }
}

/// Builds ops bound to one step uniform.
pub(crate) struct OpBuilder<'c> {
    pub ctx: &'c GpuContext,
    pub step: &'c wgpu::Buffer,
}

impl OpBuilder<'_> {
    /// A bind group of `buffers` in binding order. The batch products'
    /// seventh binding, their split partials (`mm_split.wgsl`), is their
    /// output `y` where `buffers` stop at six: a product that never splits.
    fn bind(&self, kernel: Kernel, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
        let layout = self.ctx.bind_group_layout(kernel.shader());
        let mut buffers = buffers.to_vec();
        if kernel.shader().layout_base() == Shader::MmFast && buffers.len() == 6 {
            buffers.push(buffers[2]);
        }
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        self.ctx
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(kernel.entry_point()),
                layout: &layout,
                entries: &entries,
            })
    }

    /// The op of one dispatch of `kernel` with `params` as its uniform,
    /// bound as the kernels are: three buffers (weights or inputs, and the
    /// output), the uniform, the step uniform, and `aux` where the kernel
    /// has a sixth binding.
    fn kernel_op<P: bytemuck::Pod>(
        &self,
        label: &'static str,
        kernel: Kernel,
        params: &P,
        [a, b, y]: [&wgpu::Buffer; 3],
        aux: Option<&wgpu::Buffer>,
        grid: Grid,
    ) -> Op {
        let pb = self.ctx.uniform(label, bytemuck::bytes_of(params));
        let bind_group = match aux {
            Some(aux) => self.bind(kernel, &[a, b, y, &pb, self.step, aux]),
            None => self.bind(kernel, &[a, b, y, &pb, self.step]),
        };
        Op {
            label,
            pipeline: self.ctx.pipeline(kernel),
            pipeline_mm: None,
            bind_group,
            grid,
            variants: Vec::new(),
            _params: pb,
        }
    }

    /// `y[t, y_base + r] (+)= W[r] · x[t]` for every part of `w`; `at_pos`
    /// 1 or 2 writes a KV cache (rows counted from the step's position; 2:
    /// rounded to f16).
    #[allow(clippy::too_many_arguments)]
    pub fn linear(
        &self,
        label: &'static str,
        w: &GpuMatrix,
        x: &wgpu::Buffer,
        x_stride: u32,
        y: &wgpu::Buffer,
        y_stride: u32,
        y_base: u32,
        accumulate: bool,
        at_pos: u32,
        corr_base: u32,
        dummy: &wgpu::Buffer,
    ) -> Vec<Op> {
        w.parts
            .iter()
            .map(|part| {
                let params = MatParams {
                    k: w.k,
                    m: part.rows,
                    row_bytes: w.row_bytes,
                    x_stride,
                    y_stride,
                    y_base: y_base + part.first_row,
                    accumulate: accumulate as u32,
                    at_pos,
                    corr_base,
                    pad: [0; 3],
                };
                if is_exact(w.ty, w.m) {
                    let pb = self.ctx.uniform(label, bytemuck::bytes_of(&params));
                    // Each batch size's order and kernel: single tokens, small
                    // batches (four tokens per row), batches of 8+ (tiled).
                    let mut variants: Vec<QdotVariant> = Vec::new();
                    for min_tokens in [1, 2, KQUANT_TILED_MIN_BATCH] {
                        let order = exact_order(w.ty, w.m, min_tokens).expect("exact");
                        // Batches of 8+ take the tiled kmm (K-quants), qmm
                        // (vec_dot lanes) or qmm1 (repacked order).
                        let tokens = match order {
                            _ if min_tokens < KQUANT_TILED_MIN_BATCH => qdot_tokens(min_tokens),
                            0 => QMM_TOKENS,
                            _ => KMM_TOKENS,
                        };
                        if variants
                            .last()
                            .is_some_and(|v| v.order == order && v.tokens == tokens)
                        {
                            continue;
                        }
                        // Outputs per workgroup: a subgroup of 32 each
                        // (qdot_sg, kdot_sg), or one invocation each (qdot
                        // order 1), eight (qdot order 0), 64 (kdot), or
                        // kmm's 64 × 64 tiles.
                        // (Subgroups: single tokens, and K-quant batches
                        // below 8; qdot's batches measured faster on an H100.)
                        let sg = self.ctx.caps().subgroup32
                            && (tokens == 1 || (order >= 2 && tokens < KMM_TOKENS));
                        // Single tokens with Q4_K (the repacked order), Q5_K,
                        // Q6_K, and Q8_0 and Q4_0 (the repacked order) in rows
                        // of whole 16-byte vectors take quant_tg.wgsl's and
                        // tg_q8.wgsl's 16-byte loads, whose vector reads need
                        // the scales' offset aligned.
                        let tg = sg
                            && tokens == 1
                            && corr_base.is_multiple_of(4)
                            && match (w.ty, order) {
                                (GgmlType::Q4_K, 4) | (GgmlType::Q5_K | GgmlType::Q6_K, 2) => true,
                                (GgmlType::Q8_0, 0) | (GgmlType::Q4_0, 1) => {
                                    w.k.is_multiple_of(256)
                                }
                                _ => false,
                            };
                        let (kernel, outputs) = match (tokens, order) {
                            _ if tg => (Kernel::Tg(w.ty), TG_ROWS),
                            (KMM_TOKENS, _) => (Kernel::Qdot(w.ty, order, tokens), 64 * tokens),
                            (QMM_TOKENS, 0) => (Kernel::Qdot(w.ty, order, tokens), 32 * tokens),
                            _ if sg => (Kernel::Sg(w.ty, order, tokens), 8),
                            (_, 1) => (Kernel::Qdot(w.ty, order, tokens), 256),
                            (_, 0) => (Kernel::Qdot(w.ty, order, tokens), 32),
                            _ => (Kernel::Qdot(w.ty, order, tokens), 4),
                        };
                        variants.push(QdotVariant {
                            min_tokens,
                            pipeline: self.ctx.pipeline(kernel),
                            order,
                            tokens,
                            rows: outputs / tokens,
                            kernel,
                            own: None,
                            split: None,
                        });
                    }
                    let kernel = Kernel::Qdot(w.ty, variants[0].order, 1);
                    return Op {
                        label,
                        pipeline: variants[0].pipeline.clone(),
                        pipeline_mm: None,
                        bind_group: self.bind(kernel, &[&part.buffer, x, y, &pb, self.step, dummy]),
                        grid: Grid::Qdot { m: part.rows },
                        variants,
                        _params: pb,
                    };
                }
                let kernel = Kernel::Matvec(w.ty);
                let mut op = self.kernel_op(
                    label,
                    kernel,
                    &params,
                    [&part.buffer, x, y],
                    Some(dummy),
                    Grid::Linear { m: part.rows },
                );
                op.pipeline_mm = Some(self.ctx.pipeline(Kernel::Matmul(w.ty)));
                op
            })
            .collect()
    }

    /// The fast batch product's entry point: with cooperative matrices
    /// (where the device has them, or as `coop` says) `mm_coop`, else the
    /// portable `mm_fast`. (`mm_coop`'s tiles of 128 rows × 64 tokens
    /// are eight subgroups of 32 × 32; the same tiles as four subgroups of
    /// 64 × 32, eight products per six loads a subgroup, measured slower on
    /// an H100: TinyLlama Q4_K_M pp512 10,760 t/s against 15,203 for 64 × 64
    /// tiles, Q8_0 9,713 against 13,978, F16 19,278 against 21,279. Staging
    /// its chunks in two halves of the tiles, one barrier a chunk, needed
    /// 24 KiB of workgroup memory instead of 14 and lost about 15%: fewer
    /// workgroups fit a compute unit.)
    fn mm_kind(&self, coop: Option<bool>) -> MmKind {
        if coop.unwrap_or(self.ctx.caps().coop_f16_16) {
            MmKind::Coop
        } else {
            MmKind::Portable
        }
    }

    /// The fast mode's batch product ([`Kernel::MmFast`]: `mm_coop` where
    /// the device has cooperative matrices, else `mm_fast`; `coop` forces
    /// one) of `w`'s part `part` over float activations `x` (rows of the
    /// op's `x_stride` floats) into `y`, as a variant of `op` (that part's
    /// op from [`OpBuilder::linear`], whose parameters it shares) for
    /// batches of `min_tokens` or more. With `split` (a partials buffer of
    /// [`mm_part_floats`] for its target), batches with few tiles split
    /// over k ([`mm_splits`]).
    #[allow(clippy::too_many_arguments)]
    pub fn add_mm_fast(
        &self,
        op: &mut Op,
        w: &GpuMatrix,
        part: usize,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        dummy: &wgpu::Buffer,
        (min_tokens, coop): (u32, Option<bool>),
        split: Option<(&wgpu::Buffer, u32)>,
    ) {
        let kind = self.mm_kind(coop);
        let kernel = Kernel::MmFast(w.ty, kind);
        let mut buffers = vec![&w.parts[part].buffer, x, y, &op._params, self.step, dummy];
        if let Some((partials, _)) = split {
            buffers.push(partials);
        }
        let bg = self.bind(kernel, &buffers);
        let v = QdotVariant {
            min_tokens,
            pipeline: self.ctx.pipeline(kernel),
            order: u32::MAX,
            tokens: MM_FAST_TOKENS,
            rows: kind.rows(),
            kernel,
            own: Some((bg, x.clone())),
            split: split.map(|(_, target)| MmSplit {
                reduce: self.ctx.pipeline(Kernel::MmReduce),
                k: w.k,
                target,
            }),
        };
        let at = op.variants.partition_point(|o| o.min_tokens <= min_tokens);
        op.variants.insert(at, v);
    }

    /// `y[t, r] (+)= W[r] · x[t]` for every part of `w` through
    /// [`Kernel::MmFast`] alone, whatever the batch (for tests: the fast
    /// mode's batches take it as a variant, [`OpBuilder::add_mm_fast`],
    /// as does `split`).
    #[allow(clippy::too_many_arguments)]
    pub fn mm_fast(
        &self,
        label: &'static str,
        w: &GpuMatrix,
        x: &wgpu::Buffer,
        x_stride: u32,
        y: &wgpu::Buffer,
        y_stride: u32,
        accumulate: bool,
        dummy: &wgpu::Buffer,
        coop: Option<bool>,
        split: Option<(&wgpu::Buffer, u32)>,
    ) -> Vec<Op> {
        (0..w.parts.len())
            .map(|i| {
                let part = &w.parts[i];
                let params = MatParams {
                    k: w.k,
                    m: part.rows,
                    row_bytes: w.row_bytes,
                    x_stride,
                    y_stride,
                    y_base: part.first_row,
                    accumulate: accumulate as u32,
                    ..Default::default()
                };
                let kernel = Kernel::MmFast(w.ty, self.mm_kind(coop));
                let mut op = self.kernel_op(
                    label,
                    kernel,
                    &params,
                    [&part.buffer, x, y],
                    Some(dummy),
                    Grid::Qdot { m: part.rows },
                );
                self.add_mm_fast(&mut op, w, i, x, y, dummy, (1, coop), split);
                op
            })
            .collect()
    }

    /// The fast mode's single-token product (`fast.wgsl`'s `fmv`) for every
    /// part of `w`: `y[r] (+)= W[r] · xv`, with `xv` as `prologue` makes it
    /// ([`Prologue`]); `at_pos` writes a KV cache (rows of `y_stride`) as in
    /// [`OpBuilder::linear`].
    #[allow(clippy::too_many_arguments)]
    pub fn fmv(
        &self,
        label: &'static str,
        w: &GpuMatrix,
        prologue: &Prologue<'_>,
        y: &wgpu::Buffer,
        y_stride: u32,
        accumulate: bool,
        at_pos: u32,
    ) -> Vec<Op> {
        let (kind, x, x_base, aux, aux_base, eps) = match *prologue {
            Prologue::Plain { x, base } => (0, x, base, x, 0, 0.0),
            Prologue::Norm {
                x,
                base,
                weight,
                eps,
            } => (1, x, base, weight, 0, eps),
            Prologue::Swiglu {
                gate,
                gate_base,
                up,
                up_base,
            } => (2, gate, gate_base, up, up_base, 0.0),
            Prologue::Geglu {
                gate,
                gate_base,
                up,
                up_base,
            } => (3, gate, gate_base, up, up_base, 0.0),
        };
        let fused = crate::kernels::tg_fused_fits(w.ty, w.k, self.ctx.caps().subgroup32);
        let wide = crate::kernels::wide_fits(w.ty, w.row_bytes);
        w.parts
            .iter()
            .map(|part| {
                let (kernel, grid) = if fused {
                    (
                        Kernel::TgFused(w.ty, kind),
                        Grid::Wide {
                            m: part.rows,
                            rows: 8,
                        },
                    )
                } else if wide {
                    (
                        Kernel::FmvWide(w.ty, kind, crate::kernels::wide_rows(w.ty)),
                        Grid::Wide {
                            m: part.rows,
                            rows: crate::kernels::wide_rows_per_workgroup(w.ty),
                        },
                    )
                } else {
                    (Kernel::Fmv(w.ty, kind), Grid::Linear { m: part.rows })
                };
                let params = MatParams {
                    k: w.k,
                    m: part.rows,
                    row_bytes: w.row_bytes,
                    x_stride: 0,
                    y_stride,
                    y_base: part.first_row,
                    accumulate: accumulate as u32,
                    at_pos,
                    // tg_fused.wgsl: where its workgroup copy's scales start.
                    corr_base: if fused { w.k / 4 } else { 0 },
                    pad: [x_base / 4, aux_base / 4, f32::to_bits(eps)],
                };
                self.kernel_op(
                    label,
                    kernel,
                    &params,
                    [&part.buffer, x, y],
                    Some(aux),
                    grid,
                )
            })
            .collect()
    }

    /// `y[t] = row ids[t] of W`, times `scale` (1: the rows as they are).
    pub fn get_rows(
        &self,
        w: &GpuMatrix,
        ids: &wgpu::Buffer,
        y: &wgpu::Buffer,
        y_stride: u32,
        scale: f32,
        dummy: &wgpu::Buffer,
    ) -> Vec<Op> {
        w.parts
            .iter()
            .map(|part| {
                let params = MatParams {
                    k: w.k,
                    m: part.rows,
                    row_bytes: w.row_bytes,
                    x_stride: 0,
                    y_stride,
                    y_base: part.first_row,
                    accumulate: 0,
                    at_pos: 0,
                    corr_base: 0,
                    pad: [0, 0, scale.to_bits()],
                };
                self.kernel_op(
                    "get_rows",
                    Kernel::GetRows(w.ty),
                    &params,
                    [&part.buffer, dummy, y],
                    Some(ids),
                    Grid::PerToken([1, 1]),
                )
            })
            .collect()
    }

    /// RMSNorm of `n` values per token; `last_only` normalises only the
    /// batch's last token into row 0 of `y` (run with one token); `act`
    /// rounds the output as products with that activation type need (Q8_0,
    /// Q8_K, F16, BF16; Q8_1 only packed, whose sums the f32 layout lacks),
    /// as f32 values or, packed, as the exact products read them (scales
    /// from word `corr_base` of `y`).
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm(
        &self,
        x: &wgpu::Buffer,
        x_stride: u32,
        weight: &wgpu::Buffer,
        y: &wgpu::Buffer,
        y_stride: u32,
        n: u32,
        eps: f32,
        last_only: bool,
        act: Option<(GgmlType, bool)>,
        corr_base: u32,
    ) -> Op {
        self.rms_norm_from(
            x, x_stride, weight, y, y_stride, n, eps, last_only, act, corr_base, 0,
        )
    }

    /// `op`, an [`OpBuilder::rms_norm`] with rounding `act`, through the
    /// fast mode's kernel (norm.wgsl's `FAST`: f32 sums in the GPU's order):
    /// the same bindings, parameters and grid.
    pub fn fast_norm(&self, op: &Op, act: Option<(GgmlType, bool)>) -> Op {
        Op {
            label: op.label,
            pipeline: self.ctx.pipeline(Kernel::RmsNorm(act, true)),
            pipeline_mm: None,
            variants: Vec::new(),
            bind_group: op.bind_group.clone(),
            grid: op.grid,
            _params: op._params.clone(),
        }
    }

    /// [`OpBuilder::rms_norm`] of rows `row0 ..` (the op's tokens count
    /// them), for calls over more rows than one dispatch's z dimension holds.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_from(
        &self,
        x: &wgpu::Buffer,
        x_stride: u32,
        weight: &wgpu::Buffer,
        y: &wgpu::Buffer,
        y_stride: u32,
        n: u32,
        eps: f32,
        last_only: bool,
        act: Option<(GgmlType, bool)>,
        corr_base: u32,
        row0: u32,
    ) -> Op {
        let packed = act.is_some_and(|a| a.1);
        let params = NormParams {
            n,
            x_stride,
            y_stride: if packed { y_stride / 4 } else { y_stride },
            last_only: last_only as u32,
            eps,
            zero: 0,
            corr_base,
            row0,
        };
        let grid = if last_only {
            Grid::Fixed([n.div_ceil(256), 1, 1])
        } else {
            Grid::PerToken([n.div_ceil(256), 1])
        };
        self.kernel_op(
            "rms_norm",
            Kernel::RmsNorm(act, false),
            &params,
            [x, weight, y],
            None,
            grid,
        )
    }

    /// Lets the single-token variant of `op`, a product of `w` with `x` into
    /// `y` ([`OpBuilder::linear`]) of stacked query and key (and value)
    /// rows, apply RoPE in NORMAL mode with `table` itself and write the
    /// queries into `q`, the keys (and values) into the caches
    /// (`tg_rope.wgsl`), where that variant is `q4k_tg`. Returns whether it
    /// does: the rope op that follows then runs for batches only
    /// ([`Op::batch_only`]).
    #[allow(clippy::too_many_arguments)]
    pub fn fuse_rope(
        &self,
        op: &mut Op,
        w: &GpuMatrix,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        dummy: &wgpu::Buffer,
        table: &wgpu::Buffer,
        q: &wgpu::Buffer,
        k_cache: &wgpu::Buffer,
        v_cache: &wgpu::Buffer,
        params: TgRopeParams,
    ) -> bool {
        let single = match op.variants.first_mut() {
            Some(v) if v.min_tokens == 1 && v.kernel == Kernel::Tg(GgmlType::Q4_K) => v,
            _ => return false,
        };
        // Pairs of rows meet in one workgroup only if every head starts on
        // an even row of an even number of them.
        if w.parts.len() != 1
            || !params.head_dim.is_multiple_of(2)
            || !params.n_dims.is_multiple_of(2)
            || params.n_dims > params.head_dim
            || w.parts[0].rows != params.n_q + params.n_k + params.n_v
        {
            return false;
        }
        let kernel = Kernel::TgRope;
        let rp = self.ctx.uniform("tg_rope", bytemuck::bytes_of(&params));
        let bg = self.bind(
            kernel,
            &[
                &w.parts[0].buffer,
                x,
                y,
                &op._params,
                self.step,
                dummy,
                table,
                q,
                k_cache,
                v_cache,
                &rp,
            ],
        );
        single.pipeline = self.ctx.pipeline(kernel);
        single.kernel = kernel;
        single.own = Some((bg, rp));
        true
    }

    /// RoPE of `x` into `y` with the cos/sin `table` (see `rope.wgsl`).
    pub fn rope(
        &self,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        table: &wgpu::Buffer,
        params: RopeParams,
    ) -> Op {
        self.rope2(x, y, y, y, table, params)
    }

    /// RoPE of the first `n_heads` heads of `x` into `y` and of the next
    /// `n_heads2` into `y2`, and a copy of the `n_heads3` after those into
    /// `y3` (queries, keys and values in one dispatch).
    pub fn rope2(
        &self,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        y2: &wgpu::Buffer,
        y3: &wgpu::Buffer,
        table: &wgpu::Buffer,
        params: RopeParams,
    ) -> Op {
        let pb = self.ctx.uniform("rope", bytemuck::bytes_of(&params));
        let kernel = Kernel::Rope;
        let pairs = (params.n_heads + params.n_heads2 + params.n_heads3) * params.head_dim / 2;
        Op {
            label: "rope",
            pipeline: self.ctx.pipeline(kernel),
            pipeline_mm: None,
            variants: Vec::new(),
            bind_group: self.bind(kernel, &[x, y, &pb, self.step, table, y2, y3]),
            grid: Grid::PerToken([pairs.div_ceil(64), 1]),
            _params: pb,
        }
    }

    /// Attention of `q` over the caches into `out`: one op (the exact
    /// kernel), or with `fast` (a single token, [`fast_attention_fits`]) the
    /// split op and its combining op, through `partials` (at least
    /// [`attention_partials_bytes`]).
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        q: &wgpu::Buffer,
        k_cache: &wgpu::Buffer,
        v_cache: &wgpu::Buffer,
        out: &wgpu::Buffer,
        mut params: AttnParams,
        fast: bool,
        partials: &wgpu::Buffer,
    ) -> Vec<Op> {
        if !(fast && fast_attention_fits(&params)) {
            let pb = self.ctx.uniform("attention", bytemuck::bytes_of(&params));
            let kernel = Kernel::Attention;
            return vec![Op {
                label: "attention",
                pipeline: self.ctx.pipeline(kernel),
                pipeline_mm: None,
                variants: Vec::new(),
                bind_group: self.bind(kernel, &[q, k_cache, v_cache, out, &pb, self.step]),
                grid: Grid::PerToken([params.n_head, 1]),
                _params: pb,
            }];
        }
        params.splits = attention_splits(params.n_head);
        let pb = self.ctx.uniform("attention", bytemuck::bytes_of(&params));
        // attn_rope_decode's table, RopeFuse and norm weights, unread by
        // attn_decode.
        let bind_group = self.bind(
            Kernel::AttentionFast(false),
            &[
                q, k_cache, v_cache, out, &pb, self.step, q, &pb, partials, q,
            ],
        );
        let kernels = (Kernel::AttentionFast(false), Kernel::AttentionFast(true));
        self.split_attention(kernels, bind_group, pb, &params)
    }

    /// The fast mode's attention of a batch of `min_tokens` or more
    /// (`attn_flash.wgsl`; [`flash_attention_fits`]): one op, run by such
    /// batches only, beside [`OpBuilder::attention`]'s exact op (which
    /// smaller batches keep).
    pub fn attention_flash(
        &self,
        q: &wgpu::Buffer,
        k_cache: &wgpu::Buffer,
        v_cache: &wgpu::Buffer,
        out: &wgpu::Buffer,
        params: AttnParams,
        min_tokens: u32,
    ) -> Op {
        let pb = self.ctx.uniform("attention", bytemuck::bytes_of(&params));
        let kernel = Kernel::AttentionFlash(params.head_dim.div_ceil(64));
        Op {
            label: "attention",
            pipeline: self.ctx.pipeline(kernel),
            pipeline_mm: None,
            variants: Vec::new(),
            bind_group: self.bind(kernel, &[q, k_cache, v_cache, out, &pb, self.step]),
            grid: Grid::TokenTiles {
                tile: FLASH_QUERIES,
                y: params.n_head,
                min_tokens,
            },
            _params: pb,
        }
    }

    /// The ops of a fast attention, sharing `bind_group`: for contexts of
    /// up to [`SOLO_MAX_KV`] positions `solo` (one workgroup a head, the
    /// output written directly), for longer ones `split` and its combining
    /// op. A step records one or the other.
    fn split_attention(
        &self,
        (split, solo): (Kernel, Kernel),
        bind_group: wgpu::BindGroup,
        pb: wgpu::Buffer,
        params: &AttnParams,
    ) -> Vec<Op> {
        let op = |kernel: Kernel, grid: Grid| Op {
            label: "attention",
            pipeline: self.ctx.pipeline(kernel),
            pipeline_mm: None,
            variants: Vec::new(),
            bind_group: bind_group.clone(),
            grid,
            _params: pb.clone(),
        };
        let h = params.n_head;
        vec![
            op(solo, Grid::Context([h, 1], SOLO_MAX_KV, true)),
            op(split, Grid::Context([h, params.splits], SOLO_MAX_KV, false)),
            op(
                Kernel::AttentionCombine,
                Grid::Context([h, 1], SOLO_MAX_KV, false),
            ),
        ]
    }

    /// The fast mode's single-token attention with RoPE and the cache writes
    /// inside (`attn_rope_decode`): the token's query, key and value are
    /// read from `qkv` (a stacked projection's output) as `rope` says, the
    /// query and key rotated with `table`, the key and value stored in the
    /// caches at the step's position (the query and key first normed per
    /// head with the weights in `norm` where `rope.qk_norm` says; the value
    /// read from the cache where `rope.v_cached`). Only where
    /// [`fast_attention_fits`]. The split op and its combining op, as
    /// [`OpBuilder::attention`].
    #[allow(clippy::too_many_arguments)]
    pub fn attention_rope(
        &self,
        qkv: &wgpu::Buffer,
        k_cache: &wgpu::Buffer,
        v_cache: &wgpu::Buffer,
        out: &wgpu::Buffer,
        mut params: AttnParams,
        table: &wgpu::Buffer,
        rope: RopeFuse,
        norm: &wgpu::Buffer,
        partials: &wgpu::Buffer,
    ) -> Vec<Op> {
        params.splits = attention_splits(params.n_head);
        let pb = self.ctx.uniform("attention", bytemuck::bytes_of(&params));
        let rb = self
            .ctx
            .uniform("attention_rope", bytemuck::bytes_of(&rope));
        let kernel = Kernel::AttentionFastRope(false);
        let bind_group = self.bind(
            kernel,
            &[
                qkv, k_cache, v_cache, out, &pb, self.step, table, &rb, partials, norm,
            ],
        );
        let kernels = (kernel, Kernel::AttentionFastRope(true));
        self.split_attention(kernels, bind_group, pb, &params)
    }

    /// `y = a + b` (`Kernel::Add`) or `y = silu(a)·b` (`Kernel::Swiglu`).
    #[allow(clippy::too_many_arguments)]
    pub fn binary(
        &self,
        kernel: Kernel,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        y: &wgpu::Buffer,
        params: EwParams,
        dummy: &wgpu::Buffer,
    ) -> Op {
        let grid = Grid::PerToken([params.n.div_ceil(256), 1]);
        self.kernel_op(
            kernel.entry_point(),
            kernel,
            &params,
            [a, b, y],
            Some(dummy),
            grid,
        )
    }

    /// A `scale.wgsl` op over `params.n` values of `y` (`kernel`: Geglu,
    /// Scale, Softcap or ScaleRows), reading `a`, `b` and the gelu `table`.
    pub fn scale_op(
        &self,
        kernel: Kernel,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        y: &wgpu::Buffer,
        table: &wgpu::Buffer,
        params: ScaleParams,
    ) -> Op {
        let [x, gy] = rows_grid(params.n.div_ceil(256));
        let grid = Grid::Fixed([x, gy, 1]);
        self.kernel_op(
            kernel.entry_point(),
            kernel,
            &params,
            [a, b, y],
            Some(table),
            grid,
        )
    }

    /// Rounds `n` activations per token of `x` to `act` (Q8_0, Q8_1, Q8_K)
    /// as ggml quantizes them, into `y`: as f32 d·q, or with `packed` in the layout of
    /// `act_quant.wgsl` that the exact products read (quants, `y_stride / 4`
    /// words per token; two scales per block of 32 from `corr_base`).
    #[allow(clippy::too_many_arguments)]
    pub fn quantize_act(
        &self,
        act: GgmlType,
        packed: bool,
        x: &wgpu::Buffer,
        x_stride: u32,
        y: &wgpu::Buffer,
        y_stride: u32,
        n: u32,
        corr_base: u32,
    ) -> Op {
        let params = EwParams {
            n,
            a_stride: x_stride,
            b_stride: if packed { y_stride / 4 } else { y_stride },
            y_stride: corr_base,
            ..Default::default()
        };
        let pb = self
            .ctx
            .uniform("quantize_act", bytemuck::bytes_of(&params));
        let kernel = Kernel::QuantizeAct(act, packed);
        Op {
            label: "quantize_act",
            pipeline: self.ctx.pipeline(kernel),
            pipeline_mm: None,
            variants: Vec::new(),
            bind_group: self.bind(kernel, &[x, y, &pb, self.step]),
            grid: Grid::PerToken([n.div_ceil(256), 1]),
            _params: pb,
        }
    }

    /// `token[t] = argmax(a[t, ..n])` for `tokens` rows of `a`.
    #[allow(clippy::too_many_arguments)]
    pub fn argmax(
        &self,
        a: &wgpu::Buffer,
        n: u32,
        a_stride: u32,
        tokens: u32,
        token: &wgpu::Buffer,
        dummy: &wgpu::Buffer,
        dummy_rw: &wgpu::Buffer,
    ) -> Op {
        let params = EwParams {
            n,
            a_stride,
            b_stride: 0,
            y_stride: 0,
            ..Default::default()
        };
        let pb = self.ctx.uniform("argmax", bytemuck::bytes_of(&params));
        let kernel = Kernel::Argmax;
        Op {
            label: "argmax",
            pipeline: self.ctx.pipeline(kernel),
            pipeline_mm: None,
            variants: Vec::new(),
            bind_group: self.bind(kernel, &[a, dummy, dummy_rw, &pb, self.step, token]),
            grid: Grid::Fixed([1, 1, tokens]),
            _params: pb,
        }
    }

    /// `moe.wgsl`'s product: `y[j, y_base + r] = W_e[r] · xv(x row j / x_share)`
    /// for the `slots` rows j of each token, e the expert `routing` gives j
    /// (`routed`), else the first (the router: `slots` 1). `prologue` 2
    /// multiplies silu(gate)·up of a row of x whose up values start `aux`
    /// floats after its gate values; `x` is `(buffer, row stride, x_share)`.
    #[allow(clippy::too_many_arguments)]
    pub fn moe_mv(
        &self,
        label: &'static str,
        w: &MoeMatrix,
        (routed, prologue, aux): (bool, u32, u32),
        (x, x_stride, x_share): (&wgpu::Buffer, u32, u32),
        (y, y_stride, y_base): (&wgpu::Buffer, u32, u32),
        routing: &wgpu::Buffer,
        slots: u32,
    ) -> Op {
        let params = w.params((x_stride, x_share), (y_stride, y_base), aux);
        self.kernel_op(
            label,
            Kernel::MoeMv(w.ty, routed, prologue),
            &params,
            [&w.buffer, x, y],
            Some(routing),
            Grid::PerTokenTimes(rows_grid(w.m.div_ceil(256 / MATVEC_LANES)), slots),
        )
    }

    /// `moe.wgsl`'s lists of each expert's pairs for the grouped products
    /// ([`OpBuilder::moe_mm`]): for each of `n_expert` experts, the (token,
    /// slot) pairs `routing` sends to it (`n_used` slots a token) into
    /// `lists` (`n_expert · (n_tokens + 1)` floats), for batches of
    /// `min_tokens` or more.
    pub fn moe_bucket(
        &self,
        routing: &wgpu::Buffer,
        (n_expert, n_used): (u32, u32),
        lists: &wgpu::Buffer,
        dummy: &wgpu::Buffer,
        min_tokens: u32,
    ) -> Op {
        let params = MatParams {
            m: n_used,
            ..Default::default()
        };
        self.kernel_op(
            "moe_bucket",
            Kernel::MoeBucket,
            &params,
            [dummy, dummy, lists],
            Some(routing),
            Grid::Experts {
                tile: u32::MAX,
                y: 1,
                experts: n_expert,
                min_tokens,
            },
        )
    }

    /// The grouped form of [`OpBuilder::moe_mv`]'s routed product, for
    /// batches of `min_tokens` or more: each expert's pairs (as
    /// [`OpBuilder::moe_bucket`] listed them in `lists`) multiplied as one
    /// batch by [`Kernel::MoeMm`] (`mm_coop` where the device has
    /// cooperative matrices, else `mm_fast`; `coop` forces one), the same
    /// outputs in the same rows. Arguments as [`OpBuilder::moe_mv`]'s.
    #[allow(clippy::too_many_arguments)]
    pub fn moe_mm(
        &self,
        label: &'static str,
        w: &MoeMatrix,
        (prologue, aux): (u32, u32),
        (x, x_stride, x_share): (&wgpu::Buffer, u32, u32),
        (y, y_stride, y_base): (&wgpu::Buffer, u32, u32),
        (lists, n_expert): (&wgpu::Buffer, u32),
        (min_tokens, coop): (u32, Option<bool>),
    ) -> Op {
        let params = w.params((x_stride, x_share), (y_stride, y_base), aux);
        let kind = self.mm_kind(coop);
        self.kernel_op(
            label,
            Kernel::MoeMm(w.ty, kind, prologue),
            &params,
            [&w.buffer, x, y],
            Some(lists),
            Grid::Experts {
                tile: MM_FAST_TOKENS,
                y: w.m.div_ceil(kind.rows()),
                experts: n_expert,
                min_tokens,
            },
        )
    }

    /// `moe.wgsl`'s routing: for each token, from its `n_expert` router
    /// logits (rows of `logits_stride` floats), the `n_used` experts and
    /// their weights ([`Kernel::MoeRoute`]'s gating, times `scale`) into
    /// `routing` (two floats a (token, slot): expert, weight).
    #[allow(clippy::too_many_arguments)]
    pub fn moe_route(
        &self,
        (gating, normalize, scale): (u32, bool, f32),
        (logits, logits_stride): (&wgpu::Buffer, u32),
        n_expert: u32,
        n_used: u32,
        routing: &wgpu::Buffer,
        dummy: &wgpu::Buffer,
    ) -> Op {
        let params = MatParams {
            k: n_expert,
            m: n_used,
            x_stride: logits_stride,
            pad: [0, 0, scale.to_bits()],
            ..Default::default()
        };
        self.kernel_op(
            "moe_route",
            Kernel::MoeRoute(gating, normalize),
            &params,
            [dummy, logits, routing],
            Some(dummy),
            Grid::PerToken([1, 1]),
        )
    }

    /// `moe.wgsl`'s sum: `y[t] = Σ_s weight(t, s) · down[t · n_used + s]`
    /// over rows of `width` values (`down`'s rows `down_stride` floats apart),
    /// added to y's values with `accumulate` (a residual sum in the same
    /// dispatch).
    pub fn moe_sum(
        &self,
        (down, down_stride): (&wgpu::Buffer, u32),
        width: u32,
        n_used: u32,
        routing: &wgpu::Buffer,
        (y, y_stride, accumulate): (&wgpu::Buffer, u32, bool),
        dummy: &wgpu::Buffer,
    ) -> Op {
        let params = MatParams {
            k: width,
            m: n_used,
            x_stride: down_stride,
            y_stride,
            accumulate: u32::from(accumulate),
            ..Default::default()
        };
        self.kernel_op(
            "moe_sum",
            Kernel::MoeSum,
            &params,
            [dummy, down, y],
            Some(routing),
            Grid::PerToken(rows_grid(width.div_ceil(256))),
        )
    }
}

/// The experts of one product of a mixture of experts in one buffer for
/// `moe.wgsl` (expert e's `m` rows from byte `e · expert_bytes`), stacked
/// on the GPU from the per-expert matrices the backend loaded.
#[derive(Clone, Debug)]
pub(crate) struct MoeMatrix {
    /// Every expert's raw GGUF block bytes, one after the other.
    pub buffer: wgpu::Buffer,
    /// Block format.
    pub ty: GgmlType,
    /// Weights per row.
    pub k: u32,
    /// Rows per expert.
    pub m: u32,
    /// Bytes per row.
    pub row_bytes: u32,
    /// Bytes per expert (0: one matrix, the router).
    pub expert_bytes: u32,
}

impl MoeMatrix {
    /// The products' parameters (`moe.wgsl`'s and the gathered `mm_fast`'s
    /// MatParams): activations in rows of `x_stride` floats, `x_share`
    /// tokens a row (quant.wgsl's x_base), outputs in rows of `y_stride`
    /// from `y_base`, the up values `aux` floats after the gate's (SwiGLU's
    /// prologue), the expert's bytes as corr_base.
    fn params(
        &self,
        (x_stride, x_share): (u32, u32),
        (y_stride, y_base): (u32, u32),
        aux: u32,
    ) -> MatParams {
        MatParams {
            k: self.k,
            m: self.m,
            row_bytes: self.row_bytes,
            x_stride,
            y_stride,
            y_base,
            accumulate: 0,
            at_pos: 0,
            corr_base: self.expert_bytes,
            pad: [x_share, aux / 4, 0],
        }
    }

    /// A single matrix as a `MoeMatrix` of one expert (the router), if it
    /// is one part.
    pub fn single(w: &GpuMatrix) -> Option<MoeMatrix> {
        match w.parts.as_slice() {
            [part] => Some(MoeMatrix {
                buffer: part.buffer.clone(),
                ty: w.ty,
                k: w.k,
                m: w.m,
                row_bytes: w.row_bytes,
                expert_bytes: 0,
            }),
            _ => None,
        }
    }

    /// The experts' matrices stacked into one buffer: expert e's rows are
    /// those of `experts[e]`'s matrices in turn (gate then up, say). `None`
    /// where they differ in type or row length, are split in parts, have
    /// byte counts that are not whole words (GPU copies move words) or do
    /// not fit one binding together.
    pub fn stack(
        ctx: &GpuContext,
        label: &str,
        experts: &[Vec<&GpuMatrix>],
    ) -> Result<Option<MoeMatrix>> {
        let Some(first) = experts.first().and_then(|e| e.first()) else {
            return Ok(None);
        };
        let (ty, k, row_bytes) = (first.ty, first.k, first.row_bytes);
        let rows = |e: &Vec<&GpuMatrix>| e.iter().map(|w| w.m as u64).sum::<u64>();
        let m = rows(&experts[0]);
        let uniform = experts.iter().all(|e| rows(e) == m)
            && experts.iter().flatten().all(|w| {
                w.ty == ty && w.k == k && w.parts.len() == 1 && w.n_bytes().is_multiple_of(4)
            });
        let expert_bytes = m * row_bytes as u64;
        let total = expert_bytes * experts.len() as u64 + 16;
        if !uniform || total > ctx.max_binding() || expert_bytes > u32::MAX as u64 {
            return Ok(None);
        }
        let buffer = ctx.try_storage(label, total)?;
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        let mut at = 0;
        for w in experts.iter().flatten() {
            encoder.copy_buffer_to_buffer(&w.parts[0].buffer, 0, &buffer, at, w.n_bytes());
            at += w.n_bytes();
        }
        ctx.queue.submit([encoder.finish()]);
        Ok(Some(MoeMatrix {
            buffer,
            ty,
            k,
            m: m as u32,
            row_bytes,
            expert_bytes: expert_bytes as u32,
        }))
    }
}

/// What the fast mode's single-token product ([`OpBuilder::fmv`]) reads as
/// its activations (offsets in floats, multiples of 4).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Prologue<'b> {
    /// x from `base`.
    Plain { x: &'b wgpu::Buffer, base: u32 },
    /// RMSNorm of x from `base`, times `weight`.
    Norm {
        x: &'b wgpu::Buffer,
        base: u32,
        weight: &'b wgpu::Buffer,
        eps: f32,
    },
    /// silu(gate)·up.
    Swiglu {
        gate: &'b wgpu::Buffer,
        gate_base: u32,
        up: &'b wgpu::Buffer,
        up_base: u32,
    },
    /// gelu(gate)·up (ggml's tanh form).
    Geglu {
        gate: &'b wgpu::Buffer,
        gate_base: u32,
        up: &'b wgpu::Buffer,
        up_base: u32,
    },
}

/// Whether the fast single-token attention (`attn_fast.wgsl`) takes these
/// heads: it keeps a head's query in 64 vec4s and a whole output per
/// invocation of its 256.
pub(crate) fn fast_attention_fits(p: &AttnParams) -> bool {
    p.head_dim <= 256 && p.head_dim.is_multiple_of(4)
}

/// Queries per workgroup of `attn_flash.wgsl` (its `BQ`).
pub(crate) const FLASH_QUERIES: u32 = 32;

/// Whether the fast batch attention (`attn_flash.wgsl`) takes these heads:
/// its invocations own up to four vec4 columns of 16 (head_dim ≤ 256).
pub(crate) fn flash_attention_fits(p: &AttnParams) -> bool {
    p.head_dim <= 256
        && p.head_dim.is_multiple_of(4)
        && p.kv_stride.is_multiple_of(4)
        && p.n_kv_head > 0
        && p.n_head.is_multiple_of(p.n_kv_head)
}

/// [`OpBuilder::attention_rope`]'s parameters (`attn_fast.wgsl`'s `RopeFuse`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(crate) struct RopeFuse {
    /// Float offsets of the query, key and value in the stacked output.
    pub q_base: u32,
    pub k_base: u32,
    pub v_base: u32,
    /// Rotated dimensions of each head.
    pub n_dims: u32,
    /// 1: NEOX pairing.
    pub neox: u32,
    /// 1: the caches hold f16-rounded values.
    pub cache_f16: u32,
    /// Bit 0: an RMSNorm of each query head before RoPE, bit 1: of each
    /// key head (their weights bound as `norm`).
    pub qk_norm: u32,
    /// 1: the value's own product wrote it into the cache (`v_base` unused).
    pub v_cached: u32,
    /// The query norm's and the key norm's epsilon.
    pub q_eps: f32,
    pub k_eps: f32,
    pub pad: [u32; 2],
}
