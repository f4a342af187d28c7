//! SmolLM2-135M-Instruct Q4_1 against llama.cpp: passage logits and greedy continuations.

use llama_model::{LoadOptions, LogitsMode, Model, SessionOptions};
use serde_json::Value;

use crate::common::{compare, fixture, read_f16, top1};

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("smollm2/golden.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

fn model() -> Model {
    let path = model_cache::default_model().expect("default model (SmolLM2-135M-Instruct Q4_1)");
    Model::load(path, &LoadOptions::default()).unwrap()
}

#[test]
fn hyper_parameters() {
    let m = model();
    let c = m.config();
    assert_eq!(
        (c.n_layer, c.n_head, c.n_head_kv, c.n_vocab),
        (30, 9, 3, 49152)
    );
    assert!(m.tied_embeddings());
}

#[test]
fn passage_logits_match_llama_cpp() {
    let m = model();
    let g = golden();
    let toks = ids(&g["passage"]["tokens"]);
    let n_vocab = m.config().n_vocab;
    let mut s = m
        .session(&SessionOptions {
            n_ctx: 1024,
            ..Default::default()
        })
        .unwrap();
    let ours = s.forward(&toks, LogitsMode::All).unwrap().to_vec();
    let reference = read_f16(&fixture("smollm2/passage.logits.f16"));
    // The reference was stored as f16: round ours the same way for max |Δ|.
    let ours16: Vec<f32> = ours
        .iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect();
    let a = compare(&reference, &ours, n_vocab);
    let a16 = compare(&reference, &ours16, n_vocab);
    println!(
        "smollm2 passage ({} tokens): mean KLD {:.3e}  top-1 {:.2}%  max |Δlogit| {:.3e} (ours rounded to f16: {:.3e})",
        toks.len(),
        a.mean_kld,
        a.top1 * 100.0,
        a.max_abs,
        a16.max_abs
    );
    assert!(a.mean_kld <= 1e-4, "mean KLD {}", a.mean_kld);
    assert!(a.top1 >= 0.98, "top-1 {}", a.top1);
}

#[test]
fn greedy_matches_llama_cpp_until_a_near_tie() {
    let m = model();
    let g = golden();
    let mut s = m
        .session(&SessionOptions {
            n_ctx: 1024,
            ..Default::default()
        })
        .unwrap();
    for (i, case) in g["greedy"].as_array().unwrap().iter().enumerate() {
        let prompt = ids(&case["prompt_tokens"]);
        let expected = ids(&case["generated"]);
        let margins: Vec<f64> = case["top1_margin"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        // Steps before llama.cpp's own top-1 margin first drops below 0.05 must agree.
        let must = margins
            .iter()
            .position(|&m| m < 0.05)
            .unwrap_or(expected.len());
        s.reset();
        let mut logits = s.forward(&prompt, LogitsMode::Last).unwrap().to_vec();
        let mut agree = 0;
        for (step, &want) in expected.iter().enumerate() {
            let got = top1(&logits);
            if got != want {
                break;
            }
            agree = step + 1;
            if step + 1 < expected.len() {
                logits = s.forward(&[got], LogitsMode::Last).unwrap().to_vec();
            }
        }
        println!(
            "greedy prompt {i}: {agree}/{} tokens identical (required: {must})",
            expected.len()
        );
        assert!(
            agree >= must,
            "prompt {i}: diverged at step {agree}, before the first near-tie at {must}"
        );
    }
}
