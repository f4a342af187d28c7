"""Drives a running `strata serve` with the official openai client.

usage: python3 openai_check.py BASE_URL API_KEY
(BASE_URL like http://127.0.0.1:8080/v1). Prints one line per check and
"all checks passed" at the end; exits non-zero on the first failure.
"""

import json
import sys
import urllib.error
import urllib.request

import openai

base_url, api_key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=300)
MESSAGES = [{"role": "user", "content": "Write one sentence about the sea."}]


def check(name, ok, detail=""):
    if not ok:
        print(f"FAIL {name}: {detail}")
        sys.exit(1)
    print(f"ok   {name}")


def raises(name, error_type, call):
    try:
        call()
    except error_type as e:
        body = e.body if isinstance(e.body, dict) else {}
        check(name, "message" in body and "type" in body, f"not an OpenAI error object: {e.body!r}")
        return e
    except Exception as e:  # noqa: BLE001
        check(name, False, f"raised {type(e).__name__}: {e}")
    check(name, False, f"no {error_type.__name__}")


models = client.models.list()
check("models.list", len(models.data) == 1 and models.data[0].id, models)
model = models.data[0].id

plain = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=24, seed=7, temperature=0.8)
text = plain.choices[0].message.content
check("plain chat", bool(text) and plain.choices[0].finish_reason in ("stop", "length"), plain)
check("plain usage", plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens, plain.usage)

stream = client.chat.completions.create(
    model=model, messages=MESSAGES, max_tokens=24, seed=7, temperature=0.8,
    stream=True, stream_options={"include_usage": True},
)
pieces, finish, usage = [], None, None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
check("streamed deltas concatenate to the plain text", "".join(pieces) == text, f"{''.join(pieces)!r} != {text!r}")
check("streamed finish_reason", finish == plain.choices[0].finish_reason, finish)
check("streamed usage", usage is not None and usage.completion_tokens == plain.usage.completion_tokens, usage)

short = client.chat.completions.create(model=model, messages=MESSAGES, max_completion_tokens=2, temperature=0)
check("max_completion_tokens", short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2, short)

lp = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=3, temperature=0, logprobs=True, top_logprobs=3)
content = lp.choices[0].logprobs.content
check("logprobs", len(content) == 3 and all(len(c.top_logprobs) == 3 and c.logprob <= 0 for c in content), lp.choices[0].logprobs)

comp = client.completions.create(model=model, prompt="The capital of France is", max_tokens=6, temperature=0)
check("completions", bool(comp.choices[0].text) and comp.usage.completion_tokens <= 6, comp)

# Structured output: a JSON-schema reply that validates (pydantic ships with openai).
from typing import List, Literal  # noqa: E402

import pydantic  # noqa: E402


class Person(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    name: str = pydantic.Field(max_length=20)
    age: int = pydantic.Field(ge=0, le=120)
    likes: List[Literal["tea", "coffee", "sea"]] = pydantic.Field(max_length=2)


for seed in (1, 2):
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Describe a person as JSON."}], seed=seed, max_tokens=200,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "person", "strict": True, "schema": Person.model_json_schema()}})
    text = reply.choices[0].message.content
    try:
        person = Person.model_validate_json(text)
        check(f"json_schema reply validates (seed {seed})", reply.choices[0].finish_reason == "stop", reply)
    except pydantic.ValidationError as e:
        check(f"json_schema reply validates (seed {seed})", False, f"{text!r}: {e}")
obj = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Reply in JSON."}], seed=3,
                                     max_tokens=300, response_format={"type": "json_object"})
if obj.choices[0].finish_reason == "stop":
    check("json_object reply is an object", isinstance(json.loads(obj.choices[0].message.content), dict), obj)
raises("a bad schema is 400", openai.BadRequestError, lambda: client.chat.completions.create(
    model=model, messages=MESSAGES,
    response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}))


# Tool calling with tool_choice required: a well-formed call of a listed function.
class Weather(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    city: str = pydantic.Field(max_length=24)
    unit: Literal["celsius", "fahrenheit"]


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now.",
                                           "parameters": Weather.model_json_schema()}}]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
call_reply = client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="required",
                                            max_tokens=120, seed=1)
choice = call_reply.choices[0]
check("tool_choice required: finish_reason tool_calls", choice.finish_reason == "tool_calls", call_reply)
calls = choice.message.tool_calls or []
check("tool_choice required: one call of get_weather",
      len(calls) >= 1 and all(c.type == "function" and c.function.name == "get_weather" and c.id for c in calls), calls)
for c in calls:
    try:
        Weather.model_validate_json(c.function.arguments)
        check("tool call arguments validate", True)
    except pydantic.ValidationError as e:
        check("tool call arguments validate", False, f"{c.function.arguments!r}: {e}")
streamed_calls, stream_finish, argument_chunks = {}, None, 0
for chunk in client.chat.completions.create(model=model, messages=ASK, tools=TOOLS, tool_choice="required",
                                            max_tokens=120, seed=1, stream=True):
    if chunk.choices:
        for d in chunk.choices[0].delta.tool_calls or []:
            entry = streamed_calls.setdefault(d.index, {"name": "", "arguments": ""})
            entry["name"] += (d.function.name or "") if d.function else ""
            entry["arguments"] += (d.function.arguments or "") if d.function else ""
            argument_chunks += bool(d.function and d.function.arguments)
        stream_finish = chunk.choices[0].finish_reason or stream_finish
check("streamed tool call equals the plain one",
      stream_finish == "tool_calls" and [(v["name"], v["arguments"]) for _, v in sorted(streamed_calls.items())]
      == [(c.function.name, c.function.arguments) for c in calls], (streamed_calls, stream_finish))
# As the OpenAI API does, the arguments arrive token by token, not in one chunk.
check("streamed tool call arguments arrive in many chunks", argument_chunks > 3, argument_chunks)
# The call's result goes back, and the conversation continues.
follow = client.chat.completions.create(model=model, max_tokens=40, seed=1, tools=TOOLS, messages=ASK + [
    {"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in calls]},
    {"role": "tool", "tool_call_id": calls[0].id, "content": "22 degrees and sunny"}])
check("a conversation with a tool result continues", follow.choices[0].finish_reason in ("stop", "length", "tool_calls"),
      follow)
raises("tool_choice without tools is 400", openai.BadRequestError,
       lambda: client.chat.completions.create(model=model, messages=MESSAGES, tool_choice="required"))

# Bad input: every one an OpenAI error object with the right status.
raises("n=2 is 400", openai.BadRequestError,
       lambda: client.chat.completions.create(model=model, messages=MESSAGES, n=2))
raises("temperature out of range is 400", openai.BadRequestError,
       lambda: client.chat.completions.create(model=model, messages=MESSAGES, temperature=5))
raises("unknown parameter is 400", openai.BadRequestError,
       lambda: client.chat.completions.create(model=model, messages=MESSAGES, extra_body={"frobnicate": 1}))
e = raises("prompt longer than the context is 400", openai.BadRequestError,
           lambda: client.chat.completions.create(model=model, messages=[{"role": "user", "content": "word " * 5000}]))
check("the context error says so", "context" in str(e), e)
try:
    urllib.request.urlopen(urllib.request.Request(
        base_url + "/chat/completions", data=b"{not json", method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"}))
    check("malformed JSON is 400", False, "accepted")
except urllib.error.HTTPError as e:
    body = json.loads(e.read())
    check("malformed JSON is 400", e.code == 400 and body["error"]["type"] == "invalid_request_error", body)
raises("wrong key is 401", openai.AuthenticationError,
       lambda: openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list())
raises("unknown path is 404", openai.NotFoundError, lambda: client.get("/nothing", cast_to=object))

# A client that goes away mid-stream, then a request that succeeds.
stream = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=400, stream=True)
seen = 0
for chunk in stream:
    seen += 1
    if seen == 3:
        break
stream.close()
after = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=4)
check("a request after a disconnect mid-stream", after.choices[0].message.content is not None, after)

print("all checks passed")
