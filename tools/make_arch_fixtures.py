#!/usr/bin/env python3
"""Write small random-weight GGUF models (all tensors F32), one per
architecture, as reference fixtures for llama.cpp comparisons.

usage: make_arch_fixtures.py OUT_DIR [--arch NAME ...] [--seed N]

Writes OUT_DIR/<arch>/<arch>-F32.gguf for each architecture in ARCHS (or only
the ones named with --arch). Everything is deterministic: the weights of
architecture number i (in ARCHS order) come from
numpy.random.default_rng([seed, i]), seed 20261201 by default, and the same
gguf-py (0.19.0) writes the same bytes.

Common shape: hidden 256, 4 query heads, 2 KV heads (GQA), head_dim 64,
n_ff 256, vocab 384 (SentencePiece-style, as tools/make_synthetic.py of the
shared fixtures), 2 layers. Every matrix row (the ggml ne[0] of every 2-D/3-D
weight) is a multiple of 256 so that every K-quant applies. Per-architecture
departures (more layers, other head_dim, tied embeddings, ...) are in ARCHS.

Scales: matrices N(0, 1/fan_in) with a few x8 outliers (as make_synthetic.py),
untied token_embd N(0,1), untied output N(0, 16/H) (logits of std ~4); norm
weights c * (1 + 0.1 N(0,1)) with c = 1 except where ARCHS says otherwise
(llama.cpp's gemma graphs add no +1: its converter folded it into the weights,
so the stored weights are the multipliers). Tied models (qwen3, gemma2,
gemma3) take their logits from token_embd: a small emb_std keeps the input
embedding from dominating the residual stream (otherwise the model mostly
predicts the current token again) and a larger output_norm (and, for gemma,
post-norm) scale restores logits of std ~3.
"""
import argparse
import os

import numpy as np
import gguf

H = 256      # n_embd
NH = 4       # query heads
NKV = 2      # KV heads
D = 64       # head_dim (unless an arch overrides it)
F = 256      # n_ff
V = 384      # vocab
L = 2        # layers (unless an arch overrides it)

# name: hyper-parameters. Keys: layers, head_dim, rope_base, eps, tied,
# ctx_train and arch-specific ones (see build()).
ARCHS = {
    # Mistral-style LLaMA: GQA 4/2, rope base 1e6, untied output.
    "llama":    dict(rope_base=1_000_000.0, eps=1e-5, ctx_train=32768),
    # Qwen2: biases on Q, K and V.
    "qwen2":    dict(rope_base=1_000_000.0, eps=1e-6, ctx_train=32768, qkv_bias=True),
    # Qwen3: per-head RMS q/k norms, head_dim 128 so that
    # n_head*head_dim (512) != n_embd (256), as in real Qwen3; tied embeddings.
    "qwen3":    dict(rope_base=1_000_000.0, eps=1e-6, ctx_train=40960, head_dim=128,
                     qk_norm="head", tied=True,
                     emb_std=0.1, out_norm=2.0),
    # Qwen3-MoE: 4 experts, top-2, weights renormalised (llama.cpp's qwen3moe
    # always passes norm_w=true), expert n_ff 256 != dense n_ff 512 (unused).
    "qwen3moe": dict(rope_base=1_000_000.0, eps=1e-6, ctx_train=40960, qk_norm="head",
                     n_expert=4, n_expert_used=2, n_ff_exp=256, n_ff_dense=512),
    # Gemma2: sqrt(n_embd) input scale, GELU-tanh, post-attention/post-ffw
    # norms, attention and final logit soft-capping, sliding window 16 on
    # even layers (llama.cpp: pattern 2, layer 0 local, layer 1 global),
    # tied embeddings.
    "gemma2":   dict(rope_base=10000.0, eps=1e-6, ctx_train=8192, tied=True, gemma=True,
                     n_swa=16, attn_softcap=5.0, final_softcap=10.0, qk_std=0.125,
                     emb_std=0.03, post_norm=3.0, out_norm=6.0),
    # Gemma3: 6 layers so that llama.cpp's default pattern (every 6th layer
    # global) gives layers 0-4 sliding (window 24, rope base 10000) and layer 5
    # global (rope base 1e6); per-head q/k norms; tied embeddings.
    "gemma3":   dict(rope_base=1_000_000.0, rope_base_swa=10000.0, eps=1e-6, ctx_train=32768,
                     layers=6, tied=True, gemma=True, n_swa=24, qk_norm="head",
                     emb_std=0.0625, post_norm=3.0, out_norm=3.0),
    # Phi-3: fused attn_qkv (q|k|v rows) and fused ffn_up (gate|up rows).
    "phi3":     dict(rope_base=10000.0, eps=1e-5, ctx_train=4096, fused=True),
    # SmolLM3: llama.cpp skips RoPE on every 4th layer ((il+1) % 4 == 0), a
    # constant (n_no_rope_layer_step = 4, no GGUF key): 4 layers, layer 3
    # without RoPE.
    "smollm3":  dict(rope_base=5_000_000.0, eps=1e-6, ctx_train=65536, layers=4),
    # OLMo-2: no pre-norms; post-attention and post-ffw norms; RMS q/k norms
    # over the whole projection width (q: 256, k: 128).
    "olmo2":    dict(rope_base=500_000.0, eps=1e-6, ctx_train=4096, qk_norm="full"),
    # Qwen3.5: 4 layers, full attention every 2nd (layers 1 and 3), the others
    # Gated DeltaNet: conv kernel 4, state (head) size 64, 4 value heads and 2
    # key heads (value head h reads key head h % 2), so d_inner = 256 and the
    # conv runs over 2*128 + 256 = 512 channels. Attention layers: a joint
    # query+gate projection (2 * 4 * 64 rows), per-head q/k norms, partial
    # rotary (32 of 64 dims) as interleaved M-RoPE sections [6, 5, 5, 0],
    # which rotate every pair by the text position.
    "qwen35":   dict(rope_base=10_000_000.0, eps=1e-6, ctx_train=262144, layers=4,
                     full_attn_interval=2, rope_dims=32, rope_sections=[6, 5, 5, 0],
                     ssm_d_conv=4, ssm_state=64, ssm_n_v=4, ssm_n_k=2),
    # Qwen3.5-MoE: qwen35's layers with 4 experts (top-2, softmax, weights
    # renormalised) and a shared expert (n_ff 256) gated by
    # sigmoid(x . ffn_gate_inp_shexp) in every layer.
    "qwen35moe": dict(rope_base=10_000_000.0, eps=1e-6, ctx_train=262144, layers=4,
                      full_attn_interval=2, rope_dims=32, rope_sections=[6, 5, 5, 0],
                      ssm_d_conv=4, ssm_state=64, ssm_n_v=4, ssm_n_k=2,
                      n_expert=4, n_expert_used=2, n_ff_exp=256, n_ff_shexp=256),
    # gpt-oss (llama.cpp LLM_ARCH_OPENAI_MOE): 4 layers, sliding window 16 on
    # even layers (llama.cpp's pattern 2: layers 0 and 2 local, 1 and 3
    # global); biases on Q, K, V and the attention output; a learned sink
    # logit per head (attn_sinks, std 2); YaRN RoPE (NEOX, base 150000,
    # factor 32 over an original context of 4096, as the real models);
    # post_attention_norm before a MoE of 4 experts, top-2 of the biased
    # router logits, softmax over the chosen two; expert biases; SwiGLU-OAI
    # (alpha 1.702, clamp 7): gate/up std 3/sqrt(H) so that the clamp bites.
    "gpt-oss":  dict(rope_base=150000.0, eps=1e-5, ctx_train=131072, layers=4, n_swa=16,
                     yarn_factor=32.0, yarn_orig_ctx=4096, n_expert=4, n_expert_used=2,
                     n_ff_exp=256, gpt_oss=True),
}


def vocab(w, gemma, extra=()):
    # SentencePiece-style vocab: <unk>, <s>, </s>, 256 byte tokens, then pieces.
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
    for b in range(256):
        tokens.append(f"<0x{b:02X}>"); scores.append(0.0); types.append(6)
    letters = "abcdefghijklmnopqrstuvwxyz"
    pieces = ["\u2581" + c for c in letters] + list(letters)
    i = 0
    while len(pieces) < V - len(tokens):
        pieces.append("\u2581" + letters[i % 26] + letters[(i // 26) % 26]); i += 1
    for k, p in enumerate(pieces[: V - len(tokens) - len(extra)]):
        tokens.append(p); scores.append(-float(k)); types.append(1)
    for t in extra:  # control tokens at the end of the vocab
        tokens.append(t); scores.append(0.0); types.append(3)
    assert len(tokens) == V
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if gemma:
        # as the gemma converters write it (the text then starts without "▁")
        w.add_add_space_prefix(False)


def build(arch, idx, out, seed):
    p = ARCHS[arch]
    rng = np.random.default_rng([seed, idx])
    n_layer = p.get("layers", L)
    hd = p.get("head_dim", D)
    nq, nk = NH * hd, NKV * hd

    def mat(rows, cols, std=None, n_expert=None):
        # ggml shape is [cols, rows(, n_expert)]; numpy is ((n_expert,) rows, cols)
        std = cols ** -0.5 if std is None else std
        shape = (rows, cols) if n_expert is None else (n_expert, rows, cols)
        x = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        idx_ = rng.integers(0, x.size, size=max(1, x.size // 4096))
        x.flat[idx_] *= 8.0  # a few large outliers, as real checkpoints have
        return x.astype(np.float32)

    def norm(n, c=1.0):
        return (c * (1.0 + 0.1 * rng.standard_normal(n))).astype(np.float32)

    def vec(n, std):
        return (std * rng.standard_normal(n)).astype(np.float32)

    path = os.path.join(out, arch, f"{arch}-F32.gguf")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    w = gguf.GGUFWriter(path, arch)
    w.add_name(f"synthetic-{arch}")
    w.add_context_length(p["ctx_train"])
    w.add_embedding_length(H)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(p.get("n_ff_dense", F))
    w.add_head_count(NH)
    w.add_head_count_kv(NKV)
    if hd != H // NH or p.get("gemma"):
        w.add_key_length(hd)
        w.add_value_length(hd)
    w.add_rope_dimension_count(p.get("rope_dims", hd))
    if "rope_sections" in p:
        w.add_rope_dimension_sections(p["rope_sections"])
    if "ssm_state" in p:
        w.add_ssm_conv_kernel(p["ssm_d_conv"])
        w.add_ssm_inner_size(p["ssm_state"] * p["ssm_n_v"])
        w.add_ssm_state_size(p["ssm_state"])
        w.add_ssm_time_step_rank(p["ssm_n_v"])
        w.add_ssm_group_count(p["ssm_n_k"])
        w.add_full_attention_interval(p["full_attn_interval"])
    w.add_rope_freq_base(p["rope_base"])
    if "yarn_factor" in p:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(p["yarn_factor"])
        w.add_rope_scaling_orig_ctx_len(p["yarn_orig_ctx"])
    if "rope_base_swa" in p:
        w.add_rope_freq_base_swa(p["rope_base_swa"])
    w.add_layer_norm_rms_eps(p["eps"])
    if "n_swa" in p:
        w.add_sliding_window(p["n_swa"])
    if "attn_softcap" in p:
        w.add_attn_logit_softcapping(p["attn_softcap"])
    if "final_softcap" in p:
        w.add_final_logit_softcapping(p["final_softcap"])
    if "n_expert" in p:
        w.add_expert_count(p["n_expert"])
        w.add_expert_used_count(p["n_expert_used"])
        w.add_expert_feed_forward_length(p["n_ff_exp"])
    if "n_ff_shexp" in p:
        w.add_expert_shared_feed_forward_length(p["n_ff_shexp"])
    w.add_file_type(0)  # all F32
    # llama.cpp's vocab loader looks up "<|endoftext|>" when general.name
    # contains "phi3" (as real Phi-3 vocabs have it, id 32000): the last piece
    # is replaced by that control token.
    vocab(w, p.get("gemma", False), ["<|endoftext|>"] if arch == "phi3" else [])

    tied = p.get("tied", False)
    # tied: token_embd is also the output projection, so its scale sets the
    # logits' spread (see emb_std in ARCHS)
    w.add_tensor("token_embd.weight", mat(V, H, p.get("emb_std", 1.0)))
    post = p.get("post_norm", 1.0)
    qk_std = p.get("qk_std")
    for l in range(n_layer):
        b = f"blk.{l}."
        if arch in ("qwen35", "qwen35moe"):
            qwen35_layer(w, p, b, l, mat, norm, vec, rng)
            continue
        if p.get("gpt_oss"):
            gpt_oss_layer(w, p, b, mat, norm, vec)
            continue
        if arch != "olmo2":
            w.add_tensor(b + "attn_norm.weight", norm(H))
        if p.get("fused"):
            w.add_tensor(b + "attn_qkv.weight", np.concatenate(
                [mat(nq, H), mat(nk, H), mat(nk, H)], axis=0))
        else:
            w.add_tensor(b + "attn_q.weight", mat(nq, H, qk_std))
            w.add_tensor(b + "attn_k.weight", mat(nk, H, qk_std))
            w.add_tensor(b + "attn_v.weight", mat(nk, H))
        if p.get("qkv_bias"):
            w.add_tensor(b + "attn_q.bias", vec(nq, 0.5))
            w.add_tensor(b + "attn_k.bias", vec(nk, 0.5))
            w.add_tensor(b + "attn_v.bias", vec(nk, 0.1))
        if p.get("qk_norm") == "head":
            w.add_tensor(b + "attn_q_norm.weight", norm(hd))
            w.add_tensor(b + "attn_k_norm.weight", norm(hd))
        elif p.get("qk_norm") == "full":
            w.add_tensor(b + "attn_q_norm.weight", norm(nq))
            w.add_tensor(b + "attn_k_norm.weight", norm(nk))
        w.add_tensor(b + "attn_output.weight", mat(H, nq))
        if p.get("gemma") or arch == "olmo2":
            w.add_tensor(b + "post_attention_norm.weight", norm(H, post))
        if arch != "olmo2":
            w.add_tensor(b + "ffn_norm.weight", norm(H))
        if "n_expert" in p:
            E, Fe = p["n_expert"], p["n_ff_exp"]
            w.add_tensor(b + "ffn_gate_inp.weight", mat(E, H, 4 * H ** -0.5))
            w.add_tensor(b + "ffn_gate_exps.weight", mat(Fe, H, n_expert=E))
            w.add_tensor(b + "ffn_up_exps.weight", mat(Fe, H, n_expert=E))
            w.add_tensor(b + "ffn_down_exps.weight", mat(H, Fe, n_expert=E))
        elif p.get("fused"):
            # rows 0..F-1 are the gate, F..2F-1 the up projection (llama.cpp
            # LLM_FFN_SWIGLU: silu(first half) * second half)
            w.add_tensor(b + "ffn_up.weight", np.concatenate([mat(F, H), mat(F, H)], axis=0))
            w.add_tensor(b + "ffn_down.weight", mat(H, F))
        else:
            w.add_tensor(b + "ffn_gate.weight", mat(F, H))
            w.add_tensor(b + "ffn_up.weight", mat(F, H))
            w.add_tensor(b + "ffn_down.weight", mat(H, F))
        if p.get("gemma") or arch == "olmo2":
            w.add_tensor(b + "post_ffw_norm.weight", norm(H, post))
    w.add_tensor("output_norm.weight", norm(H, p.get("out_norm", 1.0)))
    if not tied:
        w.add_tensor("output.weight", mat(V, H, 4 * H ** -0.5))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def qwen35_layer(w, p, b, l, mat, norm, vec, rng):
    """One Qwen3.5 block: Gated DeltaNet or (every full_attn_interval-th
    layer) gated full attention, then the post-attention norm and SwiGLU."""
    w.add_tensor(b + "attn_norm.weight", norm(H))
    if (l + 1) % p["full_attn_interval"] != 0:
        S, nv, nk = p["ssm_state"], p["ssm_n_v"], p["ssm_n_k"]
        kd, vd = S * nk, S * nv
        w.add_tensor(b + "attn_qkv.weight", mat(2 * kd + vd, H))
        w.add_tensor(b + "attn_gate.weight", mat(vd, H))
        # ggml [d_conv, channels]: each channel's taps
        w.add_tensor(b + "ssm_conv1d.weight", mat(2 * kd + vd, p["ssm_d_conv"], 0.5))
        w.add_tensor(b + "ssm_dt.bias", vec(nv, 0.5))
        # the converter stores -exp(A_log)
        w.add_tensor(b + "ssm_a", (-np.exp(0.5 * rng.standard_normal(nv))).astype(np.float32))
        w.add_tensor(b + "ssm_beta.weight", mat(nv, H))
        w.add_tensor(b + "ssm_alpha.weight", mat(nv, H))
        w.add_tensor(b + "ssm_norm.weight", norm(S))
        w.add_tensor(b + "ssm_out.weight", mat(H, vd))
    else:
        hd = p.get("head_dim", D)
        w.add_tensor(b + "attn_q.weight", mat(2 * NH * hd, H))
        w.add_tensor(b + "attn_k.weight", mat(NKV * hd, H))
        w.add_tensor(b + "attn_v.weight", mat(NKV * hd, H))
        w.add_tensor(b + "attn_q_norm.weight", norm(hd))
        w.add_tensor(b + "attn_k_norm.weight", norm(hd))
        w.add_tensor(b + "attn_output.weight", mat(H, NH * hd))
    w.add_tensor(b + "post_attention_norm.weight", norm(H))
    if "n_expert" in p:
        E, Fe, Fs = p["n_expert"], p["n_ff_exp"], p["n_ff_shexp"]
        w.add_tensor(b + "ffn_gate_inp.weight", mat(E, H, 4 * H ** -0.5))
        w.add_tensor(b + "ffn_gate_exps.weight", mat(Fe, H, n_expert=E))
        w.add_tensor(b + "ffn_up_exps.weight", mat(Fe, H, n_expert=E))
        w.add_tensor(b + "ffn_down_exps.weight", mat(H, Fe, n_expert=E))
        w.add_tensor(b + "ffn_gate_inp_shexp.weight", vec(H, 2 * H ** -0.5))
        w.add_tensor(b + "ffn_gate_shexp.weight", mat(Fs, H))
        w.add_tensor(b + "ffn_up_shexp.weight", mat(Fs, H))
        w.add_tensor(b + "ffn_down_shexp.weight", mat(H, Fs))
        return
    w.add_tensor(b + "ffn_gate.weight", mat(F, H))
    w.add_tensor(b + "ffn_up.weight", mat(F, H))
    w.add_tensor(b + "ffn_down.weight", mat(H, F))


def gpt_oss_layer(w, p, b, mat, norm, vec):
    """One gpt-oss block: attention with biases and sinks, the post-attention
    norm, then the MoE with router and expert biases (SwiGLU-OAI experts)."""
    hd = p.get("head_dim", D)
    nq, nk = NH * hd, NKV * hd
    w.add_tensor(b + "attn_norm.weight", norm(H))
    w.add_tensor(b + "attn_q.weight", mat(nq, H))
    w.add_tensor(b + "attn_q.bias", vec(nq, 0.5))
    w.add_tensor(b + "attn_k.weight", mat(nk, H))
    w.add_tensor(b + "attn_k.bias", vec(nk, 0.5))
    w.add_tensor(b + "attn_v.weight", mat(nk, H))
    w.add_tensor(b + "attn_v.bias", vec(nk, 0.1))
    w.add_tensor(b + "attn_output.weight", mat(H, nq))
    w.add_tensor(b + "attn_output.bias", vec(H, 0.1))
    w.add_tensor(b + "attn_sinks.weight", vec(NH, 2.0))
    w.add_tensor(b + "post_attention_norm.weight", norm(H))
    E, Fe = p["n_expert"], p["n_ff_exp"]
    w.add_tensor(b + "ffn_gate_inp.weight", mat(E, H, 4 * H ** -0.5))
    w.add_tensor(b + "ffn_gate_inp.bias", vec(E, 0.5))
    w.add_tensor(b + "ffn_gate_exps.weight", mat(Fe, H, 3 * H ** -0.5, n_expert=E))
    w.add_tensor(b + "ffn_gate_exps.bias", vec(E * Fe, 0.5).reshape(E, Fe))
    w.add_tensor(b + "ffn_up_exps.weight", mat(Fe, H, 3 * H ** -0.5, n_expert=E))
    w.add_tensor(b + "ffn_up_exps.bias", vec(E * Fe, 0.5).reshape(E, Fe))
    w.add_tensor(b + "ffn_down_exps.weight", mat(H, Fe, n_expert=E))
    w.add_tensor(b + "ffn_down_exps.bias", vec(E * H, 0.1).reshape(E, H))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--arch", action="append", choices=list(ARCHS))
    ap.add_argument("--seed", type=int, default=20261201)
    a = ap.parse_args()
    for i, arch in enumerate(ARCHS):
        if a.arch and arch not in a.arch:
            continue
        print("wrote", build(arch, i, a.out, a.seed))


if __name__ == "__main__":
    main()
