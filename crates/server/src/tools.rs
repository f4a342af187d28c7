//! Tool calling: the `tools` and `tool_choice` of a chat request, how the
//! model's template is told about them, the grammar that keeps a required
//! call well-formed, and the calls parsed back out of the generated text.
//!
//! Three formats, chosen from the chat template's source:
//! - [`ToolFormat::Hermes`] (Qwen 2.5/3, SmolLM3, Hermes; the template
//!   writes `<tool_call>`): the template gets `tools`; the model writes
//!   `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`.
//! - [`ToolFormat::Llama3`] (LLaMA 3.1+ templates, `<|python_tag|>`): the
//!   template gets `tools`; the model writes `{"name": …, "parameters": {…}}`.
//! - [`ToolFormat::Harmony`] (gpt-oss; the template writes `<|channel|>`):
//!   the template gets `tools` (it lists them as a TypeScript namespace);
//!   the model addresses a message `to=functions.NAME` with JSON arguments
//!   ([`generate::harmony`]). No grammar forces a call in this format.
//! - [`ToolFormat::Generic`] (templates with no tool format, such as the
//!   default model's), as llama.cpp's generic chat format: the tools are
//!   described in the system turn and the whole reply is constrained to JSON,
//!   `{"tool_calls": [{"name": …, "arguments": {…}}]}` or, with `auto`,
//!   `{"response": …}`.

use serde_json::{json, Value};

use crate::api::BadRequest;
use generate::constraint::Grammar;

/// How a template lets a model call tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ToolFormat {
    /// `<tool_call>{json}</tool_call>`.
    Hermes,
    /// A bare JSON object with `name` and `parameters`.
    Llama3,
    /// gpt-oss's harmony messages: a call is a message `to=functions.NAME`.
    Harmony,
    /// The system turn describes the tools, the reply is one JSON object.
    Generic,
}

impl ToolFormat {
    /// The format a template writes, from its source.
    pub fn detect(template_source: &str) -> ToolFormat {
        if generate::harmony::is_harmony_template(template_source) {
            ToolFormat::Harmony
        } else if template_source.contains("<tool_call>") {
            ToolFormat::Hermes
        } else if template_source.contains("<|python_tag|>")
            || (template_source.contains("<|start_header_id|>")
                && template_source.contains("tools"))
        {
            ToolFormat::Llama3
        } else {
            ToolFormat::Generic
        }
    }
}

/// One function the model may call.
#[derive(Clone, Debug)]
pub(crate) struct Function {
    pub name: String,
    /// The JSON Schema of its arguments.
    pub parameters: Value,
    pub strict: bool,
}

/// `tool_choice`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Choice {
    None,
    Auto,
    Required,
    Named(String),
}

/// A request's tools, checked.
#[derive(Clone, Debug)]
pub(crate) struct Tools {
    /// The `tools` array as given (what templates receive).
    pub raw: Vec<Value>,
    pub functions: Vec<Function>,
    pub choice: Choice,
    pub parallel: bool,
}

fn bad(param: &'static str, message: impl Into<String>) -> BadRequest {
    BadRequest {
        message: message.into(),
        param: Some(param),
        code: None,
    }
}

/// Checks `tools`, `tool_choice` and `parallel_tool_calls`; `None` when no
/// tools are in play (none given, or `tool_choice: "none"`).
pub(crate) fn parse(
    tools: Option<Value>,
    tool_choice: Option<Value>,
    parallel: Option<bool>,
) -> Result<Option<Tools>, BadRequest> {
    let raw = match tools {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(bad("tools", "tools must be an array")),
    };
    if raw.len() > 128 {
        return Err(bad("tools", "at most 128 tools"));
    }
    let mut functions = Vec::new();
    for (i, tool) in raw.iter().enumerate() {
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(bad(
                "tools",
                format!("tools[{i}]: only tools of type \"function\" are supported"),
            ));
        }
        let Some(f) = tool.get("function").and_then(Value::as_object) else {
            return Err(bad(
                "tools",
                format!("tools[{i}]: a function object is required"),
            ));
        };
        let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(bad(
                "tools",
                format!("tools[{i}]: function.name must be 1 to 64 of a-z, A-Z, 0-9, _ and -"),
            ));
        }
        if functions.iter().any(|f: &Function| f.name == name) {
            return Err(bad(
                "tools",
                format!("tools[{i}]: function {name:?} is listed twice"),
            ));
        }
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object"}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => {
                return Err(bad(
                    "tools",
                    format!("tools[{i}]: function.parameters must be a JSON Schema object"),
                ))
            }
        };
        let strict = f.get("strict").and_then(Value::as_bool).unwrap_or(false);
        functions.push(Function {
            name: name.to_string(),
            parameters,
            strict,
        });
    }
    let choice = match &tool_choice {
        None | Some(Value::Null) => Choice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => Choice::None,
            "auto" => Choice::Auto,
            "required" => Choice::Required,
            other => {
                return Err(bad(
                    "tool_choice",
                    format!("tool_choice {other:?} is not one of none, auto, required"),
                ))
            }
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| o.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| {
                    bad(
                        "tool_choice",
                        "tool_choice must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": …}}",
                    )
                })?;
            if !functions.iter().any(|f| f.name == name) {
                return Err(bad(
                    "tool_choice",
                    format!("tool_choice names function {name:?}, which is not in tools"),
                ));
            }
            Choice::Named(name.to_string())
        }
        Some(_) => {
            return Err(bad(
                "tool_choice",
                "tool_choice must be a string or an object",
            ))
        }
    };
    if functions.is_empty() {
        return match choice {
            Choice::Auto | Choice::None if tool_choice.is_none() => Ok(None),
            Choice::None => Ok(None),
            _ => Err(bad("tool_choice", "tool_choice needs tools")),
        };
    }
    if choice == Choice::None {
        return Ok(None);
    }
    Ok(Some(Tools {
        raw,
        functions,
        choice,
        parallel: parallel.unwrap_or(true),
    }))
}

impl Tools {
    /// The names of the functions listed.
    pub fn names(&self) -> Vec<String> {
        self.functions.iter().map(|f| f.name.clone()).collect()
    }

    /// Whether the output must be a call.
    pub fn forced(&self) -> bool {
        matches!(self.choice, Choice::Required | Choice::Named(_))
    }

    /// The functions a call may name.
    fn callable(&self) -> impl Iterator<Item = &Function> {
        self.functions.iter().filter(move |f| match &self.choice {
            Choice::Named(n) => &f.name == n,
            _ => true,
        })
    }

    /// The schema of one call: `{"<name_key>": const, "<args_key>": parameters}`, any callable function.
    fn call_schema(&self, args_key: &str) -> Value {
        let calls: Vec<Value> = self
            .callable()
            .map(|f| {
                json!({
                    "type": "object",
                    "properties": {
                        "name": {"const": f.name},
                        args_key: f.parameters,
                    },
                    "required": ["name", args_key],
                    "additionalProperties": false,
                })
            })
            .collect();
        if calls.len() == 1 {
            calls.into_iter().next().expect("one")
        } else {
            json!({ "anyOf": calls })
        }
    }

    fn strict(&self) -> bool {
        self.callable().any(|f| f.strict)
    }

    /// The generic format's reply schema: tool calls, or (with `auto`) a
    /// response, itself following `response` when the request gave one.
    fn generic_schema(&self, response: Option<&Value>) -> Value {
        let mut calls =
            json!({"type": "array", "items": self.call_schema("arguments"), "minItems": 1});
        if !self.parallel {
            calls["maxItems"] = json!(1);
        }
        let calls = json!({
            "type": "object",
            "properties": {"tool_calls": calls},
            "required": ["tool_calls"],
            "additionalProperties": false,
        });
        if self.forced() {
            return calls;
        }
        let reply = response
            .cloned()
            .unwrap_or_else(|| json!({"type": "string"}));
        json!({"anyOf": [calls, {
            "type": "object",
            "properties": {"response": reply},
            "required": ["response"],
            "additionalProperties": false,
        }]})
    }

    /// The grammar the output must follow, if any: the generic format always
    /// (its reply is JSON), the others when a call is required.
    pub fn grammar(&self, format: ToolFormat, response: Option<&Value>) -> Option<Grammar> {
        match format {
            ToolFormat::Generic => Some(Grammar::JsonSchema {
                schema: self.generic_schema(response),
                strict: self.strict(),
            }),
            _ if !self.forced() => None,
            // The call follows the model's own reasoning: nothing to force.
            ToolFormat::Harmony => None,
            ToolFormat::Llama3 => Some(Grammar::JsonSchema {
                schema: self.call_schema("parameters"),
                strict: self.strict(),
            }),
            ToolFormat::Hermes => {
                let mut schema = self.call_schema("arguments");
                if let Value::Object(map) = &mut schema {
                    map.insert(
                        "x-guidance".into(),
                        generate::constraint::json_layout_options(),
                    );
                }
                let call = format!(
                    "\"<tool_call>\\n\" %json {} \"\\n</tool_call>\"",
                    serde_json::to_string(&schema).expect("JSON values serialize")
                );
                let start = if self.parallel {
                    "start: call (\"\\n\" call)*"
                } else {
                    "start: call"
                };
                Some(Grammar::Lark(format!("{start}\ncall: {call}\n")))
            }
        }
    }

    /// The system turn's text describing the tools (the generic format).
    fn generic_system_text(&self, response_is_schema: bool) -> String {
        let list: Vec<Value> = self
            .functions
            .iter()
            .map(|f| {
                let mut d = json!({"name": f.name, "parameters": f.parameters});
                if let Some(desc) = self
                    .raw
                    .iter()
                    .find(|t| t["function"]["name"] == f.name.as_str())
                    .and_then(|t| t["function"].get("description"))
                {
                    d["description"] = desc.clone();
                }
                d
            })
            .collect();
        let tools = serde_json::to_string_pretty(&list).expect("JSON values serialize");
        let mut text = format!(
            "You can call any of the following tools to satisfy the user's requests: {tools}\n\n\
             Example tool call syntax:\n\n\
             {{\"tool_calls\": [{{\"name\": \"tool_name\", \"arguments\": {{\"arg1\": \"some_value\"}}}}]}}\n\n"
        );
        text.push_str(if self.forced() {
            "Respond in JSON format with `tool_calls` (a request to call tools)."
        } else if response_is_schema {
            "Respond in JSON format, either with `tool_calls` (a request to call tools) or with `response` (your reply to the user, as JSON)."
        } else {
            "Respond in JSON format, either with `tool_calls` (a request to call tools) or with `response` (your reply to the user's request)."
        });
        text
    }
}

/// Prepares the request's messages (JSON, before they are checked) for the
/// template: arguments given as JSON text are parsed (templates write them
/// with `tojson`); for harmony, an assistant turn's `reasoning_content`
/// becomes the `thinking` gpt-oss's template reads; in the generic format the tools are described in the
/// system turn, earlier calls become the JSON the model would have written,
/// and tool results become user turns.
pub(crate) fn prepare_messages(
    messages: &mut Vec<Value>,
    tools: Option<&Tools>,
    format: ToolFormat,
    response_is_schema: bool,
) {
    for m in messages.iter_mut() {
        if let Some(Value::Array(calls)) = m.get_mut("tool_calls") {
            for call in calls {
                if let Some(args) = call
                    .get_mut("function")
                    .and_then(|f| f.get_mut("arguments"))
                {
                    if let Some(parsed) = args.as_str().and_then(|s| serde_json::from_str(s).ok()) {
                        *args = parsed;
                    }
                }
            }
        }
        if format == ToolFormat::Harmony && m.get("thinking").is_none() {
            if let Some(r) = m.get("reasoning_content").cloned() {
                m["thinking"] = r;
            }
        }
    }
    let Some(tools) = tools else { return };
    if format != ToolFormat::Generic {
        return;
    }
    let text_of = |v: Option<&Value>| match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    };
    for m in messages.iter_mut() {
        let Some(obj) = m.as_object_mut() else {
            continue;
        };
        match obj.get("role").and_then(Value::as_str) {
            Some("assistant") => {
                if let Some(Value::Array(calls)) = obj.remove("tool_calls") {
                    let calls: Vec<Value> = calls
                        .iter()
                        .map(|c| json!({"name": c["function"]["name"], "arguments": c["function"]["arguments"]}))
                        .collect();
                    obj.insert(
                        "content".into(),
                        json!({"tool_calls": calls}).to_string().into(),
                    );
                } else {
                    let text = text_of(obj.get("content"));
                    if !text.is_empty() {
                        obj.insert(
                            "content".into(),
                            json!({"response": text}).to_string().into(),
                        );
                    }
                }
            }
            Some("tool") => {
                let id = obj.remove("tool_call_id").unwrap_or(Value::Null);
                let content = text_of(obj.get("content"));
                obj.remove("name");
                obj.insert("role".into(), "user".into());
                obj.insert(
                    "content".into(),
                    json!({"tool_response": {"tool_call_id": id, "content": content}})
                        .to_string()
                        .into(),
                );
            }
            _ => {}
        }
    }
    let text = tools.generic_system_text(response_is_schema);
    let first_is_system = messages
        .first()
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str)
        .is_some_and(|r| r == "system" || r == "developer");
    if first_is_system {
        let first = &mut messages[0];
        let content = text_of(first.get("content"));
        first["content"] = Value::String(format!("{content}\n\n{text}"));
    } else {
        messages.insert(0, json!({"role": "system", "content": text}));
    }
}

/// One parsed call.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ToolCall {
    pub name: String,
    /// The arguments as JSON text (OpenAI's form).
    pub arguments: String,
}

/// What a reply says: text, calls, or both.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Reply {
    pub content: Option<String>,
    pub calls: Vec<ToolCall>,
}

/// Reads the calls out of a reply in `format`; text that holds none is
/// content. Every format but Harmony is read by [`CallStream`] (the same
/// reader a streamed reply goes through, so both give the same calls).
///
/// [`CallStream`]: crate::tool_stream::CallStream
pub(crate) fn parse_reply(text: &str, format: ToolFormat, tools: &Tools) -> Reply {
    if format != ToolFormat::Harmony {
        let (content, calls) = crate::tool_stream::read_reply(text, format, tools.names());
        return Reply { content, calls };
    }
    let known = |c: &ToolCall| tools.functions.iter().any(|f| f.name == c.name);
    let h = generate::harmony::parse_reply(text);
    let calls: Vec<ToolCall> = h
        .calls
        .into_iter()
        .map(|c| ToolCall {
            name: c.name,
            arguments: c.arguments,
        })
        .filter(known)
        .collect();
    if calls.is_empty() {
        return Reply {
            content: Some(h.content),
            calls,
        };
    }
    Reply {
        content: (!h.content.is_empty()).then_some(h.content),
        calls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather(choice: Value) -> Tools {
        parse(
            Some(
                json!([{"type": "function", "function": {"name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]),
            ),
            Some(choice),
            None,
        )
        .unwrap()
        .unwrap()
    }

    #[test]
    fn tools_and_choices_are_checked() {
        assert!(parse(None, None, None).unwrap().is_none());
        assert!(parse(None, Some(json!("required")), None).is_err());
        assert!(parse(Some(json!([{"type": "retrieval"}])), None, None).is_err());
        assert!(parse(
            Some(json!([{"type": "function", "function": {"name": "a b"}}])),
            None,
            None
        )
        .is_err());
        let t = json!([{"type": "function", "function": {"name": "f"}}]);
        assert!(parse(Some(t.clone()), Some(json!("none")), None)
            .unwrap()
            .is_none());
        assert!(parse(Some(t.clone()), Some(json!("sometimes")), None).is_err());
        assert!(parse(
            Some(t.clone()),
            Some(json!({"type": "function", "function": {"name": "g"}})),
            None
        )
        .is_err());
        let named = parse(
            Some(t),
            Some(json!({"type": "function", "function": {"name": "f"}})),
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(named.choice, Choice::Named("f".into()));
        assert!(named.forced());
    }

    #[test]
    fn formats_are_detected_from_the_template() {
        assert_eq!(
            ToolFormat::detect("{% if tools %}<tool_call>{% endif %}"),
            ToolFormat::Hermes
        );
        assert_eq!(
            ToolFormat::detect("<|start_header_id|>{% if tools %}{% endif %}"),
            ToolFormat::Llama3
        );
        assert_eq!(
            ToolFormat::detect("<|im_start|>{{ m.content }}"),
            ToolFormat::Generic
        );
    }

    #[test]
    fn harmony_calls_and_replies_are_parsed() {
        assert_eq!(
            ToolFormat::detect("<|start|>assistant<|channel|>final<|message|>"),
            ToolFormat::Harmony
        );
        let tools = weather(json!("auto"));
        let r = parse_reply(
            "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant \
             to=functions.get_weather<|channel|>commentary json<|message|>{\"city\": \"Paris\"}",
            ToolFormat::Harmony,
            &tools,
        );
        assert_eq!(r.content, None);
        assert_eq!(r.calls[0].name, "get_weather");
        assert_eq!(r.calls[0].arguments, "{\"city\": \"Paris\"}");
        let r = parse_reply(
            "<|channel|>analysis<|message|>Greet.<|end|><|start|>assistant<|channel|>final<|message|>Hi!",
            ToolFormat::Harmony,
            &tools,
        );
        assert_eq!(r.content.as_deref(), Some("Hi!"));
        assert!(r.calls.is_empty());
    }

    #[test]
    fn calls_are_parsed_from_each_format() {
        let tools = weather(json!("auto"));
        let r = parse_reply(
            "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
            ToolFormat::Hermes,
            &tools,
        );
        assert_eq!(r.content.as_deref(), Some("Let me look."));
        assert_eq!(r.calls[0].name, "get_weather");
        assert_eq!(
            serde_json::from_str::<Value>(&r.calls[0].arguments).unwrap(),
            json!({"city": "Paris"})
        );
        let r = parse_reply(
            r#"{"name": "get_weather", "parameters": {"city": "Oslo"}}"#,
            ToolFormat::Llama3,
            &tools,
        );
        assert_eq!(r.calls.len(), 1);
        let r = parse_reply(
            r#"{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Rome"}}]}"#,
            ToolFormat::Generic,
            &tools,
        );
        assert_eq!(
            serde_json::from_str::<Value>(&r.calls[0].arguments).unwrap(),
            json!({"city": "Rome"})
        );
        let r = parse_reply(r#"{"response": "Hi!"}"#, ToolFormat::Generic, &tools);
        assert_eq!((r.content.as_deref(), r.calls.len()), (Some("Hi!"), 0));
        // Unknown functions and broken JSON stay text.
        let r = parse_reply(
            "<tool_call>{\"name\": \"other\"}</tool_call>",
            ToolFormat::Hermes,
            &tools,
        );
        assert!(r.calls.is_empty());
        let r = parse_reply("<tool_call>{oops</tool_call>", ToolFormat::Hermes, &tools);
        assert!(r.calls.is_empty());
    }

    #[test]
    fn the_generic_format_describes_tools_in_the_system_turn() {
        let tools = weather(json!("required"));
        let mut messages = vec![
            json!({"role": "user", "content": "Weather in Paris?"}),
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]}),
            json!({"role": "tool", "tool_call_id": "c1", "content": "sunny"}),
        ];
        prepare_messages(&mut messages, Some(&tools), ToolFormat::Generic, false);
        assert_eq!(messages[0]["role"], "system");
        assert!(messages[0]["content"]
            .as_str()
            .unwrap()
            .contains("get_weather"));
        assert_eq!(
            serde_json::from_str::<Value>(messages[2]["content"].as_str().unwrap()).unwrap(),
            json!({"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]})
        );
        assert_eq!(messages[3]["role"], "user");
        assert!(messages[3]["content"].as_str().unwrap().contains("sunny"));
    }

    /// Random logits masked by each format's required-call grammar always
    /// give a reply that parses back into calls of the listed functions.
    #[test]
    fn required_call_grammars_give_parsable_calls() {
        use generate::constraint::Grammars;
        use std::sync::Arc;
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/fixtures/vocab/ggml-vocab-qwen35.gguf"
        );
        let file = gguf_format::GgufFile::open(path).unwrap();
        let tok = Arc::new(tokenizer::Tokenizer::from_gguf(file.header()).unwrap());
        let grammars = Grammars::new(tok.clone()).unwrap();
        let mut tools = parse(
            Some(
                json!([{"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string", "maxLength": 8}},
                "required": ["city"], "additionalProperties": false}}}]),
            ),
            Some(json!("required")),
            Some(false),
        )
        .unwrap()
        .unwrap();
        for format in [ToolFormat::Hermes, ToolFormat::Llama3, ToolFormat::Generic] {
            for seed in 1..=3u64 {
                let grammar = tools.grammar(format, None).unwrap();
                let mut c = grammars.compile(&grammar).unwrap();
                let mut sampler = generate::Sampler::new(generate::SamplerConfig {
                    seed,
                    ..Default::default()
                })
                .unwrap();
                let mut state = seed;
                let mut out = Vec::new();
                loop {
                    let logits: Vec<f32> = (0..tok.vocab_size())
                        .map(|_| {
                            state = state
                                .wrapping_mul(6364136223846793005)
                                .wrapping_add(1442695040888963407);
                            (state >> 40) as f32 / (1u64 << 24) as f32 * 8.0
                        })
                        .collect();
                    let mask = c.mask().unwrap();
                    let t = sampler
                        .sample_allowed(&logits, &out, |t| mask.allows(t))
                        .unwrap();
                    if tok.is_eog(t) {
                        break;
                    }
                    c.accept(t).unwrap();
                    out.push(t);
                    assert!(out.len() < 300, "{format:?}: no end");
                }
                let text = tok.decode(&out);
                let reply = parse_reply(&text, format, &tools);
                assert_eq!(reply.calls.len(), 1, "{format:?}: {text:?}");
                let args: Value = serde_json::from_str(&reply.calls[0].arguments).unwrap();
                assert!(
                    args["city"].as_str().unwrap().chars().count() <= 8,
                    "{text:?}"
                );
            }
        }
        tools.parallel = true;
        assert!(grammars
            .compile(&tools.grammar(ToolFormat::Hermes, None).unwrap())
            .is_ok());
    }
}
