//! A LLaMA forward pass that stays on the GPU.
//!
//! Buffers (B = max batch, D = n_embd, Dq = n_head·head_dim,
//! Dkv = n_kv_head·head_dim, F = n_ff, V = n_vocab, C = n_ctx):
//! ```text
//! x        (B, D)    residual stream
//! xn       (B, D)    normalised input of a sub-layer
//! q_raw/q  (B, Dq)   query before/after RoPE
//! k_raw    (B, Dkv)  key before RoPE (RoPE writes it into the cache)
//! k/v[l]   (C, Dkv)  KV cache of layer l; V is written there by its matvec
//! attn     (B, Dq)   attention output
//! gate/up  (B, F), h (B, F) = silu(gate)·up
//! logits   (L, V)    L ≤ B rows
//! ```

use std::sync::Arc;

use gguf_format::{GgmlType, Gguf, GgufHeader, TensorInfo};

use crate::device::GpuContext;
use crate::error::{Result, WgpuError};
use crate::kernels::{act_type, is_exact, Kernel};
use crate::ops::{
    AttnParams, EwParams, GpuMatrix, Op, OpBuilder, RopeParams, StepUniform, TgRopeParams,
};

/// Hyper-parameters of a LLaMA-family model, read from GGUF metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuConfig {
    /// Hidden size.
    pub n_embd: u32,
    /// Transformer blocks.
    pub n_layer: u32,
    /// Query heads.
    pub n_head: u32,
    /// Key/value heads (grouped-query attention when < n_head).
    pub n_kv_head: u32,
    /// Dimensions per head.
    pub head_dim: u32,
    /// Feed-forward hidden size.
    pub n_ff: u32,
    /// Vocabulary size (rows of the output matrix).
    pub n_vocab: u32,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// RoPE frequency base.
    pub rope_base: f32,
    /// RoPE linear frequency scale (1 / scaling factor).
    pub rope_freq_scale: f32,
    /// Rotated dimensions per head.
    pub rope_dims: u32,
    /// NEOX pairing (i, i + d/2) instead of LLaMA's (2i, 2i+1).
    pub rope_neox: bool,
    /// Context length the model was trained with.
    pub n_ctx_train: u32,
}

impl GpuConfig {
    /// Reads the hyper-parameters of a `llama` (or LLaMA-compatible) GGUF.
    pub fn from_gguf(h: &GgufHeader) -> Result<GpuConfig> {
        let arch = h.get_str("general.architecture")?.to_string();
        let rope_neox = match arch.as_str() {
            "llama" | "mistral" | "granite" => false,
            other => {
                return Err(WgpuError::Model(format!(
                    "architecture `{other}` is not supported by the GPU backend (llama only)"
                )))
            }
        };
        let key = |k: &str| format!("{arch}.{k}");
        let n_embd = h.get_u32(&key("embedding_length"))?;
        let n_head = h.get_u32(&key("attention.head_count"))?;
        let n_kv_head = h.get_u32(&key("attention.head_count_kv")).unwrap_or(n_head);
        if n_head == 0 || n_kv_head == 0 || n_head % n_kv_head != 0 || n_embd % n_head != 0 {
            return Err(WgpuError::Model(format!(
                "bad head counts: {n_head} heads, {n_kv_head} KV heads, hidden size {n_embd}"
            )));
        }
        let head_dim = h
            .get_u32(&key("attention.key_length"))
            .unwrap_or(n_embd / n_head);
        if head_dim > 256 || !head_dim.is_multiple_of(4) {
            return Err(WgpuError::Model(format!(
                "head size {head_dim} is not a multiple of 4 or above 256"
            )));
        }
        let rope_dims = h.get_u32(&key("rope.dimension_count")).unwrap_or(head_dim);
        let rope_freq_scale = match h.get_str(&key("rope.scaling.type")) {
            Ok("linear") => 1.0 / h.get_f32(&key("rope.scaling.factor")).unwrap_or(1.0),
            Ok("none") | Err(_) => 1.0,
            Ok(other) => {
                return Err(WgpuError::Model(format!(
                    "RoPE scaling `{other}` is not supported"
                )));
            }
        };
        let embd = h.require_tensor("token_embd.weight")?;
        Ok(GpuConfig {
            n_embd,
            n_layer: h.get_u32(&key("block_count"))?,
            n_head,
            n_kv_head,
            head_dim,
            n_ff: h.get_u32(&key("feed_forward_length"))?,
            n_vocab: embd.n_rows() as u32,
            rms_eps: h.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
            rope_base: h.get_f32(&key("rope.freq_base")).unwrap_or(10000.0),
            rope_freq_scale,
            rope_dims: rope_dims.min(head_dim),
            rope_neox,
            n_ctx_train: h.get_u32(&key("context_length")).unwrap_or(4096),
        })
    }
}

/// Load-time choices.
#[derive(Clone, Debug)]
pub struct GpuModelOptions {
    /// KV cache length (positions); `None`: the training context, at most 4096.
    pub n_ctx: Option<u32>,
    /// Most tokens per step (prompt chunks are at most this long).
    pub max_batch: u32,
    /// Keep the KV cache at f16 precision, as llama.cpp does by default
    /// (values rounded to f16 and, as ggml's f16 products do, the query and
    /// the attention probabilities too); `false` keeps it in f32.
    pub kv_f16: bool,
}

impl Default for GpuModelOptions {
    fn default() -> Self {
        GpuModelOptions {
            n_ctx: None,
            max_batch: 512,
            kv_f16: true,
        }
    }
}

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

/// A LLaMA model resident on the GPU: weights, KV cache, activations, and
/// the pre-built ops of a step.
pub struct GpuModel {
    ctx: Arc<GpuContext>,
    cfg: GpuConfig,
    n_ctx: u32,
    max_batch: u32,
    logits_rows: u32,
    step: wgpu::Buffer,
    ids: wgpu::Buffer,
    logits: wgpu::Buffer,
    generated: wgpu::Buffer,
    body: Vec<Op>,
    head_last: Vec<Op>,
    head_all: Vec<Op>,
    argmax: Op,
    /// A one-token step recorded while the GPU ran the previous one (with
    /// the argmax head or not): the next one-token step submits it instead
    /// of recording (~0.6 ms of CPU for a 1.1B model's 246 dispatches).
    prerecorded: Option<(bool, wgpu::CommandBuffer)>,
    /// Labels of ops single-token steps leave out ([`GpuModel::leave_out`]).
    left_out: Vec<String>,
    weight_bytes: u64,
    _keep: Vec<wgpu::Buffer>,
    _weights: Vec<GpuMatrix>,
}

impl std::fmt::Debug for GpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuModel")
            .field("cfg", &self.cfg)
            .field("n_ctx", &self.n_ctx)
            .finish_non_exhaustive()
    }
}

/// Buffers of activations rounded as ggml's dot products see them, one per
/// rounding type, shared by all layers.
struct ActBuffers<'c> {
    ctx: &'c GpuContext,
    /// Bytes per buffer: activations, then two floats per block of 32 from
    /// float `corr_base` (the packed layout's scales).
    size: u64,
    corr_base: u32,
    /// The current source was rounded by the norm that wrote it.
    fused: bool,
    bufs: Vec<((GgmlType, bool), wgpu::Buffer)>,
}

impl ActBuffers<'_> {
    /// The buffer of activations rounded (and maybe packed) as `key` says.
    fn buffer(&mut self, key: (GgmlType, bool)) -> wgpu::Buffer {
        if let Some((_, b)) = self.bufs.iter().find(|(t, _)| *t == key) {
            return b.clone();
        }
        let b = self.ctx.storage("act", self.size);
        self.bufs.push((key, b.clone()));
        b
    }

    /// Where a norm or SwiGLU whose consumers all round as `fa` says
    /// ([`fused_act`]) writes: the packed layout into that type's buffer,
    /// anything else into `plain`.
    fn fused_out(
        &mut self,
        fa: Option<Option<(GgmlType, bool)>>,
        plain: &wgpu::Buffer,
    ) -> wgpu::Buffer {
        match fa {
            Some(Some(key)) if key.1 => self.buffer(key),
            _ => plain.clone(),
        }
    }
    /// The input a product with `w` reads: `src` itself, or `src` rounded to
    /// `w`'s activation type (pushing the rounding op the first time a
    /// consumer of this `src` needs that type; `done` tracks that).
    #[allow(clippy::too_many_arguments)]
    fn input(
        &mut self,
        ob: &OpBuilder<'_>,
        ops: &mut Vec<Op>,
        done: &mut Vec<(GgmlType, bool)>,
        src: &wgpu::Buffer,
        stride: u32,
        n: u32,
        w: &GpuMatrix,
    ) -> wgpu::Buffer {
        let Some(act) = act_type(w.ty) else {
            return src.clone();
        };
        let key = (act, is_exact(w.ty, w.m));
        if self.fused {
            // The norm or SwiGLU that wrote `src` rounded it already: into
            // `src` itself, or packed into the key's buffer.
            return if key.1 { self.buffer(key) } else { src.clone() };
        }
        let buf = self.buffer(key);
        if !done.contains(&key) {
            ops.push(ob.quantize_act(act, key.1, src, stride, &buf, stride, n, self.corr_base));
            done.push(key);
        }
        buf
    }
}

/// The activation rounding a norm (or SwiGLU) can apply for all of `ws`,
/// with whether it is the exact products' packed layout (`Some(None)`: none
/// needed), or `None` when they need different roundings or layouts, or Q8_1
/// as f32 values (whose block sums that layout lacks).
fn fused_act(ws: &[&GpuMatrix]) -> Option<Option<(GgmlType, bool)>> {
    let key = |w: &GpuMatrix| act_type(w.ty).map(|a| (a, is_exact(w.ty, w.m)));
    let first = key(ws[0]);
    let same = ws.iter().all(|w| key(w) == first);
    (same && first != Some((GgmlType::Q8_1, false))).then_some(first)
}

/// Most greedy tokens [`GpuModel::generate_greedy`] makes in one call.
const MAX_GENERATED: u32 = 4096;

fn vector_f32(t: &TensorInfo, bytes: &[u8]) -> Result<Vec<f32>> {
    let n = t.n_elements() as usize;
    match t.ggml_type {
        GgmlType::F32 => Ok(bytemuck::pod_collect_to_vec(bytes)),
        GgmlType::F16 => Ok(bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect()),
        ty => {
            let mut out = vec![0.0; n];
            quant_kernels::dequantize_row(ty, bytes, &mut out).map_err(|e| {
                WgpuError::BadShape {
                    tensor: t.name.clone(),
                    what: e.to_string(),
                }
            })?;
            Ok(out)
        }
    }
}

impl GpuModel {
    /// Uploads the weights of `file` and builds every op of a step.
    pub fn load<D: AsRef<[u8]>>(
        ctx: Arc<GpuContext>,
        file: &Gguf<D>,
        opts: &GpuModelOptions,
    ) -> Result<GpuModel> {
        let cfg = GpuConfig::from_gguf(file.header())?;
        let n_ctx = opts.n_ctx.unwrap_or(cfg.n_ctx_train.min(4096)).max(1);
        let max_batch = opts.max_batch.clamp(1, n_ctx);
        let kv_f16 = opts.kv_f16;
        let cache_write = if kv_f16 { 2 } else { 1 };
        let (d, dq, dkv, ff, nv) = (
            cfg.n_embd,
            cfg.n_head * cfg.head_dim,
            cfg.n_kv_head * cfg.head_dim,
            cfg.n_ff,
            cfg.n_vocab,
        );
        let f = 4u64;
        let b = max_batch as u64;
        let logits_rows = (ctx.max_binding() / (nv as u64 * f)).clamp(1, b) as u32;

        let step = ctx.uniform("step", bytemuck::bytes_of(&StepUniform::default()));
        let ids = ctx.storage("ids", b * 4);
        let x = ctx.storage("x", b * d as u64 * f);
        let xn = ctx.storage("xn", b * d as u64 * f);
        // Query, key (and, when stacked, value) projections side by side:
        // qk_raw (B, Dq + Dkv (+ Dkv)).
        let qk_raw = ctx.storage("qk_raw", b * (dq + 2 * dkv) as u64 * f);
        let q = ctx.storage("q", b * dq as u64 * f);
        let attn = ctx.storage("attn", b * dq as u64 * f);
        // Gate and up projections side by side: gate_up (B, 2F).
        let gate_up = ctx.storage("gate_up", b * 2 * ff as u64 * f);
        let h = ctx.storage("h", b * ff as u64 * f);
        let logits = ctx.storage("logits", logits_rows as u64 * nv as u64 * f);
        let generated = ctx.storage("generated", MAX_GENERATED as u64 * 4);
        let dummy = ctx.storage("dummy", 16);
        let dummy_rw = ctx.storage("dummy_rw", 16);

        let mut weights = Vec::new();
        let mut keep = Vec::new();
        let mut weight_bytes = 0u64;
        let matrix = |name: &str, k: u32, m: u32| -> Result<GpuMatrix> {
            let (t, bytes) = file.tensor_by_name(name)?;
            if t.dims.len() != 2 || t.dims[0] != k as u64 || t.dims[1] != m as u64 {
                return Err(WgpuError::BadShape {
                    tensor: name.to_string(),
                    what: format!("dims {:?}, expected [{k}, {m}]", t.dims),
                });
            }
            GpuMatrix::upload(&ctx, name, t.ggml_type, k as u64, m as u64, bytes)
        };
        // Several matrices of one type with the same row length, stacked
        // into one (one product instead of several); `None` if the types differ.
        let stacked = |names: &[String], k: u32| -> Result<Option<GpuMatrix>> {
            let mut ty = None;
            let mut rows = 0u64;
            let mut bytes = Vec::new();
            for name in names {
                let (t, data) = file.tensor_by_name(name)?;
                if t.dims.len() != 2 || t.dims[0] != k as u64 {
                    return Err(WgpuError::BadShape {
                        tensor: name.to_string(),
                        what: format!("dims {:?}, expected [{k}, _]", t.dims),
                    });
                }
                // Not stacked: different types, or rows that would change
                // the product's exact order (llama.cpp repacks matrices
                // whose rows are a multiple of 8, each on its own).
                if ty.is_some_and(|ty| ty != t.ggml_type) || !t.dims[1].is_multiple_of(8) {
                    return Ok(None);
                }
                ty = Some(t.ggml_type);
                rows += t.dims[1];
                bytes.extend_from_slice(data);
            }
            let ty = ty.expect("at least one matrix");
            GpuMatrix::upload(&ctx, &names.join("+"), ty, k as u64, rows, &bytes).map(Some)
        };
        let vector = |name: &str, n: u32| -> Result<wgpu::Buffer> {
            let (t, bytes) = file.tensor_by_name(name)?;
            if t.n_elements() != n as u64 {
                return Err(WgpuError::BadShape {
                    tensor: name.to_string(),
                    what: format!("{} elements, expected {n}", t.n_elements()),
                });
            }
            Ok(ctx.upload(name, bytemuck::cast_slice(&vector_f32(t, bytes)?)))
        };

        let ob = OpBuilder {
            ctx: &ctx,
            step: &step,
        };
        let act_floats = b * d.max(dq).max(ff) as u64;
        let mut acts = ActBuffers {
            ctx: &ctx,
            size: (act_floats + act_floats / 16) * f,
            corr_base: act_floats as u32,
            fused: false,
            bufs: Vec::new(),
        };
        let mut body = Vec::new();
        let embd = matrix("token_embd.weight", d, nv)?;
        body.extend(ob.get_rows(&embd, &ids, &x, d, &dummy));
        let mut rp = tensor_core::RopeParams::new(
            if cfg.rope_neox {
                tensor_core::RopeMode::Neox
            } else {
                tensor_core::RopeMode::Normal
            },
            cfg.head_dim as usize,
            cfg.rope_dims as usize,
            cfg.rope_base,
        );
        rp.freq_scale = cfg.rope_freq_scale;
        let rope_table = ctx.upload(
            "rope_table",
            bytemuck::cast_slice(&crate::ops::rope_table(&rp, n_ctx as usize)),
        );
        for l in 0..cfg.n_layer {
            let name = |s: &str| format!("blk.{l}.{s}");
            let attn_norm = vector(&name("attn_norm.weight"), d)?;
            let ffn_norm = vector(&name("ffn_norm.weight"), d)?;
            // Products whose inputs and types agree are stacked into one:
            // queries, keys and values (RoPE then copies the values into
            // the cache), else queries and keys.
            let qkv_names = [
                name("attn_q.weight"),
                name("attn_k.weight"),
                name("attn_v.weight"),
            ];
            let wqkv = stacked(&qkv_names, d)?;
            let wqk = match wqkv {
                Some(_) => None,
                None => stacked(&qkv_names[..2], d)?,
            };
            let (wq, wk) = match (&wqkv, &wqk) {
                (None, None) => (
                    Some(matrix(&qkv_names[0], d, dq)?),
                    Some(matrix(&qkv_names[1], d, dkv)?),
                ),
                _ => (None, None),
            };
            let wv = match wqkv {
                Some(_) => None,
                None => Some(matrix(&qkv_names[2], d, dkv)?),
            };
            // Floats per token in qk_raw.
            let raw_stride = dq + dkv + if wqkv.is_some() { dkv } else { 0 };
            let wo = matrix(&name("attn_output.weight"), dq, d)?;
            let wgu = stacked(&[name("ffn_gate.weight"), name("ffn_up.weight")], d)?;
            let (wg, wu) = match wgu {
                Some(_) => (None, None),
                None => (
                    Some(matrix(&name("ffn_gate.weight"), d, ff)?),
                    Some(matrix(&name("ffn_up.weight"), d, ff)?),
                ),
            };
            let wd = matrix(&name("ffn_down.weight"), ff, d)?;
            let k_cache = ctx.storage("k_cache", n_ctx as u64 * dkv as u64 * f);
            let v_cache = ctx.storage("v_cache", n_ctx as u64 * dkv as u64 * f);

            // Attention block: x → xn → [q | k | v] (or [q | k] and v into
            // the cache) → RoPE (k, and stacked v, into the caches) →
            // attention → x +=.
            let mut qkv: Vec<(&'static str, &GpuMatrix, u32)> = match (&wqkv, &wqk, &wq, &wk) {
                (Some(m), ..) => vec![("attn_qkv", m, 0)],
                (None, Some(m), _, _) => vec![("attn_qk", m, 0)],
                (None, None, Some(q_), Some(k_)) => vec![("attn_q", q_, 0), ("attn_k", k_, dq)],
                _ => unreachable!("q and k are loaded one way or the other"),
            };
            if let Some(v_) = &wv {
                qkv.push(("attn_v", v_, 0));
            }
            let ws: Vec<&GpuMatrix> = qkv.iter().map(|e| e.1).collect();
            let fa = fused_act(&ws);
            let xn_out = acts.fused_out(fa, &xn);
            body.push(ob.rms_norm(
                &x,
                d,
                &attn_norm,
                &xn_out,
                d,
                d,
                cfg.rms_eps,
                false,
                fa.flatten(),
                acts.corr_base,
            ));
            acts.fused = fa.is_some();
            let mut done = Vec::new();
            let mut rope_fused = false;
            for (label, w, y_base) in qkv {
                let input = acts.input(&ob, &mut body, &mut done, &xn, d, d, w);
                let (y, y_stride, at_pos) = if label == "attn_v" {
                    (&v_cache, dkv, cache_write)
                } else {
                    (&qk_raw, raw_stride, 0)
                };
                let mut ops = ob.linear(
                    label,
                    w,
                    &input,
                    d,
                    y,
                    y_stride,
                    y_base,
                    false,
                    at_pos,
                    acts.corr_base,
                    &dummy,
                );
                // A single token's stacked projection may apply RoPE itself.
                if matches!(label, "attn_qkv" | "attn_qk") && !cfg.rope_neox && ops.len() == 1 {
                    rope_fused = ob.fuse_rope(
                        &mut ops[0],
                        w,
                        &input,
                        &qk_raw,
                        &dummy,
                        &rope_table,
                        &q,
                        &k_cache,
                        &v_cache,
                        TgRopeParams {
                            n_q: dq,
                            n_k: dkv,
                            n_v: if label == "attn_qkv" { dkv } else { 0 },
                            head_dim: cfg.head_dim,
                            n_dims: cfg.rope_dims,
                            at_pos: cache_write,
                            ..Default::default()
                        },
                    );
                }
                body.extend(ops);
            }
            // Queries into q, keys into the cache (and stacked values into
            // theirs), in one dispatch (batches only where the projection
            // does it).
            let rope_op = ob.rope2(
                &qk_raw,
                &q,
                &k_cache,
                &v_cache,
                &rope_table,
                RopeParams {
                    n_heads: cfg.n_head,
                    head_dim: cfg.head_dim,
                    n_dims: cfg.rope_dims,
                    neox: cfg.rope_neox as u32,
                    x_stride: raw_stride,
                    y_stride: dq,
                    n_heads2: cfg.n_kv_head,
                    y2_stride: dkv,
                    at_pos2: cache_write,
                    n_heads3: if wqkv.is_some() { cfg.n_kv_head } else { 0 },
                    y3_stride: dkv,
                    at_pos3: cache_write,
                    ..Default::default()
                },
            );
            body.push(if rope_fused {
                rope_op.batch_only()
            } else {
                rope_op
            });
            body.push(ob.attention(
                &q,
                &k_cache,
                &v_cache,
                &attn,
                AttnParams {
                    n_head: cfg.n_head,
                    n_kv_head: cfg.n_kv_head,
                    head_dim: cfg.head_dim,
                    q_stride: dq,
                    kv_stride: dkv,
                    out_stride: dq,
                    scale: 1.0 / (cfg.head_dim as f32).sqrt(),
                    kv_f16: kv_f16 as u32,
                    ..Default::default()
                },
            ));
            acts.fused = false;
            let ao = acts.input(&ob, &mut body, &mut Vec::new(), &attn, dq, dq, &wo);
            body.extend(ob.linear(
                "attn_output",
                &wo,
                &ao,
                dq,
                &x,
                d,
                0,
                true,
                0,
                acts.corr_base,
                &dummy,
            ));

            // Feed-forward block: x → xn → [gate | up] → silu(gate)·up → x +=.
            let gu: Vec<(&'static str, &GpuMatrix, u32)> = match (&wgu, &wg, &wu) {
                (Some(m), _, _) => vec![("ffn_gate_up", m, 0)],
                (None, Some(g_), Some(u_)) => vec![("ffn_gate", g_, 0), ("ffn_up", u_, ff)],
                _ => unreachable!("gate and up are loaded one way or the other"),
            };
            let ws: Vec<&GpuMatrix> = gu.iter().map(|e| e.1).collect();
            let fa = fused_act(&ws);
            let xn_out = acts.fused_out(fa, &xn);
            body.push(ob.rms_norm(
                &x,
                d,
                &ffn_norm,
                &xn_out,
                d,
                d,
                cfg.rms_eps,
                false,
                fa.flatten(),
                acts.corr_base,
            ));
            acts.fused = fa.is_some();
            let mut done = Vec::new();
            for (label, w, y_base) in gu {
                let input = acts.input(&ob, &mut body, &mut done, &xn, d, d, w);
                body.extend(ob.linear(
                    label,
                    w,
                    &input,
                    d,
                    &gate_up,
                    2 * ff,
                    y_base,
                    false,
                    0,
                    acts.corr_base,
                    &dummy,
                ));
            }
            let fa = fused_act(&[&wd]);
            let h_out = acts.fused_out(fa, &h);
            let packed = fa.flatten().is_some_and(|a| a.1);
            body.push(ob.binary(
                Kernel::Swiglu(fa.flatten()),
                &gate_up,
                &gate_up,
                &h_out,
                EwParams {
                    n: ff,
                    a_stride: 2 * ff,
                    b_stride: 2 * ff,
                    y_stride: if packed { ff / 4 } else { ff },
                    a_base: 0,
                    b_base: ff,
                    corr_base: acts.corr_base,
                    pad: 0,
                },
                &dummy,
            ));
            acts.fused = fa.is_some();
            let hq = acts.input(&ob, &mut body, &mut Vec::new(), &h, ff, ff, &wd);
            body.extend(ob.linear(
                "ffn_down",
                &wd,
                &hq,
                ff,
                &x,
                d,
                0,
                true,
                0,
                acts.corr_base,
                &dummy,
            ));
            for w in [wqkv, wqk, wq, wk, wv, Some(wo), wgu, wg, wu, Some(wd)]
                .into_iter()
                .flatten()
            {
                weight_bytes += w.n_bytes();
                weights.push(w);
            }
            keep.extend([attn_norm, ffn_norm, k_cache, v_cache]);
        }
        let out_norm = vector("output_norm.weight", d)?;
        let output = if file.tensor("output.weight").is_some() {
            matrix("output.weight", d, nv)?
        } else {
            // Tied embeddings: the output matrix is the embedding matrix.
            matrix("token_embd.weight", d, nv)?
        };
        weight_bytes += output.n_bytes();
        let fa = fused_act(&[&output]);
        acts.fused = fa.is_some();
        let xn_out = acts.fused_out(fa, &xn);
        let mut head_last = vec![ob.rms_norm(
            &x,
            d,
            &out_norm,
            &xn_out,
            d,
            d,
            cfg.rms_eps,
            true,
            fa.flatten(),
            acts.corr_base,
        )];
        let xo = acts.input(&ob, &mut head_last, &mut Vec::new(), &xn, d, d, &output);
        head_last.extend(ob.linear(
            "output",
            &output,
            &xo,
            d,
            &logits,
            nv,
            0,
            false,
            0,
            acts.corr_base,
            &dummy,
        ));
        let mut head_all = vec![ob.rms_norm(
            &x,
            d,
            &out_norm,
            &xn_out,
            d,
            d,
            cfg.rms_eps,
            false,
            fa.flatten(),
            acts.corr_base,
        )];
        let xo = acts.input(&ob, &mut head_all, &mut Vec::new(), &xn, d, d, &output);
        head_all.extend(ob.linear(
            "output",
            &output,
            &xo,
            d,
            &logits,
            nv,
            0,
            false,
            0,
            acts.corr_base,
            &dummy,
        ));
        let argmax = ob.argmax(&logits, nv, nv, 1, &ids, &dummy, &dummy_rw);
        weights.push(output);
        weights.push(embd);
        keep.extend(acts.bufs.into_iter().map(|(_, b)| b));
        keep.extend([
            out_norm, qk_raw, q, attn, gate_up, h, x, xn, dummy, dummy_rw,
        ]);
        Ok(GpuModel {
            ctx,
            cfg,
            n_ctx,
            max_batch,
            logits_rows,
            step,
            ids,
            logits,
            generated,
            body,
            head_last,
            head_all,
            argmax,
            prerecorded: None,
            left_out: Vec::new(),
            weight_bytes,
            _keep: keep,
            _weights: weights,
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &GpuConfig {
        &self.cfg
    }

    /// KV cache length.
    pub fn n_ctx(&self) -> u32 {
        self.n_ctx
    }

    /// The device this model lives on.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// Bytes of weight matrices read by one decoding step (every layer
    /// matrix and the output matrix; the embedding lookup reads one row).
    pub fn weight_bytes_per_token(&self) -> u64 {
        self.weight_bytes
    }

    fn check(&self, tokens: &[u32], pos: u32) -> Result<()> {
        if tokens.is_empty() {
            return Err(WgpuError::Request("no tokens given".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t >= self.cfg.n_vocab) {
            return Err(WgpuError::Request(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.cfg.n_vocab
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

    fn set_step(&self, tokens: &[u32], pos: u32) {
        let s = StepUniform {
            n_tokens: tokens.len() as u32,
            pos,
            n_kv: pos + tokens.len() as u32,
            zero: 0,
        };
        self.ctx
            .queue
            .write_buffer(&self.step, 0, bytemuck::bytes_of(&s));
        self.ctx
            .queue
            .write_buffer(&self.ids, 0, bytemuck::cast_slice(tokens));
    }

    fn encode(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        n: u32,
        head: Option<&[Op]>,
        argmax: bool,
    ) {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        let kept = |op: &Op| n > 1 || !self.left_out.iter().any(|l| l == op.label);
        for op in self.body.iter().filter(|o| kept(o)) {
            op.encode(&mut pass, n);
        }
        match head {
            Some(ops) if std::ptr::eq(ops, self.head_last.as_slice()) => {
                for op in ops.iter().filter(|o| kept(o)) {
                    op.encode(&mut pass, 1);
                }
            }
            Some(ops) => {
                for op in ops {
                    op.encode(&mut pass, n);
                }
            }
            None => {}
        }
        if argmax {
            self.argmax.encode(&mut pass, 1);
        }
    }

    /// Runs `tokens` at positions `pos ..` and returns the last token's
    /// logits (`n_vocab` values). Longer inputs are split into steps of at
    /// most `max_batch` tokens.
    pub fn forward(&mut self, tokens: &[u32], pos: u32) -> Result<Vec<f32>> {
        self.check(tokens, pos)?;
        let mut p = pos;
        let chunks: Vec<&[u32]> = tokens.chunks(self.max_batch as usize).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            self.set_step(chunk, p);
            if i + 1 < chunks.len() {
                let mut enc = self.ctx.device.create_command_encoder(&Default::default());
                self.encode(&mut enc, chunk.len() as u32, None, false);
                self.ctx.queue.submit([enc.finish()]);
            } else {
                let bytes = self.run_last(
                    chunk.len() as u32,
                    false,
                    &self.logits.clone(),
                    self.cfg.n_vocab as u64 * 4,
                )?;
                return Ok(bytemuck::pod_collect_to_vec(&bytes));
            }
            p += chunk.len() as u32;
        }
        unreachable!("tokens is not empty")
    }

    /// Runs the step already set (`set_step`) of `n` tokens with the
    /// last-token head (and the argmax when `argmax`), and reads back `size`
    /// bytes of `src`. A one-token step submits the commands recorded during
    /// the previous one, if any, and records the next one's while the GPU
    /// works: a decoding step's commands do not depend on the token or its
    /// position, which live in buffers.
    fn run_last(&mut self, n: u32, argmax: bool, src: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        let record = |m: &Self| {
            let mut enc = m.ctx.device.create_command_encoder(&Default::default());
            m.encode(&mut enc, n, Some(&m.head_last), argmax);
            enc.finish()
        };
        let cmds = match self.prerecorded.take() {
            Some((a, cmds)) if n == 1 && a == argmax => cmds,
            _ => record(self),
        };
        let copy = self.ctx.device.create_command_encoder(&Default::default());
        let pending = self.ctx.submit_read(vec![cmds], copy, src, 0, size);
        if n == 1 {
            self.prerecorded = Some((argmax, record(self)));
        }
        self.ctx.finish_read(pending)
    }

    /// Runs `tokens` at positions `pos ..` and returns every token's logits,
    /// row-major `tokens.len() × n_vocab`.
    pub fn forward_all(&mut self, tokens: &[u32], pos: u32) -> Result<Vec<f32>> {
        self.check(tokens, pos)?;
        let nv = self.cfg.n_vocab as usize;
        let mut out = Vec::with_capacity(tokens.len() * nv);
        let mut p = pos;
        for chunk in tokens.chunks(self.max_batch.min(self.logits_rows) as usize) {
            self.set_step(chunk, p);
            let mut enc = self.ctx.device.create_command_encoder(&Default::default());
            self.encode(&mut enc, chunk.len() as u32, Some(&self.head_all), false);
            let bytes = self
                .ctx
                .read_back(enc, &self.logits, 0, (chunk.len() * nv * 4) as u64)?;
            out.extend_from_slice(bytemuck::cast_slice::<u8, f32>(&bytes));
            p += chunk.len() as u32;
        }
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
        self.set_step(tokens, pos);
        let bytes = self.run_last(n as u32, true, &self.ids.clone(), 4)?;
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
            self.ctx
                .queue
                .write_buffer(&self.step, 0, bytemuck::bytes_of(&s));
            let mut enc = self.ctx.device.create_command_encoder(&Default::default());
            self.encode(&mut enc, 1, Some(&self.head_last), true);
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

    /// The ops of a decoding step by label, in order of first appearance:
    /// (label, dispatches, whether they are matrix products).
    pub fn step_ops(&self) -> Vec<(&'static str, usize, bool)> {
        let mut out: Vec<(&'static str, usize, bool)> = Vec::new();
        for op in self
            .body
            .iter()
            .chain(&self.head_last)
            .filter(|o| o.runs(1))
        {
            match out.iter_mut().find(|e| e.0 == op.label) {
                Some(e) => e.1 += 1,
                None => out.push((op.label, 1, op.is_product())),
            }
        }
        out
    }

    /// A measuring aid: single-token steps leave out every op whose label is
    /// in `labels` ([`GpuModel::step_ops`]), so that timing decoding with and
    /// without them gives what they cost in the chain of dependent
    /// dispatches. What those ops write goes stale, so the logits and tokens
    /// are meaningless until `leave_out(&[])` restores the full step (the KV
    /// cache must then be refilled: run the prompt again).
    pub fn leave_out(&mut self, labels: &[&str]) {
        self.left_out = labels.iter().map(|l| l.to_string()).collect();
        self.prerecorded = None;
    }

    /// Dispatches in one decoding step (layers and output head, argmax included).
    pub fn dispatches_per_step(&self) -> usize {
        self.step_ops().iter().map(|o| o.1).sum::<usize>() + 1
    }

    /// Mean CPU time in seconds to record (not submit) one step of
    /// `n_tokens` tokens with its output head, over `reps` recordings: the
    /// host-side cost of a step, which bounds generation speed when it
    /// exceeds the GPU time of the step.
    pub fn time_encode(&self, n_tokens: u32, reps: u32) -> f64 {
        let reps = reps.max(1);
        let t = std::time::Instant::now();
        for _ in 0..reps {
            let mut enc = self.ctx.device.create_command_encoder(&Default::default());
            self.encode(
                &mut enc,
                n_tokens.clamp(1, self.max_batch),
                Some(&self.head_last),
                true,
            );
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
        self.set_step(tokens, pos);
        let ops: Vec<(&Op, u32)> = self
            .body
            .iter()
            .map(|o| (o, n))
            .chain(self.head_last.iter().map(|o| (o, 1)))
            .filter(|(o, t)| o.runs(*t))
            .collect();
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
                op.encode(&mut pass, *t);
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
        Ok(Some(prof))
    }
}
