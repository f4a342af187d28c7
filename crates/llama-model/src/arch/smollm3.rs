//! `smollm3`: the LLaMA layout with RoPE left out of every fourth layer
//! (llama.cpp's `src/models/smollm3.cpp`: `n_no_rope_layer_step = 4`).

use super::{attn, attn_params, blk, ffn, input, norm, output, prenorm_ffn, qkv, rope_qk, Glu};
use crate::config::Config;
use crate::error::Result;
use crate::graph::{GraphBuilder, NodeId};

/// Layers `il` with `(il + 1) % 4 == 0` attend without positions.
const NO_ROPE_LAYER_STEP: usize = 4;

/// LLaMA's blocks, RoPE only where `(il + 1) % 4 != 0`.
pub(super) fn build(c: &Config, b: &mut GraphBuilder<'_>) -> Result<NodeId> {
    let mut x = input(b, c);
    for il in 0..c.n_layer {
        b.set_layer(Some(il));
        let h = norm(b, c, "attn_norm", x, &blk(il, "attn_norm.weight"));
        let (mut q, mut k, v) = qkv(b, c, il, h);
        if (il + 1) % NO_ROPE_LAYER_STEP != 0 {
            (q, k) = rope_qk(b, c, q, k, c.rope);
        }
        let a = attn(b, c, il, (q, k, v), attn_params(c, c.attn_scale));
        x = prenorm_ffn(b, c, il, a, x, |b, h| Ok(ffn(b, c, il, h, Glu::Silu)))?;
    }
    b.set_layer(None);
    Ok(output(b, c, x))
}
