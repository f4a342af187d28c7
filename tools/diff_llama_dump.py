#!/usr/bin/env python3
"""Diff strata's graph nodes against llama.cpp's, element by element.

usage: diff_llama_dump.py STRATA_DIR LLAMA_DIR [--all]

STRATA_DIR: `strata logits --model M --tokens T.json --out L.f32 --last --dump STRATA_DIR`
LLAMA_DIR:  llama.cpp's llama-eval-callback built with tools/llama_ref/dump.patch,
            run as `STRATA_DUMP=LLAMA_DIR llama-eval-callback -m M -f TEXT -n 1
            -fa off -c N -b N -ub N` on a text that tokenizes to T.json (compare
            `strata tokenize`), so both evaluate the same tokens as one batch.

Both write one little-endian f32 file per node, `NNNN_<name>.f32`, in
execution order; node names are llama.cpp's (`attn_norm-0`, `kqv_out-3`).
For each strata node, the llama.cpp node of the same name and size (the last
one, as llama.cpp names a node's reshapes alike) is compared: how many values
differ in their bits, the first differing row, the largest |difference|.
The first node that differs is where to look; `--all` prints every node.
Nodes llama.cpp computes for the output rows only (result_norm,
result_output) are compared on those rows.
"""
import os
import sys

import numpy as np


def nodes(d):
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".f32"):
            out.setdefault(f[5:-4], []).append(os.path.join(d, f))
    return out


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    show_all = "--all" in sys.argv
    if len(args) != 2:
        sys.exit(__doc__)
    ours = sorted(f for f in os.listdir(args[0]) if f.endswith(".f32"))
    count = {}
    for f in ours:
        count[f[5:-4]] = count.get(f[5:-4], 0) + 1
    seen = {}
    ref = nodes(args[1])
    first = None
    for f in ours:
        name = f[5:-4]
        k = seen.get(name, 0)
        seen[name] = k + 1
        a = np.fromfile(os.path.join(args[0], f), dtype="<f4")
        paths = ref.get(name, [])
        # llama.cpp names a node's reshapes and views alike: the last strata
        # node of a name pairs with the last llama.cpp one, earlier ones in order.
        if paths and k + 1 < count[name]:
            paths = paths[k : k + 1]
        cands = [np.fromfile(p, dtype="<f4") for p in paths]
        match = [b for b in cands if b.size == a.size]
        if not match and cands:
            # llama.cpp computed the output rows only: compare our last rows.
            b = cands[-1]
            if b.size and a.size % b.size == 0:
                a, match = a[-b.size:], [b]
        if not match:
            if show_all:
                print(f"{name:24} (no llama.cpp node of this name and size)")
            continue
        b = match[-1]
        diff = a.view(np.uint32) != b.view(np.uint32)
        n = int(diff.sum())
        line = f"{name:24} {a.size:>10} values"
        if n:
            idx = int(np.nonzero(diff)[0][0])
            mx = float(np.nanmax(np.abs(a - b)))
            line += f"  {n} differ, first at value {idx}, max |Δ| {mx:.3e}"
            if first is None:
                first = name
        else:
            line += "  bit-identical"
        if show_all or n:
            print(line)
    print(f"first node that differs: {first}" if first else "every compared node is bit-identical")


if __name__ == "__main__":
    main()
