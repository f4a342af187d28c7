//! gpt-oss: decoding token by token equals one batch.
//!
//! The random-weight `gpt-oss` fixture of `tests/fixtures/archs` (four
//! layers, a sliding window of 16 on layers 0 and 2, attention sinks, YaRN
//! RoPE, a biased top-2 MoE; written by `tools/make_arch_fixtures.py`,
//! checked against llama.cpp in strata-cli's `archs` tests) greedily decodes
//! 64 tokens after a prompt of 16, one token per forward pass; one batch of
//! the prompt and those 64 tokens then gives the same logits at every
//! decoded position (mean KLD ≤ 1e-5). Past position 16 the windowed layers
//! drop keys as they decode, and every softmax carries its head's sink.

use std::path::PathBuf;

use llama_model::{LoadOptions, LogitsMode, Model, SessionOptions};

use crate::common::{compare, top1};

/// `tests/fixtures/archs/gpt-oss/gpt-oss-F32.gguf`, written on first use.
fn gpt_oss_f32() -> PathBuf {
    crate::common::arch_f32("gpt-oss")
}

#[test]
fn decoding_token_by_token_equals_one_batch() {
    let model = Model::load(gpt_oss_f32(), &LoadOptions::default()).unwrap();
    let n_vocab = model.config().n_vocab;
    let opts = SessionOptions {
        n_ctx: 128,
        ..SessionOptions::default()
    };
    let prompt: Vec<u32> = (0..16).map(|i| 3 + (i * 37 + 11) % 380).collect();
    let mut s = model.session(&opts).unwrap();
    let mut toks = prompt.clone();
    let mut decoded = s.forward(&toks, LogitsMode::Last).unwrap().to_vec();
    for _ in 0..63 {
        let next = top1(&decoded[decoded.len() - n_vocab..]);
        toks.push(next);
        decoded.extend_from_slice(s.forward(&[next], LogitsMode::Last).unwrap());
    }
    toks.push(top1(&decoded[decoded.len() - n_vocab..]));
    assert_eq!(toks.len(), prompt.len() + 64);

    let mut s = model.session(&opts).unwrap();
    let batch = s.forward(&toks[..toks.len() - 1], LogitsMode::All).unwrap();
    let batch = &batch[(prompt.len() - 1) * n_vocab..];
    let a = compare(batch, &decoded, n_vocab);
    println!("gpt-oss decode vs batch: {a:?}");
    assert!(a.mean_kld <= 1e-5 && a.top1 >= 0.98, "{a:?}");
}

/// The hyper-parameters llama.cpp reports for the fixture: YaRN as its
/// context sets it (ext_factor 1, the magnitude factor cancelled back to
/// 1 up to rounding), the original context, the windowed layers' base.
#[test]
fn yarn_and_window_come_from_the_metadata() {
    let model = Model::load(gpt_oss_f32(), &LoadOptions::default()).unwrap();
    let r = model.config().rope;
    assert_eq!(r.freq_scale, 1.0 / 32.0);
    assert_eq!(r.ext_factor, 1.0);
    assert_eq!(r.n_ctx_orig, 4096);
    assert!(
        (r.attn_factor - 1.0).abs() <= f32::EPSILON,
        "{}",
        r.attn_factor
    );
    let g = model.graph();
    let windows: Vec<Option<usize>> = g
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            llama_model::graph::Op::Attention { params, sinks, .. } => {
                assert!(sinks.is_some());
                Some(params.window)
            }
            _ => None,
        })
        .collect();
    assert_eq!(windows, [Some(16), None, Some(16), None]);
}
