//! Structured output and tool calls on the default model: whatever the model
//! would say, the reply parses and matches (llguidance masks the sampling).

use serde_json::{json, Value};

use crate::common::{self, post};

fn chat(extra: Value) -> common::Response {
    let mut body = json!({
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Describe a person as JSON."}],
        "max_tokens": 200,
        "temperature": 0.8,
        "seed": 7,
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    post(common::shared(), "/v1/chat/completions", &body.to_string())
}

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "likes": {"type": "array", "items": {"enum": ["tea", "coffee", "sea"]}, "maxItems": 2},
        },
        "required": ["name", "age", "likes"],
    })
}

#[test]
fn json_schema_replies_parse_and_match() {
    for seed in [1, 2, 3] {
        let r = chat(
            json!({"seed": seed, "response_format": {"type": "json_schema",
            "json_schema": {"name": "person", "strict": true, "schema": person_schema()}}}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
        let text = v["choices"][0]["message"]["content"].as_str().unwrap();
        let p: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(
            p.as_object().unwrap().len(),
            3,
            "strict: only the listed keys: {text}"
        );
        assert!(p["name"].as_str().unwrap().chars().count() <= 20, "{text}");
        assert!((0..=120).contains(&p["age"].as_i64().unwrap()), "{text}");
        assert!(p["likes"].as_array().unwrap().len() <= 2, "{text}");
    }
}

#[test]
fn json_object_and_grammars() {
    let r = chat(json!({"response_format": {"type": "json_object"}, "max_tokens": 400}));
    let v = r.json();
    if v["choices"][0]["finish_reason"] == "stop" {
        let text = v["choices"][0]["message"]["content"].as_str().unwrap();
        let p: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(p.is_object(), "{text}");
    } else {
        // Cut at max_tokens: still a prefix of an object.
        assert!(
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .starts_with('{'),
            "{v}"
        );
    }
    let r = chat(json!({"grammar": "root ::= (\"yes\" | \"no\") \".\""}));
    let text = r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(text == "yes." || text == "no.", "{text:?}");
    let r = chat(json!({"grammar": "start: /[0-9]{3}/", "stream": true}));
    let streamed: String = r
        .events()
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert!(
        streamed.len() == 3 && streamed.chars().all(|c| c.is_ascii_digit()),
        "{streamed:?}"
    );
    let body = json!({"prompt": "Answer:", "grammar": "start: \"A\" | \"B\"", "max_tokens": 5});
    let r = post(common::shared(), "/v1/completions", &body.to_string());
    let text = r.json()["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(text == "A" || text == "B", "{text:?}");
}

#[test]
fn bad_formats_and_tools_are_400() {
    for bad in [
        json!({"response_format": {"type": "xml"}}),
        json!({"response_format": {"type": "json_schema"}}),
        json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}}),
        json!({"response_format": {"type": "json_schema", "json_schema": {"schema": 3}}}),
        json!({"grammar": "root ::= undefined-rule"}),
        json!({"grammar": "start: ("}),
        json!({"grammar": "  "}),
        json!({"grammar": "start: \"a\"", "response_format": {"type": "json_object"}}),
        json!({"tools": "get_weather"}),
        json!({"tools": [{"type": "function", "function": {"name": "has space"}}]}),
        json!({"tool_choice": "required"}),
        json!({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "always"}),
        json!({"tools": [{"type": "function", "function": {"name": "f"}}],
               "tool_choice": {"type": "function", "function": {"name": "g"}}}),
    ] {
        let r = chat(bad.clone());
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        let e = r.json();
        assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
    }
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {
        "name": "get_weather",
        "description": "The weather in a city now.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 24},
            "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": false},
    }}, {"type": "function", "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 24}},
            "required": ["zone"], "additionalProperties": false},
    }}])
}

#[test]
fn required_and_named_tool_calls_are_well_formed() {
    let ask = json!([{"role": "user", "content": "What is the weather in Paris?"}]);
    for (choice, stream) in [
        (json!("required"), false),
        (
            json!({"type": "function", "function": {"name": "get_time"}}),
            false,
        ),
        (json!("required"), true),
    ] {
        let r = chat(
            json!({"messages": ask, "tools": weather_tools(), "tool_choice": choice, "stream": stream}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let (calls, finish) = if stream {
            // A call's first delta has its id, type and name; the later
            // ones (by index) add to its arguments.
            let mut calls: Vec<Value> = Vec::new();
            let mut finish = Value::Null;
            let mut argument_deltas = 0;
            for e in r.events().iter().filter(|e| *e != "[DONE]") {
                let c: Value = serde_json::from_str(e).unwrap();
                for d in c["choices"][0]["delta"]["tool_calls"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    let i = d["index"].as_u64().unwrap() as usize;
                    if i == calls.len() {
                        calls.push(d.clone());
                    } else {
                        let args = d["function"]["arguments"].as_str().unwrap();
                        let all = format!(
                            "{}{args}",
                            calls[i]["function"]["arguments"].as_str().unwrap()
                        );
                        calls[i]["function"]["arguments"] = json!(all);
                        argument_deltas += 1;
                    }
                }
                if !c["choices"][0]["finish_reason"].is_null() {
                    finish = c["choices"][0]["finish_reason"].clone();
                }
            }
            assert!(argument_deltas > 1, "arguments in {argument_deltas} deltas");
            (calls, finish)
        } else {
            let v = r.json();
            let m = &v["choices"][0]["message"];
            (
                m["tool_calls"].as_array().cloned().unwrap_or_default(),
                v["choices"][0]["finish_reason"].clone(),
            )
        };
        assert_eq!(finish, "tool_calls", "{calls:?}");
        assert!(!calls.is_empty());
        for call in &calls {
            assert_eq!(call["type"], "function");
            assert!(call["id"].as_str().is_some_and(|id| !id.is_empty()));
            let name = call["function"]["name"].as_str().unwrap();
            let args: Value =
                serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
            match name {
                "get_weather" => {
                    assert!(choice == "required");
                    assert!(
                        args["city"].is_string() && args["unit"].is_string(),
                        "{args}"
                    );
                }
                "get_time" => assert!(args["zone"].is_string(), "{args}"),
                other => panic!("unknown function {other}"),
            }
        }
    }
}

#[test]
fn a_conversation_with_tool_results_continues() {
    let messages = json!([
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "22 degrees, sunny"},
    ]);
    let r = chat(json!({"messages": messages, "tools": weather_tools(), "max_tokens": 60}));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let finish = v["choices"][0]["finish_reason"].as_str().unwrap();
    let m = &v["choices"][0]["message"];
    // auto: either a call or a reply, and the right fields for each.
    match finish {
        "tool_calls" => assert!(
            m["tool_calls"].as_array().is_some_and(|c| !c.is_empty()),
            "{v}"
        ),
        _ => assert!(
            m["content"].is_string() && m.get("tool_calls").is_none(),
            "{v}"
        ),
    }
    // tool_choice none: plain text, no tools in the prompt.
    let r = chat(
        json!({"messages": messages, "tools": weather_tools(), "tool_choice": "none", "max_tokens": 8}),
    );
    let v = r.json();
    assert!(v["choices"][0]["message"]["content"].is_string(), "{v}");
    assert_ne!(v["choices"][0]["finish_reason"], "tool_calls");
}
