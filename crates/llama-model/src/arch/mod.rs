//! The architectures, one file each, and the blocks they share.
//!
//! Each architecture is one function, `build(config, builder) -> logits`,
//! that reads its own hyper-parameters and describes its forward pass with
//! the helpers below — llama.cpp's `build_norm`, `build_qkv`, `build_attn`,
//! `build_ffn` and `build_moe_ffn` — so its file says only what is its own
//! (a norm after attention, a scale, a window). Node names are llama.cpp's.

mod gemma2;
mod gemma3;
mod gpt_oss;
mod llama;
mod olmo2;
mod phi3;
mod qwen2;
mod qwen3;
mod qwen35;
mod qwen35moe;
mod qwen3moe;
mod smollm3;

use gguf_format::Value;
use tensor_core::{AttentionParams, RopeParams};

use crate::config::{Architecture, Config};
use crate::error::{ModelError, Result};
use crate::graph::{ExpertAct, Gating, Graph, GraphBuilder, Moe, NodeId, Op, WeightId};

/// Builds the graph of `config.arch` over the tensors of the builder's file.
pub(crate) fn build_graph(config: &Config, mut b: GraphBuilder<'_>) -> Result<Graph> {
    let out = match config.arch {
        Architecture::Llama => llama::build(config, &mut b)?,
        Architecture::Qwen2 => qwen2::build(config, &mut b)?,
        Architecture::Qwen3 => qwen3::build(config, &mut b)?,
        Architecture::Qwen3Moe => qwen3moe::build(config, &mut b)?,
        Architecture::Qwen35 => qwen35::build(config, &mut b)?,
        Architecture::Qwen35Moe => qwen35moe::build(config, &mut b)?,
        Architecture::Gemma2 => gemma2::build(config, &mut b)?,
        Architecture::Gemma3 => gemma3::build(config, &mut b)?,
        Architecture::Phi3 => phi3::build(config, &mut b)?,
        Architecture::SmolLm3 => smollm3::build(config, &mut b)?,
        Architecture::Olmo2 => olmo2::build(config, &mut b)?,
        Architecture::GptOss => gpt_oss::build(config, &mut b)?,
    };
    Ok(b.finish(out))
}

/// `blk.{il}.{name}`.
pub(crate) fn blk(il: usize, name: &str) -> String {
    format!("blk.{il}.{name}")
}

/// The metadata key `{arch}.{key}`.
fn key(c: &Config, key: &str) -> String {
    format!("{}.{key}", c.arch.name())
}

/// An optional numeric hyper-parameter `{arch}.{key}`.
pub(crate) fn meta_f32(b: &GraphBuilder<'_>, c: &Config, k: &str) -> Result<Option<f32>> {
    let k = key(c, k);
    match b.header().get(&k) {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if x.is_finite() => Ok(Some(x as f32)),
            _ => Err(ModelError::InvalidMetadata {
                key: k,
                message: format!("expected a finite number, found {}", v.type_name()),
            }),
        },
    }
}

/// An optional unsigned hyper-parameter `{arch}.{key}`.
pub(crate) fn meta_uint(b: &GraphBuilder<'_>, c: &Config, k: &str) -> Result<Option<usize>> {
    let k = key(c, k);
    match b.header().get(&k) {
        None => Ok(None),
        Some(_) => {
            let v = b.header().get_uint(&k)?;
            usize::try_from(v)
                .map(Some)
                .map_err(|_| ModelError::InvalidMetadata {
                    key: k,
                    message: format!("{v} does not fit in usize"),
                })
        }
    }
}

/// Which layers use a sliding window (llama.cpp's `load_swa_pattern`): the
/// array `attention.sliding_window_pattern` if the file has one, else every
/// layer but each `n_pattern`-th (`sliding_window_pattern` overrides the
/// architecture's default `n_pattern`; 0 makes every layer local).
pub(crate) fn swa_layers(
    b: &GraphBuilder<'_>,
    c: &Config,
    default_pattern: usize,
) -> Result<Vec<bool>> {
    let k = key(c, "attention.sliding_window_pattern");
    if let Some(Value::Array(a)) = b.header().get(&k) {
        // Only the first n_layer entries matter; a huge array is not expanded.
        let v: Vec<bool> = a
            .iter()
            .take(c.n_layer)
            .map(|x| match x {
                Value::Bool(x) => Some(x),
                _ => None,
            })
            .collect::<Option<_>>()
            .ok_or_else(|| ModelError::InvalidMetadata {
                key: k.clone(),
                message: "expected an array of bools".into(),
            })?;
        if v.len() < c.n_layer {
            return Err(ModelError::InvalidMetadata {
                key: k,
                message: format!("{} entries for {} layers", v.len(), c.n_layer),
            });
        }
        return Ok(v);
    }
    let n = meta_uint(b, c, "attention.sliding_window_pattern")?.unwrap_or(default_pattern);
    Ok((0..c.n_layer).map(|il| n == 0 || il % n < n - 1).collect())
}

/// `inp_embd`: the token embedding rows.
pub(crate) fn input(b: &mut GraphBuilder<'_>, c: &Config) -> NodeId {
    let table = b.matrix("token_embd.weight", c.n_embd, c.n_vocab);
    b.node("inp_embd", Op::Embed { table }, c.n_embd)
}

/// RMSNorm of `x` with the `n_embd` vector `tensor`, named `name`.
pub(crate) fn norm(
    b: &mut GraphBuilder<'_>,
    c: &Config,
    name: &str,
    x: NodeId,
    tensor: &str,
) -> NodeId {
    let w = b.vector(tensor, c.n_embd);
    b.rms_norm(name, x, w, c.rms_eps)
}

/// Queries, keys and values of layer `il` (`build_qkv`): separate
/// projections with optional biases, or a fused `attn_qkv` split by rows.
pub(crate) fn qkv(
    b: &mut GraphBuilder<'_>,
    c: &Config,
    il: usize,
    x: NodeId,
) -> (NodeId, NodeId, NodeId) {
    let (qw, kvw) = (c.q_width(), c.kv_width());
    let fused = blk(il, "attn_qkv.weight");
    if b.has(&fused) {
        let shape = [c.n_embd, qw + 2 * kvw];
        let wq = b.matrix_rows(&fused, &shape, 0, qw);
        let wk = b.matrix_rows(&fused, &shape, qw, kvw);
        let wv = b.matrix_rows(&fused, &shape, qw + kvw, kvw);
        let q = b.matmul("Qcur", x, wq, None, qw);
        let k = b.matmul("Kcur", x, wk, None, kvw);
        let v = b.matmul("Vcur", x, wv, None, kvw);
        return (q, k, v);
    }
    let wq = b.matrix(&blk(il, "attn_q.weight"), c.n_embd, qw);
    let wk = b.matrix(&blk(il, "attn_k.weight"), c.n_embd, kvw);
    let wv = b.matrix(&blk(il, "attn_v.weight"), c.n_embd, kvw);
    let bq = b.opt_vector(&blk(il, "attn_q.bias"), qw);
    let bk = b.opt_vector(&blk(il, "attn_k.bias"), kvw);
    let bv = b.opt_vector(&blk(il, "attn_v.bias"), kvw);
    let q = b.matmul("Qcur", x, wq, bq, qw);
    let k = b.matmul("Kcur", x, wk, bk, kvw);
    let v = b.matmul("Vcur", x, wv, bv, kvw);
    (q, k, v)
}

/// Per-head RMSNorm of queries and keys (`attn_q_norm`, `attn_k_norm` of `head_dim` values).
pub(crate) fn qk_norm_heads(
    b: &mut GraphBuilder<'_>,
    c: &Config,
    il: usize,
    q: NodeId,
    k: NodeId,
) -> (NodeId, NodeId) {
    let qn = b.vector(&blk(il, "attn_q_norm.weight"), c.head_dim);
    let kn = b.vector(&blk(il, "attn_k_norm.weight"), c.head_dim);
    let q = b.rms_norm("Qcur_normed", q, qn, c.rms_eps);
    let k = b.rms_norm("Kcur_normed", k, kn, c.rms_eps);
    (q, k)
}

/// RoPE of queries and keys with `rope` (and the file's `rope_freqs` factors, if any).
pub(crate) fn rope_qk(
    b: &mut GraphBuilder<'_>,
    c: &Config,
    q: NodeId,
    k: NodeId,
    rope: RopeParams,
) -> (NodeId, NodeId) {
    let factors = b.opt_vector("rope_freqs.weight", c.rope.n_dims / 2);
    let q = b.rope("Qcur", q, c.n_head, rope, factors);
    let k = b.rope("Kcur", k, c.n_head_kv, rope, factors);
    (q, k)
}

/// The attention parameters of `c` with the given scale on `K·Q`.
pub(crate) fn attn_params(c: &Config, scale: f32) -> AttentionParams {
    AttentionParams::new(c.n_head, c.n_head_kv, c.head_dim, scale)
}

/// `build_attn`: attention over cache layer `il`, then the output projection
/// (`attn_output`, with its bias if any), named `attn_out`.
pub(crate) fn attn(
    b: &mut GraphBuilder<'_>,
    c: &Config,
    il: usize,
    qkv: (NodeId, NodeId, NodeId),
    params: AttentionParams,
) -> NodeId {
    let kqv = b.attention(qkv.0, qkv.1, qkv.2, il, params);
    let wo = b.matrix(&blk(il, "attn_output.weight"), c.q_width(), c.n_embd);
    let bo = b.opt_vector(&blk(il, "attn_output.bias"), c.n_embd);
    b.matmul("attn_out", kqv, wo, bo, c.n_embd)
}

/// In the last layer, keeps only the rows whose logits are wanted (of each node given).
pub(crate) fn last_layer_rows<const N: usize>(
    b: &mut GraphBuilder<'_>,
    c: &Config,
    il: usize,
    xs: [NodeId; N],
) -> [NodeId; N] {
    if il + 1 < c.n_layer {
        return xs;
    }
    xs.map(|x| {
        let name = format!("{}_out", b.base_name(x));
        b.output_rows(&name, x)
    })
}

/// The feed-forward half of a pre-norm block (LLaMA's layout): `ffn_inp` =
/// attention output + residual, RMSNorm, `ffn`, `l_out` = its output +
/// `ffn_inp` — in the last layer on the output rows only.
pub(crate) fn prenorm_ffn(
    b: &mut GraphBuilder<'_>,
    c: &Config,
    il: usize,
    a: NodeId,
    x: NodeId,
    ffn: impl FnOnce(&mut GraphBuilder<'_>, NodeId) -> Result<NodeId>,
) -> Result<NodeId> {
    let [a, res] = last_layer_rows(b, c, il, [a, x]);
    let f = b.add("ffn_inp", a, res);
    let h = norm(b, c, "ffn_norm", f, &blk(il, "ffn_norm.weight"));
    let h = ffn(b, h)?;
    Ok(b.add("l_out", h, f))
}

/// Gemma's block after attention: post-attention norm, `sa_out` residual,
/// RMSNorm, GeGLU feed-forward, post-feed-forward norm, `l_out` residual.
pub(crate) fn gemma_ffn(
    b: &mut GraphBuilder<'_>,
    c: &Config,
    il: usize,
    a: NodeId,
    x: NodeId,
) -> NodeId {
    let [a, res] = last_layer_rows(b, c, il, [a, x]);
    let a = norm(
        b,
        c,
        "attn_post_norm",
        a,
        &blk(il, "post_attention_norm.weight"),
    );
    let sa = b.add("sa_out", a, res);
    let h = norm(b, c, "ffn_norm", sa, &blk(il, "ffn_norm.weight"));
    let h = ffn(b, c, il, h, Glu::Gelu);
    let h = norm(b, c, "ffn_post_norm", h, &blk(il, "post_ffw_norm.weight"));
    b.add("l_out", h, sa)
}

/// The gate activation of a feed-forward block.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Glu {
    /// `silu(gate) · up`.
    Silu,
    /// `gelu(gate) · up`.
    Gelu,
}

/// `build_ffn` with a gate (`PAR`): `down(act(gate(x)) · up(x))`, named
/// `ffn_out`; a fused `ffn_up` of `2·n_ff` rows (Phi-3) holds the gate first.
pub(crate) fn ffn(b: &mut GraphBuilder<'_>, c: &Config, il: usize, x: NodeId, act: Glu) -> NodeId {
    let ff = c.n_ff;
    let up_name = blk(il, "ffn_up.weight");
    let (wg, wu) = if b.has(&blk(il, "ffn_gate.weight")) {
        (
            b.matrix(&blk(il, "ffn_gate.weight"), c.n_embd, ff),
            b.matrix(&up_name, c.n_embd, ff),
        )
    } else {
        let shape = [c.n_embd, 2 * ff];
        (
            b.matrix_rows(&up_name, &shape, 0, ff),
            b.matrix_rows(&up_name, &shape, ff, ff),
        )
    };
    let gate = b.matmul("ffn_gate", x, wg, None, ff);
    let up = b.matmul("ffn_up", x, wu, None, ff);
    let h = match act {
        Glu::Silu => b.node("ffn_swiglu", Op::Swiglu { gate, up }, ff),
        Glu::Gelu => b.node("ffn_geglu", Op::Geglu { gate, up }, ff),
    };
    let wd = b.matrix(&blk(il, "ffn_down.weight"), ff, c.n_embd);
    b.matmul("ffn_out", h, wd, None, c.n_embd)
}

/// `build_moe_ffn` with SiLU experts: the router's top `n_used` experts per
/// token, their outputs weighted and summed, named `ffn_moe_out`.
pub(crate) fn moe_ffn(
    b: &mut GraphBuilder<'_>,
    c: &Config,
    il: usize,
    x: NodeId,
    gating: Gating,
    normalize: bool,
) -> Result<NodeId> {
    let moe = moe_weights(b, c, il, gating, normalize)?;
    Ok(moe_node(b, c, x, moe))
}

/// The `ffn_moe_out` node of `moe` over `x`.
pub(crate) fn moe_node(b: &mut GraphBuilder<'_>, c: &Config, x: NodeId, moe: Moe) -> NodeId {
    b.node(
        "ffn_moe_out",
        Op::Moe {
            x,
            moe: Box::new(moe),
        },
        c.n_embd,
    )
}

/// The router and experts of layer `il` (`expert_count`, `expert_used_count`,
/// `expert_feed_forward_length`), SiLU experts without biases; an
/// architecture changes what is its own before [`moe_node`].
pub(crate) fn moe_weights(
    b: &mut GraphBuilder<'_>,
    c: &Config,
    il: usize,
    gating: Gating,
    normalize: bool,
) -> Result<Moe> {
    let n_expert = meta_uint(b, c, "expert_count")?.unwrap_or(0);
    let n_used = meta_uint(b, c, "expert_used_count")?.unwrap_or(0);
    if n_expert == 0 || n_used == 0 || n_used > n_expert {
        return Err(ModelError::InvalidMetadata {
            key: key(c, "expert_used_count"),
            message: format!("{n_used} experts used of {n_expert}: need 0 < used ≤ count"),
        });
    }
    let ff = match meta_uint(b, c, "expert_feed_forward_length")? {
        Some(f) if f > 0 => f,
        _ => c.n_ff,
    };
    if ff == 0 {
        return Err(ModelError::InvalidMetadata {
            key: key(c, "expert_feed_forward_length"),
            message: "the experts' width is missing or 0".into(),
        });
    }
    let weights_scale = meta_f32(b, c, "expert_weights_scale")?
        .filter(|&s| s != 0.0)
        .unwrap_or(1.0);
    let router = b.matrix(&blk(il, "ffn_gate_inp.weight"), c.n_embd, n_expert);
    let experts =
        |b: &mut GraphBuilder<'_>, name: &str, cols: usize, rows: usize| -> Vec<WeightId> {
            let t = blk(il, name);
            let shape = [cols, rows, n_expert];
            (0..n_expert)
                .map(|e| b.matrix_rows(&t, &shape, e * rows, rows))
                .collect()
        };
    Ok(Moe {
        router,
        gate: experts(b, "ffn_gate_exps.weight", c.n_embd, ff),
        up: experts(b, "ffn_up_exps.weight", c.n_embd, ff),
        down: experts(b, "ffn_down_exps.weight", ff, c.n_embd),
        ff,
        n_used,
        normalize,
        gating,
        weights_scale,
        router_bias: None,
        biases: None,
        act: ExpertAct::Silu,
    })
}

/// `result_norm` and `result_output`: the final norm and the output
/// projection (`output.weight`, or the token embedding when tied).
pub(crate) fn output(b: &mut GraphBuilder<'_>, c: &Config, x: NodeId) -> NodeId {
    let x = norm(b, c, "result_norm", x, "output_norm.weight");
    let w = match b.opt_matrix("output.weight", c.n_embd, c.n_vocab) {
        Some(w) => w,
        None => b.matrix("token_embd.weight", c.n_embd, c.n_vocab),
    };
    b.matmul("result_output", x, w, None, c.n_vocab)
}

/// RoPE parameters of `c` with another base and scale (local layers).
pub(crate) fn rope_with(c: &Config, freq_base: f32, freq_scale: f32) -> RopeParams {
    let mut r = c.rope;
    r.freq_base = freq_base;
    r.freq_scale = freq_scale;
    r
}

/// Gemma's factor on the queries (llama.cpp's `f_attention_scale`):
/// `1/sqrt(n_embd / n_head)` for the 27B models (46 or 62 layers), else
/// `1/sqrt(head_dim)`.
pub(crate) fn gemma_query_scale(c: &Config) -> f32 {
    let big = matches!(
        (c.arch, c.n_layer),
        (Architecture::Gemma2, 46) | (Architecture::Gemma3, 62)
    );
    if big {
        1.0 / ((c.n_embd / c.n_head) as f32).sqrt()
    } else {
        1.0 / (c.head_dim as f32).sqrt()
    }
}
