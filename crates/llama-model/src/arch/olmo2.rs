//! `olmo2`: no norm before attention or the feed-forward block, RMSNorm
//! after each, and Q/K norms over the whole projection
//! (llama.cpp's `src/models/olmo2.cpp`; OLMo 3's sliding-window layers too).

use super::{
    attn, attn_params, blk, ffn, input, last_layer_rows, meta_f32, meta_uint, norm, output, qkv,
    rope_qk, rope_with, swa_layers, Glu,
};
use crate::config::Config;
use crate::error::Result;
use crate::graph::{GraphBuilder, NodeId};

/// Post-norm blocks; with `attention.sliding_window`, three local layers
/// to one global (pattern 4), local ones without RoPE scaling.
pub(super) fn build(c: &Config, b: &mut GraphBuilder<'_>) -> Result<NodeId> {
    let n_swa = meta_uint(b, c, "attention.sliding_window")?.filter(|&n| n > 0);
    let swa = match n_swa {
        Some(_) => swa_layers(b, c, 4)?,
        None => vec![false; c.n_layer],
    };
    let base_swa = meta_f32(b, c, "rope.freq_base_swa")?.unwrap_or(c.rope.freq_base);
    let mut x = input(b, c);
    for (il, &local) in swa.iter().enumerate().take(c.n_layer) {
        b.set_layer(Some(il));
        let (q, k, v) = qkv(b, c, il, x);
        let qn = b.vector(&blk(il, "attn_q_norm.weight"), c.q_width());
        let kn = b.vector(&blk(il, "attn_k_norm.weight"), c.kv_width());
        let q = b.rms_norm("Qcur_normed", q, qn, c.rms_eps);
        let k = b.rms_norm("Kcur_normed", k, kn, c.rms_eps);
        let rope = if local {
            let mut r = rope_with(c, base_swa, 1.0);
            r.ext_factor = 0.0;
            r.attn_factor = 1.0;
            r
        } else {
            c.rope
        };
        let (q, k) = rope_qk(b, c, q, k, rope);
        let mut p = attn_params(c, 1.0 / (c.head_dim as f32).sqrt());
        p.window = if local { n_swa } else { None };
        let a = attn(b, c, il, (q, k, v), p);
        let [a, res] = last_layer_rows(b, c, il, [a, x]);
        let a = norm(
            b,
            c,
            "attn_post_norm",
            a,
            &blk(il, "post_attention_norm.weight"),
        );
        let f = b.add("ffn_inp", a, res);
        let h = ffn(b, c, il, f, Glu::Silu);
        let h = norm(b, c, "ffn_post_norm", h, &blk(il, "post_ffw_norm.weight"));
        x = b.add("l_out", h, f);
    }
    b.set_layer(None);
    Ok(output(b, c, x))
}
