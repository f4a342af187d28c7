//! `qwen2`: the LLaMA layout with Q/K/V biases and NeoX RoPE
//! (llama.cpp's `src/models/qwen2.cpp`).

use super::{attn, attn_params, blk, ffn, input, norm, output, prenorm_ffn, qkv, rope_qk, Glu};
use crate::config::Config;
use crate::error::Result;
use crate::graph::{missing, GraphBuilder, NodeId};

/// LLaMA's blocks; the query, key and value projections must have biases.
pub(super) fn build(c: &Config, b: &mut GraphBuilder<'_>) -> Result<NodeId> {
    let mut x = input(b, c);
    for il in 0..c.n_layer {
        b.set_layer(Some(il));
        for bias in ["attn_q.bias", "attn_k.bias", "attn_v.bias"] {
            if !b.has(&blk(il, bias)) {
                return Err(missing(&blk(il, bias)));
            }
        }
        let h = norm(b, c, "attn_norm", x, &blk(il, "attn_norm.weight"));
        let (q, k, v) = qkv(b, c, il, h);
        let (q, k) = rope_qk(b, c, q, k, c.rope);
        let a = attn(b, c, il, (q, k, v), attn_params(c, c.attn_scale));
        x = prenorm_ffn(b, c, il, a, x, |b, h| Ok(ffn(b, c, il, h, Glu::Silu)))?;
    }
    b.set_layer(None);
    Ok(output(b, c, x))
}
