//! `gemma3`: Gemma 2's layout with per-head Q/K norms, five local
//! (sliding-window, RoPE base 10000) layers to one global layer, and no
//! attention soft-capping (llama.cpp's `src/models/gemma3.cpp`).

use super::{
    attn, attn_params, blk, gemma_ffn, input, meta_f32, meta_uint, norm, output, qk_norm_heads,
    qkv, rope_with, swa_layers,
};
use crate::config::Config;
use crate::error::Result;
use crate::graph::{GraphBuilder, NodeId};

/// Gemma 3's blocks; with `attention.sliding_window` set, layers follow the
/// pattern 6 (five local, one global), local ones with `rope.freq_base_swa`.
pub(super) fn build(c: &Config, b: &mut GraphBuilder<'_>) -> Result<NodeId> {
    let n_swa = meta_uint(b, c, "attention.sliding_window")?.filter(|&n| n > 0);
    let swa = match n_swa {
        Some(_) => swa_layers(b, c, 6)?,
        None => vec![false; c.n_layer],
    };
    let base_swa = meta_f32(b, c, "rope.freq_base_swa")?.unwrap_or(10000.0);
    let final_cap = meta_f32(b, c, "final_logit_softcapping")?.unwrap_or(0.0);
    let q_scale = super::gemma_query_scale(c);

    let x = input(b, c);
    let mut x = b.scale("inp_scaled", x, (c.n_embd as f32).sqrt());
    for (il, &local) in swa.iter().enumerate().take(c.n_layer) {
        b.set_layer(Some(il));
        let h = norm(b, c, "attn_norm", x, &blk(il, "attn_norm.weight"));
        let (q, k, v) = qkv(b, c, il, h);
        let (q, k) = qk_norm_heads(b, c, il, q, k);
        let rope = if local {
            rope_with(c, base_swa, 1.0)
        } else {
            c.rope
        };
        let (q, k) = super::rope_qk(b, c, q, k, rope);
        let q = b.scale("Qcur_scaled", q, q_scale);
        let mut p = attn_params(c, 1.0);
        p.window = if local { n_swa } else { None };
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
