#!/usr/bin/env python3
"""Generates tests/fixtures/chat_templates/gpt_oss_renders.json: gpt-oss's
chat template (the "harmony" format; llama.cpp's
models/templates/openai-gpt-oss-120b.jinja, as the model's GGUF carries it)
on a few conversations — reasoning effort, a developer message from the
system prompt, an earlier assistant turn with its analysis (`thinking`), a
tool call and its result, tools — rendered as Hugging Face's
apply_chat_template does (the environment of gen_extra_renders.py).

    python3 -m pip install jinja2==3.1.6
    python3 scripts/gen_gpt_oss_renders.py TEMPLATE.jinja > ../../tests/fixtures/chat_templates/gpt_oss_renders.json
"""
import json
import sys
from datetime import datetime

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"}, "days": {"type": "integer"}},
        "required": ["city"]}}}]
CONVS = [
    {"messages": [{"role": "user", "content": "Hello!"}], "add_generation_prompt": True},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"},
                  {"role": "assistant", "content": "Hi.", "thinking": "The user greets; greet back."},
                  {"role": "user", "content": "2+2?"}],
     "add_generation_prompt": True, "reasoning_effort": "low"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "weather in Paris?"},
                  {"role": "assistant", "content": "",
                   "tool_calls": [{"type": "function", "function": {"name": "get_weather",
                                                                    "arguments": {"city": "Paris"}}}]},
                  {"role": "tool", "content": "{\"temp\": 20}"}],
     "add_generation_prompt": True, "reasoning_effort": "high", "tools": TOOLS},
    {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                  {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}],
     "add_generation_prompt": False},
    {"messages": [{"role": "user", "content": "  spaced \"quotes\" \\ back\n\nnew é 🙂  "}],
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

src = open(sys.argv[1]).read()
out = []
for i, conv in enumerate(CONVS):
    ctx = dict(conv, bos_token="<|startoftext|>", eos_token="<|return|>")
    try:
        res = {"ok": True, "output": env.from_string(src).render(**ctx)}
    except jinja2.exceptions.TemplateError as e:
        res = {"ok": False, "error": str(e)}
    # the template once, in the first case
    tpl = {"template": src} if i == 0 else {}
    out.append({"template_name": "openai-gpt-oss-120b.jinja", **tpl, "context": ctx, **res})
print(json.dumps(out, indent=1, ensure_ascii=False))
