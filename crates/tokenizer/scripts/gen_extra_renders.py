#!/usr/bin/env python3
"""Generates tests/data/extra_renders.json: more conversations (tools, empty
and unusual content, repeated roles) through the six templates of
tests/fixtures/chat_templates/renders.json, rendered as Hugging Face's
apply_chat_template does (sandboxed jinja2, trim_blocks, lstrip_blocks, loop
controls, raise_exception, strftime_now fixed at 2026-01-02, json.dumps tojson).

    python3 -m pip install jinja2==3.1.6
    python3 scripts/gen_extra_renders.py > tests/data/extra_renders.json
"""
import json
import os
from datetime import datetime

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

HERE = os.path.dirname(os.path.abspath(__file__))
RENDERS = os.path.join(HERE, "../../../tests/fixtures/chat_templates/renders.json")

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"}, "days": {"type": "integer"}},
        "required": ["city"]}}}]
CONVS = [
    {"messages": [{"role": "user", "content": "  spaced \"quotes\" and 'single' \\ back\n\nnew é 🙂  "}],
     "add_generation_prompt": True},
    {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                  {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}],
     "add_generation_prompt": False},
    {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "weather?"}],
     "add_generation_prompt": True, "tools": TOOLS},
    {"messages": [{"role": "user", "content": ""}], "add_generation_prompt": True},
    {"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}],
     "add_generation_prompt": True},
]


def raise_exception(msg):
    raise jinja2.exceptions.TemplateError(msg)


env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                   extensions=["jinja2.ext.loopcontrols"])
env.filters["tojson"] = lambda x, indent=None, separators=None, sort_keys=False, ensure_ascii=False: \
    json.dumps(x, indent=indent, separators=separators, sort_keys=sort_keys, ensure_ascii=ensure_ascii)
env.globals["raise_exception"] = raise_exception
env.globals["strftime_now"] = lambda fmt: datetime(2026, 1, 2).strftime(fmt)

templates = {}
for r in json.load(open(RENDERS)):
    templates.setdefault(r["template_name"], r["template"])
out = []
for name, src in templates.items():
    for conv in CONVS:
        ctx = dict(conv, bos_token="<s>", eos_token="</s>")
        try:
            res = {"ok": True, "output": env.from_string(src).render(**ctx)}
        except jinja2.exceptions.TemplateError as e:
            res = {"ok": False, "error": str(e)}
        out.append({"template_name": name, "context": ctx, **res})
print(json.dumps(out, indent=1, ensure_ascii=False))
