//! The HTTP side: routes, authentication, request checking, and responses —
//! whole JSON bodies or server-sent events — built from a job's events.

use std::convert::Infallible;
use std::future::IntoFuture;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::api::{self, BadRequest, Finish, GenParams, PromptInput, TokenLogprob, Usage};
use crate::scheduler::{Event, Job, ModelInfo, Refused, Shared};
use crate::tool_stream::{CallStream, Delta};
use crate::tools::{self, ToolFormat, Tools};
use crate::ServerError;
use generate::constraint::{Constraint, Grammar};

/// An error answered as OpenAI's `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<&'static str>,
    code: Option<&'static str>,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl From<BadRequest> for ApiError {
    fn from(e: BadRequest) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: e.message,
            kind: "invalid_request_error",
            param: e.param,
            code: e.code,
            retry_after: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, json_body(&self.body())).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

fn json_body(v: &Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).expect("JSON values serialize"),
    )
        .into_response()
}

fn bad(message: impl Into<String>) -> ApiError {
    BadRequest::new(message).into()
}

/// Serves until shutdown begins (or Ctrl-C/SIGTERM with `handle_signals`),
/// then stops accepting and lets open responses finish.
pub(crate) fn run(shared: Arc<Shared>, listener: std::net::TcpListener) -> Result<(), ServerError> {
    let io = |context: &str| {
        let context = context.to_string();
        move |source| ServerError::Io { context, source }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("starting the async runtime"))?;
    runtime.block_on(async move {
        listener.set_nonblocking(true).map_err(io("listener"))?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(io("listener"))?;
        let app = router(shared.clone());
        let stop = {
            let shared = shared.clone();
            let mut begun = shared.shutdown_signal();
            async move {
                tokio::select! {
                    _ = begun.wait_for(|&v| v) => {}
                    _ = signals(), if shared.opts.handle_signals => {
                        tracing::info!("signal received");
                        shared.begin_shutdown();
                    }
                }
            }
        };
        let serve = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .into_future();
        // Open responses end by the scheduler's grace deadline; a client that
        // keeps a connection open past it is not waited for.
        let mut begun = shared.shutdown_signal();
        let grace = shared.opts.shutdown_grace + Duration::from_secs(5);
        tokio::select! {
            r = serve => r.map_err(io("serving")),
            _ = async { let _ = begun.wait_for(|&v| v).await; tokio::time::sleep(grace).await } => {
                tracing::warn!("connections still open after the grace period: closing");
                Ok(())
            }
        }
    })
}

async fn signals() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(shared)
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found_error", "no such endpoint")
        .with_code("not_found")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method not allowed on this endpoint",
    )
}

/// With `--api-key`: `Authorization: Bearer KEY`, compared in constant time.
fn authorize(shared: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &shared.opts.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let same = given.len() == key.len()
        && given
            .bytes()
            .zip(key.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid or missing API key (Authorization: Bearer KEY)",
        )
        .with_code("invalid_api_key"))
    }
}

fn loaded(shared: &Shared) -> Result<&ModelInfo, ApiError> {
    shared.model.get().ok_or_else(|| {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "the model is loading",
        )
        .with_code("model_loading");
        e.retry_after = Some(1);
        e
    })
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    if shared.model.get().is_some() {
        json_body(&json!({"status": "ok"}))
    } else {
        let mut r = json_body(&json!({"status": "loading"}));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        r
    }
}

async fn models(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers)?;
    Ok(json_body(&json!({
        "object": "list",
        "data": [{
            "id": shared.opts.model_name,
            "object": "model",
            "created": now(),
            "owned_by": "strata",
        }],
    })))
}

async fn metrics(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers)?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        shared.metrics.render(),
    )
        .into_response())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// A request id: a prefix and a number unique in this process.
fn request_id(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{prefix}-{}", NEXT.fetch_add(1, Relaxed))
}

/// Counts the request, and the 4xx answers.
fn counted(shared: &Shared, result: Result<Response, ApiError>) -> Response {
    shared.metrics.requests.fetch_add(1, Relaxed);
    let response = result.unwrap_or_else(IntoResponse::into_response);
    if response.status().is_client_error() {
        shared.metrics.requests_invalid.fetch_add(1, Relaxed);
    }
    response
}

/// Checks the prompt's length and queues the job; the job's events come back on the receiver.
fn submit(
    shared: &Shared,
    info: &ModelInfo,
    id: &str,
    prompt: Vec<u32>,
    params: GenParams,
    constraint: Option<Constraint>,
) -> Result<mpsc::UnboundedReceiver<Event>, ApiError> {
    if prompt.is_empty() {
        return Err(bad("the prompt is empty (no tokens)"));
    }
    if prompt.len() >= info.n_ctx {
        return Err(ApiError::from(BadRequest {
            message: format!(
                "the prompt has {} tokens but the context holds {} per request (--ctx): it must be shorter than the context",
                prompt.len(),
                info.n_ctx
            ),
            param: Some("messages"),
            code: Some("context_length_exceeded"),
        }));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let job = Job {
        id: id.to_string(),
        prompt,
        params,
        constraint,
        events: tx,
    };
    match shared.submit(job) {
        Ok(()) => Ok(rx),
        Err(refused) => {
            shared.metrics.requests_rejected.fetch_add(1, Relaxed);
            let message = match refused {
                Refused::QueueFull => "the server is busy: the queue is full, retry later",
                Refused::ShuttingDown => "the server is shutting down",
            };
            let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
                .with_code("unavailable");
            e.retry_after = Some(1);
            Err(e)
        }
    }
}

/// A job's whole result.
struct Collected {
    text: String,
    logprobs: Vec<TokenLogprob>,
    finish: Finish,
    usage: Usage,
}

async fn collect(mut rx: mpsc::UnboundedReceiver<Event>) -> Result<Collected, ApiError> {
    let mut text = String::new();
    let mut logprobs = Vec::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Text {
                text: t,
                logprobs: l,
            } => {
                text.push_str(&t);
                logprobs.extend(l);
            }
            Event::Done { finish, usage } => {
                return Ok(Collected {
                    text,
                    logprobs,
                    finish,
                    usage,
                })
            }
            Event::Error(message) => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    message,
                ))
            }
            Event::Cancelled(message) => {
                return Err(
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
                        .with_code("unavailable"),
                )
            }
        }
    }
    Err(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "generation ended without a result",
    ))
}

fn sse(v: &Value) -> String {
    format!("data: {v}\n\n")
}

/// Server-sent events: `first` (if any), then one event per job event as
/// `chunk` makes them, then `data: [DONE]`.
fn sse_response(
    first: Option<String>,
    rx: mpsc::UnboundedReceiver<Event>,
    chunk: impl Fn(Event) -> (String, bool) + Send + 'static,
) -> Response {
    let events = futures_util::stream::unfold(Some((rx, chunk)), |state| async move {
        let (mut rx, chunk) = state?;
        let event = rx.recv().await?;
        let (text, last) = chunk(event);
        Some((text, if last { None } else { Some((rx, chunk)) }))
    })
    .filter(|s| std::future::ready(!s.is_empty()));
    let stream = futures_util::stream::iter(first)
        .chain(events)
        .map(|s| Ok::<_, Infallible>(Bytes::from(s)));
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let result = match chat_response(&shared, &headers, &body) {
        Ok(Reply::Stream(r)) => Ok(r),
        Ok(Reply::Whole(rx, finish)) => collect(rx).await.map(finish),
        Err(e) => Err(e),
    };
    counted(&shared, result)
}

/// A response streamed, or one built when the job ends.
enum Reply {
    Stream(Response),
    Whole(
        mpsc::UnboundedReceiver<Event>,
        Box<dyn FnOnce(Collected) -> Response + Send>,
    ),
}

fn chat_response(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Reply, ApiError> {
    authorize(shared, headers)?;
    let info = loaded(shared)?;
    let req: api::ChatRequest = api::parse(body)?;
    api::check_n(req.n)?;
    let max_tokens = match req.max_completion_tokens {
        Some(_) => api::check_max_tokens("max_completion_tokens", req.max_completion_tokens)?,
        None => api::check_max_tokens("max_tokens", req.max_tokens)?,
    };
    let output = api::output_format(req.response_format.as_ref(), req.grammar.as_deref())?;
    let tools = tools::parse(req.tools, req.tool_choice, req.parallel_tool_calls)?;
    if tools.is_some() && req.grammar.is_some() {
        return Err(bad("grammar cannot be combined with tools"));
    }
    let top_logprobs = match (req.logprobs, req.top_logprobs) {
        (_, Some(n)) if n > 20 => {
            return Err(bad(format!("top_logprobs {n} is out of range: at most 20")))
        }
        (Some(true), n) => Some(n.unwrap_or(0) as usize),
        (_, Some(_)) => return Err(bad("top_logprobs needs logprobs: true")),
        _ => None,
    };
    let include_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    if req.stream_options.is_some() && req.stream != Some(true) {
        return Err(bad("stream_options needs stream: true"));
    }
    let format = info.tool_format;
    // gpt-oss: the reply's channels are read from its control tokens.
    let harmony = format == ToolFormat::Harmony;
    let params = GenParams {
        max_tokens,
        sampler: req.sampling.config(info.n_vocab)?,
        stop: api::stops(req.stop)?,
        top_logprobs,
        special: harmony,
    };
    let mut messages = req.messages;
    tools::prepare_messages(
        &mut messages,
        tools.as_ref(),
        format,
        output.schema.is_some(),
    );
    let mut ctx = tokenizer::chat::ChatContext {
        messages: api::normalize_messages(messages)?,
        ..Default::default()
    };
    if let (Some(tools), false) = (&tools, format == ToolFormat::Generic) {
        // The template's `tools` variable, as the template engine holds values.
        let vars: tokenizer::chat::ChatContext =
            serde_json::from_value(json!({"messages": [], "tools": tools.raw}))
                .map_err(|e| bad(format!("tools: {e}")))?;
        ctx.extra = vars.extra;
    }
    // The grammar: a tool call's when one is required (or the generic
    // format's reply), else the response format's.
    let grammar = match &tools {
        Some(t) => t.grammar(format, output.schema.as_ref()).or(output.grammar),
        None => output.grammar,
    };
    let constraint = compile(info, grammar.as_ref())?;
    let prompt = generate::tokenize_chat(&info.tokenizer, &info.template, ctx)
        .map_err(|e| bad(format!("the chat template failed on these messages: {e}")))?;
    let id = request_id("chatcmpl");
    let rx = submit(shared, info, &id, prompt, params, constraint)?;
    let created = now();
    let model = shared.opts.model_name.clone();
    let with_logprobs = top_logprobs.is_some();
    if req.stream == Some(true) {
        let call_id = id.clone();
        let chunk = move |delta: Value, finish: Option<&str>, logprobs: Value| {
            let mut c = json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
            });
            if include_usage {
                c["usage"] = Value::Null;
            }
            c
        };
        let first = sse(&chunk(
            json!({"role": "assistant", "content": ""}),
            None,
            Value::Null,
        ));
        let shared = shared.clone();
        // With tools (but for gpt-oss) the reply is read as it comes: text
        // as text, each call's arguments token by token.
        let calls = std::sync::Mutex::new(
            tools
                .as_ref()
                .filter(|_| !harmony)
                .map(|t| CallStream::new(format, t.names())),
        );
        let call_chunks = {
            let call_id = call_id.clone();
            move |deltas: Vec<Delta>,
                  lp: &mut Value,
                  chunk: &dyn Fn(Value, Option<&str>, Value) -> Value| {
                let mut out = String::new();
                for d in deltas {
                    let delta = match d {
                        Delta::Content(t) => json!({"content": t}),
                        Delta::Call { index, name } => json!({"tool_calls": [{
                            "index": index, "id": tool_call_id(&call_id, index), "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }]}),
                        Delta::Args { index, text } => {
                            json!({"tool_calls": [{"index": index, "function": {"arguments": text}}]})
                        }
                    };
                    out.push_str(&sse(&chunk(delta, None, std::mem::take(lp))));
                }
                out
            }
        };
        // gpt-oss's reply is read whole before it is known to be text or
        // calls: its text is held here and sent at the end.
        let held = std::sync::Mutex::new(String::new());
        let on_event = move |event: Event| match event {
            Event::Text { text, logprobs } => {
                let info = shared.model.get().expect("loaded");
                let mut lp = if with_logprobs {
                    api::chat_logprobs(&info.tokenizer, &logprobs)
                } else {
                    Value::Null
                };
                if let Some(stream) = calls.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                    let mut out = call_chunks(stream.push(&text), &mut lp, &chunk);
                    if out.is_empty() && with_logprobs {
                        out = sse(&chunk(json!({"content": ""}), None, lp));
                    }
                    return (out, false);
                }
                let text = if harmony {
                    held.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_str(&text);
                    if !with_logprobs {
                        return (String::new(), false);
                    }
                    String::new()
                } else {
                    text
                };
                (sse(&chunk(json!({"content": text}), None, lp)), false)
            }
            Event::Done { mut finish, usage } => {
                let mut out = String::new();
                if let Some(stream) = calls.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                    out.push_str(&call_chunks(stream.finish(), &mut Value::Null, &chunk));
                    if stream.calls() > 0 && finish == Finish::Stop {
                        finish = Finish::ToolCalls;
                    }
                } else if harmony {
                    let text = std::mem::take(&mut *held.lock().unwrap_or_else(|e| e.into_inner()));
                    let (message, calls) =
                        reply_message(&text, format, tools.as_ref(), &call_id, finish);
                    if calls {
                        finish = Finish::ToolCalls;
                        let mut delta = message;
                        if let Some(Value::Array(calls)) = delta.get_mut("tool_calls") {
                            for (i, c) in calls.iter_mut().enumerate() {
                                c["index"] = json!(i);
                            }
                        }
                        delta.as_object_mut().expect("an object").remove("role");
                        out.push_str(&sse(&chunk(delta, None, Value::Null)));
                    } else {
                        // The reasoning (harmony), then the reply's text.
                        let mut delta = json!({});
                        for key in ["reasoning_content", "content"] {
                            if let Some(t) = message[key].as_str().filter(|t| !t.is_empty()) {
                                delta[key] = json!(t);
                            }
                        }
                        if delta.as_object().is_some_and(|d| !d.is_empty()) {
                            out.push_str(&sse(&chunk(delta, None, Value::Null)));
                        }
                    }
                }
                out.push_str(&sse(&chunk(json!({}), Some(finish.as_str()), Value::Null)));
                if include_usage {
                    let mut u = chunk(json!({}), None, Value::Null);
                    u["choices"] = json!([]);
                    u["usage"] = usage.to_json();
                    out.push_str(&sse(&u));
                }
                out.push_str("data: [DONE]\n\n");
                (out, true)
            }
            Event::Error(message) | Event::Cancelled(message) => (
                sse(
                    &ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
                        .body(),
                ),
                true,
            ),
        };
        return Ok(Reply::Stream(sse_response(Some(first), rx, on_event)));
    }
    let shared = shared.clone();
    Ok(Reply::Whole(
        rx,
        Box::new(move |done: Collected| {
            let info = shared.model.get().expect("loaded");
            let logprobs = if with_logprobs {
                api::chat_logprobs(&info.tokenizer, &done.logprobs)
            } else {
                Value::Null
            };
            let (message, finish) = if tools.is_some() || harmony {
                let (message, calls) =
                    reply_message(&done.text, format, tools.as_ref(), &id, done.finish);
                (
                    message,
                    if calls {
                        Finish::ToolCalls
                    } else {
                        done.finish
                    },
                )
            } else {
                (
                    json!({"role": "assistant", "content": done.text}),
                    done.finish,
                )
            };
            json_body(&json!({
                "id": id, "object": "chat.completion", "created": created, "model": model,
                "choices": [{
                    "index": 0,
                    "message": message,
                    "logprobs": logprobs,
                    "finish_reason": finish.as_str(),
                }],
                "usage": done.usage.to_json(),
            }))
        }),
    ))
}

/// Compiles the output's grammar (a bad grammar or schema is a 400).
fn compile(info: &ModelInfo, grammar: Option<&Grammar>) -> Result<Option<Constraint>, ApiError> {
    let Some(grammar) = grammar else {
        return Ok(None);
    };
    let Some(grammars) = &info.grammars else {
        return Err(bad(
            "constrained output (response_format, grammar, required tool calls) is unavailable for this model's vocabulary",
        ));
    };
    grammars
        .compile(grammar)
        .map(Some)
        .map_err(|e| bad(format!("cannot use this grammar or schema: {e}")))
}

/// The assistant message of a reply given tools (or of any gpt-oss
/// reply): its calls parsed out (only from a reply that ended by itself, not
/// one cut at max_tokens), and whether there were any. A harmony reply's
/// text is its final channel, its analysis channel `reasoning_content`.
fn reply_message(
    text: &str,
    format: ToolFormat,
    tools: Option<&Tools>,
    id: &str,
    finish: Finish,
) -> (Value, bool) {
    let harmony = (format == ToolFormat::Harmony).then(|| generate::harmony::parse_reply(text));
    let reply = match tools {
        Some(tools) if finish == Finish::Stop => tools::parse_reply(text, format, tools),
        _ => tools::Reply {
            content: Some(match &harmony {
                Some(h) => h.content.clone(),
                None => text.to_string(),
            }),
            calls: Vec::new(),
        },
    };
    let with_reasoning = |mut m: Value| {
        if let Some(r) = harmony.as_ref().and_then(|h| h.reasoning.as_ref()) {
            m["reasoning_content"] = json!(r);
        }
        m
    };
    if reply.calls.is_empty() {
        return (
            with_reasoning(
                json!({"role": "assistant", "content": reply.content.unwrap_or_default()}),
            ),
            false,
        );
    }
    let calls: Vec<Value> = reply
        .calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({
                "id": tool_call_id(id, i),
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments},
            })
        })
        .collect();
    (
        with_reasoning(json!({"role": "assistant", "content": reply.content, "tool_calls": calls})),
        true,
    )
}

/// The id of call `i` of the reply `id`.
fn tool_call_id(id: &str, i: usize) -> String {
    format!("call_{}_{i}", id.rsplit('-').next().unwrap_or(id))
}

async fn completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = match completion_response(&shared, &headers, &body) {
        Ok(Reply::Stream(r)) => Ok(r),
        Ok(Reply::Whole(rx, finish)) => collect(rx).await.map(finish),
        Err(e) => Err(e),
    };
    counted(&shared, result)
}

fn completion_response(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Reply, ApiError> {
    authorize(shared, headers)?;
    let info = loaded(shared)?;
    let req: api::CompletionRequest = api::parse(body)?;
    api::check_n(req.n)?;
    if req.best_of.is_some_and(|b| b != 1) {
        return Err(bad("best_of is not supported: only 1"));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(bad("suffix is not supported"));
    }
    let max_tokens = api::check_max_tokens("max_tokens", req.max_tokens)?.or(Some(16));
    let top_logprobs = match req.logprobs {
        Some(n) if n > 20 => return Err(bad(format!("logprobs {n} is out of range: at most 20"))),
        n => n.map(|n| n as usize),
    };
    if req.stream_options.is_some() && req.stream != Some(true) {
        return Err(bad("stream_options needs stream: true"));
    }
    let include_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let echo = req.echo.unwrap_or(false);
    if echo && top_logprobs.is_some() {
        return Err(bad("echo with logprobs is not supported"));
    }
    let tok = &info.tokenizer;
    let one = |n: usize| {
        if n == 1 {
            Ok(())
        } else {
            Err(bad(format!(
                "prompt: {n} prompts given, only one per request is supported"
            )))
        }
    };
    let (prompt, prompt_text) = match req.prompt {
        PromptInput::Text(text) => (encode(tok, &text)?, text),
        PromptInput::Texts(mut texts) => {
            one(texts.len())?;
            let text = texts.pop().expect("one");
            (encode(tok, &text)?, text)
        }
        PromptInput::Tokens(ids) => {
            let text = check_ids(info, &ids)?;
            (ids, text)
        }
        PromptInput::TokenLists(mut lists) => {
            one(lists.len())?;
            let ids = lists.pop().expect("one");
            let text = check_ids(info, &ids)?;
            (ids, text)
        }
    };
    let params = GenParams {
        max_tokens,
        sampler: req.sampling.config(info.n_vocab)?,
        stop: api::stops(req.stop)?,
        top_logprobs,
        special: false,
    };
    let output = api::output_format(None, req.grammar.as_deref())?;
    let constraint = compile(info, output.grammar.as_ref())?;
    let id = request_id("cmpl");
    let rx = submit(shared, info, &id, prompt, params, constraint)?;
    let created = now();
    let model = shared.opts.model_name.clone();
    let echoed = if echo { prompt_text } else { String::new() };
    if req.stream == Some(true) {
        let chunk = move |text: &str, finish: Option<&str>, logprobs: Value| {
            let mut c = json!({
                "id": id, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}],
            });
            if include_usage {
                c["usage"] = Value::Null;
            }
            c
        };
        let first = (!echoed.is_empty()).then(|| sse(&chunk(&echoed, None, Value::Null)));
        let shared = shared.clone();
        let text_offset = std::sync::atomic::AtomicUsize::new(echoed.len());
        let on_event = move |event: Event| match event {
            Event::Text { text, logprobs } => {
                let info = shared.model.get().expect("loaded");
                let at = text_offset.fetch_add(text.len(), Relaxed);
                let lp = if top_logprobs.is_some() {
                    api::completion_logprobs(&info.tokenizer, &logprobs, at)
                } else {
                    Value::Null
                };
                (sse(&chunk(&text, None, lp)), false)
            }
            Event::Done { finish, usage } => {
                let mut out = sse(&chunk("", Some(finish.as_str()), Value::Null));
                if include_usage {
                    let mut u = chunk("", None, Value::Null);
                    u["choices"] = json!([]);
                    u["usage"] = usage.to_json();
                    out.push_str(&sse(&u));
                }
                out.push_str("data: [DONE]\n\n");
                (out, true)
            }
            Event::Error(message) | Event::Cancelled(message) => (
                sse(
                    &ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
                        .body(),
                ),
                true,
            ),
        };
        return Ok(Reply::Stream(sse_response(first, rx, on_event)));
    }
    let shared = shared.clone();
    Ok(Reply::Whole(
        rx,
        Box::new(move |done: Collected| {
            let info = shared.model.get().expect("loaded");
            let logprobs = if top_logprobs.is_some() {
                api::completion_logprobs(&info.tokenizer, &done.logprobs, echoed.len())
            } else {
                Value::Null
            };
            json_body(&json!({
                "id": id, "object": "text_completion", "created": created, "model": model,
                "choices": [{
                    "index": 0,
                    "text": echoed + &done.text,
                    "logprobs": logprobs,
                    "finish_reason": done.finish.as_str(),
                }],
                "usage": done.usage.to_json(),
            }))
        }),
    ))
}

/// A text prompt's tokens, as llama.cpp tokenizes a prompt.
fn encode(tok: &tokenizer::Tokenizer, text: &str) -> Result<Vec<u32>, ApiError> {
    tok.encode(text, true, true)
        .map_err(|e| bad(format!("cannot tokenize the prompt: {e}")))
}

/// Checks token ids against the vocabulary; returns their text.
fn check_ids(info: &ModelInfo, ids: &[u32]) -> Result<String, ApiError> {
    if let Some((i, &id)) = ids
        .iter()
        .enumerate()
        .find(|(_, &id)| id as usize >= info.n_vocab)
    {
        return Err(bad(format!(
            "prompt token {i} is id {id}, outside the vocabulary of {}",
            info.n_vocab
        )));
    }
    Ok(info.tokenizer.decode(ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gpt-oss reply (decoded with its control tokens): the final channel
    /// is the content, the analysis channel `reasoning_content`; with tools,
    /// a message to `functions.NAME` is a call.
    #[test]
    fn harmony_replies_become_messages() {
        let text = "<|channel|>analysis<|message|>Greet back.<|end|>\
                    <|start|>assistant<|channel|>final<|message|>Hello!";
        let (m, calls) = reply_message(text, ToolFormat::Harmony, None, "chatcmpl-1", Finish::Stop);
        assert!(!calls);
        assert_eq!(m["content"], "Hello!");
        assert_eq!(m["reasoning_content"], "Greet back.");
        // Cut at max_tokens inside the reasoning: no content yet.
        let (m, _) = reply_message(
            "<|channel|>analysis<|message|>Greet",
            ToolFormat::Harmony,
            None,
            "chatcmpl-1",
            Finish::Length,
        );
        assert_eq!(m["content"], "");
        assert_eq!(m["reasoning_content"], "Greet");

        let tools = tools::parse(
            Some(
                json!([{"type": "function", "function": {"name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]),
            ),
            None,
            None,
        )
        .unwrap()
        .unwrap();
        let text = "<|channel|>analysis<|message|>Need it.<|end|><|start|>assistant \
                    to=functions.get_weather<|channel|>commentary json<|message|>{\"city\": \"Paris\"}";
        let (m, calls) = reply_message(
            text,
            ToolFormat::Harmony,
            Some(&tools),
            "chatcmpl-1",
            Finish::Stop,
        );
        assert!(calls);
        assert_eq!(m["tool_calls"][0]["function"]["name"], "get_weather");
        assert_eq!(
            m["tool_calls"][0]["function"]["arguments"],
            "{\"city\": \"Paris\"}"
        );
        assert_eq!(m["reasoning_content"], "Need it.");
    }
}
