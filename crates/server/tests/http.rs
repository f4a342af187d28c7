//! The endpoints, errors, streaming, batching, cancellation and shutdown.

use std::io::BufReader;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{self, get, metric, post, request};

fn chat_body(extra: Value) -> String {
    let mut body = json!({
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Write one sentence about the sea."}],
        "max_tokens": 24,
        "temperature": 0.8,
        "seed": 42,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body.to_string()
}

/// The error object's shape and its type.
fn error_of(r: &common::Response) -> Value {
    let e = r.json();
    let err = &e["error"];
    assert!(err["message"].is_string(), "{e}");
    assert!(err["type"].is_string(), "{e}");
    assert!(err.get("code").is_some(), "{e}");
    err.clone()
}

#[test]
fn health_models_and_metrics() {
    let addr = common::shared();
    let h = get(addr, "/health");
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
    let m = get(addr, "/v1/models");
    assert_eq!(m.status, 200);
    assert_eq!(m.json()["data"][0]["id"], "smollm2");
    let text = get(addr, "/metrics").body;
    for name in [
        "strata_requests_total",
        "strata_queue_depth",
        "strata_slots_busy",
        "strata_generated_tokens_total",
    ] {
        assert!(
            text.contains(&format!("\n{name} ")),
            "{name} missing from {text}"
        );
    }
    assert_eq!(metric(addr, "strata_slots_total"), 1);
}

#[test]
fn health_is_503_until_the_model_is_loaded() {
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let server = strata_server::Server::start(common::options(), move || {
        rx.recv().ok();
        common::load_default()
    })
    .unwrap();
    let addr = server.addr();
    let h = get(addr, "/health");
    assert_eq!(h.status, 503);
    let r = post(addr, "/v1/chat/completions", &chat_body(json!({})));
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    tx.send(()).unwrap();
    common::wait_healthy(addr);
    server.shutdown().unwrap();
}

#[test]
fn plain_and_streamed_chat_with_one_seed_give_the_same_text() {
    let addr = common::shared();
    let plain = post(addr, "/v1/chat/completions", &chat_body(json!({})));
    assert_eq!(plain.status, 200, "{}", plain.body);
    let p = plain.json();
    assert_eq!(p["object"], "chat.completion");
    let text = p["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!text.is_empty());
    let finish = p["choices"][0]["finish_reason"].as_str().unwrap();
    assert!(finish == "stop" || finish == "length", "{finish}");
    let usage = &p["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 5);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );

    let streamed = post(
        addr,
        "/v1/chat/completions",
        &chat_body(json!({"stream": true, "stream_options": {"include_usage": true}})),
    );
    assert_eq!(streamed.status, 200, "{}", streamed.body);
    assert!(streamed
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let events = streamed.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(joined, text);
    let last_choice = &chunks[chunks.len() - 2]["choices"][0];
    assert_eq!(last_choice["finish_reason"], finish);
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(
        usage_chunk["usage"]["completion_tokens"],
        usage["completion_tokens"]
    );
}

#[test]
fn max_tokens_stop_strings_and_logprobs() {
    let addr = common::shared();
    let r = post(
        addr,
        "/v1/chat/completions",
        &chat_body(json!({"max_tokens": 3, "logprobs": true, "top_logprobs": 2, "temperature": 0})),
    )
    .json();
    assert_eq!(r["choices"][0]["finish_reason"], "length");
    assert_eq!(r["usage"]["completion_tokens"], 3);
    let content = r["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 3);
    for c in content {
        let top = c["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(top[0]["token"], c["token"]);
        assert!(c["logprob"].as_f64().unwrap() <= 0.0);
    }
    // A stop string taken from a greedy reply ends the next one before it.
    let greedy = post(
        addr,
        "/v1/chat/completions",
        &chat_body(json!({"temperature": 0, "max_tokens": 12})),
    )
    .json();
    let text = greedy["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    let words: Vec<&str> = text.split(' ').collect();
    assert!(words.len() >= 3, "{text}");
    let stop = format!(" {}", words[2]);
    let stopped = post(
        addr,
        "/v1/chat/completions",
        &chat_body(json!({"temperature": 0, "max_tokens": 12, "stop": [stop]})),
    )
    .json();
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    let cut = stopped["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert!(
        text.starts_with(cut) && !cut.contains(&stop),
        "{cut:?} from {text:?}"
    );
}

#[test]
fn completions_plain_and_streamed() {
    let addr = common::shared();
    let body = json!({"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0, "logprobs": 1});
    let plain = post(addr, "/v1/completions", &body.to_string());
    assert_eq!(plain.status, 200, "{}", plain.body);
    let p = plain.json();
    assert_eq!(p["object"], "text_completion");
    let text = p["choices"][0]["text"].as_str().unwrap();
    assert_eq!(
        p["choices"][0]["logprobs"]["tokens"]
            .as_array()
            .unwrap()
            .len(),
        8
    );
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let streamed = post(addr, "/v1/completions", &sbody.to_string());
    let events = streamed.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let joined: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(joined, text);
    // Token ids work as a prompt too, and echo puts the prompt first.
    let ids = post(
        addr,
        "/v1/completions",
        &json!({"prompt": [504, 3575], "max_tokens": 2, "echo": true}).to_string(),
    );
    assert_eq!(ids.status, 200, "{}", ids.body);
}

#[test]
fn bad_requests_are_openai_errors() {
    let addr = common::shared();
    let cases: Vec<(&str, String, &str)> = vec![
        ("/v1/chat/completions", "{not json".into(), "JSON"),
        ("/v1/chat/completions", "[1, 2]".into(), "object"),
        (
            "/v1/chat/completions",
            chat_body(json!({"frobnicate": true})),
            "frobnicate",
        ),
        (
            "/v1/chat/completions",
            chat_body(json!({"temperature": 7})),
            "temperature",
        ),
        (
            "/v1/chat/completions",
            chat_body(json!({"top_p": 0})),
            "top_p",
        ),
        ("/v1/chat/completions", chat_body(json!({"n": 2})), "n = 2"),
        (
            "/v1/chat/completions",
            chat_body(json!({"max_tokens": 0})),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            chat_body(json!({"max_tokens": "many"})),
            "invalid",
        ),
        (
            "/v1/chat/completions",
            chat_body(json!({"top_logprobs": 50, "logprobs": true})),
            "top_logprobs",
        ),
        (
            "/v1/chat/completions",
            chat_body(json!({"messages": []})),
            "messages",
        ),
        (
            "/v1/chat/completions",
            chat_body(json!({"messages": [{"role": "wizard", "content": "x"}]})),
            "role",
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "n": 3}).to_string(),
            "n = 3",
        ),
        (
            "/v1/completions",
            json!({"prompt": [999999]}).to_string(),
            "vocabulary",
        ),
        (
            "/v1/completions",
            json!({"max_tokens": 4}).to_string(),
            "prompt",
        ),
    ];
    for (path, body, needle) in cases {
        let r = post(addr, path, &body);
        assert_eq!(r.status, 400, "{body} → {}", r.body);
        let err = error_of(&r);
        assert_eq!(err["type"], "invalid_request_error");
        assert!(
            err["message"].as_str().unwrap().contains(needle),
            "{body} → {}",
            r.body
        );
    }
    // A prompt longer than the context (512 per slot) says so.
    let long = "word ".repeat(600);
    let r = post(
        addr,
        "/v1/chat/completions",
        &chat_body(json!({"messages": [{"role": "user", "content": long}]})),
    );
    assert_eq!(r.status, 400);
    let err = error_of(&r);
    assert_eq!(err["code"], "context_length_exceeded");
    assert!(
        err["message"].as_str().unwrap().contains("context"),
        "{}",
        r.body
    );
    // Unknown paths and methods.
    let r = get(addr, "/v1/nothing");
    assert_eq!(r.status, 404);
    error_of(&r);
    let r = get(addr, "/v1/chat/completions");
    assert_eq!(r.status, 405);
    error_of(&r);
    // The server still answers.
    assert_eq!(get(addr, "/health").status, 200);
    assert!(metric(addr, "strata_requests_invalid_total") >= 14);
}

#[test]
fn api_key_is_required_when_set() {
    let server = common::start(strata_server::ServerOptions {
        api_key: Some("sekret".into()),
        parallel: 1,
        ..common::options()
    });
    let addr = server.addr();
    assert_eq!(get(addr, "/health").status, 200);
    let body = chat_body(json!({"max_tokens": 2}));
    let r = post(addr, "/v1/chat/completions", &body);
    assert_eq!(r.status, 401);
    assert_eq!(error_of(&r)["code"], "invalid_api_key");
    let wrong = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", "Bearer nope")],
        &body,
    );
    assert_eq!(wrong.status, 401);
    assert_eq!(request(addr, "GET", "/v1/models", &[], "").status, 401);
    let right = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("Authorization", "Bearer sekret")],
        &body,
    );
    assert_eq!(right.status, 200, "{}", right.body);
    server.shutdown().unwrap();
}

#[test]
fn concurrent_requests_complete_and_share_forward_passes() {
    let server = common::start(strata_server::ServerOptions {
        parallel: 3,
        ..common::options()
    });
    let addr = server.addr();
    let replies: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|i| {
                s.spawn(move || {
                    let body = json!({
                        "messages": [{"role": "user", "content": format!("Count to {}.", i + 5)}],
                        "max_tokens": 32, "seed": i, "temperature": 0.7,
                    });
                    let r = post(addr, "/v1/chat/completions", &body.to_string());
                    assert_eq!(r.status, 200, "{}", r.body);
                    r.json()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &replies {
        assert!(r["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    }
    assert!(
        metric(addr, "strata_batch_sequences_max") >= 2,
        "{}",
        get(addr, "/metrics").body
    );
    assert_eq!(metric(addr, "strata_requests_finished_total"), 3);
    server.shutdown().unwrap();
}

#[test]
fn a_longer_conversation_reuses_the_cached_prefix() {
    let server = common::start(strata_server::ServerOptions {
        parallel: 1,
        ..common::options()
    });
    let addr = server.addr();
    let mut messages = vec![json!({"role": "user", "content": "Name a color."})];
    let first = post(
        addr,
        "/v1/chat/completions",
        &json!({"messages": messages, "max_tokens": 8, "temperature": 0}).to_string(),
    )
    .json();
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let n_first = first["usage"]["prompt_tokens"].as_u64().unwrap();
    messages
        .push(json!({"role": "assistant", "content": first["choices"][0]["message"]["content"]}));
    messages.push(json!({"role": "user", "content": "Another one."}));
    let second = post(
        addr,
        "/v1/chat/completions",
        &json!({"messages": messages, "max_tokens": 8, "temperature": 0}).to_string(),
    )
    .json();
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        cached >= n_first,
        "reused {cached} of the first prompt's {n_first}: {second}"
    );
    assert!(metric(addr, "strata_prompt_tokens_reused_total") >= n_first);
    // The same prompt again samples from the saved logits: all of it cached, the same text.
    let body =
        json!({"messages": messages, "max_tokens": 8, "temperature": 0.9, "seed": 3}).to_string();
    let a = post(addr, "/v1/chat/completions", &body).json();
    let b = post(addr, "/v1/chat/completions", &body).json();
    assert_eq!(
        b["usage"]["prompt_tokens_details"]["cached_tokens"],
        b["usage"]["prompt_tokens"]
    );
    assert_eq!(
        a["choices"][0]["message"]["content"],
        b["choices"][0]["message"]["content"]
    );
    server.shutdown().unwrap();
}

/// With sequences beyond the slots, the caches of finished requests stay:
/// prompts that alternate are each found whole (and sample from their saved
/// logits: the same text again), and an idle sequence is used before
/// another prompt's cache is overwritten.
#[test]
fn cache_sequences_keep_other_prompts() {
    let server = common::start(strata_server::ServerOptions {
        parallel: 1,
        cache_seqs: Some(2),
        ..common::options()
    });
    let addr = server.addr();
    let body = |content: &str| {
        json!({"messages": [{"role": "user", "content": content}],
            "max_tokens": 4, "temperature": 0.9, "seed": 5})
        .to_string()
    };
    let prompts = ["Name a color.", "Name a fruit.", "Name a city."];
    let first: Vec<Value> = prompts
        .iter()
        .map(|p| post(addr, "/v1/chat/completions", &body(p)).json())
        .collect();
    for (p, first) in prompts.iter().zip(&first) {
        let again = post(addr, "/v1/chat/completions", &body(p)).json();
        assert_eq!(
            again["usage"]["prompt_tokens_details"]["cached_tokens"],
            again["usage"]["prompt_tokens"],
            "{p}: {again}"
        );
        assert_eq!(
            again["choices"][0]["message"]["content"],
            first["choices"][0]["message"]["content"]
        );
    }
    assert_eq!(metric(addr, "strata_slots_total"), 1);
    server.shutdown().unwrap();
}

#[test]
fn a_client_gone_mid_stream_frees_its_slot() {
    let server = common::start(strata_server::ServerOptions {
        parallel: 1,
        ..common::options()
    });
    let addr = server.addr();
    let body = chat_body(json!({"stream": true, "max_tokens": 400}));
    let stream = common::open(addr, "POST", "/v1/chat/completions", &[], &body);
    let mut reader = BufReader::new(stream);
    let (status, _) = common::read_head(&mut reader);
    assert_eq!(status, 200);
    // Two events in: the role, then text.
    common::read_chunk(&mut reader).unwrap();
    common::read_chunk(&mut reader).unwrap();
    drop(reader);
    // The only slot is free again, and the next request runs.
    let start = Instant::now();
    while metric(addr, "strata_requests_cancelled_total") == 0 {
        assert!(start.elapsed() < Duration::from_secs(60), "never cancelled");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = post(
        addr,
        "/v1/chat/completions",
        &chat_body(json!({"max_tokens": 4})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(metric(addr, "strata_generated_tokens_total") < 400);
    server.shutdown().unwrap();
}

#[test]
fn a_full_queue_answers_503_with_retry_after() {
    let server = common::start(strata_server::ServerOptions {
        parallel: 1,
        max_queue: 1,
        ..common::options()
    });
    let addr = server.addr();
    let long = chat_body(json!({"stream": true, "max_tokens": 400}));
    let running = common::open(addr, "POST", "/v1/chat/completions", &[], &long);
    let start = Instant::now();
    while metric(addr, "strata_slots_busy") == 0 {
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(10));
    }
    let queued = common::open(addr, "POST", "/v1/chat/completions", &[], &long);
    while metric(addr, "strata_queue_depth") == 0 {
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = post(addr, "/v1/chat/completions", &chat_body(json!({})));
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("1"));
    error_of(&r);
    drop(running);
    drop(queued);
    server.shutdown().unwrap();
}

#[test]
fn shutdown_finishes_running_requests_then_refuses() {
    let server = common::start(strata_server::ServerOptions {
        parallel: 1,
        ..common::options()
    });
    let addr = server.addr();
    let running = std::thread::spawn(move || {
        post(
            addr,
            "/v1/chat/completions",
            &chat_body(json!({"max_tokens": 48})),
        )
    });
    let start = Instant::now();
    while metric(addr, "strata_slots_busy") == 0 {
        assert!(start.elapsed() < Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(10));
    }
    server.shutdown().unwrap();
    let r = running.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting after shutdown"
    );
}
