#!/usr/bin/env python3
"""Run llama.cpp on the fixtures of make_arch_fixtures.py and write
tests/fixtures/archs/manifest.json.

usage: run_arch_refs.py LLAMA_BIN_DIR FIXTURE_DIR [--arch NAME ...]

For each FIXTURE_DIR/<arch>/<arch>-F32.gguf:
  llama-quantize <arch>-F32.gguf <arch>-<T>.gguf <T>        T in F16 Q8_0 Q4_K_M
                                                           (and MXFP4_MOE for gpt-oss)
  llama-perplexity -m <arch>-<T>.gguf -f text.txt -c 64 -b 64 -fa off -t 2 \
      --kl-divergence-base <arch>-<T>.kld -v                  T in F32 F16 Q8_0 Q4_K_M
and records sha256/size of every .gguf and .kld, the PPL that llama-perplexity
prints, the hyper-parameters llama.cpp reports (print_info lines) and which
layers it treats as sliding-window (load_tensors ... is_swa = N).
Also prints a few statistics decoded from each .kld (see read_kld()).
"""
import argparse
import hashlib
import json
import os
import re
import struct
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

TYPES = ["F16", "Q8_0", "Q4_K_M"]
# Extra file types per architecture: gpt-oss also as llama-quantize's
# MXFP4_MOE (experts MXFP4, other matrices Q8_0), the type its releases use.
EXTRA_TYPES = {"gpt-oss": ["MXFP4_MOE"]}
ARCHS = ["llama", "qwen2", "qwen3", "qwen3moe", "gemma2", "gemma3", "phi3", "smollm3", "olmo2", "qwen35", "qwen35moe",
         "gpt-oss"]
INFO_KEYS = ["arch", "n_ctx_train", "n_embd", "n_layer", "n_head", "n_head_kv", "n_rot", "n_swa",
             "is_swa_any", "n_embd_head_k", "n_embd_head_v", "n_embd_k_gqa", "n_embd_v_gqa",
             "f_norm_rms_eps", "f_attn_scale", "n_ff", "n_expert", "n_expert_used", "rope type",
             "freq_base_train", "freq_base_swa", "n_vocab", "BOS token", "EOS token", "file type"]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)
    return h.hexdigest()


def read_kld(path):
    """Decode llama-perplexity's --kl-divergence-base file.

    Layout (little-endian):
      char[8] "_logits_"; u32 n_ctx; i32 n_vocab; i32 n_chunk;
      i32 tokens[n_chunk * n_ctx]            (the tokenized text, BOS first;
                                              each chunk is evaluated with its
                                              first token replaced by BOS)
      then for each chunk, for each of the n_ctx - 1 - n_ctx/2 positions
      j = n_ctx/2 .. n_ctx-2 of the chunk, a row of nv = 2*((n_vocab+1)/2)+4
      u16:
        u16[0..2] = f32 scale, u16[2..4] = f32 min_log_prob,
        u16[4..4+n_vocab] = q[i],   (padding u16 if n_vocab is odd)
      and log p(i) = scale * q[i] + min_log_prob  (q = 0 means "at most
      min_log_prob", i.e. a logit <= max_logit - 16).
    Returns (n_ctx, n_vocab, tokens[n_chunk, n_ctx], logprobs[n_chunk, n_pos, n_vocab]).
    """
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"_logits_"
    n_ctx, n_vocab, n_chunk = struct.unpack_from("<Iii", data, 8)
    off = 20
    tokens = np.frombuffer(data, "<i4", n_chunk * n_ctx, off).reshape(n_chunk, n_ctx)
    off += 4 * n_chunk * n_ctx
    nv = 2 * ((n_vocab + 1) // 2) + 4
    n_pos = n_ctx - 1 - n_ctx // 2
    rows = np.frombuffer(data, "<u2", n_chunk * n_pos * nv, off).reshape(n_chunk, n_pos, nv)
    assert off + rows.nbytes == len(data), (off + rows.nbytes, len(data))
    hdr = rows[:, :, :4].copy().view("<f4")  # [..., 0] scale, [..., 1] min_log_prob
    q = rows[:, :, 4:4 + n_vocab].astype(np.float32)
    lp = hdr[:, :, 0:1] * q + hdr[:, :, 1:2]
    return n_ctx, n_vocab, tokens, lp


def kld_stats(path):
    n_ctx, n_vocab, tokens, lp = read_kld(path)
    first = n_ctx // 2
    cur = tokens[:, first:n_ctx - 1]
    nxt = tokens[:, first + 1:n_ctx]
    am = lp.argmax(-1)
    nll = -np.take_along_axis(lp, nxt[..., None], -1)[..., 0]
    p = np.exp(lp)
    ent = -(p * lp).sum(-1)
    return dict(mean_nll=float(nll.mean()), argmax_is_current=float((am == cur).mean()),
                argmax_is_next=float((am == nxt).mean()), mean_entropy=float(ent.mean()),
                mean_top1_prob=float(p.max(-1).mean()))


def run(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-4000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin")
    ap.add_argument("fixtures")
    ap.add_argument("--arch", action="append", choices=ARCHS)
    a = ap.parse_args()
    text = os.path.join(a.fixtures, "text.txt")
    man_path = os.path.join(a.fixtures, "manifest.json")
    manifest = json.load(open(man_path)) if os.path.exists(man_path) else {}
    manifest["llama_cpp"] = "llama.cpp 0c1e570 (vendored in llama-cpp-python 0.3.36), CPU build, AVX2/FMA/F16C"
    manifest["text"] = {"file": "text.txt", "sha256": sha256(text)}
    manifest["committed"] = ("<arch>-F32.gguf and the four <arch>-<T>.kld; the F16/Q8_0/Q4_K_M .gguf "
                             "files (about 46 MB together) are not committed: re-quantize <arch>-F32.gguf "
                             "and compare with gguf_sha256")
    manifest["perplexity_args"] = "-f text.txt -c 64 -b 64 -fa off -t 2 --kl-divergence-base <arch>-<T>.kld"
    manifest.setdefault("archs", {})
    for arch in ARCHS:
        if a.arch and arch not in a.arch:
            continue
        d = os.path.join(a.fixtures, arch)
        f32 = os.path.join(d, f"{arch}-F32.gguf")
        entry = {"files": {}}
        for t in ["F32"] + TYPES + EXTRA_TYPES.get(arch, []):
            g = os.path.join(d, f"{arch}-{t}.gguf")
            if t != "F32":
                run([os.path.join(a.bin, "llama-quantize"), f32, g, t])
            kld = os.path.join(d, f"{arch}-{t}.kld")
            for attempt in range(10):
                out = run([os.path.join(a.bin, "llama-perplexity"), "-m", g, "-f", text, "-c", "64", "-b", "64",
                           "-fa", "off", "-t", "2", "--kl-divergence-base", kld, "-v"])
                m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", out)
                # llama.cpp's asynchronous logger sometimes loses the last
                # lines at exit (exit status 0, .kld complete): run again
                if m:
                    break
            assert m, out[-2000:]
            chunks = re.search(r"^.*\[1\].*$", out, re.M).group(0)
            if t == "F32":
                info = {}
                for line in out.splitlines():
                    mm = re.search(r"print_info: (.+?)\s+= (.*)$", line)
                    if mm and mm.group(1).strip() in INFO_KEYS and mm.group(1).strip() not in info:
                        info[mm.group(1).strip()] = mm.group(2).strip()
                swa = re.findall(r"load_tensors: layer\s+(\d+) assigned to device \S+, is_swa = (\d)", out)
                n_layer = int(info["n_layer"])
                entry["llama_cpp_print_info"] = info
                # (the model is loaded twice: once to fit the context, once to run)
                by_layer = {int(l): int(s) for l, s in swa}
                entry["is_swa"] = [by_layer[l] for l in range(n_layer)]
                entry["n_chunks"] = int(re.search(r"calculating perplexity over (\d+) chunks", out).group(1))
            st = kld_stats(kld)
            entry["files"][t] = {
                "gguf": os.path.basename(g), "gguf_size": os.path.getsize(g), "gguf_sha256": sha256(g),
                "kld": os.path.basename(kld), "kld_size": os.path.getsize(kld), "kld_sha256": sha256(kld),
                "ppl": float(m.group(1)), "ppl_err": float(m.group(2)), "ppl_per_chunk": chunks.strip(),
            }
            print(f"{arch:9s} {t:7s} PPL {m.group(1):>12s}  " +
                  " ".join(f"{k}={v:.3f}" for k, v in st.items()), flush=True)
        import make_arch_fixtures as gen
        entry["generator"] = {**dict(hidden=gen.H, n_head=gen.NH, n_head_kv=gen.NKV, head_dim=gen.D,
                                     n_ff=gen.F, n_vocab=gen.V, layers=gen.L), **gen.ARCHS[arch]}
        manifest["archs"][arch] = entry
    with open(man_path, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
