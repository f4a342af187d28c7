//! `llama`: LLaMA 1/2/3, TinyLlama, SmolLM, Mistral-style models
//! (llama.cpp's `src/models/llama.cpp`).

use super::{attn, attn_params, ffn, input, norm, output, prenorm_ffn, qkv, rope_qk, Glu};
use crate::config::Config;
use crate::error::Result;
use crate::graph::{GraphBuilder, NodeId};

/// Pre-norm blocks: RMSNorm, attention with RoPE (LLaMA-3 `rope_freqs`
/// factors when present), residual, RMSNorm, SwiGLU feed-forward, residual.
pub(super) fn build(c: &Config, b: &mut GraphBuilder<'_>) -> Result<NodeId> {
    let mut x = input(b, c);
    for il in 0..c.n_layer {
        b.set_layer(Some(il));
        let h = norm(b, c, "attn_norm", x, &super::blk(il, "attn_norm.weight"));
        let (q, k, v) = qkv(b, c, il, h);
        let (q, k) = rope_qk(b, c, q, k, c.rope);
        let a = attn(b, c, il, (q, k, v), attn_params(c, c.attn_scale));
        x = prenorm_ffn(b, c, il, a, x, |b, h| Ok(ffn(b, c, il, h, Glu::Silu)))?;
    }
    b.set_layer(None);
    Ok(output(b, c, x))
}
