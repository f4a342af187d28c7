//! `qwen3`: per-head RMSNorm of queries and keys before NeoX RoPE
//! (llama.cpp's `src/models/qwen3.cpp`).

use super::{
    attn, attn_params, blk, ffn, input, norm, output, prenorm_ffn, qk_norm_heads, qkv, rope_qk, Glu,
};
use crate::config::Config;
use crate::error::Result;
use crate::graph::{GraphBuilder, NodeId};

/// LLaMA's blocks with `attn_q_norm`/`attn_k_norm` on each head.
pub(super) fn build(c: &Config, b: &mut GraphBuilder<'_>) -> Result<NodeId> {
    let mut x = input(b, c);
    for il in 0..c.n_layer {
        b.set_layer(Some(il));
        let h = norm(b, c, "attn_norm", x, &blk(il, "attn_norm.weight"));
        let (q, k, v) = qkv(b, c, il, h);
        let (q, k) = qk_norm_heads(b, c, il, q, k);
        let (q, k) = rope_qk(b, c, q, k, c.rope);
        let a = attn(b, c, il, (q, k, v), attn_params(c, c.attn_scale));
        x = prenorm_ffn(b, c, il, a, x, |b, h| Ok(ffn(b, c, il, h, Glu::Silu)))?;
    }
    b.set_layer(None);
    Ok(output(b, c, x))
}
