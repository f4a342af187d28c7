//! Every render of tests/fixtures/chat_templates/renders.json (Hugging Face's
//! `apply_chat_template` on six real templates) reproduced exactly, and every
//! expected error raised; likewise tests/data/extra_renders.json (the same
//! templates on conversations with tools, unusual content and repeated roles,
//! made by scripts/gen_extra_renders.py with jinja2).

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use tokenizer::chat::{ChatContext, ChatTemplate, DEFAULT_FUEL, DEFAULT_MAX_OUTPUT};
use tokenizer::TokenizerError;

use crate::fixture;

/// One golden render.
#[derive(Deserialize)]
struct Case {
    template_name: String,
    #[serde(default)]
    template: Option<String>,
    /// Parsed straight from the file so that objects keep their key order.
    context: ChatContext,
    ok: bool,
    #[serde(default)]
    output: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

fn load(path: std::path::PathBuf) -> Vec<Case> {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Renders each case with the template of its name; returns (template, count) in order.
fn check(cases: &[Case], templates: &HashMap<String, String>) -> Vec<(String, usize)> {
    // The goldens fixed strftime_now at 2026-01-02.
    let clock = Arc::new(|| {
        chrono::NaiveDate::from_ymd_opt(2026, 1, 2)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap()
    });
    let mut per_template: Vec<(String, usize)> = Vec::new();
    for r in cases {
        let name = r.template_name.as_str();
        let template = ChatTemplate::with_options(
            &templates[name],
            clock.clone(),
            DEFAULT_FUEL,
            DEFAULT_MAX_OUTPUT,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let result = template.render(&r.context);
        if r.ok {
            let got = result.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(Some(got.as_str()), r.output.as_deref(), "{name}");
        } else {
            let expected = r.error.as_deref().unwrap();
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
    per_template
}

fn fixture_templates() -> (Vec<Case>, HashMap<String, String>) {
    let renders = load(fixture("chat_templates/renders.json"));
    let templates = renders
        .iter()
        .map(|r| (r.template_name.clone(), r.template.clone().unwrap()))
        .collect();
    (renders, templates)
}

#[test]
fn renders_match_hugging_face() {
    let (renders, templates) = fixture_templates();
    assert_eq!(renders.len(), 18);
    for (name, count) in check(&renders, &templates) {
        eprintln!("{name}: {count} of {count} renders identical");
    }
}

#[test]
fn more_conversations_match_jinja2() {
    let (_, templates) = fixture_templates();
    let extra = load(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/extra_renders.json"),
    );
    assert_eq!(extra.len(), 30);
    for (name, count) in check(&extra, &templates) {
        eprintln!("{name}: {count} of {count} extra renders identical");
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

/// gpt-oss's template (the harmony format, llama.cpp's
/// `models/templates/openai-gpt-oss-120b.jinja`): reasoning effort, the
/// system prompt as a developer message, an earlier turn's analysis, a tool
/// call and its result, tools as a TypeScript namespace — every render as
/// jinja2's (scripts/gen_gpt_oss_renders.py).
#[test]
fn gpt_oss_renders_match_jinja2() {
    let renders = load(fixture("chat_templates/gpt_oss_renders.json"));
    let templates: HashMap<String, String> = renders
        .iter()
        .filter_map(|r| Some((r.template_name.clone(), r.template.clone()?)))
        .collect();
    assert_eq!(renders.len(), 5);
    for (name, count) in check(&renders, &templates) {
        eprintln!("{name}: {count} of {count} renders identical");
    }
}
