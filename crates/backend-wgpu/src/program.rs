//! A model graph compiled into the GPU's dispatch schedule.
//!
//! [`GpuProgram::compile`] walks a [`Graph`] once and builds every op of a
//! step (pipeline, bind group, parameters), so that a step only writes the
//! step uniform and the token ids and records the prebuilt dispatches. Each
//! node gets a buffer from a pool (shared by nodes whose lifetimes do not
//! overlap) or is a view of another's ([`Op::Slice`], an output-row
//! selection of every row). The fusions are rewrites of what a node writes
//! and reads, decided from the graph before lowering:
//!
//! - products of one input are stacked into one before the weights load
//!   ([`crate::rewrite`], [`Op::Slice`] views of the parts);
//! - a norm or SwiGLU whose consumers are all products rounding their input
//!   the same way writes the rounded (packed) activations itself;
//! - a product (or a mixture of experts' weighted sum) whose only use is a
//!   residual `Add` accumulates into the residual's buffer (the add
//!   disappears);
//! - a value projection used only by attention writes into the KV cache, and
//!   RoPE of keys writes the rotated keys there (queries, keys and values of
//!   one stacked product in one dispatch; for a single token with a Q4_K
//!   stack, inside the product itself, `tg_rope.wgsl`);
//! - the rows whose logits are wanted (`Op::OutputRows`) are the batch's
//!   last row, copied once, or every row, a view; the nodes after it run on
//!   those rows only, with their own step uniform, as llama.cpp runs them;
//! - in the fast single-token step, an attention whose query and key come
//!   from one stacked product through RoPE (after per-head norms or not,
//!   the query scaled after it or not) does all of that inside
//!   `attn_rope_decode`, with the cache writes (the value from the stack,
//!   or already in the cache);
//!   a post-norm read only by a residual sum is one `norm_add` dispatch
//!   with it; GeGLU, like SwiGLU and norms, is the prologue of the product
//!   reading it;
//! - an embedding lookup read only by a scale writes the scaled rows;
//! - in the fast mode, a mixture of experts is five dispatches (`moe.wgsl`):
//!   router, routing, the chosen experts' gate/up and down products over
//!   the stacked experts (one row of products per token and slot, the
//!   expert read from the routing), their weighted sum (into the residual,
//!   as a product's); batches of [`crate::ops::MOE_MM_MIN_TOKENS`] or more
//!   list each expert's (token, slot) pairs instead (`moe_bucket`) and
//!   multiply them as one batch an expert (`mm_coop` or `mm_fast`
//!   gathered: llama.cpp's mul_mat_id, [`moe_mm_coop`]), the expert's
//!   weights read once a tile.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use gguf_format::GgmlType;
use tensor_core::graph::{ExpertAct, Gating, Graph, Moe, NodeId, Op as GOp, WeightId};
use tensor_core::{RopeMode, RopeParams as TcRope};

use crate::device::GpuContext;
use crate::error::{Result, WgpuError};
use crate::kernels::{act_type, is_exact, Kernel};
use crate::ops::{
    attention_partials_bytes, fast_attention_fits, flash_attention_fits, mm_part_floats,
    mm_split_target, mm_splits, AttnParams, EwParams, GpuMatrix, Grid, MoeMatrix, Op, OpBuilder,
    Prologue, RopeFuse, RopeParams, ScaleParams, StepUniform, TgRopeParams, FAST_MM_MIN_TOKENS,
    MOE_MM_MIN_TOKENS,
};
use crate::seam::GpuWeight;

/// Whether a mixture of experts' grouped products take `mm_coop` (its
/// gathered mode, quant.wgsl's `MM_GATHER`) where the device has
/// cooperative matrices: the device's choice (`None`). On an H100
/// (2026-12-07 22:23) `kernels::moe_grouped_products_match_reference` passed
/// with it, and qwen3moe-small Q4_K_M's pp512 went from 28,951 t/s with
/// `mm_fast` to 35,501. `STRATA_MOE_COOP=0` keeps `mm_fast` (measurement
/// only).
fn moe_mm_coop() -> Option<bool> {
    match std::env::var("STRATA_MOE_COOP").as_deref() {
        Ok("0") => Some(false),
        _ => None,
    }
}

/// Most greedy tokens [`GpuProgram::generate_greedy`] makes in one call.
const MAX_GENERATED: u32 = 4096;

/// The most rows one dispatch takes in its z dimension.
const MAX_DISPATCH_ROWS: u32 = 65535;

/// GPU time per op label for one step, from timestamp queries.
#[derive(Clone, Debug, Default)]
pub struct StepProfile {
    /// (op label, dispatches, total nanoseconds), largest first.
    pub per_label: Vec<(&'static str, u32, f64)>,
    /// Sum of the dispatches' GPU time.
    pub total_ns: f64,
    /// Dispatches in the step.
    pub dispatches: u32,
}

/// Where a node's values are: row `t` at float `base + t·stride` of `buf`.
#[derive(Clone, Debug)]
struct Loc {
    buf: usize,
    base: u32,
    stride: u32,
}

/// A rounding of activations for products: the type and whether packed.
type ActKey = (GgmlType, bool);

/// What a product of the fast mode's single-token step reads: a node's
/// values, or those of a node that step never writes, made by the products
/// reading it as they read them ([`Prologue`]).
#[derive(Clone, Debug)]
enum Virtual {
    /// The values at `x`.
    Plain { x: Loc },
    /// RMSNorm of `x` times `weight`.
    Norm {
        x: Loc,
        weight: wgpu::Buffer,
        eps: f32,
    },
    /// silu(gate)·up.
    Swiglu { gate: Loc, up: Loc },
    /// gelu(gate)·up.
    Geglu { gate: Loc, up: Loc },
}

/// An interned op label (a short name for profiles: `attn_output`, `rope`).
fn label(name: &str) -> &'static str {
    static LABELS: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut set = LABELS.lock().unwrap_or_else(|e| e.into_inner());
    let set = set.get_or_insert_with(HashSet::new);
    if let Some(l) = set.get(name) {
        return l;
    }
    let l: &'static str = Box::leak(name.to_string().into_boxed_str());
    set.insert(l);
    l
}

/// A weight's short name: `blk.3.attn_q.weight` → `attn_q`.
fn weight_label(g: &Graph, w: WeightId) -> &'static str {
    let short = |t: &str| {
        let t = t.strip_suffix(".weight").unwrap_or(t);
        match t.strip_prefix("blk.") {
            Some(rest) => rest.split_once('.').map_or(rest, |(_, s)| s).to_string(),
            None => t.to_string(),
        }
    };
    let spec = &g.weights[w.0];
    let mut name = short(&spec.tensor);
    for part in &spec.stack {
        name.push('+');
        name.push_str(&short(&part.tensor));
    }
    label(&name)
}

/// A model graph as prebuilt GPU ops over one sequence's KV cache.
pub struct GpuProgram {
    ctx: Arc<GpuContext>,
    n_ctx: u32,
    max_batch: u32,
    logits_rows: u32,
    n_vocab: u32,
    step: wgpu::Buffer,
    step_out: wgpu::Buffer,
    ids: wgpu::Buffer,
    logits: wgpu::Buffer,
    generated: wgpu::Buffer,
    /// The nodes before the first output-row selection, over every token.
    body: Vec<Op>,
    /// The rest for the last token's row: its copies, then ops over one row.
    tail_last: Vec<Op>,
    /// The rest for every row (also a single token's step, unless `decode`).
    tail_all: Vec<Op>,
    /// The fast mode's single-token step (float activations, norms and
    /// SwiGLUs made inside the products); `None` in exact mode.
    decode: Option<Vec<Op>>,
    argmax: Op,
    /// A one-token step recorded while the GPU ran the previous one (with
    /// the argmax or not).
    prerecorded: Option<(bool, u32, wgpu::CommandBuffer)>,
    /// Labels of ops single-token steps leave out ([`GpuProgram::leave_out`]).
    left_out: Vec<String>,
    weight_bytes: u64,
    _keep: Vec<wgpu::Buffer>,
    _weights: Vec<GpuMatrix>,
}

impl std::fmt::Debug for GpuProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuProgram")
            .field("n_ctx", &self.n_ctx)
            .field("max_batch", &self.max_batch)
            .field("dispatches", &(self.body.len() + self.tail_all.len()))
            .field("fast", &self.decode.is_some())
            .finish_non_exhaustive()
    }
}

/// Decisions made from the whole graph before lowering.
struct Plan {
    consumers: Vec<Vec<NodeId>>,
    /// The last node (in lowering order) that reads each node.
    last_use: Vec<usize>,
    /// RoPE nodes lowered at the attention that reads them.
    deferred: Vec<bool>,
    /// A product accumulating into this residual (its `Add` disappears).
    accum_into: Vec<Option<NodeId>>,
    /// `Add` nodes whose value is the residual a product accumulated into.
    accum_add: Vec<Option<NodeId>>,
    /// Norms / SwiGLUs writing rounded activations for all their consumers.
    fused_act: Vec<Option<ActKey>>,
    /// Value products writing straight into the KV cache of this attention.
    v_direct: Vec<Option<NodeId>>,
    /// Attentions the fast step computes from their stacked projection
    /// with `attn_rope_decode` (norms, RoPE, query scale and cache writes
    /// inside), found from the graph's shape alone so that the nodes on the
    /// way can be left out before the attention is reached.
    fast_attn: Vec<Option<FastAttn>>,
    /// Nodes the fast step leaves to the attention of `fast_attn` or the
    /// `Add` of `norm_add` reading them.
    fast_skip: Vec<bool>,
    /// `Add` nodes the fast step computes with the RMSNorm that is one of
    /// their operands and read by nothing else (a post-norm before a
    /// residual sum, Gemma's): one `norm_add` dispatch.
    norm_add: Vec<Option<NodeId>>,
    /// The first output-row selection (where the tails start).
    tail_start: usize,
}

/// The query's or key's way from a stacked projection to an attention:
/// a per-head RMSNorm (or none), RoPE, a scale (or none), each read only by
/// the next.
#[derive(Clone, Debug)]
struct QkChain {
    /// The slice of the stacked projection it starts from.
    src: NodeId,
    /// The rotation and its frequency factors.
    rope: TcRope,
    factors: Option<WeightId>,
    /// The per-head norm's weight (`head_dim` values) and epsilon.
    norm: Option<(WeightId, f32)>,
    /// The factor after RoPE (1: none).
    scale: f32,
    /// The chain's nodes (the norm, RoPE, the scale).
    members: Vec<NodeId>,
}

/// An attention of [`Plan::fast_attn`]: query and key chains from slices of
/// one stacked product, and the value a slice of it too, or (`None`) one
/// its own product writes into the cache ([`Plan::v_direct`]).
#[derive(Clone, Debug)]
struct FastAttn {
    q: QkChain,
    k: QkChain,
    v: Option<NodeId>,
}

/// The chain from `x` (an attention's query or key input) back to a slice,
/// if it is one of [`QkChain`]'s shape (`heads` heads of `head_dim`).
fn qk_chain(
    g: &Graph,
    consumers: &[Vec<NodeId>],
    x: NodeId,
    (heads, head_dim): (usize, usize),
) -> Option<QkChain> {
    let only_into = |n: NodeId, c: NodeId| consumers[n.0] == [c];
    let attn = *consumers[x.0].first()?;
    let (mut cur, mut next) = (x, attn);
    let mut members = Vec::new();
    let mut scale = 1.0;
    if let GOp::Scale { x: inner, s } = g.node(cur).op {
        if !only_into(cur, next) || !s.is_normal() {
            return None;
        }
        scale = s;
        members.push(cur);
        (next, cur) = (cur, inner);
    }
    let GOp::Rope {
        x: inner,
        n_heads,
        params,
        factors,
    } = g.node(cur).op
    else {
        return None;
    };
    if !only_into(cur, next) || params.head_dim != head_dim || n_heads != heads {
        return None;
    }
    members.push(cur);
    (next, cur) = (cur, inner);
    let mut norm = None;
    if let GOp::RmsNorm {
        x: inner,
        weight,
        eps,
    } = g.node(cur).op
    {
        if !only_into(cur, next) || g.weights[weight.0].shape.first() != Some(&head_dim) {
            return None;
        }
        norm = Some((weight, eps));
        members.push(cur);
        cur = inner;
    }
    matches!(g.node(cur).op, GOp::Slice { .. }).then_some(QkChain {
        src: cur,
        rope: params,
        factors,
        norm,
        scale,
        members,
    })
}

/// [`Plan::fast_attn`]: attentions whose query and key chains start from
/// one stacked product, with one rotation and the key unscaled, heads
/// `attn_fast.wgsl` takes, and the value beside them or written by its
/// product into the cache.
fn fast_attentions(
    g: &Graph,
    consumers: &[Vec<NodeId>],
    v_direct: &[Option<NodeId>],
) -> Vec<Option<FastAttn>> {
    let stack_of = |x: NodeId| match g.node(x).op {
        GOp::Slice { x, .. } => Some(x),
        _ => None,
    };
    let mut out = vec![None; g.nodes.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        let GOp::Attention {
            q,
            k,
            v,
            params,
            sinks: None,
            ..
        } = &node.op
        else {
            continue;
        };
        let fits = fast_attention_fits(&AttnParams {
            head_dim: params.head_dim as u32,
            ..Default::default()
        });
        if !fits || q == k {
            continue;
        }
        let (Some(cq), Some(ck)) = (
            qk_chain(g, consumers, *q, (params.n_head, params.head_dim)),
            qk_chain(g, consumers, *k, (params.n_head_kv, params.head_dim)),
        ) else {
            continue;
        };
        let stack = stack_of(cq.src);
        if stack.is_none()
            || stack_of(ck.src) != stack
            || cq.rope != ck.rope
            || cq.factors != ck.factors
            || ck.scale != 1.0
        {
            continue;
        }
        let v = if stack_of(*v) == stack {
            Some(*v)
        } else if v_direct[v.0] == Some(NodeId(i)) {
            None
        } else {
            continue;
        };
        out[i] = Some(FastAttn { q: cq, k: ck, v });
    }
    out
}

/// Whether the fast step multiplies `w` on float activations (fast.wgsl's
/// `fmv`, or fast_wide.wgsl's `fmv_wide` where [`crate::kernels::wide_fits`])
/// on a device with (`subgroup32`) or without 32-wide subgroups. K-quant
/// matrices keep the exact path where [`crate::kernels::fast_keeps_exact`]
/// (its single-token kernels outran `fmv_wide`), and where `fmv_wide` does
/// not take them: their kernels with 16-byte loads (quant_tg.wgsl) outran
/// `fmv`'s word-wise decoding too (on an H200, TinyLlama Q4_K_M decoded at
/// 527 t/s with `fmv` for every K-quant against 608 exact, while Q8_0 went
/// from 430 to 552 t/s and F16 stayed at 560).
fn fast_product(w: &GpuMatrix, subgroup32: bool) -> bool {
    if crate::kernels::fast_keeps_exact(w.ty, subgroup32) {
        return false;
    }
    match w.ty {
        GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => {
            crate::kernels::wide_fits(w.ty, w.row_bytes)
        }
        _ => true,
    }
}

/// The rounding a product with `w` needs of its input (`None`: none).
fn act_key(w: &GpuMatrix) -> Option<ActKey> {
    act_type(w.ty).map(|a| (a, is_exact(w.ty, w.m)))
}

fn matrix(weights: &[GpuWeight], id: WeightId) -> Result<&GpuMatrix> {
    match &weights[id.0] {
        GpuWeight::Matrix(m) => Ok(m),
        GpuWeight::Vector { .. } => Err(WgpuError::Model(format!(
            "weight {} is a vector where a matrix is needed",
            id.0
        ))),
    }
}

fn vector(weights: &[GpuWeight], id: WeightId) -> Result<(&wgpu::Buffer, &[f32])> {
    match &weights[id.0] {
        GpuWeight::Vector { buffer, host } => Ok((buffer, host)),
        GpuWeight::Matrix(_) => Err(WgpuError::Model(format!(
            "weight {} is a matrix where a vector is needed",
            id.0
        ))),
    }
}

impl Plan {
    fn new(g: &Graph, weights: &[GpuWeight]) -> Result<Plan> {
        let n = g.nodes.len();
        let consumers = g.consumers();
        let only = |x: NodeId| -> Option<NodeId> {
            match consumers[x.0].as_slice() {
                [c] => Some(*c),
                _ => None,
            }
        };
        let mut deferred = vec![false; n];
        let mut v_direct = vec![None; n];
        for (i, node) in g.nodes.iter().enumerate() {
            if let GOp::Attention { q, k, v, .. } = node.op {
                for x in [q, k] {
                    if matches!(g.node(x).op, GOp::Rope { .. }) && only(x) == Some(NodeId(i)) {
                        deferred[x.0] = true;
                    }
                }
                if let GOp::MatMul { bias: None, .. } = g.node(v).op {
                    if only(v) == Some(NodeId(i)) && v != q && v != k {
                        v_direct[v.0] = Some(NodeId(i));
                    }
                }
            }
        }
        let fast_attn = fast_attentions(g, &consumers, &v_direct);
        // The nodes the fast step leaves to the attention or sum reading
        // them (at that index), and the nodes it reads there instead.
        let mut fast_at = vec![None; n];
        let mut fast_reads: Vec<(NodeId, usize)> = Vec::new();
        for (a, fa) in fast_attn.iter().enumerate() {
            for m in fast_attn_members(fa) {
                fast_at[m.0] = Some(a);
            }
            if let Some(fa) = fa {
                fast_reads.extend([(fa.q.src, a), (fa.k.src, a)]);
            }
        }
        let mut norm_add = vec![None; n];
        for (i, node) in g.nodes.iter().enumerate() {
            let GOp::Add { a, b } = node.op else { continue };
            let post_norm = |x: NodeId| match g.node(x).op {
                GOp::RmsNorm { weight, .. } => {
                    g.weights[weight.0].shape.first() == Some(&node.width)
                        && g.node(x).width == node.width
                        && only(x) == Some(NodeId(i))
                        && x != g.output
                        && fast_at[x.0].is_none()
                }
                _ => false,
            };
            // Not beside a product, which might accumulate into the norm's
            // values (`accum_into`), which the fast step never writes.
            let product = |x: NodeId| matches!(g.node(x).op, GOp::MatMul { .. } | GOp::Moe { .. });
            if product(a) || product(b) {
                continue;
            }
            if let Some(x) = [a, b].into_iter().find(|&x| a != b && post_norm(x)) {
                norm_add[i] = Some(x);
                fast_at[x.0] = Some(i);
                fast_reads.extend(g.node(x).op.inputs().into_iter().map(|y| (y, i)));
            }
        }
        // Where each node is read, with deferred ropes read at their
        // attention (and what the fast step reads later than the graph).
        let mut last_use: Vec<usize> = (0..n).collect();
        for (i, node) in g.nodes.iter().enumerate() {
            let at = if deferred[i] {
                only(NodeId(i)).expect("deferred").0
            } else {
                i
            };
            for x in node.op.inputs() {
                last_use[x.0] = last_use[x.0].max(at);
            }
            for x in &consumers[i] {
                last_use[i] = last_use[i].max(x.0);
            }
        }
        for (x, at) in fast_reads {
            last_use[x.0] = last_use[x.0].max(at);
        }
        last_use[g.output.0] = usize::MAX;
        let tail_start = g
            .nodes
            .iter()
            .position(|nd| matches!(nd.op, GOp::OutputRows { .. }))
            .unwrap_or(n);
        // A product accumulating into the residual it is added to.
        let mut accum_into = vec![None; n];
        let mut accum_add = vec![None; n];
        for (i, node) in g.nodes.iter().enumerate() {
            let GOp::Add { a, b } = node.op else { continue };
            for (m, r) in [(b, a), (a, b)] {
                let x = match g.node(m).op {
                    GOp::MatMul { x, bias: None, .. } | GOp::Moe { x, .. } => x,
                    _ => continue,
                };
                let ok = only(m) == Some(NodeId(i))
                    && last_use[r.0] == i
                    && r.0 < m.0
                    && x != r
                    && (m.0 + 1..i).all(|j| !g.nodes[j].op.inputs().contains(&r))
                    && !matches!(g.node(r).op, GOp::Slice { .. })
                    && v_direct[m.0].is_none()
                    && (m.0 < tail_start) == (r.0 < tail_start)
                    && r.0 != g.output.0;
                if ok {
                    accum_into[m.0] = Some(r);
                    accum_add[i] = Some(r);
                    break;
                }
            }
        }
        // Norms and SwiGLUs whose consumers are all products of one rounding,
        // with no other rounding into that buffer until the last of them.
        let mut fused_act = vec![None; n];
        let key_of = |m: NodeId| -> Option<Option<ActKey>> {
            match g.node(m).op {
                GOp::MatMul { w, .. } => matrix(weights, w).ok().map(act_key),
                _ => None,
            }
        };
        for (i, node) in g.nodes.iter().enumerate() {
            let full_norm = match node.op {
                GOp::RmsNorm { weight, .. } => g.weights[weight.0].shape[0] == node.width,
                GOp::Swiglu { .. } => true,
                _ => false,
            };
            if !full_norm || consumers[i].is_empty() || i == g.output.0 {
                continue;
            }
            let keys: Option<Vec<Option<ActKey>>> =
                consumers[i].iter().map(|&c| key_of(c)).collect();
            let Some(keys) = keys else { continue };
            let Some(Some(key)) = keys.first().copied() else {
                continue;
            };
            if keys.iter().any(|k| *k != Some(key)) || key == (GgmlType::Q8_1, false) {
                continue;
            }
            let last = consumers[i].iter().map(|c| c.0).max().expect("consumers");
            // Every node in between that rounds activations reads this one.
            let clash = (i + 1..last).any(|j| match g.nodes[j].op {
                GOp::MatMul { x, .. } => x.0 != i,
                GOp::RmsNorm { .. } | GOp::Swiglu { .. } | GOp::Moe { .. } => true,
                _ => false,
            });
            if !clash && (i < tail_start) == (last < tail_start) {
                fused_act[i] = Some(key);
            }
        }
        Ok(Plan {
            consumers,
            last_use,
            deferred,
            accum_into,
            accum_add,
            fused_act,
            v_direct,
            fast_skip: fast_at.iter().map(Option::is_some).collect(),
            fast_attn,
            norm_add,
            tail_start,
        })
    }
}

/// The nodes a [`FastAttn`] leaves out (none for `None`).
fn fast_attn_members(fa: &Option<FastAttn>) -> impl Iterator<Item = NodeId> + '_ {
    fa.iter()
        .flat_map(|fa| fa.q.members.iter().chain(&fa.k.members).copied())
}

/// The state of lowering: buffers, their users, and what the rounded
/// activation buffers hold.
struct Lowering<'a> {
    ctx: &'a GpuContext,
    g: &'a Graph,
    weights: &'a [GpuWeight],
    plan: &'a Plan,
    max_batch: u32,
    kv_f16: bool,
    n_ctx: u32,
    /// Pool of activation buffers: (buffer, bytes, free).
    pool: Vec<(wgpu::Buffer, u64, bool)>,
    /// The last lowering index reading each pool buffer.
    pool_last: Vec<usize>,
    loc: Vec<Option<Loc>>,
    /// Rounded activations: one buffer per rounding, and the node it holds.
    acts: HashMap<ActKey, (wgpu::Buffer, Option<NodeId>)>,
    act_size: u64,
    corr_base: u32,
    /// Nodes whose own buffer holds values already rounded as `ActKey`.
    rounded: Vec<Option<ActKey>>,
    tables: Vec<(TcRope, Option<WeightId>, wgpu::Buffer)>,
    kv: HashMap<usize, (wgpu::Buffer, wgpu::Buffer, u32)>,
    /// Ops producing each node (index into the section's ops), for fusions.
    producer: HashMap<usize, usize>,
    /// `Add` nodes whose product accumulated into the residual.
    accumulated: HashSet<usize>,
    ids: wgpu::Buffer,
    logits: wgpu::Buffer,
    dummy: wgpu::Buffer,
    gelu: Option<wgpu::Buffer>,
    /// The fast attention's per-split results, shared by the layers.
    partials: Option<wgpu::Buffer>,
    /// The batch products' split partials (`mm_split.wgsl`), shared by
    /// every product, made for the first that may split.
    mm_part: Option<wgpu::Buffer>,
    weight_bytes: u64,
    /// Lowering the fast mode's single-token step.
    fast: bool,
    /// Lowering the fast mode's batches (the body and tails of a program
    /// that is not exact): norms and SwiGLUs write float activations, every
    /// product multiplies them with `mm_fast`/`mm_coop` for batches of
    /// [`FAST_MM_MIN_TOKENS`] or more, and the exact kernels of smaller
    /// batches read activations rounded for them by ops that only such
    /// batches run.
    fast_batch: bool,
    /// Nodes the fast step leaves to their products.
    virt: Vec<Option<Virtual>>,
    /// Each mixture-of-experts node's stacked weights (made once, shared
    /// by the body, the tails and the fast step).
    moe: HashMap<usize, MoeWeights>,
    /// Buffers made for ops (the fast attention's norm weights), kept with
    /// the program.
    extra: Vec<wgpu::Buffer>,
}

/// A mixture of experts' weights as `moe.wgsl` reads them.
#[derive(Clone, Debug)]
struct MoeWeights {
    router: MoeMatrix,
    /// Gate and up rows of each expert: one matrix (gate rows then up
    /// rows), or two where their types differ, with the float offset of
    /// each one's output in a (token, slot)'s row of `2·ff` values.
    gate_up: Vec<(MoeMatrix, u32)>,
    down: MoeMatrix,
}

impl MoeWeights {
    /// The stacked weights of `moe`, or `None` where `moe.wgsl` cannot take
    /// them ([`MoeMatrix::stack`]).
    fn new(ctx: &GpuContext, weights: &[GpuWeight], moe: &Moe) -> Result<Option<MoeWeights>> {
        let Some(router) = MoeMatrix::single(matrix(weights, moe.router)?) else {
            return Ok(None);
        };
        let mats = |ids: &[WeightId]| -> Result<Vec<&GpuMatrix>> {
            ids.iter().map(|&w| matrix(weights, w)).collect()
        };
        let (gate, up, down) = (mats(&moe.gate)?, mats(&moe.up)?, mats(&moe.down)?);
        fn one<'w>(ms: &[&'w GpuMatrix]) -> Vec<Vec<&'w GpuMatrix>> {
            ms.iter().map(|m| vec![*m]).collect()
        }
        let ff = moe.ff as u32;
        let both: Vec<Vec<&GpuMatrix>> = gate.iter().zip(&up).map(|(g, u)| vec![*g, *u]).collect();
        let gate_up = match MoeMatrix::stack(ctx, "moe_gate_up", &both)? {
            Some(m) => vec![(m, 0)],
            None => {
                let (Some(g), Some(u)) = (
                    MoeMatrix::stack(ctx, "moe_gate", &one(&gate))?,
                    MoeMatrix::stack(ctx, "moe_up", &one(&up))?,
                ) else {
                    return Ok(None);
                };
                vec![(g, 0), (u, ff)]
            }
        };
        let Some(down) = MoeMatrix::stack(ctx, "moe_down", &one(&down))? else {
            return Ok(None);
        };
        Ok(Some(MoeWeights {
            router,
            gate_up,
            down,
        }))
    }
}

/// Whether `moe.wgsl` computes this mixture of experts: SiLU experts
/// without biases or a router bias, at most 256 experts, a single-part
/// router, widths of whole vec4s.
fn moe_compiles(g: &Graph, weights: &[GpuWeight], moe: &Moe) -> bool {
    let n_expert = moe.gate.len();
    let parts_ok = |ids: &[WeightId]| ids.iter().all(|&w| matrix(weights, w).is_ok());
    moe.router_bias.is_none()
        && moe.biases.is_none()
        && moe.act == ExpertAct::Silu
        && (1..=256).contains(&n_expert)
        && (1..=n_expert).contains(&moe.n_used)
        && moe.up.len() == n_expert
        && moe.down.len() == n_expert
        && moe.ff.is_multiple_of(4)
        && matrix(weights, moe.router).is_ok_and(|r| r.parts.len() == 1 && r.m as usize == n_expert)
        && parts_ok(&moe.gate)
        && parts_ok(&moe.up)
        && parts_ok(&moe.down)
        && g.weights.len() == weights.len()
}

impl<'a> Lowering<'a> {
    /// A lowering of up to `max_batch` tokens with nothing made yet
    /// (`act_floats`: room for the rounded activations of a step).
    #[allow(clippy::too_many_arguments)]
    fn new(
        ctx: &'a GpuContext,
        g: &'a Graph,
        weights: &'a [GpuWeight],
        plan: &'a Plan,
        (max_batch, n_ctx, kv_f16): (u32, u32, bool),
        act_floats: u64,
        (ids, logits, dummy): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
    ) -> Lowering<'a> {
        let n = g.nodes.len();
        Lowering {
            ctx,
            g,
            weights,
            plan,
            max_batch,
            kv_f16,
            n_ctx,
            pool: Vec::new(),
            pool_last: Vec::new(),
            loc: vec![None; n],
            acts: HashMap::new(),
            act_size: (act_floats + act_floats / 16 + 16) * 4,
            corr_base: act_floats as u32,
            rounded: vec![None; n],
            tables: Vec::new(),
            kv: HashMap::new(),
            producer: HashMap::new(),
            accumulated: HashSet::new(),
            ids: ids.clone(),
            logits: logits.clone(),
            dummy: dummy.clone(),
            gelu: None,
            partials: None,
            mm_part: None,
            weight_bytes: 0,
            fast: false,
            fast_batch: false,
            virt: vec![None; n],
            moe: HashMap::new(),
            extra: Vec::new(),
        }
    }

    /// Pushes `op`, an exact RMSNorm rounding for `act`: as it is in the
    /// exact mode; through the f32 kernel ([`OpBuilder::fast_norm`]) in the
    /// fast mode's step; in its batches, the f32 kernel for batches of
    /// [`FAST_MM_MIN_TOKENS`] or more and the exact one for smaller batches,
    /// whose exact products then give the exact mode's bits.
    fn push_norm(&self, ob: &OpBuilder<'_>, ops: &mut Vec<Op>, op: Op, act: Option<ActKey>) {
        if self.fast {
            ops.push(ob.fast_norm(&op, act));
        } else if self.fast_batch && matches!(op.grid, Grid::PerToken(_)) {
            let large = ob
                .fast_norm(&op, act)
                .large_batches_only(FAST_MM_MIN_TOKENS);
            ops.push(op.small_batches_only(FAST_MM_MIN_TOKENS));
            ops.push(large);
        } else {
            ops.push(op);
        }
    }

    /// Whether the fast step multiplies `w`, reading node `x`, through
    /// [`OpBuilder::fmv`] (which reads its input as a prologue makes it):
    /// where `tg_fused.wgsl` takes `w` ([`crate::kernels::tg_fused_fits`]:
    /// the integer products rounding the activations in each workgroup),
    /// else [`fast_product`] on this device, except that a type whose
    /// exact single-token kernels are kept
    /// ([`crate::kernels::fast_keeps_exact`]) keeps them only where `x`'s
    /// producer rounds the activations for them as it writes them (a norm
    /// or SwiGLU). Any other input (an attention's output) would take a
    /// dispatch of its own to round: on an H100 (TinyLlama Q4_K_M) that
    /// rounding took 10.2 µs and the exact attn_output product 11.4,
    /// `fmv_wide`'s 17.3.
    fn float_product(&self, w: &GpuMatrix, x: NodeId) -> bool {
        let sg32 = self.ctx.caps().subgroup32;
        if crate::kernels::tg_fused_fits(w.ty, w.k, sg32) {
            return true;
        }
        if crate::kernels::fast_keeps_exact(w.ty, sg32)
            && !matches!(self.g.node(x).op, GOp::RmsNorm { .. } | GOp::Swiglu { .. })
        {
            return fast_product(w, false);
        }
        fast_product(w, sg32)
    }

    /// Whether the fast step can leave node `i` (a norm or SwiGLU) to the
    /// products reading it: every consumer is a product of it.
    fn can_virtualize(&self, i: usize) -> bool {
        let cons = &self.plan.consumers[i];
        self.fast
            && i != self.g.output.0
            && !cons.is_empty()
            && cons.iter().all(|c| {
                matches!(self.g.node(*c).op, GOp::MatMul { x, w, .. }
                    if x.0 == i && matrix(self.weights, w).is_ok_and(|m| m.k % 4 == 0 && self.float_product(m, x)))
            })
    }

    /// The factor of the scale that is the only reader of node `i`, an
    /// embedding lookup, which then writes the scaled rows itself (Gemma's
    /// `inp_scaled`: the same one rounded product per value).
    fn embed_scale(&self, i: usize) -> Option<f32> {
        let GOp::Embed { .. } = self.g.nodes[i].op else {
            return None;
        };
        match self.plan.consumers[i].as_slice() {
            [c] if *c != self.g.output => match self.g.node(*c).op {
                GOp::Scale { x, s } if x.0 == i => Some(s),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether every product reading node `i` takes the exact path (so a
    /// norm or SwiGLU may write their packed activations, as the exact mode
    /// does).
    fn all_exact_consumers(&self, i: usize) -> bool {
        self.plan.consumers[i]
            .iter()
            .all(|c| match self.g.node(*c).op {
                GOp::MatMul { x, w, .. } => {
                    matrix(self.weights, w).is_ok_and(|m| !self.float_product(m, x))
                }
                _ => true,
            })
    }

    /// What the fast step's product reading `x` reads: the prologue of a
    /// virtual node, or `x`'s values (copied when not vec4-aligned).
    fn fast_input(
        &mut self,
        ob: &OpBuilder<'_>,
        ops: &mut Vec<Op>,
        x: NodeId,
        i: usize,
    ) -> Virtual {
        if let Some(v) = &self.virt[x.0] {
            return v.clone();
        }
        let mut l = self.loc(x);
        if !l.base.is_multiple_of(4) {
            l = self.contiguous(ob, ops, x, i);
        }
        Virtual::Plain { x: l }
    }

    fn node_bytes(&self, width: usize) -> u64 {
        self.max_batch as u64 * width as u64 * 4
    }

    /// A pool buffer of at least `bytes`, live until lowering index `until`.
    fn take(&mut self, bytes: u64, until: usize) -> usize {
        let best = (0..self.pool.len())
            .filter(|&i| self.pool[i].2 && self.pool[i].1 >= bytes)
            .min_by_key(|&i| self.pool[i].1);
        let i = match best {
            Some(i) => i,
            None => {
                self.pool
                    .push((self.ctx.storage("activations", bytes.max(16)), bytes, true));
                self.pool_last.push(0);
                self.pool.len() - 1
            }
        };
        self.pool[i].2 = false;
        self.pool_last[i] = until;
        i
    }

    /// A fresh buffer for node `i`'s values (`width` a row).
    fn fresh(&mut self, i: usize, width: usize) -> Loc {
        let buf = self.take(self.node_bytes(width), self.plan.last_use[i]);
        Loc {
            buf,
            base: 0,
            stride: width as u32,
        }
    }

    /// The logits buffer (rows of `width`): a pool entry of its own, never freed.
    fn logits_loc(&mut self, width: u32) -> Loc {
        self.pool.push((self.logits.clone(), 0, false));
        self.pool_last.push(usize::MAX);
        Loc {
            buf: self.pool.len() - 1,
            base: 0,
            stride: width,
        }
    }

    /// Node `i` shares `l`'s buffer (a view or an in-place result).
    fn alias(&mut self, i: usize, l: &Loc) -> Loc {
        self.pool_last[l.buf] = self.pool_last[l.buf].max(self.plan.last_use[i]);
        l.clone()
    }

    /// Frees the buffers no node after `i` reads.
    fn release(&mut self, i: usize) {
        for b in 0..self.pool.len() {
            if !self.pool[b].2 && self.pool_last[b] <= i {
                self.pool[b].2 = true;
            }
        }
    }

    fn buf(&self, l: &Loc) -> &wgpu::Buffer {
        &self.pool[l.buf].0
    }

    fn loc(&self, x: NodeId) -> Loc {
        self.loc[x.0]
            .clone()
            .expect("an input is lowered before it is read")
    }

    /// `x`'s values as a contiguous buffer (a copy of a view, valid for node `i`).
    fn contiguous(&mut self, ob: &OpBuilder<'_>, ops: &mut Vec<Op>, x: NodeId, i: usize) -> Loc {
        let l = self.loc(x);
        let w = self.g.node(x).width as u32;
        if l.base == 0 && l.stride == w {
            return l;
        }
        let t = Loc {
            buf: self.take(self.node_bytes(w as usize), i),
            base: 0,
            stride: w,
        };
        ops.push(self.copy_op(ob, &l, &t, w, 2));
        t
    }

    /// The add kernel as a copy of `w` values a row (`mode` 2), or of the
    /// step's last row (`mode` 3).
    fn copy_op(&self, ob: &OpBuilder<'_>, from: &Loc, to: &Loc, w: u32, mode: u32) -> Op {
        let p = EwParams {
            n: w,
            a_stride: from.stride,
            b_stride: 0,
            y_stride: to.stride,
            a_base: from.base,
            b_base: 0,
            corr_base: 0,
            mode,
        };
        let a = self.buf(from);
        ob.binary(Kernel::Add, a, a, self.buf(to), p, &self.dummy)
    }

    /// The rounded-activation buffer of `key`.
    fn act_buffer(&mut self, key: ActKey) -> wgpu::Buffer {
        let size = self.act_size;
        self.acts
            .entry(key)
            .or_insert_with(|| (self.ctx.storage("act", size), None))
            .0
            .clone()
    }

    /// What a product with `w` reads for input `x`: `x` itself, or `x`
    /// rounded as `w` needs (rounding it now unless done already).
    fn product_input(
        &mut self,
        ob: &OpBuilder<'_>,
        ops: &mut Vec<Op>,
        x: NodeId,
        w: &GpuMatrix,
        i: usize,
    ) -> (wgpu::Buffer, u32) {
        let width = self.g.node(x).width as u32;
        let Some(key) = act_key(w) else {
            let l = self.contiguous(ob, ops, x, i);
            return (self.buf(&l).clone(), width);
        };
        if self.rounded[x.0] == Some(key) {
            let l = self.loc(x);
            return (self.buf(&l).clone(), l.stride);
        }
        let buf = self.act_buffer(key);
        if self.acts[&key].1 == Some(x) {
            return (buf, width);
        }
        let l = self.contiguous(ob, ops, x, i);
        let op = ob.quantize_act(
            key.0,
            key.1,
            self.buf(&l),
            width,
            &buf,
            width,
            width,
            self.corr_base,
        );
        // The fast mode's larger batches read x's floats, not this.
        ops.push(match self.fast_batch {
            true => op.small_batches_only(FAST_MM_MIN_TOKENS),
            false => op,
        });
        self.acts.get_mut(&key).expect("made").1 = Some(x);
        (buf, width)
    }

    /// The cos/sin table of `p` (with `factors`) for every position.
    fn rope_table(&mut self, p: &TcRope, factors: Option<WeightId>) -> Result<wgpu::Buffer> {
        if let Some(t) = self.tables.iter().find(|t| t.0 == *p && t.1 == factors) {
            return Ok(t.2.clone());
        }
        let ff = match factors {
            Some(f) => Some(vector(self.weights, f)?.1.to_vec()),
            None => None,
        };
        let n = p.n_dims.max(1);
        let mut table = vec![0f32; self.n_ctx as usize * n];
        for (pos, row) in table.chunks_mut(n).enumerate() {
            tensor_core::rope::rope_cache(pos, p, ff.as_deref(), row);
        }
        let b = self.ctx.upload("rope_table", bytemuck::cast_slice(&table));
        self.tables.push((*p, factors, b.clone()));
        Ok(b)
    }

    /// The key and value caches of KV layer `layer` (`width` values a position).
    fn cache(&mut self, layer: usize, width: u32) -> Result<(wgpu::Buffer, wgpu::Buffer)> {
        if let Some((k, v, w)) = self.kv.get(&layer) {
            if *w != width {
                return Err(WgpuError::Model(format!(
                    "KV layer {layer} is used with widths {w} and {width}"
                )));
            }
            return Ok((k.clone(), v.clone()));
        }
        let bytes = self.n_ctx as u64 * width as u64 * 4;
        if bytes > self.ctx.max_binding() {
            return Err(WgpuError::Request(format!(
                "a KV cache layer of {} positions × {width} values ({bytes} bytes) exceeds \
                 the device's largest storage binding ({} bytes): use a smaller context",
                self.n_ctx,
                self.ctx.max_binding()
            )));
        }
        let k = self.ctx.try_storage("k_cache", bytes)?;
        let v = self.ctx.try_storage("v_cache", bytes)?;
        self.kv.insert(layer, (k.clone(), v.clone(), width));
        Ok((k, v))
    }

    fn cache_write(&self) -> u32 {
        if self.kv_f16 {
            2
        } else {
            1
        }
    }

    /// Lowers node `i` into `ops`; `last_row`: the section runs on the
    /// batch's last row only (its output-row selections copy that row,
    /// with `ob_batch`, the batch's step).
    fn lower(
        &mut self,
        i: usize,
        ob: &OpBuilder<'_>,
        ob_batch: &OpBuilder<'_>,
        ops: &mut Vec<Op>,
        last_row: bool,
    ) -> Result<()> {
        let g = self.g;
        let node = &g.nodes[i];
        let width = node.width as u32;
        let plan = self.plan;
        if plan.deferred[i] || (self.fast && plan.fast_skip[i]) {
            return Ok(());
        }
        let is_output = i == g.output.0;
        let out_loc = |s: &mut Self| -> Loc {
            if is_output {
                s.logits_loc(width)
            } else {
                s.fresh(i, width as usize)
            }
        };
        let loc = match &node.op {
            GOp::Embed { table } => {
                let w = matrix(self.weights, *table)?;
                let y = out_loc(self);
                let s = self.embed_scale(i).unwrap_or(1.0);
                ops.extend(ob.get_rows(w, &self.ids, self.buf(&y), width, s, &self.dummy));
                y
            }
            GOp::Slice { x, offset } => {
                let l = self.loc(*x);
                let mut v = self.alias(i, &l);
                v.base += *offset as u32;
                v
            }
            GOp::OutputRows { x } => {
                if last_row {
                    let from = self.loc(*x);
                    let y = self.fresh(i, width as usize);
                    ops.push(self.copy_op(ob_batch, &from, &y, width, 3));
                    y
                } else {
                    let l = self.loc(*x);
                    self.alias(i, &l)
                }
            }
            // Scaled by the lookup itself.
            GOp::Scale { x, .. } if self.embed_scale(x.0).is_some() => {
                let l = self.loc(*x);
                self.alias(i, &l)
            }
            GOp::Scale { x, s } => {
                let y = self.in_place(i, *x, ob, ops, is_output)?;
                let p = ScaleParams {
                    n: 0,
                    width,
                    s: *s,
                    ..Default::default()
                };
                let d = &self.dummy;
                ops.push(row_op(
                    ob.scale_op(Kernel::Scale, d, d, self.buf(&y), d, p),
                    width,
                ));
                y
            }
            GOp::Softcap { x, cap } => {
                let y = self.in_place(i, *x, ob, ops, is_output)?;
                let p = ScaleParams {
                    n: 0,
                    width,
                    s: *cap,
                    inv: 1.0 / *cap,
                    ..Default::default()
                };
                let d = &self.dummy;
                ops.push(row_op(
                    ob.scale_op(Kernel::Softcap, d, d, self.buf(&y), d, p),
                    width,
                ));
                y
            }
            GOp::Geglu { gate, up } => {
                let (a, b) = (self.loc(*gate), self.loc(*up));
                if self.can_virtualize(i) && a.base % 4 == 0 && b.base % 4 == 0 {
                    self.alias(i, &b);
                    let l = self.alias(i, &a);
                    self.virt[i] = Some(Virtual::Geglu { gate: a, up: b });
                    self.loc[i] = Some(l);
                    return Ok(());
                }
                let y = out_loc(self);
                let table = self.gelu_table();
                let p = ScaleParams {
                    n: 0,
                    width,
                    a_base: a.base,
                    a_stride: a.stride,
                    b_base: b.base,
                    b_stride: b.stride,
                    ..Default::default()
                };
                let op = ob.scale_op(
                    Kernel::Geglu,
                    self.buf(&a),
                    self.buf(&b),
                    self.buf(&y),
                    &table,
                    p,
                );
                ops.push(row_op(op, width));
                y
            }
            GOp::RmsNorm { x, weight, eps } => {
                let (wb, host) = vector(self.weights, *weight)?;
                let wb = wb.clone();
                let group = host.len() as u32;
                if group == width && self.can_virtualize(i) && self.loc(*x).base.is_multiple_of(4) {
                    let xl = self.loc(*x);
                    let l = self.alias(i, &xl);
                    self.virt[i] = Some(Virtual::Norm {
                        x: xl,
                        weight: wb,
                        eps: *eps,
                    });
                    self.loc[i] = Some(l);
                    return Ok(());
                }
                let xl = self.contiguous(ob, ops, *x, i);
                let fa = plan.fused_act[i]
                    .filter(|_| !self.fast_batch)
                    .filter(|_| !self.fast || self.all_exact_consumers(i));
                let y = out_loc(self);
                if group == width {
                    let packed = fa.is_some_and(|k| k.1);
                    let target = match fa {
                        Some(k) if packed => self.act_buffer(k),
                        _ => self.buf(&y).clone(),
                    };
                    let op = ob.rms_norm(
                        self.buf(&xl),
                        width,
                        &wb,
                        &target,
                        width,
                        width,
                        *eps,
                        false,
                        fa,
                        self.corr_base,
                    );
                    self.push_norm(ob, ops, op, fa);
                    self.mark_rounded(i, fa);
                } else {
                    let heads = width / group.max(1);
                    let mut op = ob.rms_norm(
                        self.buf(&xl),
                        group,
                        &wb,
                        self.buf(&y),
                        group,
                        group,
                        *eps,
                        false,
                        None,
                        0,
                    );
                    op.grid = Grid::PerTokenTimes([group.div_ceil(256), 1], heads);
                    self.push_norm(ob, ops, op, None);
                }
                y
            }
            GOp::MatMul { x, w, bias } => {
                let m = matrix(self.weights, *w)?;
                self.weight_bytes += m.n_bytes();
                let lbl = weight_label(g, *w);
                let fast_in = if self.fast && self.float_product(m, *x) {
                    Some(self.fast_input(ob, ops, *x, i))
                } else {
                    None
                };
                // The fast mode's batches: x's floats for MmFast (every
                // GPU matrix's rows are whole chunks of 32).
                let batch_x = match fast_in {
                    None if self.fast_batch => {
                        let l = self.contiguous(ob, ops, *x, i);
                        Some(self.buf(&l).clone())
                    }
                    _ => None,
                };
                let (input, x_stride) = match fast_in {
                    Some(_) => (self.dummy.clone(), 0),
                    None => self.product_input(ob, ops, *x, m, i),
                };
                let (y, y_buf, y_stride, acc, at_pos) = if let Some(att) = plan.v_direct[i] {
                    let GOp::Attention { layer, params, .. } = &g.node(att).op else {
                        unreachable!("v_direct points at an attention")
                    };
                    let kvw = (params.n_head_kv * params.head_dim) as u32;
                    let (_, vc) = self.cache(*layer, kvw)?;
                    (None, vc, kvw, false, self.cache_write())
                } else if let Some(r) = self.accumulates(i) {
                    let l = self.loc(r);
                    let l = self.alias(i, &l);
                    let b = self.buf(&l).clone();
                    (Some(l.clone()), b, l.stride, true, 0)
                } else if bias.is_some() {
                    // The product into a temporary, then + bias into place.
                    let t = Loc {
                        buf: self.take(self.node_bytes(width as usize), i),
                        base: 0,
                        stride: width,
                    };
                    let b = self.buf(&t).clone();
                    (Some(t), b, width, false, 0)
                } else {
                    let l = out_loc(self);
                    let b = self.buf(&l).clone();
                    (Some(l), b, width, false, 0)
                };
                let mut lin = match &fast_in {
                    Some(v) => {
                        let pro = match v {
                            Virtual::Plain { x } => Prologue::Plain {
                                x: self.buf(x),
                                base: x.base,
                            },
                            Virtual::Norm { x, weight, eps } => Prologue::Norm {
                                x: self.buf(x),
                                base: x.base,
                                weight,
                                eps: *eps,
                            },
                            Virtual::Swiglu { gate, up } => Prologue::Swiglu {
                                gate: self.buf(gate),
                                gate_base: gate.base,
                                up: self.buf(up),
                                up_base: up.base,
                            },
                            Virtual::Geglu { gate, up } => Prologue::Geglu {
                                gate: self.buf(gate),
                                gate_base: gate.base,
                                up: self.buf(up),
                                up_base: up.base,
                            },
                        };
                        ob.fmv(lbl, m, &pro, &y_buf, y_stride, acc, at_pos)
                    }
                    None => ob.linear(
                        lbl,
                        m,
                        &input,
                        x_stride,
                        &y_buf,
                        y_stride,
                        0,
                        acc,
                        at_pos,
                        self.corr_base,
                        &self.dummy,
                    ),
                };
                if let Some(bx) = &batch_x {
                    for (part, op) in lin.iter_mut().enumerate() {
                        let split = self.mm_part(m.parts[part].rows, m.k);
                        ob.add_mm_fast(
                            op,
                            m,
                            part,
                            bx,
                            &y_buf,
                            &self.dummy,
                            (FAST_MM_MIN_TOKENS, None),
                            split.as_ref().map(|b| (b, mm_split_target())),
                        );
                    }
                }
                if lin.len() == 1 && fast_in.is_none() {
                    self.producer.insert(i, ops.len());
                }
                ops.append(&mut lin);
                match (bias, y) {
                    (Some(bias), Some(t)) => {
                        let (bb, _) = vector(self.weights, *bias)?;
                        let bb = bb.clone();
                        let out = out_loc(self);
                        let p = EwParams {
                            n: width,
                            a_stride: width,
                            b_stride: 0,
                            y_stride: width,
                            ..Default::default()
                        };
                        ops.push(ob.binary(
                            Kernel::Add,
                            self.buf(&t),
                            &bb,
                            self.buf(&out),
                            p,
                            &self.dummy,
                        ));
                        out
                    }
                    (_, Some(l)) => l,
                    // Written into the cache: nothing else reads it.
                    (_, None) => Loc {
                        buf: usize::MAX,
                        base: 0,
                        stride: width,
                    },
                }
            }
            GOp::Add { a, b } => {
                if let Some(r) = plan.accum_add[i].filter(|_| self.accumulated.contains(&i)) {
                    let l = self.loc(r);
                    self.alias(i, &l)
                } else if let (true, Some(nm)) = (self.fast, plan.norm_add[i]) {
                    let GOp::RmsNorm { x, weight, eps } = g.node(nm).op else {
                        unreachable!("norm_add points at a norm")
                    };
                    let r = if nm == *a { *b } else { *a };
                    let (xl, rl) = (self.loc(x), self.loc(r));
                    let wb = vector(self.weights, weight)?.0.clone();
                    let y = out_loc(self);
                    let p = ScaleParams {
                        width,
                        s: eps,
                        a_base: xl.base,
                        a_stride: xl.stride,
                        b_base: rl.base,
                        b_stride: rl.stride,
                        ..Default::default()
                    };
                    let mut op = ob.scale_op(
                        Kernel::NormAdd,
                        self.buf(&xl),
                        self.buf(&rl),
                        self.buf(&y),
                        &wb,
                        p,
                    );
                    op.grid = Grid::PerToken([1, 1]);
                    ops.push(op);
                    y
                } else {
                    let (la, lb) = (self.loc(*a), self.loc(*b));
                    let y = out_loc(self);
                    let p = EwParams {
                        n: width,
                        a_stride: la.stride,
                        b_stride: lb.stride,
                        y_stride: width,
                        a_base: la.base,
                        b_base: lb.base,
                        corr_base: 0,
                        mode: 0,
                    };
                    ops.push(ob.binary(
                        Kernel::Add,
                        self.buf(&la),
                        self.buf(&lb),
                        self.buf(&y),
                        p,
                        &self.dummy,
                    ));
                    y
                }
            }
            GOp::Swiglu { gate, up } => {
                let (la, lb) = (self.loc(*gate), self.loc(*up));
                if self.can_virtualize(i) && la.base % 4 == 0 && lb.base % 4 == 0 {
                    self.alias(i, &lb);
                    let l = self.alias(i, &la);
                    self.virt[i] = Some(Virtual::Swiglu { gate: la, up: lb });
                    self.loc[i] = Some(l);
                    return Ok(());
                }
                let fa = plan.fused_act[i]
                    .filter(|_| !self.fast_batch)
                    .filter(|_| !self.fast || self.all_exact_consumers(i));
                let y = out_loc(self);
                let packed = fa.is_some_and(|k| k.1);
                let target = match fa {
                    Some(k) if packed => self.act_buffer(k),
                    _ => self.buf(&y).clone(),
                };
                let p = EwParams {
                    n: width,
                    a_stride: la.stride,
                    b_stride: lb.stride,
                    y_stride: if packed { width / 4 } else { width },
                    a_base: la.base,
                    b_base: lb.base,
                    corr_base: self.corr_base,
                    mode: 0,
                };
                ops.push(ob.binary(
                    Kernel::Swiglu(fa),
                    self.buf(&la),
                    self.buf(&lb),
                    &target,
                    p,
                    &self.dummy,
                ));
                self.mark_rounded(i, fa);
                y
            }
            GOp::Rope {
                x,
                n_heads,
                params,
                factors,
            } => {
                let xl = self.loc(*x);
                let table = self.rope_table(params, *factors)?;
                let y = out_loc(self);
                let p = rope_params(params, *n_heads as u32, &xl, width, 0);
                let yb = self.buf(&y);
                ops.push(ob.rope2(self.buf(&xl), yb, yb, yb, &table, p));
                y
            }
            GOp::Attention {
                q,
                k,
                v,
                layer,
                params,
                sinks: None,
            } => self.attention(i, (*q, *k, *v), *layer, params, ob, ops)?,
            GOp::Attention { sinks: Some(_), .. } => {
                return Err(WgpuError::Model(
                    "attention with sinks is not compiled".into(),
                ))
            }
            GOp::Moe { x, moe } => {
                let (y, acc) = match self.accumulates(i) {
                    Some(r) => {
                        let l = self.loc(r);
                        (self.alias(i, &l), true)
                    }
                    None => (out_loc(self), false),
                };
                self.moe(i, *x, moe, ob, ops, (&y, acc))?;
                y
            }
            GOp::Unary { .. }
            | GOp::Mul { .. }
            | GOp::MulVec { .. }
            | GOp::L2Norm { .. }
            | GOp::Strided { .. }
            | GOp::SsmConv { .. }
            | GOp::DeltaNet { .. } => {
                return Err(WgpuError::Model(format!(
                    "{} nodes are not compiled",
                    node.op.kind()
                )))
            }
        };
        self.loc[i] = Some(loc);
        Ok(())
    }

    /// Mixture-of-experts node `i` (input `x`) into `y`: the router's
    /// product, the routing, the chosen experts' gate/up products (one row
    /// per token and slot; in batches of [`MOE_MM_MIN_TOKENS`] or more,
    /// grouped by expert), their down products over silu(gate)·up, and the
    /// weighted sum (added to `y`'s values with `accumulate`: the residual
    /// of [`Lowering::accumulates`]); all in the fast mode's float
    /// activations (the exact mode does not compile these nodes: its products
    /// would have to be the CPU's per-expert batches, `Backend::matmul_expert`,
    /// bit for bit).
    fn moe(
        &mut self,
        i: usize,
        x: NodeId,
        moe: &Moe,
        ob: &OpBuilder<'_>,
        ops: &mut Vec<Op>,
        (y, accumulate): (&Loc, bool),
    ) -> Result<()> {
        let mw = match self.moe.get(&i) {
            Some(w) => w.clone(),
            None => {
                let w = MoeWeights::new(self.ctx, self.weights, moe)?.ok_or_else(|| {
                    WgpuError::Model("a mixture of experts moe.wgsl cannot take".into())
                })?;
                self.moe.insert(i, w.clone());
                w
            }
        };
        let d = self.g.node(x).width as u32;
        let n_expert = moe.gate.len() as u32;
        let k = moe.n_used as u32;
        let ff = moe.ff as u32;
        let b = self.max_batch as u64;
        self.weight_bytes += mw.router.m as u64 * mw.router.row_bytes as u64
            + k as u64
                * (mw
                    .gate_up
                    .iter()
                    .map(|(m, _)| m.expert_bytes as u64)
                    .sum::<u64>()
                    + mw.down.expert_bytes as u64);
        let xl = self.contiguous(ob, ops, x, i);
        let xb = self.buf(&xl).clone();
        // Logit rows of whole vec4s.
        let l_stride = n_expert.next_multiple_of(4);
        let logits = self.take(b * l_stride as u64 * 4, i);
        let logits = self.pool[logits].0.clone();
        let routing = self.take(b * k as u64 * 2 * 4, i);
        let routing = self.pool[routing].0.clone();
        let gu = self.take(b * k as u64 * 2 * ff as u64 * 4, i);
        let gu = self.pool[gu].0.clone();
        let down = self.take(b * k as u64 * d as u64 * 4, i);
        let down = self.pool[down].0.clone();
        let dummy = self.dummy.clone();
        // Batches of MOE_MM_MIN_TOKENS or more group each expert's pairs
        // (every lowering but the single-token step's, where the batch can
        // reach it): their lists, n_expert · (tokens + 1) floats.
        let grouped = !self.fast && self.max_batch >= MOE_MM_MIN_TOKENS;
        let lists = if grouped {
            let l = self.take(n_expert as u64 * (b + 1) * 4, i);
            Some(self.pool[l].0.clone())
        } else {
            None
        };
        // Below MOE_MM_MIN_TOKENS, where grouping, a product per pair.
        let per_pair = |op: Op| match grouped {
            true => op.small_batches_only(MOE_MM_MIN_TOKENS),
            false => op,
        };
        ops.push(ob.moe_mv(
            "ffn_gate_inp",
            &mw.router,
            (false, 0, 0),
            (&xb, d, 1),
            (&logits, l_stride, 0),
            &dummy,
            1,
        ));
        let gating = match moe.gating {
            Gating::Softmax => 0,
            Gating::Sigmoid => 1,
            Gating::SoftmaxWeight => 2,
        };
        ops.push(ob.moe_route(
            (gating, moe.normalize, moe.weights_scale),
            (&logits, l_stride),
            n_expert,
            k,
            &routing,
            &dummy,
        ));
        if let Some(lists) = &lists {
            ops.push(ob.moe_bucket(&routing, (n_expert, k), lists, &dummy, MOE_MM_MIN_TOKENS));
        }
        for (w, base) in &mw.gate_up {
            ops.push(per_pair(ob.moe_mv(
                "ffn_gate_up_exps",
                w,
                (true, 0, 0),
                (&xb, d, k),
                (&gu, 2 * ff, *base),
                &routing,
                k,
            )));
            if let Some(lists) = &lists {
                ops.push(ob.moe_mm(
                    "ffn_gate_up_exps_grouped",
                    w,
                    (0, 0),
                    (&xb, d, k),
                    (&gu, 2 * ff, *base),
                    (lists, n_expert),
                    (MOE_MM_MIN_TOKENS, moe_mm_coop()),
                ));
            }
        }
        ops.push(per_pair(ob.moe_mv(
            "ffn_down_exps",
            &mw.down,
            (true, 2, ff),
            (&gu, 2 * ff, 1),
            (&down, d, 0),
            &routing,
            k,
        )));
        if let Some(lists) = &lists {
            ops.push(ob.moe_mm(
                "ffn_down_exps_grouped",
                &mw.down,
                (2, ff),
                (&gu, 2 * ff, 1),
                (&down, d, 0),
                (lists, n_expert),
                (MOE_MM_MIN_TOKENS, moe_mm_coop()),
            ));
        }
        let yb = self.buf(y).clone();
        ops.push(ob.moe_sum(
            (&down, d),
            d,
            k,
            &routing,
            (&yb, y.stride, accumulate),
            &dummy,
        ));
        Ok(())
    }

    /// The residual product `i` accumulates into, if the plan says so and
    /// no node reads the residual's buffer after the `Add` that sums them
    /// (noted in `accumulated`).
    fn accumulates(&mut self, i: usize) -> Option<NodeId> {
        let r = self.plan.accum_into[i]?;
        let add = self.plan.consumers[i][0].0;
        let l = self.loc(r);
        if l.base != 0 || self.pool_last[l.buf] > add {
            return None;
        }
        self.accumulated.insert(add);
        Some(r)
    }

    /// Records that node `i` (a norm or SwiGLU) wrote activations rounded as
    /// `fa`: packed into the rounding's buffer, or rounded in its own.
    fn mark_rounded(&mut self, i: usize, fa: Option<ActKey>) {
        if let Some(key) = fa {
            if key.1 {
                self.act_buffer(key);
                self.acts.get_mut(&key).expect("made").1 = Some(NodeId(i));
            } else {
                self.rounded[i] = Some(key);
            }
        }
    }

    /// The buffer an in-place op on `x` (scale, soft-cap) writes: `x`'s own
    /// when nothing reads `x` later, else a copy.
    fn in_place(
        &mut self,
        i: usize,
        x: NodeId,
        ob: &OpBuilder<'_>,
        ops: &mut Vec<Op>,
        is_output: bool,
    ) -> Result<Loc> {
        let l = self.loc(x);
        let w = self.g.nodes[i].width as u32;
        let own = self.pool_last[l.buf] <= i && l.base == 0 && l.stride == w;
        if own && !is_output {
            return Ok(self.alias(i, &l));
        }
        let y = if is_output {
            self.logits_loc(w)
        } else {
            self.fresh(i, w as usize)
        };
        ops.push(self.copy_op(ob, &l, &y, w, 2));
        Ok(y)
    }

    fn gelu_table(&mut self) -> wgpu::Buffer {
        if let Some(t) = &self.gelu {
            return t.clone();
        }
        let table: Vec<f32> = (0..=u16::MAX)
            .map(|h| {
                let x = half::f16::from_bits(h).to_f32();
                half::f16::from_f32(tensor_core::ops::gelu_f32(x)).to_f32()
            })
            .collect();
        let t = self.ctx.upload("gelu_table", bytemuck::cast_slice(&table));
        self.gelu = Some(t.clone());
        t
    }

    /// The batch products' partials buffer for a product of `m` rows and
    /// `k` weights, if some batch it takes splits over k ([`mm_splits`]:
    /// fewer tokens, fewer tiles, so the smallest batch,
    /// [`FAST_MM_MIN_TOKENS`], splits if any does). One for all products:
    /// their dispatches run in turn.
    fn mm_part(&mut self, m: u32, k: u32) -> Option<wgpu::Buffer> {
        let target = mm_split_target();
        if self.max_batch < FAST_MM_MIN_TOKENS || mm_splits(FAST_MM_MIN_TOKENS, m, k, target) == 1 {
            return None;
        }
        Some(
            self.mm_part
                .get_or_insert_with(|| self.ctx.storage("mm_part", mm_part_floats(target) * 4))
                .clone(),
        )
    }

    /// A buffer of at least `bytes` for the fast attention's per-split
    /// results (one for all layers: their dispatches run in turn).
    fn partials(&mut self, bytes: u64) -> wgpu::Buffer {
        match &self.partials {
            Some(b) if b.size() >= bytes => b.clone(),
            _ => {
                let b = self.ctx.storage("attention_partials", bytes);
                self.partials = Some(b.clone());
                b
            }
        }
    }

    /// The kernels' parameters of an attention (`splits` set by the op builder).
    fn attn_params(&self, params: &tensor_core::AttentionParams) -> AttnParams {
        let kvw = (params.n_head_kv * params.head_dim) as u32;
        AttnParams::of(params, kvw, self.kv_f16)
    }

    /// The fast step's attention node `i` of [`Plan::fast_attn`]: the
    /// query's and key's norms, RoPE and the cache writes inside
    /// `attn_rope_decode`, which reads them from the stacked product; the
    /// query's scale applied to its scores instead (K·(sQ) = s(K·Q): the
    /// scale times s, or before a soft-cap its 1/cap).
    fn fast_attention(
        &mut self,
        i: usize,
        fa: &FastAttn,
        layer: usize,
        params: &tensor_core::AttentionParams,
        ob: &OpBuilder<'_>,
        ops: &mut Vec<Op>,
    ) -> Result<Loc> {
        let hd = params.head_dim;
        let qw = (params.n_head * hd) as u32;
        let kvw = (params.n_head_kv * hd) as u32;
        let (kc, vc) = self.cache(layer, kvw)?;
        let mut attn_params = self.attn_params(params);
        if attn_params.softcap != 0.0 {
            attn_params.inv_cap *= fa.q.scale;
        } else {
            attn_params.scale *= fa.q.scale;
        }
        let (lq, lk) = (self.loc(fa.q.src), self.loc(fa.k.src));
        let table = self.rope_table(&fa.q.rope, fa.q.factors)?;
        // The norms' weights, the query's then the key's.
        let mut weights = vec![1f32; 2 * hd];
        let mut qk_norm = 0;
        let mut eps = [0f32; 2];
        for (bit, chain) in [&fa.q, &fa.k].into_iter().enumerate() {
            if let Some((w, e)) = chain.norm {
                weights[bit * hd..(bit + 1) * hd].copy_from_slice(vector(self.weights, w)?.1);
                qk_norm |= 1 << bit;
                eps[bit] = e;
            }
        }
        let norm = match qk_norm {
            0 => self.dummy.clone(),
            _ => {
                let b = self.ctx.upload("qk_norm", bytemuck::cast_slice(&weights));
                self.extra.push(b.clone());
                b
            }
        };
        let rope = RopeFuse {
            q_base: lq.base,
            k_base: lk.base,
            v_base: fa.v.map_or(0, |v| self.loc(v).base),
            n_dims: fa.q.rope.n_dims as u32,
            neox: (fa.q.rope.mode == RopeMode::Neox) as u32,
            cache_f16: self.kv_f16 as u32,
            qk_norm,
            v_cached: fa.v.is_none() as u32,
            q_eps: eps[0],
            k_eps: eps[1],
            pad: [0; 2],
        };
        let out = self.fresh(i, qw as usize);
        let partials = self.partials(attention_partials_bytes(&attn_params));
        ops.extend(ob.attention_rope(
            self.buf(&lq),
            &kc,
            &vc,
            self.buf(&out),
            attn_params,
            &table,
            rope,
            &norm,
            &partials,
        ));
        Ok(out)
    }

    /// Stores the keys and values of attention node `i` in its cache
    /// (rotating deferred RoPE nodes on the way) and attends.
    fn attention(
        &mut self,
        i: usize,
        (q, k, v): (NodeId, NodeId, NodeId),
        layer: usize,
        params: &tensor_core::AttentionParams,
        ob: &OpBuilder<'_>,
        ops: &mut Vec<Op>,
    ) -> Result<Loc> {
        let g = self.g;
        let plan = self.plan;
        if let (true, Some(fa)) = (self.fast, &plan.fast_attn[i]) {
            return self.fast_attention(i, fa, layer, params, ob, ops);
        }
        let qw = (params.n_head * params.head_dim) as u32;
        let kvw = (params.n_head_kv * params.head_dim) as u32;
        let (kc, vc) = self.cache(layer, kvw)?;
        let cw = self.cache_write();
        let rope_of = |x: NodeId| match &g.node(x).op {
            GOp::Rope {
                x: src,
                n_heads,
                params,
                factors,
            } if plan.deferred[x.0] => Some((*src, *n_heads as u32, *params, *factors)),
            _ => None,
        };
        let (rq, rk) = (rope_of(q), rope_of(k));
        let v_stored = plan.v_direct[v.0] == Some(NodeId(i));
        let attn_params = self.attn_params(params);
        let q_loc = Loc {
            buf: self.take(self.node_bytes(qw as usize), i),
            base: 0,
            stride: qw,
        };
        let mut k_done = false;
        let mut v_done = v_stored;
        let mut q_done = false;
        // Queries, keys (and values) of one stacked product: one dispatch.
        if let (Some((sq, hq, pq, fq)), Some((sk, hk, pk, fk))) = (rq, rk) {
            let (lq, lk) = (self.loc(sq), self.loc(sk));
            if lq.buf == lk.buf
                && lq.stride == lk.stride
                && lk.base == lq.base + qw
                && pq == pk
                && fq == fk
            {
                let table = self.rope_table(&pq, fq)?;
                let lv = (!v_stored).then(|| self.loc(v));
                let v_in = lv
                    .as_ref()
                    .is_some_and(|lv| lv.buf == lq.buf && lv.base == lk.base + kvw);
                let mut p = rope_params(&pq, hq, &lq, qw, 0);
                p.n_heads2 = hk;
                p.y2_stride = kvw;
                p.at_pos2 = cw;
                if v_in {
                    p.n_heads3 = params.n_head_kv as u32;
                    p.y3_stride = kvw;
                    p.at_pos3 = cw;
                }
                let rope = ob.rope2(self.buf(&lq), self.buf(&q_loc), &kc, &vc, &table, p);
                // A single token's Q4_K stack may rotate inside its product.
                let stack = match g.node(sq).op {
                    GOp::Slice { x, offset: 0 } => Some(x),
                    _ => None,
                };
                let fused = match stack.map(|s| (s, &g.node(s).op)) {
                    Some((s, GOp::MatMul { x, w, bias: None }))
                        if pq.mode == RopeMode::Normal
                            && self.plan.accum_into[s.0].is_none()
                            && self.producer.contains_key(&s.0) =>
                    {
                        let m = matrix(self.weights, *w)?;
                        let idx = self.producer[&s.0];
                        let key = act_key(m);
                        let input = match key {
                            Some(key) => self.acts.get(&key).map(|a| a.0.clone()),
                            None => self.loc[x.0].clone().map(|l| self.buf(&l).clone()),
                        };
                        match input {
                            Some(input)
                                if self.g.node(s).width as u32 == qw + kvw * (1 + v_in as u32) =>
                            {
                                let sbuf = self.buf(&lq).clone();
                                ob.fuse_rope(
                                    &mut ops[idx],
                                    m,
                                    &input,
                                    &sbuf,
                                    &self.dummy,
                                    &table,
                                    self.buf(&q_loc),
                                    &kc,
                                    &vc,
                                    TgRopeParams {
                                        n_q: qw,
                                        n_k: kvw,
                                        n_v: if v_in { kvw } else { 0 },
                                        head_dim: pq.head_dim as u32,
                                        n_dims: pq.n_dims as u32,
                                        at_pos: cw,
                                        ..Default::default()
                                    },
                                )
                            }
                            _ => false,
                        }
                    }
                    _ => false,
                };
                ops.push(if fused { rope.batch_only() } else { rope });
                q_done = true;
                k_done = true;
                v_done |= v_in;
            }
        }
        if !q_done {
            match rq {
                Some((src, heads, p, f)) => {
                    let table = self.rope_table(&p, f)?;
                    let l = self.loc(src);
                    let rp = rope_params(&p, heads, &l, qw, 0);
                    let y = self.buf(&q_loc);
                    ops.push(ob.rope2(self.buf(&l), y, y, y, &table, rp));
                }
                None => {
                    let l = self.loc(q);
                    ops.push(self.copy_op(ob, &l, &q_loc, qw, 2));
                }
            }
        }
        if !k_done {
            let (src, heads, p, table) = match rk {
                Some((src, heads, p, f)) => (src, heads, p, Some(self.rope_table(&p, f)?)),
                None => (k, params.n_head_kv as u32, copy_rope(params.head_dim), None),
            };
            let l = self.loc(src);
            let mut rp = rope_params(&p, heads, &l, kvw, cw);
            rp.y_stride = kvw;
            let t = table.unwrap_or_else(|| self.dummy.clone());
            ops.push(ob.rope2(self.buf(&l), &kc, &kc, &kc, &t, rp));
        }
        if !v_done {
            let l = self.loc(v);
            let rp = rope_params(
                &copy_rope(params.head_dim),
                params.n_head_kv as u32,
                &l,
                kvw,
                cw,
            );
            ops.push(ob.rope2(self.buf(&l), &vc, &vc, &vc, &self.dummy, rp));
        }
        let out = self.fresh(i, qw as usize);
        let partials = match self.fast {
            true => self.partials(attention_partials_bytes(&attn_params)),
            false => self.dummy.clone(),
        };
        let exact = ob.attention(
            self.buf(&q_loc),
            &kc,
            &vc,
            self.buf(&out),
            attn_params,
            self.fast,
            &partials,
        );
        if self.fast_batch && flash_attention_fits(&attn_params) {
            // Batches of FAST_MM_MIN_TOKENS or more: attn_flash; smaller
            // ones keep the exact kernel.
            ops.extend(
                exact
                    .into_iter()
                    .map(|o| o.small_batches_only(FAST_MM_MIN_TOKENS)),
            );
            ops.push(ob.attention_flash(
                self.buf(&q_loc),
                &kc,
                &vc,
                self.buf(&out),
                attn_params,
                FAST_MM_MIN_TOKENS,
            ));
        } else {
            ops.extend(exact);
        }
        Ok(out)
    }
}

/// A RoPE that rotates nothing: a copy (into a cache with `at_pos`).
fn copy_rope(head_dim: usize) -> TcRope {
    TcRope::new(RopeMode::Normal, head_dim, 0, 10000.0)
}

/// `rope.wgsl`'s parameters for `heads` heads of `x` into rows of `y_stride`.
fn rope_params(p: &TcRope, heads: u32, x: &Loc, y_stride: u32, at_pos: u32) -> RopeParams {
    RopeParams {
        n_heads: heads,
        head_dim: p.head_dim as u32,
        n_dims: p.n_dims as u32,
        neox: (p.mode == RopeMode::Neox) as u32,
        x_stride: x.stride,
        y_stride,
        at_pos,
        x_base: x.base,
        ..Default::default()
    }
}

/// A `scale.wgsl` op over rows of `width` values (one z per token).
fn row_op(mut op: Op, width: u32) -> Op {
    let groups = width.div_ceil(256);
    let x = groups.clamp(1, 65535);
    op.grid = Grid::PerToken([x, groups.div_ceil(x)]);
    op
}

/// Options of [`GpuProgram::compile`].
#[derive(Clone, Copy, Debug)]
pub struct ProgramConfig {
    /// KV cache positions.
    pub n_ctx: u32,
    /// Most tokens per step.
    pub max_batch: u32,
    /// An f16 KV cache (llama.cpp's default), else f32.
    pub kv_f16: bool,
    /// Single tokens take the fast step: float activations, norms and
    /// SwiGLUs computed inside the products that read them (fewer dispatches,
    /// not the CPU's bits); batches of [`FAST_MM_MIN_TOKENS`] or more
    /// multiply float activations with `mm_fast.wgsl` (`mm_coop.wgsl` on
    /// devices with cooperative matrices). Smaller batches stay exact.
    pub fast: bool,
}

impl GpuProgram {
    /// Compiles `graph` over `weights` (loaded by [`crate::WgpuBackend`]),
    /// or `None` for a graph with nodes it does not compile (run those node
    /// by node): recurrent layers, attention sinks, and mixtures of experts
    /// in the exact mode or of a kind `moe.wgsl` does not take (biases, a
    /// router bias, SwiGLU-OAI experts, more than 256 experts). The fast
    /// mode compiles SiLU mixtures of experts with the routing on the GPU
    /// (`moe.wgsl`); their stacked copies of the experts' weights double
    /// those weights' GPU memory.
    pub fn compile(
        ctx: Arc<GpuContext>,
        graph: &Graph,
        weights: &[GpuWeight],
        cfg: &ProgramConfig,
    ) -> Result<Option<GpuProgram>> {
        let compiled = |op: &GOp| {
            if let GOp::Moe { moe, .. } = op {
                return cfg.fast && moe_compiles(graph, weights, moe);
            }
            !matches!(
                op,
                GOp::Attention { sinks: Some(_), .. }
                    | GOp::Unary { .. }
                    | GOp::Mul { .. }
                    | GOp::MulVec { .. }
                    | GOp::L2Norm { .. }
                    | GOp::Strided { .. }
                    | GOp::SsmConv { .. }
                    | GOp::DeltaNet { .. }
            )
        };
        let has_rows = |op: &GOp| matches!(op, GOp::OutputRows { .. });
        if !graph.nodes.iter().all(|n| compiled(&n.op))
            || !graph.nodes.iter().any(|n| has_rows(&n.op))
        {
            return Ok(None);
        }
        let n_ctx = cfg.n_ctx.max(1);
        // What the context sizes, checked before anything is made: a KV
        // cache layer and a RoPE table (on the host, then one binding).
        let binding = ctx.max_binding();
        let kv_width = graph
            .nodes
            .iter()
            .filter_map(|n| match &n.op {
                GOp::Attention { params, .. } => Some(params.n_head_kv * params.head_dim),
                _ => None,
            })
            .max()
            .unwrap_or(0) as u64;
        let rope_dims = graph
            .nodes
            .iter()
            .filter_map(|n| match &n.op {
                GOp::Rope { params, .. } => Some(params.n_dims.max(1)),
                _ => None,
            })
            .max()
            .unwrap_or(0) as u64;
        for (what, bytes) in [
            ("a KV cache layer", n_ctx as u64 * kv_width * 4),
            ("the RoPE table", n_ctx as u64 * rope_dims * 4),
        ] {
            if bytes > binding {
                return Err(WgpuError::Request(format!(
                    "{what} for a context of {n_ctx} positions takes {bytes} bytes, more than \
                     the device's largest storage binding ({binding} bytes): use a smaller context"
                )));
            }
        }
        // Per-head norms dispatch a workgroup per (token, head).
        let max_heads = graph
            .nodes
            .iter()
            .filter_map(|n| match n.op {
                GOp::RmsNorm { weight, .. } => {
                    let group = graph.weights[weight.0].shape[0].max(1);
                    Some((n.width / group).max(1) as u32)
                }
                _ => None,
            })
            .max()
            .unwrap_or(1);
        let max_batch = cfg
            .max_batch
            .clamp(1, n_ctx)
            .min(MAX_DISPATCH_ROWS / max_heads);
        let out = graph.node(graph.output);
        let n_vocab = out.width as u32;
        let f = 4u64;
        let b = max_batch as u64;
        let logits_rows = (ctx.max_binding() / (n_vocab as u64 * f)).clamp(1, b) as u32;
        let plan = Plan::new(graph, weights)?;
        // Rounded activations: every product input's width, plus scales.
        let max_in = graph
            .nodes
            .iter()
            .filter_map(|n| match n.op {
                GOp::MatMul { x, .. } => Some(graph.node(x).width as u64),
                _ => None,
            })
            .max()
            .unwrap_or(1);
        let act_floats = b * max_in;
        let step = ctx.uniform("step", bytemuck::bytes_of(&StepUniform::default()));
        let step_out = ctx.uniform("step_out", bytemuck::bytes_of(&StepUniform::default()));
        let ids = ctx.storage("ids", b * 4);
        let logits = ctx.storage("logits", logits_rows as u64 * n_vocab as u64 * f);
        let generated = ctx.storage("generated", MAX_GENERATED as u64 * 4);
        let dummy = ctx.storage("dummy", 16);
        let dummy_rw = ctx.storage("dummy_rw", 16);
        let shape = (max_batch, n_ctx, cfg.kv_f16);
        let bufs = (&ids, &logits, &dummy);
        let mut lw = Lowering::new(&ctx, graph, weights, &plan, shape, act_floats, bufs);
        lw.fast_batch = cfg.fast;
        let ob = OpBuilder {
            ctx: &ctx,
            step: &step,
        };
        let ob_out = OpBuilder {
            ctx: &ctx,
            step: &step_out,
        };
        let mut body = Vec::new();
        for i in 0..plan.tail_start {
            lw.lower(i, &ob, &ob, &mut body, false)?;
            lw.release(i);
        }
        // The two tails start from the body's state; each takes its own
        // buffers (neither frees what the other uses).
        let n = graph.nodes.len();
        let after_body = (
            lw.loc.clone(),
            lw.acts.clone(),
            lw.rounded.clone(),
            lw.pool.iter().map(|p| p.2).collect::<Vec<bool>>(),
            lw.pool_last.clone(),
        );
        lw.producer.clear();
        lw.accumulated.retain(|&a| a < plan.tail_start);
        let mut tail_all = Vec::new();
        for i in plan.tail_start..n {
            lw.lower(i, &ob, &ob, &mut tail_all, false)?;
            lw.release(i);
        }
        // A decoding step's products: the body's and the every-row tail's.
        let weight_bytes = lw.weight_bytes;
        // The body's buffers are as the body left them (the tails run one
        // or the other); those the first tail made stay its own.
        let (loc, acts, rounded, free, last) = after_body;
        for (k, e) in lw.pool.iter_mut().enumerate() {
            e.2 = free.get(k).copied().unwrap_or(false);
        }
        for (k, l) in lw.pool_last.iter_mut().enumerate() {
            *l = last.get(k).copied().unwrap_or(usize::MAX);
        }
        lw.loc = loc;
        lw.acts = acts;
        lw.rounded = rounded;
        lw.producer.clear();
        lw.accumulated.retain(|&a| a < plan.tail_start);
        let mut tail_last = Vec::new();
        for i in plan.tail_start..n {
            lw.lower(i, &ob_out, &ob, &mut tail_last, true)?;
            lw.release(i);
        }
        // The fast single-token step: every node again, over the same KV
        // cache, tables and logits, with buffers of its own.
        let mut decode = None;
        let mut decode_pool = Vec::new();
        if cfg.fast {
            // One token's rounded activations, for the products that keep
            // the exact path; the body's KV cache and tables.
            let shape = (1, n_ctx, cfg.kv_f16);
            let bufs = (&ids, &logits, &dummy);
            let mut ld = Lowering::new(&ctx, graph, weights, &plan, shape, max_in, bufs);
            ld.fast = true;
            ld.tables = lw.tables.clone();
            ld.kv = lw.kv.clone();
            ld.gelu = lw.gelu.clone();
            ld.moe = lw.moe.clone();
            let mut ops = Vec::new();
            for i in 0..n {
                ld.lower(i, &ob, &ob, &mut ops, false)?;
                ld.release(i);
            }
            decode_pool.extend(ld.pool.iter().map(|p| p.0.clone()));
            decode_pool.extend(ld.tables.iter().map(|t| t.2.clone()));
            decode_pool.extend(ld.gelu.clone());
            decode_pool.extend(ld.extra.iter().cloned());
            decode = Some(ops);
        }
        let argmax = ob.argmax(&logits, n_vocab, n_vocab, 1, &ids, &dummy, &dummy_rw);
        let mut keep: Vec<wgpu::Buffer> = lw.pool.iter().map(|p| p.0.clone()).collect();
        keep.extend(decode_pool);
        keep.extend(lw.acts.values().map(|a| a.0.clone()));
        keep.extend(lw.tables.iter().map(|t| t.2.clone()));
        keep.extend(lw.kv.values().flat_map(|(k, v, _)| [k.clone(), v.clone()]));
        keep.extend(lw.gelu.clone());
        keep.extend(lw.moe.values().flat_map(|m| {
            let mut v = vec![m.router.buffer.clone(), m.down.buffer.clone()];
            v.extend(m.gate_up.iter().map(|(g, _)| g.buffer.clone()));
            v
        }));
        keep.extend([dummy, dummy_rw]);
        let kept_weights = weights
            .iter()
            .filter_map(|w| match w {
                GpuWeight::Matrix(m) => Some(m.clone()),
                GpuWeight::Vector { buffer, .. } => {
                    keep.push(buffer.clone());
                    None
                }
            })
            .collect();
        Ok(Some(GpuProgram {
            ctx: ctx.clone(),
            n_ctx,
            max_batch,
            logits_rows,
            n_vocab,
            step,
            step_out,
            ids,
            logits,
            generated,
            body,
            tail_last,
            tail_all,
            decode,
            argmax,
            prerecorded: None,
            left_out: Vec::new(),
            weight_bytes,
            _keep: keep,
            _weights: kept_weights,
        }))
    }

    /// KV cache length.
    pub fn n_ctx(&self) -> u32 {
        self.n_ctx
    }

    /// Most tokens per step.
    pub fn max_batch(&self) -> u32 {
        self.max_batch
    }

    /// The device this program runs on.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Bytes of weight matrices read by one decoding step (every product's
    /// matrix; the embedding lookup reads one row).
    pub fn weight_bytes_per_token(&self) -> u64 {
        self.weight_bytes
    }

    fn check(&self, tokens: &[u32], pos: u32) -> Result<()> {
        if tokens.is_empty() {
            return Err(WgpuError::Request("no tokens given".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t >= self.n_vocab) {
            return Err(WgpuError::Request(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.n_vocab
            )));
        }
        if pos as u64 + tokens.len() as u64 > self.n_ctx as u64 {
            return Err(WgpuError::Request(format!(
                "positions {pos}..{} exceed the context of {} tokens",
                pos as usize + tokens.len(),
                self.n_ctx
            )));
        }
        Ok(())
    }

    fn set_step(&self, tokens: &[u32], pos: u32, n_out: u32) {
        let n = tokens.len() as u32;
        let s = StepUniform {
            n_tokens: n,
            pos,
            n_kv: pos + n,
            zero: 0,
        };
        let so = StepUniform {
            n_tokens: n_out,
            ..s
        };
        let q = &self.ctx.queue;
        q.write_buffer(&self.step, 0, bytemuck::bytes_of(&s));
        q.write_buffer(&self.step_out, 0, bytemuck::bytes_of(&so));
        q.write_buffer(&self.ids, 0, bytemuck::cast_slice(tokens));
    }

    /// Records a step of `n` tokens after which the context holds `n_kv`
    /// positions: with the last row's tail (`all == false`, or a single
    /// token), every row's, or none; then the argmax.
    fn encode(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        (n, n_kv): (u32, u32),
        tail: Option<bool>,
        argmax: bool,
    ) {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        let kept = |op: &Op| n > 1 || !self.left_out.iter().any(|l| l == op.label);
        if let (1, Some(_), Some(decode)) = (n, tail, &self.decode) {
            for op in decode.iter().filter(|o| kept(o)) {
                op.encode(&mut pass, 1, n_kv);
            }
            if argmax {
                self.argmax.encode(&mut pass, 1, n_kv);
            }
            return;
        }
        for op in self.body.iter().filter(|o| kept(o)) {
            op.encode(&mut pass, n, n_kv);
        }
        match tail {
            Some(true) | Some(false) if n == 1 => {
                for op in self.tail_all.iter().filter(|o| kept(o)) {
                    op.encode(&mut pass, 1, n_kv);
                }
            }
            Some(true) => {
                for op in &self.tail_all {
                    op.encode(&mut pass, n, n_kv);
                }
            }
            Some(false) => {
                for op in &self.tail_last {
                    op.encode(&mut pass, 1, n_kv);
                }
            }
            None => {}
        }
        if argmax {
            self.argmax.encode(&mut pass, 1, n_kv);
        }
    }

    /// Runs `tokens` at positions `pos ..` and returns the last token's
    /// logits. Longer inputs than a step are split.
    pub fn forward(&mut self, tokens: &[u32], pos: u32) -> Result<Vec<f32>> {
        self.check(tokens, pos)?;
        let mut p = pos;
        let chunks: Vec<&[u32]> = tokens.chunks(self.max_batch as usize).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            self.set_step(chunk, p, 1);
            if i + 1 < chunks.len() {
                let mut enc = self.ctx.device.create_command_encoder(&Default::default());
                let n = chunk.len() as u32;
                self.encode(&mut enc, (n, p + n), None, false);
                self.ctx.queue.submit([enc.finish()]);
            } else {
                let bytes = self.run_last(
                    (chunk.len() as u32, p + chunk.len() as u32),
                    false,
                    &self.logits.clone(),
                    self.n_vocab as u64 * 4,
                )?;
                return Ok(bytemuck::pod_collect_to_vec(&bytes));
            }
            p += chunk.len() as u32;
        }
        unreachable!("tokens is not empty")
    }

    /// Runs the step already set of `n` tokens (after which the context
    /// holds `n_kv` positions) with the last row's tail (and the argmax when
    /// `argmax`), and reads back `size` bytes of `src`. A one-token step
    /// submits the commands recorded during the previous one for this
    /// context length, if any, and records the next position's while the
    /// GPU works: a decoding step's commands do not depend on the token,
    /// and on its position only through the attention's choice of kernel
    /// ([`crate::ops::SOLO_MAX_KV`]).
    fn run_last(
        &mut self,
        (n, n_kv): (u32, u32),
        argmax: bool,
        src: &wgpu::Buffer,
        size: u64,
    ) -> Result<Vec<u8>> {
        let record = |m: &Self, n_kv: u32| {
            let mut enc = m.ctx.device.create_command_encoder(&Default::default());
            m.encode(&mut enc, (n, n_kv), Some(false), argmax);
            enc.finish()
        };
        let cmds = match self.prerecorded.take() {
            Some((a, kv, cmds)) if n == 1 && a == argmax && kv == n_kv => cmds,
            _ => record(self, n_kv),
        };
        let copy = self.ctx.device.create_command_encoder(&Default::default());
        let pending = self.ctx.submit_read(vec![cmds], copy, src, 0, size);
        if n == 1 {
            self.prerecorded = Some((argmax, n_kv + 1, record(self, n_kv + 1)));
        }
        self.ctx.finish_read(pending)
    }

    /// Runs `tokens` at positions `pos ..` and returns every token's logits,
    /// row-major `tokens.len() × n_vocab`.
    pub fn forward_all(&mut self, tokens: &[u32], pos: u32) -> Result<Vec<f32>> {
        self.check(tokens, pos)?;
        let nv = self.n_vocab as usize;
        let mut out = Vec::with_capacity(tokens.len() * nv);
        let mut p = pos;
        for chunk in tokens.chunks(self.max_batch.min(self.logits_rows) as usize) {
            let n = chunk.len() as u32;
            self.set_step(chunk, p, n);
            let mut enc = self.ctx.device.create_command_encoder(&Default::default());
            self.encode(&mut enc, (n, p + n), Some(true), false);
            let bytes = self
                .ctx
                .read_back(enc, &self.logits, 0, (chunk.len() * nv * 4) as u64)?;
            out.extend_from_slice(bytemuck::cast_slice::<u8, f32>(&bytes));
            p += n;
        }
        self.prerecorded = None;
        Ok(out)
    }

    /// Runs `tokens` at positions `pos ..` and returns the id of the last
    /// token's largest logit, reading back only that id.
    pub fn forward_greedy(&mut self, tokens: &[u32], pos: u32) -> Result<u32> {
        let n = tokens.len();
        if n > self.max_batch as usize {
            let split = n - (n - 1) % self.max_batch as usize - 1;
            self.forward(&tokens[..split], pos)?;
            return self.forward_greedy(&tokens[split..], pos + split as u32);
        }
        self.check(tokens, pos)?;
        self.set_step(tokens, pos, 1);
        let bytes = self.run_last((n as u32, pos + n as u32), true, &self.ids.clone(), 4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// Greedy decoding of `n_new` tokens after `prompt` (at positions
    /// `pos ..`), with no read-back between tokens: each step's argmax is
    /// written where the next step's embedding lookup reads it, and the
    /// steps are submitted back to back. Returns the new tokens.
    pub fn generate_greedy(&mut self, prompt: &[u32], pos: u32, n_new: u32) -> Result<Vec<u32>> {
        if n_new == 0 {
            return Ok(Vec::new());
        }
        if n_new > MAX_GENERATED {
            return Err(WgpuError::Request(format!(
                "at most {MAX_GENERATED} tokens per call"
            )));
        }
        let first = self.forward_greedy(prompt, pos)?;
        let p = pos + prompt.len() as u32;
        if p + n_new > self.n_ctx {
            return Err(WgpuError::Request(format!(
                "{} new tokens after position {p} exceed the context of {}",
                n_new, self.n_ctx
            )));
        }
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&self.ids, 0, &self.generated, 0, 4);
        self.ctx.queue.submit([enc.finish()]);
        for i in 1..n_new {
            // Token i − 1 (just chosen on the GPU) goes in at position p.
            let p = p + i - 1;
            let s = StepUniform {
                n_tokens: 1,
                pos: p,
                n_kv: p + 1,
                zero: 0,
            };
            let q = &self.ctx.queue;
            q.write_buffer(&self.step, 0, bytemuck::bytes_of(&s));
            q.write_buffer(&self.step_out, 0, bytemuck::bytes_of(&s));
            let mut enc = self.ctx.device.create_command_encoder(&Default::default());
            self.encode(&mut enc, (1, p + 1), Some(false), true);
            enc.copy_buffer_to_buffer(&self.ids, 0, &self.generated, i as u64 * 4, 4);
            self.ctx.queue.submit([enc.finish()]);
        }
        let enc = self.ctx.device.create_command_encoder(&Default::default());
        let bytes = self
            .ctx
            .read_back(enc, &self.generated, 0, n_new as u64 * 4)?;
        let out: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes);
        debug_assert_eq!(out[0], first);
        Ok(out)
    }

    /// The ops of a decoding step early in the context (at most 256
    /// positions, where the attention takes one dispatch) by label, in order of first
    /// appearance: (label, dispatches, whether they are matrix products).
    pub fn step_ops(&self) -> Vec<(&'static str, usize, bool)> {
        let mut out: Vec<(&'static str, usize, bool)> = Vec::new();
        for op in self.single_step().filter(|o| o.runs(1, 1)) {
            match out.iter_mut().find(|e| e.0 == op.label) {
                Some(e) => e.1 += 1,
                None => out.push((op.label, 1, op.is_product())),
            }
        }
        out
    }

    /// The ops the body of a batch of `n_tokens` runs (every layer, not
    /// the tails: the final norm and the output), by label as
    /// [`GpuProgram::step_ops`] lists a decoding step's: which kernels a
    /// batch of that size takes.
    pub fn batch_ops(&self, n_tokens: u32) -> Vec<(&'static str, usize, bool)> {
        let n = n_tokens.clamp(1, self.max_batch);
        let mut out: Vec<(&'static str, usize, bool)> = Vec::new();
        for op in self.body.iter().filter(|o| o.runs(n, n)) {
            match out.iter_mut().find(|e| e.0 == op.label) {
                Some(e) => e.1 += 1,
                None => out.push((op.label, 1, op.is_product())),
            }
        }
        out
    }

    /// The ops of a single-token step with its logits.
    fn single_step(&self) -> Box<dyn Iterator<Item = &Op> + '_> {
        match &self.decode {
            Some(d) => Box::new(d.iter()),
            None => Box::new(self.body.iter().chain(&self.tail_all)),
        }
    }

    /// A measuring aid: single-token steps leave out every op whose label is
    /// in `labels` ([`GpuProgram::step_ops`]), so that timing decoding with
    /// and without them gives what they cost in the chain of dependent
    /// dispatches. What those ops write goes stale, so the logits and tokens
    /// are meaningless until `leave_out(&[])` restores the full step (the KV
    /// cache must then be refilled: run the prompt again).
    pub fn leave_out(&mut self, labels: &[&str]) {
        self.left_out = labels.iter().map(|l| l.to_string()).collect();
        self.prerecorded = None;
    }

    /// Dispatches in one decoding step early in the context (argmax
    /// included).
    pub fn dispatches_per_step(&self) -> usize {
        self.step_ops().iter().map(|o| o.1).sum::<usize>() + 1
    }

    /// Mean CPU time in seconds to record (not submit) one step of
    /// `n_tokens` tokens with the last row's tail, over `reps` recordings.
    pub fn time_encode(&self, n_tokens: u32, reps: u32) -> f64 {
        let reps = reps.max(1);
        let t = std::time::Instant::now();
        for _ in 0..reps {
            let mut enc = self.ctx.device.create_command_encoder(&Default::default());
            let n = n_tokens.clamp(1, self.max_batch);
            self.encode(&mut enc, (n, n), Some(false), true);
            drop(enc.finish());
        }
        t.elapsed().as_secs_f64() / reps as f64
    }

    /// Runs one step of `tokens` at `pos` with a timestamp around every
    /// dispatch and returns GPU time per op label, or `None` when the
    /// device has no timestamp queries inside passes.
    pub fn profile_step(&mut self, tokens: &[u32], pos: u32) -> Result<Option<StepProfile>> {
        if !self.ctx.caps().timestamps {
            return Ok(None);
        }
        self.check(tokens, pos)?;
        if tokens.len() > self.max_batch as usize {
            return Err(WgpuError::Request("profile one batch at a time".into()));
        }
        let n = tokens.len() as u32;
        self.set_step(tokens, pos, 1);
        let ops: Vec<(&Op, u32)> = if n == 1 {
            self.single_step()
                .map(|o| (o, 1))
                .filter(|(o, _)| o.runs(1, pos + 1))
                .collect()
        } else {
            self.body
                .iter()
                .map(|o| (o, n))
                .chain(self.tail_last.iter().map(|o| (o, 1)))
                .filter(|(o, t)| o.runs(*t, pos + n))
                .collect()
        };
        let count = ops.len() as u32 * 2;
        let qs = self.ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let resolve = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile"),
            size: count as u64 * 8,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for (i, (op, t)) in ops.iter().enumerate() {
                pass.write_timestamp(&qs, 2 * i as u32);
                op.encode(&mut pass, *t, pos + n);
                pass.write_timestamp(&qs, 2 * i as u32 + 1);
            }
        }
        enc.resolve_query_set(&qs, 0..count, &resolve, 0);
        let bytes = self.ctx.read_back(enc, &resolve, 0, count as u64 * 8)?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes);
        let period = self.ctx.queue.get_timestamp_period() as f64;
        let mut prof = StepProfile {
            dispatches: ops.len() as u32,
            ..Default::default()
        };
        for (i, (op, _)) in ops.iter().enumerate() {
            let ns = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period;
            prof.total_ns += ns;
            match prof.per_label.iter_mut().find(|e| e.0 == op.label) {
                Some(e) => {
                    e.1 += 1;
                    e.2 += ns;
                }
                None => prof.per_label.push((op.label, 1, ns)),
            }
        }
        prof.per_label.sort_by(|a, b| b.2.total_cmp(&a.2));
        self.prerecorded = None;
        Ok(Some(prof))
    }
}

fn tc_err(e: WgpuError) -> tensor_core::TensorError {
    tensor_core::TensorError::Backend {
        backend: "wgpu",
        message: e.to_string(),
    }
}

impl tensor_core::Program for GpuProgram {
    fn n_ctx(&self) -> usize {
        self.n_ctx as usize
    }

    fn run(
        &mut self,
        tokens: &[u32],
        pos: usize,
        all: bool,
        logits: &mut [f32],
    ) -> tensor_core::Result<()> {
        let pos = u32::try_from(pos).map_err(|_| tc_err(WgpuError::Request("position".into())))?;
        let v = if all {
            self.forward_all(tokens, pos)
        } else {
            self.forward(tokens, pos)
        }
        .map_err(tc_err)?;
        logits.copy_from_slice(&v);
        Ok(())
    }

    fn run_greedy(&mut self, tokens: &[u32], pos: usize) -> tensor_core::Result<u32> {
        let pos = u32::try_from(pos).map_err(|_| tc_err(WgpuError::Request("position".into())))?;
        self.forward_greedy(tokens, pos).map_err(tc_err)
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
