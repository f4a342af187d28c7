//! `qwen3moe`: Qwen3's attention with a mixture-of-experts feed-forward
//! block, softmax gating, the chosen weights renormalised
//! (llama.cpp's `src/models/qwen3moe.cpp`).

use super::{
    attn, attn_params, blk, input, moe_ffn, norm, output, prenorm_ffn, qk_norm_heads, qkv, rope_qk,
};
use crate::config::Config;
use crate::error::Result;
use crate::graph::{Gating, GraphBuilder, NodeId};

/// Qwen3's blocks with `build_moe_ffn` (SiLU experts, top-k of a softmax, `norm_w`).
pub(super) fn build(c: &Config, b: &mut GraphBuilder<'_>) -> Result<NodeId> {
    let mut x = input(b, c);
    for il in 0..c.n_layer {
        b.set_layer(Some(il));
        let h = norm(b, c, "attn_norm", x, &blk(il, "attn_norm.weight"));
        let (q, k, v) = qkv(b, c, il, h);
        let (q, k) = qk_norm_heads(b, c, il, q, k);
        let (q, k) = rope_qk(b, c, q, k, c.rope);
        let a = attn(b, c, il, (q, k, v), attn_params(c, c.attn_scale));
        x = prenorm_ffn(b, c, il, a, x, |b, h| {
            moe_ffn(b, c, il, h, Gating::Softmax, true)
        })?;
    }
    b.set_layer(None);
    Ok(output(b, c, x))
}
