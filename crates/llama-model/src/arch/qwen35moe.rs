//! `qwen35moe`: Qwen3.5's hybrid layers (see [`super::qwen35`]) with a
//! mixture-of-experts feed-forward block and a gated shared expert
//! (llama.cpp's `src/models/qwen35moe.cpp`).

use tensor_core::Unary;

use super::{blk, meta_uint, moe_ffn, qwen35};
use crate::config::Config;
use crate::error::Result;
use crate::graph::{Gating, GraphBuilder, NodeId, Op};

/// The experts (softmax routing, weights renormalised) plus, where the file
/// has one, the shared expert `down(silu(gate(x)) · up(x))` times
/// `sigmoid(x · ffn_gate_inp_shexp)`.
fn ffn(b: &mut GraphBuilder<'_>, c: &Config, il: usize, x: NodeId) -> Result<NodeId> {
    let moe = moe_ffn(b, c, il, x, Gating::Softmax, true)?;
    if !b.has(&blk(il, "ffn_up_shexp.weight")) {
        return Ok(moe);
    }
    let ff = match meta_uint(b, c, "expert_shared_feed_forward_length")? {
        Some(f) if f > 0 => f,
        _ => b
            .header()
            .tensor(&blk(il, "ffn_up_shexp.weight"))
            .and_then(|t| t.dims.get(1).map(|&r| r as usize))
            .unwrap_or(c.n_ff),
    };
    let wg = b.matrix(&blk(il, "ffn_gate_shexp.weight"), c.n_embd, ff);
    let wu = b.matrix(&blk(il, "ffn_up_shexp.weight"), c.n_embd, ff);
    let wd = b.matrix(&blk(il, "ffn_down_shexp.weight"), ff, c.n_embd);
    let gate = b.matmul("ffn_gate", x, wg, None, ff);
    let up = b.matmul("ffn_up", x, wu, None, ff);
    let h = b.node("ffn_swiglu", Op::Swiglu { gate, up }, ff);
    let sh = b.matmul("ffn_shexp", h, wd, None, c.n_embd);
    let wgi = b.matrix(&blk(il, "ffn_gate_inp_shexp.weight"), c.n_embd, 1);
    let sg = b.matmul("shared_expert_gate", x, wgi, None, 1);
    let sg = b.unary("shared_expert_gate_sigmoid", sg, Unary::Sigmoid);
    let sh = b.mul("ffn_shexp_gated", sh, sg);
    Ok(b.add("ffn_out", moe, sh))
}

/// Qwen3.5-MoE's blocks.
pub(super) fn build(c: &Config, b: &mut GraphBuilder<'_>) -> Result<NodeId> {
    qwen35::build_with(c, b, |b, il, h| ffn(b, c, il, h))
}
