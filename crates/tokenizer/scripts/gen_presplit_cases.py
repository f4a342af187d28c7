#!/usr/bin/env python3
"""Generates tests/data/presplit.json: how each pre-tokenizer's expressions
split a set of strings, computed with the `regex` module on the expressions
themselves, for a regression test of the pre-tokenizer machinery (the GPT-2 and
LLaMA-3 scanners, the collapsed-category rewrite, lookaheads).

`\\s` is evaluated as Unicode White_Space, as llama.cpp's codepoint flags do.
Pre-tokenizers whose expressions use literal non-ASCII ranges (deepseek-*)
are left out: llama.cpp replaces non-ASCII whitespace before matching them, so
a plain regex disagrees there by design. The expressions are read from
src/pre.rs and stored with the splits; the test checks they are still the
crate's.

    python3 -m pip install regex
    python3 scripts/gen_presplit_cases.py > tests/data/presplit.json
"""
import json
import os
import random
import re

import regex

HERE = os.path.dirname(os.path.abspath(__file__))
PRE_RS = open(os.path.join(HERE, "../src/pre.rs"), encoding="utf-8").read()


def rust_const(name):
    m = re.search(r"const " + name + r': &str =\s*r"(.*?)";', PRE_RS, re.S)
    return m.group(1)


def rust_list(name):
    m = re.search(r"const " + name + r": &\[&str\] = &\[(.*?)\];", PRE_RS, re.S)
    items = []
    for tok in re.finditer(r'r"(.*?)"|"((?:[^"\\]|\\.)*)"|([A-Z0-9_]+)', m.group(1), re.S):
        if tok.group(1) is not None:
            items.append(tok.group(1))
        elif tok.group(2) is not None:
            items.append(tok.group(2).encode().decode("unicode_escape").encode("latin-1").decode("utf-8"))
        else:
            items.append(rust_const(tok.group(3)))
    return items


PRES = {
    "default": "DEFAULT_EXPRS", "llama-bpe": "LLAMA3_EXPRS", "gpt-2": "GPT2_EXPRS",
    "starcoder": "STARCODER_EXPRS", "falcon": "FALCON_EXPRS", "qwen2": "QWEN2_EXPRS",
    "poro-chat": "PORO_EXPRS", "tekken": "TEKKEN_EXPRS", "gpt-4o": "GPT4O_EXPRS",
    "seed-coder": "SEED_CODER_EXPRS", "bailingmoe": "BAILINGMOE_EXPRS", "qwen35": "QWEN35_EXPRS",
}


def split(text, exprs):
    chunks = [text]
    for e in exprs:
        r = regex.compile(e.replace(r"\s", r"\p{White_Space}").replace(r"\S", r"\P{White_Space}"))
        new = []
        for c in chunks:
            pos = 0
            for m in r.finditer(c):
                if m.start() == m.end():
                    continue
                if m.start() > pos:
                    new.append(c[pos:m.start()])
                new.append(m.group())
                pos = m.end()
            if pos < len(c):
                new.append(c[pos:])
        chunks = new
    return chunks


random.seed(1)
PIECES = ["Hello", " world", "  ", "\n", "\r\n", "\t", "123", "4567890", "I'M", "don't", "we'LL", "é",
          "日本語", "한국어", "🙂", "🦙", ".", ",", "!!", "?", "$", "+", "<=>", "^", "~", "|", "`", "(", ")",
          "[x]", "{y}", "\u00a0", "\u3000", "\u2028", "ٱلعربية", "ǅ", "Ⅻ", "½", "٣", "‐", "—", "…", "、",
          "。", "，", "x̃", "\u200d", "\u0301", "ſ", "K", "ÀÖ", "ǃ", "१२३", "  \n  ", "a'b", "'s", "'S",
          " 's", "\v", "\f", "\x85", "_", "-", "/", "@", "#", "%", "&", "*"]
texts = [
    "".join(random.choice(PIECES) for _ in range(random.randint(1, 12))) for _ in range(200)
]
cases = {name: {"exprs": rust_list(const), "splits": [split(t, rust_list(const)) for t in texts]}
         for name, const in PRES.items()}
print(json.dumps({"texts": texts, "pre": cases}, ensure_ascii=False))
