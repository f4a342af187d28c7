//! `gpt-oss` (llama.cpp's `LLM_ARCH_OPENAI_MOE`, `src/models/openai-moe.cpp`):
//! attention with Q/K/V/output biases and a learned sink logit per head,
//! sliding-window layers alternating with global ones, YaRN RoPE, and a
//! mixture of experts with router and expert biases, top-k of the raw
//! logits then a softmax over the chosen ones, and SwiGLU-OAI experts.

use super::{
    attn_params, blk, input, meta_f32, meta_uint, moe_node, moe_weights, norm, output, qkv,
    rope_qk, rope_with, swa_layers,
};
use crate::config::Config;
use crate::error::{ModelError, Result};
use crate::graph::{ExpertAct, ExpertBiases, Gating, GraphBuilder, NodeId, WeightId};

/// `ggml_swiglu_oai`'s constants in `build_moe_ffn` (`LLM_FFN_SWIGLU_OAI_MOE`).
const SWIGLU_OAI_ALPHA: f32 = 1.702;
/// The clamp of the gate (above) and the up projection (both sides).
const SWIGLU_OAI_LIMIT: f32 = 7.0;

/// gpt-oss's blocks: every other layer (pattern 2: even layers) attends
/// within `attention.sliding_window`, which the architecture requires.
pub(super) fn build(c: &Config, b: &mut GraphBuilder<'_>) -> Result<NodeId> {
    let key = format!("{}.attention.sliding_window", c.arch.name());
    let n_swa = meta_uint(b, c, "attention.sliding_window")?.ok_or_else(|| {
        ModelError::InvalidMetadata {
            key: key.clone(),
            message: "missing: gpt-oss needs its sliding window".into(),
        }
    })?;
    if n_swa == 0 {
        return Err(ModelError::InvalidMetadata {
            key,
            message: "0 positions: the sliding window must be positive".into(),
        });
    }
    let swa = swa_layers(b, c, 2)?;
    let base_swa = meta_f32(b, c, "rope.freq_base_swa")?.unwrap_or(c.rope.freq_base);
    if !(base_swa > 0.0 && base_swa.is_finite()) {
        return Err(ModelError::InvalidMetadata {
            key: format!("{}.rope.freq_base_swa", c.arch.name()),
            message: format!("{base_swa} is not a valid base"),
        });
    }
    // build_attn's kq_scale: 1/sqrt(n_rot), whatever attention.scale says.
    let kq_scale = 1.0 / (c.rope.n_dims as f32).sqrt();

    let mut x = input(b, c);
    for (il, &local) in swa.iter().enumerate().take(c.n_layer) {
        b.set_layer(Some(il));
        let h = norm(b, c, "attn_norm", x, &blk(il, "attn_norm.weight"));
        let (q, k, v) = qkv(b, c, il, h);
        let rope = if local {
            rope_with(c, base_swa, c.rope.freq_scale)
        } else {
            c.rope
        };
        let (q, k) = rope_qk(b, c, q, k, rope);
        let mut p = attn_params(c, kq_scale);
        p.window = local.then_some(n_swa);
        let sinks = b.vector(&blk(il, "attn_sinks.weight"), c.n_head);
        let kqv = b.attention_sinks(q, k, v, il, p, Some(sinks));
        let wo = b.matrix(&blk(il, "attn_output.weight"), c.q_width(), c.n_embd);
        let bo = b.vector(&blk(il, "attn_output.bias"), c.n_embd);
        let a = b.matmul("attn_out", kqv, wo, Some(bo), c.n_embd);
        let f = b.add("ffn_inp", a, x);
        let h = norm(
            b,
            c,
            "attn_post_norm",
            f,
            &blk(il, "post_attention_norm.weight"),
        );
        let m = moe(b, c, il, h)?;
        x = b.add("l_out", m, f);
    }
    b.set_layer(None);
    // llama.cpp keeps every row through the blocks, then takes the output
    // rows before the final norm (its `embeddings_nextn_masked` is off).
    let x = b.output_rows("l_out_rows", x);
    Ok(output(b, c, x))
}

/// `build_moe_ffn` as gpt-oss calls it: router bias, `SOFTMAX_WEIGHT`
/// gating, no renormalisation, no weight scale (llama.cpp reads no
/// `expert_weights_scale` for this architecture), expert biases, SwiGLU-OAI.
fn moe(b: &mut GraphBuilder<'_>, c: &Config, il: usize, x: NodeId) -> Result<NodeId> {
    let mut m = moe_weights(b, c, il, Gating::SoftmaxWeight, false)?;
    let n_expert = m.gate.len();
    let ff = m.ff;
    m.weights_scale = 1.0;
    m.router_bias = Some(b.vector(&blk(il, "ffn_gate_inp.bias"), n_expert));
    let per_expert = |b: &mut GraphBuilder<'_>, name: &str, len: usize| -> Vec<WeightId> {
        let t = blk(il, name);
        let shape = [len, n_expert];
        (0..n_expert)
            .map(|e| b.vector_rows(&t, &shape, e, 1))
            .collect()
    };
    m.biases = Some(ExpertBiases {
        gate: per_expert(b, "ffn_gate_exps.bias", ff),
        up: per_expert(b, "ffn_up_exps.bias", ff),
        down: per_expert(b, "ffn_down_exps.bias", c.n_embd),
    });
    m.act = ExpertAct::SwigluOai {
        alpha: SWIGLU_OAI_ALPHA,
        limit: SWIGLU_OAI_LIMIT,
    };
    Ok(moe_node(b, c, x, m))
}
