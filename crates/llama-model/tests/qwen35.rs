//! Qwen3.5's recurrent layers: decoding token by token equals one batch.
//!
//! The random-weight `qwen35` fixture of `tests/fixtures/archs` (two Gated
//! DeltaNet layers, two gated attention layers; written by
//! `tools/make_arch_fixtures.py`, checked against llama.cpp in strata-cli's
//! `archs` tests) greedily decodes 64 tokens after a prompt of 16, one token
//! per forward pass; one batch of the prompt and those 64 tokens then gives
//! the same logits at every decoded position (mean KLD ≤ 1e-5): the
//! convolution and delta-rule states carried from call to call are what the
//! batch computes in one go.

use std::path::PathBuf;
use std::process::Command;

use llama_model::{Batch, LoadOptions, LogitsMode, Model, SessionOptions};

use crate::common::{compare, top1};

/// `tests/fixtures/archs/qwen35/qwen35-F32.gguf`, written on first use.
fn qwen35_f32() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/archs");
    let path = root.join("qwen35/qwen35-F32.gguf");
    static MAKE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = MAKE.lock().unwrap_or_else(|e| e.into_inner());
    if !path.exists() {
        let out = Command::new("python3")
            .arg(root.join("../../../tools/make_arch_fixtures.py"))
            .arg(&root)
            .args(["--arch", "qwen35"])
            .output()
            .expect("python3 runs tools/make_arch_fixtures.py (needs numpy and gguf==0.19.0)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    path
}

fn prompt() -> Vec<u32> {
    (0..16).map(|i| 3 + (i * 37 + 11) % 380).collect()
}

#[test]
fn decoding_token_by_token_equals_one_batch() {
    let model = Model::load(qwen35_f32(), &LoadOptions::default()).unwrap();
    let n_vocab = model.config().n_vocab;
    let opts = SessionOptions {
        n_ctx: 128,
        ..SessionOptions::default()
    };
    let mut s = model.session(&opts).unwrap();
    let mut toks = prompt();
    let n_prompt = toks.len();
    let mut decoded = s.forward(&toks, LogitsMode::Last).unwrap().to_vec();
    for _ in 0..63 {
        let next = top1(&decoded[decoded.len() - n_vocab..]);
        toks.push(next);
        decoded.extend_from_slice(s.forward(&[next], LogitsMode::Last).unwrap());
    }
    toks.push(top1(&decoded[decoded.len() - n_vocab..]));
    assert_eq!(toks.len(), n_prompt + 64);

    let mut s = model.session(&opts).unwrap();
    let batch = s.forward(&toks[..toks.len() - 1], LogitsMode::All).unwrap();
    let batch = &batch[(n_prompt - 1) * n_vocab..];
    let a = compare(batch, &decoded, n_vocab);
    println!("qwen35 decode vs batch: {a:?}");
    assert!(a.mean_kld <= 1e-5 && a.top1 >= 0.98, "{a:?}");

    // Rewinding a recurrent state is refused; emptying it starts afresh.
    assert!(s.truncate(10).is_err());
    assert_eq!(s.rewind_point(0, 10), 0);
    s.truncate(0).unwrap();
    let again = s.forward(&toks[..n_prompt], LogitsMode::Last).unwrap();
    assert_eq!(again, &decoded[..n_vocab]);
}

#[test]
fn sequences_in_one_batch_keep_their_own_states() {
    let model = Model::load(qwen35_f32(), &LoadOptions::default()).unwrap();
    let n_vocab = model.config().n_vocab;
    let p = prompt();
    let q: Vec<u32> = p.iter().rev().copied().collect();
    let single = |t: &[u32]| {
        let mut s = model
            .session(&SessionOptions {
                n_ctx: 64,
                ..SessionOptions::default()
            })
            .unwrap();
        s.forward(t, LogitsMode::Last).unwrap().to_vec()
    };
    let (lp, lq) = (single(&p), single(&q));
    let mut s = model
        .session(&SessionOptions {
            n_ctx: 64,
            n_seq: 2,
            ..SessionOptions::default()
        })
        .unwrap();
    // Sequence 0 takes p, sequence 1 q, in alternating runs of 4 tokens.
    let (mut tokens, mut pos, mut seq) = (vec![], vec![], vec![]);
    for c in 0..4 {
        for (sid, t) in [(0, &p), (1, &q)] {
            for (i, &tok) in t.iter().enumerate().skip(c * 4).take(4) {
                tokens.push(tok);
                pos.push(i);
                seq.push(sid);
            }
        }
    }
    let output: Vec<bool> = (0..tokens.len())
        .map(|i| i >= tokens.len() - 8 && (i % 4 == 3))
        .collect();
    let out = s
        .forward_batch(&Batch {
            tokens: &tokens,
            pos: &pos,
            seq: &seq,
            output: &output,
        })
        .unwrap();
    let a0 = compare(&lp, &out[..n_vocab], n_vocab);
    let a1 = compare(&lq, &out[n_vocab..], n_vocab);
    assert!(a0.mean_kld <= 1e-5 && a1.mean_kld <= 1e-5, "{a0:?} {a1:?}");
}
