//! Constrained sampling over real vocabularies, without a model: logits from
//! a seeded generator, masked by the grammar, must always give output that
//! parses and matches.

use std::sync::Arc;

use generate::constraint::{Grammar, Grammars};
use generate::{GenerateError, Sampler, SamplerConfig};
use gguf_format::GgufFile;
use serde_json::{json, Value};
use tokenizer::Tokenizer;

fn vocab(name: &str) -> Arc<Tokenizer> {
    let path = format!(
        "{}/../../tests/fixtures/vocab/ggml-vocab-{name}.gguf",
        env!("CARGO_MANIFEST_DIR")
    );
    let file = GgufFile::open(path).unwrap();
    Arc::new(Tokenizer::from_gguf(file.header()).unwrap())
}

/// Random logits (a xorshift generator), so the grammar alone shapes the output.
fn noise(seed: u64, n: usize) -> impl FnMut() -> Vec<f32> {
    let mut state = seed | 1;
    move || {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 * 8.0
            })
            .collect()
    }
}

/// Generates under `grammar` until an end-of-generation token; the text.
fn run(tok: &Tokenizer, grammars: &Grammars, grammar: &Grammar, seed: u64) -> String {
    let mut constraint = grammars.compile(grammar).unwrap();
    let mut sampler = Sampler::new(SamplerConfig {
        seed,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        temperature: 1.0,
        ..SamplerConfig::default()
    })
    .unwrap();
    let mut logits = noise(seed, tok.vocab_size());
    let mut out = Vec::new();
    for _ in 0..400 {
        let mask = constraint.mask().unwrap();
        let t = sampler
            .sample_allowed(&logits(), &out, |t| mask.allows(t))
            .expect("the grammar allows a token");
        if tok.is_eog(t) {
            assert!(
                constraint.is_accepting(),
                "EOS only where the grammar may end"
            );
            return tok.decode(&out);
        }
        constraint.accept(t).unwrap();
        out.push(t);
    }
    panic!("no end after 400 tokens: {:?}", tok.decode(&out));
}

#[test]
fn json_schema_output_always_parses_and_matches() {
    for name in ["gpt-2", "llama-spm", "qwen35"] {
        let tok = vocab(name);
        let grammars = Grammars::new(tok.clone()).unwrap();
        let schema = json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 12},
                "age": {"type": "integer", "minimum": 0, "maximum": 150},
                "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
            },
            "required": ["name", "age", "tags"],
        });
        let grammar = Grammar::JsonSchema {
            schema,
            strict: true,
        };
        for seed in 1..=4 {
            let text = run(&tok, &grammars, &grammar, seed);
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{name}: {text:?} does not parse: {e}"));
            let obj = v.as_object().unwrap();
            assert_eq!(
                obj.len(),
                3,
                "{name}: strict allows only the listed keys: {text}"
            );
            assert!(v["name"].as_str().unwrap().chars().count() <= 12, "{text}");
            assert!((0..=150).contains(&v["age"].as_i64().unwrap()), "{text}");
            assert!(v["tags"].as_array().unwrap().len() <= 3, "{text}");
        }
    }
}

#[test]
fn json_object_lark_and_gbnf() {
    let tok = vocab("llama-bpe");
    let grammars = Grammars::new(tok.clone()).unwrap();
    // Any JSON object: a random walk may nest deeply, so only the shape is checked.
    let lark = Grammar::Lark(r#"start: "yes" | "no" | /[0-9]{2}/"#.into());
    for seed in 1..=5 {
        let text = run(&tok, &grammars, &lark, seed);
        assert!(
            text == "yes" || text == "no" || (text.len() == 2 && text.parse::<u8>().is_ok()),
            "{text:?}"
        );
        let gbnf = Grammar::from_text("root ::= \"x\" [a-c]{1,3} (\"!\" | \"?\")\n");
        let text = run(&tok, &grammars, &gbnf, seed);
        let inner = &text[1..text.len() - 1];
        assert!(
            text.starts_with('x') && (text.ends_with('!') || text.ends_with('?')),
            "{text:?}"
        );
        assert!(
            (1..=3).contains(&inner.len()) && inner.chars().all(|c| ('a'..='c').contains(&c)),
            "{text:?}"
        );
    }
    let mut c = grammars.compile(&Grammar::JsonObject).unwrap();
    let mask = c.mask().unwrap();
    let brace = tok.encode("{", false, false).unwrap()[0];
    let a = tok.encode("a", false, false).unwrap()[0];
    assert!(mask.allows(brace) && !mask.allows(a));
}

#[test]
fn bad_grammars_are_errors() {
    let tok = vocab("gpt-2");
    let grammars = Grammars::new(tok).unwrap();
    for bad in [
        Grammar::Lark("start: nothing_defined".into()),
        Grammar::Gbnf("root ::= (".into()),
        Grammar::JsonSchema {
            schema: json!({"type": "nonsense"}),
            strict: false,
        },
    ] {
        match grammars.compile(&bad) {
            Err(GenerateError::Grammar(msg)) => assert!(!msg.is_empty()),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
}

#[test]
fn a_mask_that_allows_everything_changes_nothing() {
    let mut logits = noise(7, 1000);
    for config in [SamplerConfig::default(), SamplerConfig::greedy()] {
        let (mut a, mut b) = (
            Sampler::new(config.clone()).unwrap(),
            Sampler::new(config).unwrap(),
        );
        for _ in 0..50 {
            let l = logits();
            assert_eq!(
                Some(a.sample(&l, &[1, 2])),
                b.sample_allowed(&l, &[1, 2], |_| true)
            );
        }
        assert_eq!(b.sample_allowed(&logits(), &[], |_| false), None);
        assert_eq!(b.sample_allowed(&logits(), &[], |t| t == 999), Some(999));
    }
}
