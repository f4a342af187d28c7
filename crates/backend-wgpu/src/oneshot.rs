//! Single kernels run on CPU data: upload, dispatch, read back.
//!
//! For tests and experiments; a forward pass uses [`crate::GpuProgram`],
//! which keeps everything on the GPU.

use gguf_format::GgmlType;

use crate::device::GpuContext;
use crate::error::{Result, WgpuError};
use crate::kernels::Kernel;
use crate::ops::{
    attention_partials_bytes, AttnParams, EwParams, GpuMatrix, Op, OpBuilder, Prologue, RopeParams,
    StepUniform,
};

fn step_buffer(ctx: &GpuContext, n_tokens: u32, pos: u32) -> wgpu::Buffer {
    let step = StepUniform {
        n_tokens,
        pos,
        n_kv: pos + n_tokens,
        zero: 0,
    };
    ctx.uniform("step", bytemuck::bytes_of(&step))
}

fn f32_buffer(ctx: &GpuContext, label: &str, data: &[f32]) -> wgpu::Buffer {
    ctx.upload(label, bytemuck::cast_slice(data))
}

/// Runs `ops` for a batch of `n_tokens` (at position 0: no op here but
/// the attention's depends on the context, [`run_at`]).
fn run(
    ctx: &GpuContext,
    ops: &[Op],
    n_tokens: u32,
    out: &wgpu::Buffer,
    n_floats: usize,
) -> Result<Vec<f32>> {
    run_at(ctx, ops, (n_tokens, n_tokens), out, n_floats)
}

/// Runs `ops` for a batch of `n_tokens` after which the context holds
/// `n_kv` positions, and reads back `n_floats` of `out`.
fn run_at(
    ctx: &GpuContext,
    ops: &[Op],
    (n_tokens, n_kv): (u32, u32),
    out: &wgpu::Buffer,
    n_floats: usize,
) -> Result<Vec<f32>> {
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        for op in ops {
            op.encode(&mut pass, n_tokens, n_kv);
        }
    }
    let bytes = ctx.read_back(encoder, out, 0, (n_floats * 4) as u64)?;
    Ok(bytemuck::pod_collect_to_vec(&bytes))
}

fn check(what: &str, ok: bool, msg: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(WgpuError::Request(format!("{what}: {}", msg())))
    }
}

/// `Y[t, r] = W[r, :] · X[t, :]` for a `m × k` matrix of `ty` given as raw
/// GGUF bytes and `x` of `n_tokens × k`: matrix-vector kernel up to
/// [`crate::ops::MATVEC_MAX_TOKENS`] tokens, tiled matrix product above.
/// `max_part_bytes` forces a row split of the weights when smaller than the
/// device's binding limit. With `round_activations`, `x` is first rounded to
/// the weight type's activation format ([`crate::kernels::act_type`]) as
/// the forward pass does, which makes the result ggml's `mul_mat`. Formats
/// with an exact product ([`crate::kernels::is_exact`]) always round:
/// that kernel multiplies integer quants.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    ctx: &GpuContext,
    ty: GgmlType,
    weights: &[u8],
    k: usize,
    m: usize,
    x: &[f32],
    max_part_bytes: Option<u64>,
    round_activations: bool,
) -> Result<Vec<f32>> {
    check("matmul", k > 0 && x.len().is_multiple_of(k), || {
        format!("x has {} values, not a multiple of k = {k}", x.len())
    })?;
    let n = x.len() / k;
    let w = GpuMatrix::upload_with_limit(
        ctx,
        "w",
        ty,
        k as u64,
        m as u64,
        weights,
        max_part_bytes.unwrap_or(u64::MAX).min(ctx.max_binding()),
    )?;
    let step = step_buffer(ctx, n as u32, 0);
    let b = OpBuilder { ctx, step: &step };
    // Activations, then room for the packed layout's scales.
    let mut padded = x.to_vec();
    padded.resize(x.len() + x.len() / 16, 0.0);
    let xb = f32_buffer(ctx, "x", &padded);
    let y = ctx.storage("y", (n * m * 4) as u64);
    let dummy = ctx.storage("dummy", 16);
    let mut ops = Vec::new();
    let mut input = xb.clone();
    // The exact products read only quantized activations.
    let packed = crate::kernels::is_exact(ty, m as u32);
    if let Some(act) = crate::kernels::act_type(ty).filter(|_| round_activations || packed) {
        input = ctx.storage("xq", (x.len() * 4 + x.len() / 16 * 4) as u64);
        ops.push(b.quantize_act(
            act,
            packed,
            &xb,
            k as u32,
            &input,
            k as u32,
            k as u32,
            x.len() as u32,
        ));
    }
    ops.extend(b.linear(
        "linear",
        &w,
        &input,
        k as u32,
        &y,
        m as u32,
        0,
        false,
        0,
        x.len() as u32,
        &dummy,
    ));
    run(ctx, &ops, n as u32, &y, n * m)
}

/// The fast mode's batch product (`mm_fast.wgsl`, or `mm_coop.wgsl` with
/// `coop`): `Y[t, r] = W[r, :] · X[t, :]` for a `m × k` matrix of `ty` (raw
/// GGUF bytes, `k` a multiple of 32) and float activations `x` of
/// `n_tokens × k`, not rounded to the weight's activation type; with
/// `acc`, `Y` starts from it (`n_tokens × m` values) and the product is
/// added (the residual connection). `max_part_bytes` forces a row split of
/// the weights as in [`matmul`]. `split_target` lets products with few
/// 64 × 64 tiles split over k as the fast mode's do (its target workgroup
/// count: `mm_split.wgsl`); `None` never splits. Fails for `coop` where
/// the device has no cooperative matrices
/// ([`crate::DeviceCaps::coop_f16_16`]).
#[allow(clippy::too_many_arguments)]
pub fn mm_fast(
    ctx: &GpuContext,
    ty: GgmlType,
    weights: &[u8],
    k: usize,
    m: usize,
    x: &[f32],
    acc: Option<&[f32]>,
    max_part_bytes: Option<u64>,
    coop: bool,
    split_target: Option<u32>,
) -> Result<Vec<f32>> {
    check(
        "mm_fast",
        k > 0 && k.is_multiple_of(32) && x.len().is_multiple_of(k),
        || format!("x has {} values for k = {k} (a multiple of 32)", x.len()),
    )?;
    let n = x.len() / k;
    check("mm_fast", acc.is_none_or(|a| a.len() == n * m), || {
        format!(
            "acc has {} values, not {n} × {m}",
            acc.map_or(0, <[f32]>::len)
        )
    })?;
    check("mm_fast", !coop || ctx.caps().coop_f16_16, || {
        format!(
            "{} has no 16×16×16 f16 cooperative matrices",
            ctx.caps().name
        )
    })?;
    let w = GpuMatrix::upload_with_limit(
        ctx,
        "w",
        ty,
        k as u64,
        m as u64,
        weights,
        max_part_bytes.unwrap_or(u64::MAX).min(ctx.max_binding()),
    )?;
    let step = step_buffer(ctx, n as u32, 0);
    let b = OpBuilder { ctx, step: &step };
    let xb = f32_buffer(ctx, "x", x);
    let y = match acc {
        Some(a) => f32_buffer(ctx, "y", a),
        None => ctx.storage("y", (n * m * 4) as u64),
    };
    let dummy = ctx.storage("dummy", 16);
    // Room for the partials of the largest part's split.
    let part_floats = |target: u32| {
        w.parts
            .iter()
            .map(|p| {
                let z = crate::ops::mm_splits(n as u32, p.rows, k as u32, target) as u64;
                4 + z * n as u64 * p.rows as u64
            })
            .max()
            .unwrap_or(4)
    };
    let partials = split_target.map(|t| (ctx.storage("mm_part", part_floats(t) * 4), t));
    let ops = b.mm_fast(
        "mm_fast",
        &w,
        &xb,
        k as u32,
        &y,
        m as u32,
        acc.is_some(),
        &dummy,
        Some(coop),
        partials.as_ref().map(|(b, t)| (b, *t)),
    );
    run(ctx, &ops, n as u32, &y, n * m)
}

/// The splits over k that a batch product of `n_tokens` tokens, `m` rows
/// and `k` weights takes for a split target (as [`mm_fast`]'s
/// `split_target`, the workgroups it aims at): 1 for none.
pub fn mm_split_count(n_tokens: u32, m: u32, k: u32, target: u32) -> u32 {
    crate::ops::mm_splits(n_tokens, m, k, target)
}

/// What [`fmv`] computes its activations from (each `k` values).
#[derive(Clone, Copy, Debug)]
pub enum FastInput<'a> {
    /// x itself.
    Plain(&'a [f32]),
    /// RMSNorm(x)·weight with epsilon.
    Norm(&'a [f32], &'a [f32], f32),
    /// silu(gate)·up.
    Swiglu(&'a [f32], &'a [f32]),
}

/// The fast mode's single-token product (`fast.wgsl`'s `fmv`): `W·xv` for a
/// `m × k` matrix of `ty`, with `xv` made from `input` inside the product.
pub fn fmv(
    ctx: &GpuContext,
    ty: GgmlType,
    weights: &[u8],
    k: usize,
    m: usize,
    input: FastInput<'_>,
) -> Result<Vec<f32>> {
    let (a, b) = match input {
        FastInput::Plain(x) => (x, x),
        FastInput::Norm(x, w, _) => (x, w),
        FastInput::Swiglu(g, u) => (g, u),
    };
    check(
        "fmv",
        a.len() == k && b.len() == k && k.is_multiple_of(4),
        || format!("inputs of {} and {} values for k = {k}", a.len(), b.len()),
    )?;
    let w =
        GpuMatrix::upload_with_limit(ctx, "w", ty, k as u64, m as u64, weights, ctx.max_binding())?;
    let step = step_buffer(ctx, 1, 0);
    let ob = OpBuilder { ctx, step: &step };
    let ab = f32_buffer(ctx, "x", a);
    let bb = f32_buffer(ctx, "aux", b);
    let y = ctx.storage("y", (m * 4) as u64);
    let pro = match input {
        FastInput::Plain(_) => Prologue::Plain { x: &ab, base: 0 },
        FastInput::Norm(_, _, eps) => Prologue::Norm {
            x: &ab,
            base: 0,
            weight: &bb,
            eps,
        },
        FastInput::Swiglu(..) => Prologue::Swiglu {
            gate: &ab,
            gate_base: 0,
            up: &bb,
            up_base: 0,
        },
    };
    let ops = ob.fmv("fmv", &w, &pro, &y, m as u32, false, 0);
    run(ctx, &ops, 1, &y, m)
}

/// Rows `ids` of a `m × k` matrix of `ty`, dequantized: `ids.len() × k`.
pub fn get_rows(
    ctx: &GpuContext,
    ty: GgmlType,
    weights: &[u8],
    k: usize,
    m: usize,
    ids: &[u32],
    max_part_bytes: Option<u64>,
) -> Result<Vec<f32>> {
    check("get_rows", ids.iter().all(|&i| (i as usize) < m), || {
        format!("an id is ≥ {m} rows")
    })?;
    let w = GpuMatrix::upload_with_limit(
        ctx,
        "w",
        ty,
        k as u64,
        m as u64,
        weights,
        max_part_bytes.unwrap_or(u64::MAX).min(ctx.max_binding()),
    )?;
    let n = ids.len();
    let step = step_buffer(ctx, n as u32, 0);
    let b = OpBuilder { ctx, step: &step };
    let idb = ctx.upload("ids", bytemuck::cast_slice(ids));
    let y = ctx.storage("y", (n * k * 4) as u64);
    let dummy = ctx.storage("dummy", 16);
    let ops = b.get_rows(&w, &idb, &y, k as u32, 1.0, &dummy);
    run(ctx, &ops, n as u32, &y, n * k)
}

/// RMSNorm of each `weight.len()`-long row of `x`, times `weight`.
pub fn rms_norm(ctx: &GpuContext, x: &[f32], weight: &[f32], eps: f32) -> Result<Vec<f32>> {
    let n = weight.len();
    check("rms_norm", n > 0 && x.len().is_multiple_of(n), || {
        format!("x has {} values, not a multiple of {n}", x.len())
    })?;
    let t = x.len() / n;
    let step = step_buffer(ctx, t as u32, 0);
    let b = OpBuilder { ctx, step: &step };
    let xb = f32_buffer(ctx, "x", x);
    let wb = f32_buffer(ctx, "weight", weight);
    let y = ctx.storage("y", (x.len() * 4) as u64);
    let op = b.rms_norm(
        &xb, n as u32, &wb, &y, n as u32, n as u32, eps, false, None, 0,
    );
    run(ctx, &[op], t as u32, &y, x.len())
}

/// RoPE of `x` (`tokens × n_heads × head_dim`) for tokens at positions
/// `pos0 ..`: `n_dims` rotated dimensions, NEOX pairing when `neox`.
#[allow(clippy::too_many_arguments)]
pub fn rope(
    ctx: &GpuContext,
    x: &[f32],
    n_heads: usize,
    head_dim: usize,
    n_dims: usize,
    neox: bool,
    freq_base: f32,
    freq_scale: f32,
    pos0: u32,
) -> Result<Vec<f32>> {
    let row = n_heads * head_dim;
    check(
        "rope",
        row > 0 && x.len().is_multiple_of(row) && n_dims.is_multiple_of(2) && n_dims <= head_dim,
        || "bad shape".to_string(),
    )?;
    let t = x.len() / row;
    let step = step_buffer(ctx, t as u32, pos0);
    let b = OpBuilder { ctx, step: &step };
    let xb = f32_buffer(ctx, "x", x);
    let y = ctx.storage("y", (x.len() * 4) as u64);
    let mode = if neox {
        tensor_core::RopeMode::Neox
    } else {
        tensor_core::RopeMode::Normal
    };
    let mut rp = tensor_core::RopeParams::new(mode, head_dim, n_dims, freq_base);
    rp.freq_scale = freq_scale;
    let table = f32_buffer(
        ctx,
        "rope_table",
        &crate::ops::rope_table(&rp, pos0 as usize + t),
    );
    let op = b.rope(
        &xb,
        &y,
        &table,
        RopeParams {
            n_heads: n_heads as u32,
            head_dim: head_dim as u32,
            n_dims: n_dims as u32,
            neox: neox as u32,
            x_stride: row as u32,
            y_stride: row as u32,
            ..Default::default()
        },
    );
    run(ctx, &[op], t as u32, &y, x.len())
}

/// Causal attention: `q` is `tokens × n_head × head_dim` for tokens at
/// positions `pos0 ..`; `k` and `v` are the caches, `(pos0 + tokens) ×
/// n_kv_head × head_dim`. Returns `tokens × n_head × head_dim`.
///
/// With `kv_f16`, the caches stand for an f16 cache: their values must be
/// f16-representable, and the query and the probabilities are rounded to
/// f16 as tensor-core's `attention::<f16>` rounds them; otherwise it is an
/// f32 cache (`attention::<f32>`).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    ctx: &GpuContext,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    pos0: u32,
    kv_f16: bool,
) -> Result<Vec<f32>> {
    attention_mode(
        ctx,
        q,
        k,
        v,
        (n_head, n_kv_head, head_dim),
        pos0,
        kv_f16,
        None,
        false,
    )
}

/// [`attention`] of a single token (`q` one row) over an f32 cache through
/// the fast mode's kernel (`attn_fast.wgsl`: f32 sums in its own order, not
/// the CPU's bits), with a sliding `window` (0: none) and a soft-cap of the
/// scores (0: none).
#[allow(clippy::too_many_arguments)]
pub fn attention_fast(
    ctx: &GpuContext,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    pos0: u32,
    window: u32,
    softcap: f32,
) -> Result<Vec<f32>> {
    check("attention_fast", q.len() == n_head * head_dim, || {
        "one token's query".to_string()
    })?;
    let extra = (window, softcap);
    attention_mode(
        ctx,
        q,
        k,
        v,
        (n_head, n_kv_head, head_dim),
        pos0,
        false,
        Some(extra),
        false,
    )
}

/// [`attention`] of a batch (`q` one row a token, `k`/`v` the cache rows
/// of positions `0..pos0 + tokens`) through the fast mode's batch kernel
/// (`attn_flash.wgsl`: tiles of 32 queries × 64 keys, online softmax in
/// f32, not the CPU's bits), with a sliding `window` (0: none) and a
/// soft-cap of the scores (0: none). Any number of tokens (the programs
/// use it for batches of 16 or more).
#[allow(clippy::too_many_arguments)]
pub fn attention_flash(
    ctx: &GpuContext,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    pos0: u32,
    window: u32,
    softcap: f32,
) -> Result<Vec<f32>> {
    attention_mode(
        ctx,
        q,
        k,
        v,
        (n_head, n_kv_head, head_dim),
        pos0,
        false,
        Some((window, softcap)),
        true,
    )
}

#[allow(clippy::too_many_arguments)]
fn attention_mode(
    ctx: &GpuContext,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (n_head, n_kv_head, head_dim): (usize, usize, usize),
    pos0: u32,
    kv_f16: bool,
    fast: Option<(u32, f32)>,
    flash: bool,
) -> Result<Vec<f32>> {
    let qrow = n_head * head_dim;
    let kvrow = n_kv_head * head_dim;
    check(
        "attention",
        qrow > 0
            && q.len().is_multiple_of(qrow)
            && n_kv_head > 0
            && n_head.is_multiple_of(n_kv_head)
            && head_dim <= 256
            && head_dim.is_multiple_of(4),
        || "bad shape".to_string(),
    )?;
    let t = q.len() / qrow;
    check(
        "attention",
        k.len() == (pos0 as usize + t) * kvrow && v.len() == k.len(),
        || "cache length does not match pos0 + tokens".to_string(),
    )?;
    let step = step_buffer(ctx, t as u32, pos0);
    let b = OpBuilder { ctx, step: &step };
    let qb = f32_buffer(ctx, "q", q);
    let kb = f32_buffer(ctx, "k", k);
    let vb = f32_buffer(ctx, "v", v);
    let out = ctx.storage("out", (q.len() * 4) as u64);
    let params = AttnParams {
        n_head: n_head as u32,
        n_kv_head: n_kv_head as u32,
        head_dim: head_dim as u32,
        q_stride: qrow as u32,
        kv_stride: kvrow as u32,
        out_stride: qrow as u32,
        scale: 1.0 / (head_dim as f32).sqrt(),
        kv_f16: kv_f16 as u32,
        window: fast.map_or(0, |f| f.0),
        softcap: fast.map_or(0.0, |f| f.1),
        inv_cap: fast.map_or(0.0, |f| if f.1 != 0.0 { 1.0 / f.1 } else { 0.0 }),
        ..Default::default()
    };
    let ops = if flash {
        vec![b.attention_flash(&qb, &kb, &vb, &out, params, 1)]
    } else {
        let partials = ctx.storage("partials", attention_partials_bytes(&params));
        b.attention(&qb, &kb, &vb, &out, params, fast.is_some(), &partials)
    };
    run_at(ctx, &ops, (t as u32, pos0 + t as u32), &out, q.len())
}

fn binary(ctx: &GpuContext, kernel: Kernel, a: &[f32], b_: &[f32], n: usize) -> Result<Vec<f32>> {
    check(
        kernel.entry_point(),
        n > 0 && a.len() == b_.len() && a.len().is_multiple_of(n),
        || "length mismatch".to_string(),
    )?;
    let t = a.len() / n;
    let step = step_buffer(ctx, t as u32, 0);
    let b = OpBuilder { ctx, step: &step };
    let ab = f32_buffer(ctx, "a", a);
    let bb = f32_buffer(ctx, "b", b_);
    let y = ctx.storage("y", (a.len() * 4) as u64);
    let dummy = ctx.storage("dummy", 16);
    let p = EwParams {
        n: n as u32,
        a_stride: n as u32,
        b_stride: n as u32,
        y_stride: n as u32,
        ..Default::default()
    };
    let op = b.binary(kernel, &ab, &bb, &y, p, &dummy);
    run(ctx, &[op], t as u32, &y, a.len())
}

/// `a + b`, rows of `n`.
pub fn add(ctx: &GpuContext, a: &[f32], b: &[f32], n: usize) -> Result<Vec<f32>> {
    binary(ctx, Kernel::Add, a, b, n)
}

/// `silu(a)·b`, rows of `n`.
pub fn swiglu(ctx: &GpuContext, a: &[f32], b: &[f32], n: usize) -> Result<Vec<f32>> {
    binary(ctx, Kernel::Swiglu(None), a, b, n)
}

/// Index of the largest value of each `n`-long row of `a` (first on ties).
pub fn argmax(ctx: &GpuContext, a: &[f32], n: usize) -> Result<Vec<u32>> {
    check("argmax", n > 0 && a.len().is_multiple_of(n), || {
        "length mismatch".to_string()
    })?;
    let t = a.len() / n;
    let step = step_buffer(ctx, t as u32, 0);
    let b = OpBuilder { ctx, step: &step };
    let ab = f32_buffer(ctx, "a", a);
    let dummy = ctx.storage("dummy", 16);
    let dummy_rw = ctx.storage("dummy_rw", 16);
    let tok = ctx.storage("token", (t * 4) as u64);
    let op = b.argmax(&ab, n as u32, n as u32, t as u32, &tok, &dummy, &dummy_rw);
    let v = run(ctx, &[op], t as u32, &tok, t)?;
    Ok(v.into_iter().map(f32::to_bits).collect())
}

/// Rows of `n` activations rounded to `act` (Q8_0, Q8_1 or Q8_K) as ggml
/// quantizes them, returned as the f32 values d·q.
pub fn quantize_act(ctx: &GpuContext, act: GgmlType, x: &[f32], n: usize) -> Result<Vec<f32>> {
    let block = if act == GgmlType::Q8_K { 256 } else { 32 };
    check(
        "quantize_act",
        matches!(act, GgmlType::Q8_0 | GgmlType::Q8_1 | GgmlType::Q8_K),
        || format!("{act} is not an activation type"),
    )?;
    check(
        "quantize_act",
        n > 0 && n.is_multiple_of(block) && x.len().is_multiple_of(n),
        || "bad shape".to_string(),
    )?;
    let t = x.len() / n;
    let step = step_buffer(ctx, t as u32, 0);
    let b = OpBuilder { ctx, step: &step };
    let xb = f32_buffer(ctx, "x", x);
    let y = ctx.storage("y", (x.len() * 4) as u64);
    let op = b.quantize_act(act, false, &xb, n as u32, &y, n as u32, n as u32, 0);
    run(ctx, &[op], t as u32, &y, x.len())
}

/// `moe.wgsl`'s routing of each row of `n_expert` router logits: the
/// `n_used` experts in slot order and their weights, as
/// the fast mode's routing dispatch computes them on the GPU
/// (gating 0 softmax, 1 sigmoid, 2 softmax of the chosen logits; `normalize`
/// divides by the chosen weights' sum; times `scale`).
pub fn moe_route(
    ctx: &GpuContext,
    logits: &[f32],
    n_expert: usize,
    n_used: usize,
    (gating, normalize, scale): (u32, bool, f32),
) -> Result<(Vec<u32>, Vec<f32>)> {
    check(
        "moe_route",
        (1..=256).contains(&n_expert)
            && (1..=n_expert).contains(&n_used)
            && logits.len().is_multiple_of(n_expert)
            && gating <= 2,
        || "bad shape".to_string(),
    )?;
    let t = logits.len() / n_expert;
    // Rows of whole vec4s, as the program lays them out.
    let stride = n_expert.next_multiple_of(4);
    let mut padded = vec![0.0f32; t * stride];
    for (row, l) in padded.chunks_mut(stride).zip(logits.chunks(n_expert)) {
        row[..n_expert].copy_from_slice(l);
    }
    let step = step_buffer(ctx, t as u32, 0);
    let b = OpBuilder { ctx, step: &step };
    let lb = f32_buffer(ctx, "logits", &padded);
    let routing = ctx.storage("routing", (t * n_used * 2 * 4) as u64);
    let dummy = ctx.storage("dummy", 16);
    let op = b.moe_route(
        (gating, normalize, scale),
        (&lb, stride as u32),
        n_expert as u32,
        n_used as u32,
        &routing,
        &dummy,
    );
    let v = run(ctx, &[op], t as u32, &routing, t * n_used * 2)?;
    // Experts are stored as floats (exact below 2^24).
    let experts = v.iter().step_by(2).map(|&e| e as u32).collect();
    let weights = v.iter().skip(1).step_by(2).copied().collect();
    Ok((experts, weights))
}

/// The routed experts' products of `moe.wgsl` for a batch: for each pair j
/// = t·n_used + s of `experts` (`n_used` a token, each below the count of
/// matrices), `Y[j, r] = W_e[r, :] · xv(j)`, `weights` holding every
/// expert's `m × k` matrix of `ty` (raw GGUF bytes) one after another.
/// Without `swiglu`, xv(j) is token t's row of `x` (`n_tokens × k`); with
/// it, silu(gate)·up of pair j's row of `x` (`pairs × 2k`: gate then up,
/// the down product's input). `grouped` None multiplies one pair at a time
/// (`moe_mv`, the small batches' path), `Some(coop)` lists each expert's
/// pairs (`moe_bucket`) and multiplies them as one batch (`mm_fast`
/// gathered; with `coop`, `mm_coop`), whatever
/// the batch's size. Fails for `coop` where the device has no cooperative
/// matrices, or where a token's slots repeat an expert.
#[allow(clippy::too_many_arguments)]
pub fn moe_experts(
    ctx: &GpuContext,
    ty: GgmlType,
    weights: &[u8],
    (k, m): (usize, usize),
    x: &[f32],
    (experts, n_used): (&[u32], usize),
    swiglu: bool,
    grouped: Option<bool>,
) -> Result<Vec<f32>> {
    let row_bytes = k / ty.block_size() * ty.type_size();
    let expert_bytes = m * row_bytes;
    let n_expert = weights.len() / expert_bytes.max(1);
    let pairs = experts.len();
    let n = pairs / n_used.max(1);
    let x_rows = if swiglu { pairs } else { n };
    let x_width = if swiglu { 2 * k } else { k };
    check(
        "moe_experts",
        k > 0
            && k.is_multiple_of(32)
            && k.is_multiple_of(ty.block_size())
            && m > 0
            && n_expert > 0
            && weights.len() == n_expert * expert_bytes
            && expert_bytes.is_multiple_of(4)
            && n_used > 0
            && pairs == n * n_used
            && x.len() == x_rows * x_width
            && experts.iter().all(|&e| (e as usize) < n_expert),
        || "bad shape".to_string(),
    )?;
    // A token's slots hold distinct experts (as moe_route chooses them), so
    // an expert's list holds at most one pair a token.
    check(
        "moe_experts",
        experts
            .chunks(n_used)
            .all(|t| t.iter().enumerate().all(|(i, e)| !t[..i].contains(e))),
        || "a token routed twice to one expert".to_string(),
    )?;
    check(
        "moe_experts",
        grouped != Some(true) || ctx.caps().coop_f16_16,
        || {
            format!(
                "{} has no 16×16×16 f16 cooperative matrices",
                ctx.caps().name
            )
        },
    )?;
    // The stacked buffer's spare bytes, as MoeMatrix::stack leaves them.
    let mut stacked = weights.to_vec();
    stacked.resize(weights.len() + 16, 0);
    let w = crate::ops::MoeMatrix {
        buffer: ctx.try_upload("experts", &stacked)?,
        ty,
        k: k as u32,
        m: m as u32,
        row_bytes: row_bytes as u32,
        expert_bytes: expert_bytes as u32,
    };
    // The routing as moe_route writes it: expert (a float), weight.
    let routing: Vec<f32> = experts.iter().flat_map(|&e| [e as f32, 1.0]).collect();
    let step = step_buffer(ctx, n as u32, 0);
    let b = OpBuilder { ctx, step: &step };
    let rb = f32_buffer(ctx, "routing", &routing);
    let xb = f32_buffer(ctx, "x", x);
    let y = ctx.storage("y", (pairs * m * 4) as u64);
    let dummy = ctx.storage("dummy", 16);
    let (prologue, aux, share) = match swiglu {
        true => (2, k as u32, 1),
        false => (0, 0, n_used as u32),
    };
    let xs = (x_width as u32, share);
    let ops = match grouped {
        None => vec![b.moe_mv(
            "moe_mv",
            &w,
            (true, prologue, aux),
            (&xb, xs.0, xs.1),
            (&y, m as u32, 0),
            &rb,
            n_used as u32,
        )],
        Some(coop) => {
            let lists = ctx.storage("lists", (n_expert * (n + 1) * 4) as u64);
            vec![
                b.moe_bucket(&rb, (n_expert as u32, n_used as u32), &lists, &dummy, 1),
                b.moe_mm(
                    "moe_mm",
                    &w,
                    (prologue, aux),
                    (&xb, xs.0, xs.1),
                    (&y, m as u32, 0),
                    (&lists, n_expert as u32),
                    (1, Some(coop)),
                ),
            ]
        }
    };
    run(ctx, &ops, n as u32, &y, pairs * m)
}
