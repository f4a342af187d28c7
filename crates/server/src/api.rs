//! The OpenAI request bodies, checked into what the scheduler runs, and the
//! response bodies.
//!
//! Unknown fields are refused: a parameter the server does not implement is
//! a 400 naming it, never silently ignored. (serde's `deny_unknown_fields`
//! does not work through `flatten`, so [`parse`] checks the keys itself.)

use std::collections::BTreeMap;

use generate::constraint::Grammar;
use generate::SamplerConfig;
use serde::Deserialize;
use serde_json::{json, Value};

/// A request the client got wrong: answered with 400 and this message.
#[derive(Debug)]
pub(crate) struct BadRequest {
    pub message: String,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl BadRequest {
    pub fn new(message: impl Into<String>) -> Self {
        BadRequest {
            message: message.into(),
            param: None,
            code: None,
        }
    }

    pub fn param(param: &'static str, message: impl Into<String>) -> Self {
        BadRequest {
            message: message.into(),
            param: Some(param),
            code: None,
        }
    }
}

/// `stop`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Stop {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The sampling parameters both endpoints share.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Sampling {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// llama.cpp's extensions.
    pub top_k: Option<u64>,
    pub min_p: Option<f64>,
    pub repeat_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub logit_bias: Option<BTreeMap<String, f64>>,
    pub seed: Option<i64>,
}

/// Keys of [`Sampling`].
const SAMPLING_KEYS: &[&str] = &[
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "seed",
];

/// A request body type and the keys it knows.
pub(crate) trait Body: serde::de::DeserializeOwned {
    /// Keys besides the sampling parameters.
    const KEYS: &'static [&'static str];
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatRequest {
    #[allow(dead_code)]
    pub model: Option<String>,
    pub messages: Vec<Value>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub n: Option<u64>,
    pub stop: Option<Stop>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u64>,
    pub response_format: Option<Value>,
    /// llama.cpp's extension: a Lark or GBNF grammar the reply must follow.
    pub grammar: Option<String>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    #[allow(dead_code)]
    pub user: Option<String>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

/// `prompt` of `/v1/completions`: text or token ids, alone or in a list of one.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

impl Body for ChatRequest {
    const KEYS: &'static [&'static str] = &[
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "stop",
        "stream",
        "stream_options",
        "logprobs",
        "top_logprobs",
        "response_format",
        "grammar",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "user",
    ];
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub(crate) struct CompletionRequest {
    #[allow(dead_code)]
    pub model: Option<String>,
    pub prompt: PromptInput,
    pub max_tokens: Option<u64>,
    pub n: Option<u64>,
    pub best_of: Option<u64>,
    pub stop: Option<Stop>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub logprobs: Option<u64>,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
    /// llama.cpp's extension: a Lark or GBNF grammar the text must follow.
    pub grammar: Option<String>,
    #[allow(dead_code)]
    pub user: Option<String>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

impl Body for CompletionRequest {
    const KEYS: &'static [&'static str] = &[
        "model",
        "prompt",
        "max_tokens",
        "n",
        "best_of",
        "stop",
        "stream",
        "stream_options",
        "logprobs",
        "echo",
        "suffix",
        "grammar",
        "user",
    ];
}

/// What the scheduler needs to run a request, checked.
#[derive(Clone, Debug)]
pub(crate) struct GenParams {
    /// Most tokens to generate (`None`: until the context is full).
    pub max_tokens: Option<usize>,
    pub sampler: SamplerConfig,
    pub stop: Vec<String>,
    /// With logprobs: how many alternatives per token.
    pub top_logprobs: Option<usize>,
    /// Control tokens rendered in the text (gpt-oss's harmony markers, which
    /// a chat reply is parsed by).
    pub special: bool,
}

/// What `response_format` and `grammar` ask of the output.
#[derive(Debug, Default)]
pub(crate) struct OutputFormat {
    /// The grammar the output must follow (`None`: free text).
    pub grammar: Option<Grammar>,
    /// With `json_schema`: the schema (a tool-calling reply's `response` follows it).
    pub schema: Option<Value>,
}

/// Checks `response_format` (`text`, `json_object`, `json_schema`) and
/// `grammar` (Lark or GBNF), of which at most one may constrain the output.
pub(crate) fn output_format(
    response_format: Option<&Value>,
    grammar: Option<&str>,
) -> Result<OutputFormat, BadRequest> {
    let param = |m: String| BadRequest::param("response_format", m);
    let mut out = OutputFormat::default();
    if let Some(format) = response_format {
        let Some(obj) = format.as_object() else {
            return Err(param("response_format must be an object".into()));
        };
        match obj.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => out.grammar = Some(Grammar::JsonObject),
            Some("json_schema") => {
                let Some(spec) = obj.get("json_schema").and_then(Value::as_object) else {
                    return Err(param(
                        "response_format json_schema needs a \"json_schema\" object".into(),
                    ));
                };
                let schema = match spec.get("schema") {
                    None => serde_json::json!({}),
                    Some(s @ (Value::Object(_) | Value::Bool(_))) => s.clone(),
                    Some(_) => {
                        return Err(param(
                            "json_schema.schema must be a JSON Schema object".into(),
                        ))
                    }
                };
                let strict = match spec.get("strict") {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err(param("json_schema.strict must be a boolean".into())),
                };
                out.schema = Some(schema.clone());
                out.grammar = Some(Grammar::JsonSchema { schema, strict });
            }
            Some(other) => {
                return Err(param(format!(
                    "response_format type {other:?} is not one of text, json_object, json_schema"
                )))
            }
            None => return Err(param("response_format needs a \"type\"".into())),
        }
    }
    if let Some(text) = grammar {
        if out.grammar.is_some() {
            return Err(BadRequest::param(
                "grammar",
                "grammar and a JSON response_format cannot be combined",
            ));
        }
        if text.trim().is_empty() {
            return Err(BadRequest::param("grammar", "grammar is empty"));
        }
        out.grammar = Some(Grammar::from_text(text));
    }
    Ok(out)
}

/// Parses a JSON body: malformed JSON, a body that is not an object, an
/// unknown key or a value of the wrong type is a 400.
pub(crate) fn parse<T: Body>(body: &[u8]) -> Result<T, BadRequest> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| BadRequest::new(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(map) = &value else {
        return Err(BadRequest::new("the body must be a JSON object"));
    };
    if let Some(key) = map
        .keys()
        .find(|k| !T::KEYS.contains(&k.as_str()) && !SAMPLING_KEYS.contains(&k.as_str()))
    {
        return Err(BadRequest {
            message: format!("unknown parameter `{key}`"),
            param: None,
            code: Some("unknown_parameter"),
        });
    }
    serde_json::from_value(value).map_err(|e| BadRequest::new(format!("invalid request: {e}")))
}

fn check_range(name: &'static str, v: Option<f64>, lo: f64, hi: f64) -> Result<(), BadRequest> {
    match v {
        Some(x) if !(x >= lo && x <= hi) => Err(BadRequest::param(
            name,
            format!("{name} {x} is out of range: expected a number in [{lo}, {hi}]"),
        )),
        _ => Ok(()),
    }
}

pub(crate) fn check_n(n: Option<u64>) -> Result<(), BadRequest> {
    match n {
        None | Some(1) => Ok(()),
        Some(n) => Err(BadRequest::param(
            "n",
            format!("n = {n} is not supported: only n = 1"),
        )),
    }
}

pub(crate) fn check_max_tokens(
    name: &'static str,
    v: Option<u64>,
) -> Result<Option<usize>, BadRequest> {
    match v {
        Some(0) => Err(BadRequest::param(
            name,
            format!("{name} must be at least 1"),
        )),
        Some(n) => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
        None => Ok(None),
    }
}

pub(crate) fn stops(stop: Option<Stop>) -> Result<Vec<String>, BadRequest> {
    let stops = match stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stops.len() > 16 {
        return Err(BadRequest::param("stop", "at most 16 stop strings"));
    }
    if stops.iter().any(String::is_empty) {
        return Err(BadRequest::param("stop", "stop strings must not be empty"));
    }
    Ok(stops)
}

impl Sampling {
    /// The sampler chain: llama.cpp's defaults (temperature 0.8, top-k 40,
    /// top-p 0.95, min-p 0.05) with the request's values over them; a random
    /// seed unless one is given.
    pub fn config(&self, n_vocab: usize) -> Result<SamplerConfig, BadRequest> {
        check_range("temperature", self.temperature, 0.0, 2.0)?;
        check_range("top_p", self.top_p, f64::MIN_POSITIVE, 1.0)?;
        check_range("min_p", self.min_p, 0.0, 1.0)?;
        check_range("repeat_penalty", self.repeat_penalty, 0.0, 10.0)?;
        check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        let mut c = SamplerConfig::default();
        if let Some(t) = self.temperature {
            c.temperature = t as f32;
        }
        if let Some(p) = self.top_p {
            c.top_p = p as f32;
        }
        if let Some(k) = self.top_k {
            c.top_k = usize::try_from(k).unwrap_or(usize::MAX);
        }
        if let Some(p) = self.min_p {
            c.min_p = p as f32;
        }
        if let Some(r) = self.repeat_penalty {
            c.repeat_penalty = r as f32;
        }
        if let Some(p) = self.presence_penalty {
            c.presence_penalty = p as f32;
        }
        if let Some(f) = self.frequency_penalty {
            c.frequency_penalty = f as f32;
        }
        for (token, &bias) in self.logit_bias.iter().flatten() {
            let id: u32 = token
                .parse()
                .ok()
                .filter(|&id| (id as usize) < n_vocab)
                .ok_or_else(|| {
                    BadRequest::param(
                        "logit_bias",
                        format!("logit_bias key {token:?} is not a token id below {n_vocab}"),
                    )
                })?;
            check_range("logit_bias", Some(bias), -100.0, 100.0)?;
            // -100 bans the token, as OpenAI documents.
            let bias = if bias <= -100.0 {
                f32::NEG_INFINITY
            } else {
                bias as f32
            };
            c.logit_bias.push((id, bias));
        }
        c.seed = match self.seed {
            Some(s) => s as u64,
            None => random_seed(),
        };
        c.validate().map_err(|e| BadRequest::new(e.to_string()))?;
        Ok(c)
    }
}

/// A seed that differs between requests.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

/// Chat message content: a string, or a list of text parts (joined).
pub(crate) fn normalize_messages(
    messages: Vec<Value>,
) -> Result<Vec<tokenizer::chat::Message>, BadRequest> {
    if messages.is_empty() {
        return Err(BadRequest::param("messages", "messages must not be empty"));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, mut m)| {
            if let Some(Value::Array(parts)) = m.get("content") {
                let mut text = String::new();
                for part in parts {
                    match (part.get("type").and_then(Value::as_str), part.get("text")) {
                        (Some("text"), Some(Value::String(t))) => text.push_str(t),
                        _ => {
                            return Err(BadRequest::param(
                                "messages",
                                format!("messages[{i}]: only text content parts are supported"),
                            ))
                        }
                    }
                }
                m["content"] = Value::String(text);
            }
            let msg: tokenizer::chat::Message = serde_json::from_value(m)
                .map_err(|e| BadRequest::param("messages", format!("messages[{i}]: {e}")))?;
            if !matches!(
                msg.role.as_str(),
                "system" | "developer" | "user" | "assistant" | "tool"
            ) {
                return Err(BadRequest::param(
                    "messages",
                    format!("messages[{i}]: unknown role {:?}", msg.role),
                ));
            }
            Ok(msg)
        })
        .collect()
}

/// One token's log-probability and its most likely alternatives.
#[derive(Clone, Debug)]
pub(crate) struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

/// Why a request ended, in OpenAI's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Finish {
    Stop,
    Length,
    ToolCalls,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::ToolCalls => "tool_calls",
        }
    }
}

/// Token counts of a finished request.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Usage {
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    pub completion_tokens: usize,
}

impl Usage {
    pub fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        })
    }
}

/// A token's text for logprobs: its bytes, lossily as UTF-8.
fn token_entry(tok: &tokenizer::Tokenizer, id: u32) -> (String, Vec<u8>) {
    let bytes = tok.token_to_piece(id);
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

/// The chat API's `logprobs.content` entries.
pub(crate) fn chat_logprobs(tok: &tokenizer::Tokenizer, lps: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = lps
        .iter()
        .map(|lp| {
            let (text, bytes) = token_entry(tok, lp.token);
            let top: Vec<Value> = lp
                .top
                .iter()
                .map(|&(id, l)| {
                    let (text, bytes) = token_entry(tok, id);
                    json!({"token": text, "logprob": l, "bytes": bytes})
                })
                .collect();
            json!({"token": text, "logprob": lp.logprob, "bytes": bytes, "top_logprobs": top})
        })
        .collect();
    json!({ "content": content })
}

/// The completions API's `logprobs` object; `offset` is the text length before these tokens.
pub(crate) fn completion_logprobs(
    tok: &tokenizer::Tokenizer,
    lps: &[TokenLogprob],
    mut offset: usize,
) -> Value {
    let mut tokens = Vec::new();
    let mut token_logprobs = Vec::new();
    let mut top_logprobs = Vec::new();
    let mut text_offset = Vec::new();
    for lp in lps {
        let (text, _) = token_entry(tok, lp.token);
        text_offset.push(offset);
        offset += text.len();
        tokens.push(text);
        token_logprobs.push(lp.logprob);
        let top: serde_json::Map<String, Value> = lp
            .top
            .iter()
            .map(|&(id, l)| (token_entry(tok, id).0, json!(l)))
            .collect();
        top_logprobs.push(Value::Object(top));
    }
    json!({
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_and_bad_ranges_are_refused() {
        let e = parse::<ChatRequest>(br#"{"messages":[],"frobnicate":1}"#).unwrap_err();
        assert!(e.message.contains("frobnicate"), "{}", e.message);
        let r: ChatRequest =
            parse(br#"{"messages":[{"role":"user","content":"hi"}],"temperature":3}"#).unwrap();
        let e = r.sampling.config(100).unwrap_err();
        assert!(e.message.contains("temperature"), "{}", e.message);
        assert!(check_n(Some(2)).is_err());
        assert!(check_max_tokens("max_tokens", Some(0)).is_err());
    }

    #[test]
    fn content_parts_are_joined() {
        let m = normalize_messages(vec![json!({"role":"user","content":[
            {"type":"text","text":"a"},{"type":"text","text":"b"}]})])
        .unwrap();
        assert_eq!(m[0].content, "ab");
    }
}
