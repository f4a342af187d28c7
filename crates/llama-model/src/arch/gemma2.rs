//! `gemma2`: scaled embeddings, GeGLU, norms after attention and the
//! feed-forward block, sliding-window layers alternating with global ones,
//! attention and final logit soft-capping (llama.cpp's `src/models/gemma2.cpp`).

use super::{
    attn, attn_params, blk, gemma_ffn, input, meta_f32, meta_uint, norm, output, qkv, rope_with,
    swa_layers,
};
use crate::config::Config;
use crate::error::Result;
use crate::graph::{GraphBuilder, NodeId};

/// Gemma's blocks; every other layer (pattern 2) attends within `n_swa` (default 4096).
pub(super) fn build(c: &Config, b: &mut GraphBuilder<'_>) -> Result<NodeId> {
    let swa = swa_layers(b, c, 2)?;
    let n_swa = meta_uint(b, c, "attention.sliding_window")?.unwrap_or(4096);
    let base_swa = meta_f32(b, c, "rope.freq_base_swa")?.unwrap_or(c.rope.freq_base);
    let attn_cap = meta_f32(b, c, "attn_logit_softcapping")?.unwrap_or(50.0);
    let final_cap = meta_f32(b, c, "final_logit_softcapping")?.unwrap_or(30.0);
    let q_scale = super::gemma_query_scale(c);

    let x = input(b, c);
    let mut x = b.scale("inp_scaled", x, (c.n_embd as f32).sqrt());
    for (il, &local) in swa.iter().enumerate().take(c.n_layer) {
        b.set_layer(Some(il));
        let h = norm(b, c, "attn_norm", x, &blk(il, "attn_norm.weight"));
        let (q, k, v) = qkv(b, c, il, h);
        let rope = if local {
            rope_with(c, base_swa, c.rope.freq_scale)
        } else {
            c.rope
        };
        let (q, k) = super::rope_qk(b, c, q, k, rope);
        let q = b.scale("Qcur_scaled", q, q_scale);
        let mut p = attn_params(c, 1.0);
        p.softcap = (attn_cap != 0.0).then_some(attn_cap);
        p.window = local.then_some(n_swa);
        let a = attn(b, c, il, (q, k, v), p);
        x = gemma_ffn(b, c, il, a, x);
    }
    b.set_layer(None);
    let logits = output(b, c, x);
    Ok(if final_cap != 0.0 {
        b.softcap("result_output_capped", logits, final_cap)
    } else {
        logits
    })
}
