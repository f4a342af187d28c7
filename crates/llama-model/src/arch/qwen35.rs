//! `qwen35`: Qwen3.5's hybrid of Gated DeltaNet (linear attention with a
//! recurrent state) and gated full-attention layers (llama.cpp's
//! `src/models/qwen35.cpp`, with the fused ggml_gated_delta_net its CPU
//! backend runs).
//!
//! Every `full_attention_interval`-th layer (4 by default, or those that
//! `attention.recurrent_layers` marks false) attends over the KV cache: one
//! projection gives each head's queries and an output gate, queries and keys
//! are RMS-normed per head and rotated (interleaved M-RoPE, which for text
//! positions is NeoX RoPE), and the attention output is multiplied by
//! `sigmoid(gate)`. The other layers run the gated delta rule: a joint
//! Q/K/V projection through a short causal convolution (its last inputs kept
//! as state) and SiLU, L2-normed queries and keys, a per-head decay
//! `softplus(alpha + dt_bias) · A` and write strength `sigmoid(beta)`, a
//! `[head_dim, head_dim]` state per value head, and an output RMS-normed per
//! head and gated by `silu(z)`. Both kinds end with a residual, a
//! post-attention norm, a SwiGLU feed-forward block and a second residual.

use gguf_format::Value;
use tensor_core::{DeltaNetParams, Unary};

use super::{attn_params, blk, ffn, input, key, meta_uint, norm, rope_qk, Glu};
use crate::config::Config;
use crate::error::{ModelError, Result};
use crate::graph::{GraphBuilder, NodeId};

/// The shape of the Gated DeltaNet layers (`ssm.*`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Linear {
    /// Taps of the causal convolution (`ssm.conv_kernel`).
    pub d_conv: usize,
    /// Heads and head size of the recurrence.
    pub p: DeltaNetParams,
}

impl Linear {
    fn key_dim(&self) -> usize {
        self.p.n_head_k * self.p.head_dim
    }
    fn value_dim(&self) -> usize {
        self.p.n_head_v * self.p.head_dim
    }
    fn conv_dim(&self) -> usize {
        2 * self.key_dim() + self.value_dim()
    }
}

fn required(b: &GraphBuilder<'_>, c: &Config, k: &str) -> Result<usize> {
    match meta_uint(b, c, k)? {
        Some(v) if v > 0 && v <= crate::config::MAX_WIDTH => Ok(v),
        found => Err(ModelError::InvalidMetadata {
            key: key(c, k),
            message: match found {
                None => "missing (Gated DeltaNet layers need it)".into(),
                Some(v) => format!("{v} is not a valid size"),
            },
        }),
    }
}

/// Reads the `ssm.*` hyper-parameters and which layers are recurrent.
pub(super) fn hparams(b: &GraphBuilder<'_>, c: &Config) -> Result<(Linear, Vec<bool>)> {
    let d_conv = required(b, c, "ssm.conv_kernel")?;
    let d_inner = required(b, c, "ssm.inner_size")?;
    let head_dim = required(b, c, "ssm.state_size")?;
    let n_head_v = required(b, c, "ssm.time_step_rank")?;
    let n_head_k = required(b, c, "ssm.group_count")?;
    if !n_head_v.is_multiple_of(n_head_k) || n_head_v.checked_mul(head_dim) != Some(d_inner) {
        return Err(ModelError::InvalidMetadata {
            key: key(c, "ssm.inner_size"),
            message: format!(
                "{d_inner} must be {n_head_v} value heads × state size {head_dim}, \
                 and the value heads a multiple of the {n_head_k} key heads"
            ),
        });
    }
    let lin = Linear {
        d_conv,
        p: DeltaNetParams {
            n_head_k,
            n_head_v,
            head_dim,
        },
    };
    let k = key(c, "attention.recurrent_layers");
    let recurrent = match b.header().get(&k) {
        Some(Value::Array(a)) => {
            let v: Option<Vec<bool>> = a
                .iter()
                .take(c.n_layer)
                .map(|x| match x {
                    Value::Bool(x) => Some(x),
                    _ => x.as_u64().map(|v| v != 0),
                })
                .collect();
            match v {
                Some(v) if v.len() == c.n_layer => v,
                _ => {
                    return Err(ModelError::InvalidMetadata {
                        key: k,
                        message: format!("expected {} flags", c.n_layer),
                    })
                }
            }
        }
        _ => {
            let n = meta_uint(b, c, "full_attention_interval")?.unwrap_or(4);
            if n == 0 {
                return Err(ModelError::InvalidMetadata {
                    key: key(c, "full_attention_interval"),
                    message: "0 is not an interval".into(),
                });
            }
            (0..c.n_layer).map(|i| (i + 1) % n != 0).collect()
        }
    };
    Ok((lin, recurrent))
}

/// Checks that interleaved M-RoPE with `rope.dimension_sections` rotates
/// every pair by the text position (llama.cpp gives the fourth section
/// position 0): then it is NeoX RoPE.
pub(super) fn check_rope_sections(b: &GraphBuilder<'_>, c: &Config) -> Result<()> {
    let k = key(c, "rope.dimension_sections");
    let Some(Value::Array(a)) = b.header().get(&k) else {
        return Ok(());
    };
    let s: Vec<usize> = a
        .iter()
        .take(4)
        .map(|x| x.as_u64().unwrap_or(0) as usize)
        .collect();
    if s.len() < 3 {
        return Ok(());
    }
    let total: usize = s.iter().sum();
    let pairs = c.rope.n_dims / 2;
    let text = |sector: usize| {
        (sector.is_multiple_of(3) && sector < 3 * s[0])
            || (sector % 3 == 1 && sector < 3 * s[1])
            || (sector % 3 == 2 && sector < 3 * s[2])
    };
    if total == 0 || !(0..pairs).all(|i| text(i % total)) {
        return Err(ModelError::Unsupported(format!(
            "interleaved M-RoPE sections {s:?} that leave some of {pairs} pairs unrotated ({k})"
        )));
    }
    Ok(())
}

/// A Gated DeltaNet layer on the normed input `x` (`build_layer_attn_linear`),
/// over recurrent state slots `2·ir` (convolution) and `2·ir + 1` (delta rule).
pub(super) fn linear_attn(
    b: &mut GraphBuilder<'_>,
    c: &Config,
    il: usize,
    ir: usize,
    lin: &Linear,
    x: NodeId,
) -> NodeId {
    let (kd, vd, cd) = (lin.key_dim(), lin.value_dim(), lin.conv_dim());
    let (hv, hd) = (lin.p.n_head_v, lin.p.head_dim);
    let w_qkv = b.matrix(&blk(il, "attn_qkv.weight"), c.n_embd, cd);
    let qkv = b.matmul("linear_attn_qkv_mixed", x, w_qkv, None, cd);
    let w_z = b.matrix(&blk(il, "attn_gate.weight"), c.n_embd, vd);
    let z = b.matmul("z", x, w_z, None, vd);
    let w_beta = b.matrix(&blk(il, "ssm_beta.weight"), c.n_embd, hv);
    let beta = b.matmul("beta", x, w_beta, None, hv);
    let beta = b.unary("beta_sigmoid", beta, Unary::Sigmoid);
    let w_alpha = b.matrix(&blk(il, "ssm_alpha.weight"), c.n_embd, hv);
    let dt = b.vector(&blk(il, "ssm_dt.bias"), hv);
    // ggml_add(alpha, ssm_dt) as the product's bias.
    let alpha = b.matmul("alpha_biased", x, w_alpha, Some(dt), hv);
    let alpha = b.unary("a_softplus", alpha, Unary::Softplus);
    let a = b.vector(&blk(il, "ssm_a"), hv);
    let gate = b.mul_vec("gate", alpha, a);
    let kernel = b.flat_vector(&blk(il, "ssm_conv1d.weight"), &[lin.d_conv, cd]);
    let conv = b.ssm_conv("conv_output_raw", qkv, kernel, 2 * ir);
    let conv = b.unary("conv_output_silu", conv, Unary::Silu);
    let q = b.slice("q_conv", conv, 0, kd);
    let k = b.slice("k_conv", conv, kd, kd);
    let v = b.slice("v_conv", conv, 2 * kd, vd);
    let q = b.l2_norm("q_conv_predelta", q, hd, c.rms_eps);
    let k = b.l2_norm("k_conv_predelta", k, hd, c.rms_eps);
    let o = b.delta_net("attn_output", (q, k, v), gate, beta, 2 * ir + 1, lin.p);
    let wn = b.vector(&blk(il, "ssm_norm.weight"), hd);
    let o = b.rms_norm("attn_output_normed", o, wn, c.rms_eps);
    let z = b.unary("z_silu", z, Unary::Silu);
    let o = b.mul("final_output", o, z);
    let w_out = b.matrix(&blk(il, "ssm_out.weight"), vd, c.n_embd);
    b.matmul("linear_attn_out", o, w_out, None, c.n_embd)
}

/// A gated full-attention layer on the normed input `x` (`build_layer_attn`)
/// over KV cache layer `kv`.
pub(super) fn gated_attn(
    b: &mut GraphBuilder<'_>,
    c: &Config,
    il: usize,
    kv: usize,
    x: NodeId,
) -> NodeId {
    let hd = c.head_dim;
    let (qw, kvw) = (c.q_width(), c.kv_width());
    let wq = b.matrix(&blk(il, "attn_q.weight"), c.n_embd, 2 * qw);
    let wk = b.matrix(&blk(il, "attn_k.weight"), c.n_embd, kvw);
    let wv = b.matrix(&blk(il, "attn_v.weight"), c.n_embd, kvw);
    let qf = b.matmul("Qcur_full", x, wq, None, 2 * qw);
    let k = b.matmul("Kcur", x, wk, None, kvw);
    let v = b.matmul("Vcur", x, wv, None, kvw);
    let q = b.strided("Qcur_reshaped", qf, 2 * hd, 0, hd);
    let qn = b.vector(&blk(il, "attn_q_norm.weight"), hd);
    let q = b.rms_norm("Qcur_normed", q, qn, c.rms_eps);
    let kn = b.vector(&blk(il, "attn_k_norm.weight"), hd);
    let k = b.rms_norm("Kcur_normed", k, kn, c.rms_eps);
    let gate = b.strided("gate_reshaped", qf, 2 * hd, hd, hd);
    let (q, k) = rope_qk(b, c, q, k, c.rope);
    let a = b.attention(q, k, v, kv, attn_params(c, c.attn_scale));
    let gate = b.unary("gate_sigmoid", gate, Unary::Sigmoid);
    let a = b.mul("attn_gated", a, gate);
    let wo = b.matrix(&blk(il, "attn_output.weight"), qw, c.n_embd);
    b.matmul("attn_output", a, wo, None, c.n_embd)
}

/// The block around either kind of layer: residual, post-attention norm,
/// the feed-forward block `ffn` and its residual.
pub(super) fn block(
    b: &mut GraphBuilder<'_>,
    c: &Config,
    il: usize,
    a: NodeId,
    x: NodeId,
    ffn: impl FnOnce(&mut GraphBuilder<'_>, NodeId) -> Result<NodeId>,
) -> Result<NodeId> {
    let r = b.add("attn_residual", a, x);
    let h = norm(
        b,
        c,
        "attn_post_norm",
        r,
        &blk(il, "post_attention_norm.weight"),
    );
    let h = ffn(b, h)?;
    Ok(b.add("l_out", h, r))
}

/// The layers of a Qwen3.5 model, each block's feed-forward part from `ffn`.
pub(super) fn build_with(
    c: &Config,
    b: &mut GraphBuilder<'_>,
    ffn: impl Fn(&mut GraphBuilder<'_>, usize, NodeId) -> Result<NodeId>,
) -> Result<NodeId> {
    let (lin, recurrent) = hparams(b, c)?;
    check_rope_sections(b, c)?;
    let mut x = input(b, c);
    let (mut n_kv, mut n_rec) = (0, 0);
    for (il, &rec) in recurrent.iter().enumerate() {
        b.set_layer(Some(il));
        let h = norm(b, c, "attn_norm", x, &blk(il, "attn_norm.weight"));
        let a = if rec {
            n_rec += 1;
            linear_attn(b, c, il, n_rec - 1, &lin, h)
        } else {
            n_kv += 1;
            gated_attn(b, c, il, n_kv - 1, h)
        };
        x = block(b, c, il, a, x, |b, h| ffn(b, il, h))?;
    }
    b.set_layer(None);
    // llama.cpp keeps every row through the blocks and the final norm, then
    // takes the output rows (its `embeddings_nextn_masked` is off).
    let h = norm(b, c, "h_nextn", x, "output_norm.weight");
    let h = b.output_rows("result_norm", h);
    let w = match b.opt_matrix("output.weight", c.n_embd, c.n_vocab) {
        Some(w) => w,
        None => b.matrix("token_embd.weight", c.n_embd, c.n_vocab),
    };
    Ok(b.matmul("result_output", h, w, None, c.n_vocab))
}

/// Qwen3.5's dense blocks: a SwiGLU feed-forward block in every layer.
pub(super) fn build(c: &Config, b: &mut GraphBuilder<'_>) -> Result<NodeId> {
    build_with(c, b, |b, il, h| Ok(ffn(b, c, il, h, Glu::Silu)))
}
