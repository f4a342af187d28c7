//! `phi3`: fused QKV and gate/up projections, NeoX RoPE, queries scaled
//! before attention (llama.cpp's `src/models/phi3.cpp`).

use super::{attn, attn_params, blk, ffn, input, norm, output, prenorm_ffn, qkv, rope_qk, Glu};
use crate::config::Config;
use crate::error::Result;
use crate::graph::{ensure, GraphBuilder, NodeId};

/// LLaMA's blocks over `attn_qkv` and a gate-then-up `ffn_up`; llama.cpp
/// scales the queries by `1/sqrt(head_dim)` and attends with scale 1.
pub(super) fn build(c: &Config, b: &mut GraphBuilder<'_>) -> Result<NodeId> {
    ensure(!b.has("rope_factors_long.weight"), || {
        "Phi-3 LongRoPE factors (rope_factors_long/short)".to_string()
    })?;
    let mut x = input(b, c);
    for il in 0..c.n_layer {
        b.set_layer(Some(il));
        let h = norm(b, c, "attn_norm", x, &blk(il, "attn_norm.weight"));
        let (q, k, v) = qkv(b, c, il, h);
        let (q, k) = rope_qk(b, c, q, k, c.rope);
        let q = b.scale("Qcur_scaled", q, 1.0 / (c.head_dim as f32).sqrt());
        let a = attn(b, c, il, (q, k, v), attn_params(c, 1.0));
        x = prenorm_ffn(b, c, il, a, x, |b, h| Ok(ffn(b, c, il, h, Glu::Silu)))?;
    }
    b.set_layer(None);
    Ok(output(b, c, x))
}
