//! Every render of tests/fixtures/chat_templates/renders.json (Hugging Face's
//! `apply_chat_template` on six real templates) reproduced exactly, and every
//! expected error raised.

use std::sync::Arc;

use serde_json::Value;
use tokenizer::chat::{ChatContext, ChatTemplate, DEFAULT_FUEL, DEFAULT_MAX_OUTPUT};
use tokenizer::TokenizerError;

use crate::fixture;

#[test]
fn renders_match_hugging_face() {
    let renders: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(fixture("chat_templates/renders.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(renders.len(), 18);
    // The fixture fixed strftime_now at 2026-01-02.
    let clock = Arc::new(|| {
        chrono::NaiveDate::from_ymd_opt(2026, 1, 2)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
    });
    let mut per_template: Vec<(String, usize)> = Vec::new();
    for r in &renders {
        let name = r["template_name"].as_str().unwrap();
        let template = ChatTemplate::with_options(
            r["template"].as_str().unwrap(),
            clock.clone(),
            DEFAULT_FUEL,
            DEFAULT_MAX_OUTPUT,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let ctx: ChatContext = serde_json::from_value(r["context"].clone()).unwrap();
        let result = template.render(&ctx);
        if r["ok"].as_bool().unwrap() {
            let got = result.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got, r["output"].as_str().unwrap(), "{name}");
        } else {
            let expected = r["error"].as_str().unwrap();
            let message = expected.strip_prefix("TemplateError: ").unwrap_or(expected);
            match result {
                Err(TokenizerError::TemplateRaised(m)) => assert_eq!(m, message, "{name}"),
                other => panic!("{name}: expected the error {expected:?}, got {other:?}"),
            }
        }
        match per_template.iter_mut().find(|(n, _)| n == name) {
            Some((_, count)) => *count += 1,
            None => per_template.push((name.to_string(), 1)),
        }
    }
    for (name, count) in per_template {
        eprintln!("{name}: {count} of {count} renders identical");
    }
}

#[test]
fn contexts_parse_from_json() {
    let ctx = ChatContext::from_json(
        r#"{"messages": [{"role": "user", "content": null, "name": "x"}], "tools": [{"b": 1, "a": 2}]}"#,
    )
    .unwrap();
    assert_eq!(ctx.messages[0].content, "");
    let t = ChatTemplate::new("{{ messages[0].name }} {{ tools | tojson }}").unwrap();
    assert_eq!(t.render(&ctx).unwrap(), r#"x [{"b": 1, "a": 2}]"#);
    assert!(matches!(
        ChatContext::from_json("{"),
        Err(TokenizerError::Context(_))
    ));
}
