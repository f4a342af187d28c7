//! Qwen3.5's recurrent layers: decoding token by token equals one batch,
//! and snapshots of the recurrent states rewind a sequence exactly.
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

use llama_model::{Batch, BatchKernels, LoadOptions, LogitsMode, Model, SessionOptions};

use crate::common::{compare, top1};

/// `tests/fixtures/archs/qwen35/qwen35-F32.gguf`, written on first use.
fn qwen35_f32() -> PathBuf {
    crate::common::arch_f32("qwen35")
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

    // Rewinding to a position whose states were not saved is refused;
    // emptying the sequence starts afresh.
    assert!(s.truncate(10).is_err());
    assert_eq!(s.rewind_point(0, 10), 0);
    s.truncate(0).unwrap();
    let again = s.forward(&toks[..n_prompt], LogitsMode::Last).unwrap();
    assert_eq!(again, &decoded[..n_vocab]);
}

/// Prompt + 64 greedily decoded tokens, one forward pass per token, with
/// snapshots of the recurrent states saved along the way (every 8
/// positions, and after the prompt and the token before its end) and, in
/// the middle, a rewind to a snapshot (40) followed by a replay of the 8
/// tokens after it, whose logits must be those of the first pass bit for
/// bit. Returns the 64 tokens' logits and every token.
fn decode_with_replay(
    model: &Model<llama_model::CpuBackend>,
    opts: &SessionOptions,
) -> (Vec<f32>, Vec<u32>) {
    let n_vocab = model.config().n_vocab;
    let mut s = model.session(opts).unwrap();
    let mut toks = prompt();
    let n_prompt = toks.len();
    let mut decoded = s.forward(&toks, LogitsMode::Last).unwrap().to_vec();
    assert_eq!(s.snapshot_positions(0), [8, 15, 16]);
    let mut replayed_rows = 0;
    while toks.len() < n_prompt + 63 {
        let next = top1(&decoded[decoded.len() - n_vocab..]);
        toks.push(next);
        decoded.extend_from_slice(s.forward(&[next], LogitsMode::Last).unwrap());
        if toks.len() == n_prompt + 32 {
            let back = s.rewind_point(0, 44);
            assert_eq!(back, 40);
            s.truncate(back).unwrap();
            assert_eq!(s.snapshot_positions(0), [8, 15, 16, 24, 32, 40]);
            for (p, &t) in toks.iter().enumerate().skip(back) {
                let row = s.forward(&[t], LogitsMode::Last).unwrap();
                let at = (p + 1 - n_prompt) * n_vocab;
                assert_eq!(row, &decoded[at..at + n_vocab], "replayed position {p}");
                replayed_rows += 1;
            }
        }
    }
    assert_eq!(replayed_rows, 8);
    toks.push(top1(&decoded[decoded.len() - n_vocab..]));
    assert_eq!(toks.len(), n_prompt + 64);
    (decoded, toks)
}

/// [`decode_with_replay`] against one batch of every token: with
/// llama.cpp's kernels (whose batch products sum in another order than one
/// token's) mean KLD ≤ 1e-5; with the single-token kernels for every row
/// ([`BatchKernels::RowConsistent`]) bit for bit. Snapshots cutting the
/// batch's recurrent ops (every 4 positions) change no bit either.
#[test]
fn snapshots_rewind_and_replay_equal_one_batch() {
    let model = Model::load(qwen35_f32(), &LoadOptions::default()).unwrap();
    let n_vocab = model.config().n_vocab;
    let n_prompt = prompt().len();
    let opts = SessionOptions {
        n_ctx: 128,
        state_snapshots: 32,
        snapshot_interval: 8,
        ..SessionOptions::default()
    };
    let batch_logits = |toks: &[u32], opts: SessionOptions| {
        let mut s = model.session(&opts).unwrap();
        let l = s.forward(&toks[..toks.len() - 1], LogitsMode::All).unwrap()
            [(n_prompt - 1) * n_vocab..]
            .to_vec();
        (l, s.snapshot_positions(0).len())
    };
    let (decoded, toks) = decode_with_replay(&model, &opts);
    let every4 = SessionOptions {
        snapshot_interval: 4,
        ..opts
    };
    let (batch, n_snap) = batch_logits(&toks, every4);
    let (plain, none) = batch_logits(
        &toks,
        SessionOptions {
            state_snapshots: 0,
            ..every4
        },
    );
    assert_eq!((n_snap, none), (21, 0));
    assert!(batch == plain, "snapshots changed the batch's logits");
    let a = compare(&batch, &decoded, n_vocab);
    println!("qwen35 decode with snapshots and a replay vs one batch: {a:?}");
    assert!(a.mean_kld <= 1e-5 && a.top1 >= 0.98, "{a:?}");

    let rows = SessionOptions {
        batch_kernels: BatchKernels::RowConsistent,
        ..opts
    };
    let (decoded, toks) = decode_with_replay(&model, &rows);
    let (batch, _) = batch_logits(
        &toks,
        SessionOptions {
            snapshot_interval: 4,
            ..rows
        },
    );
    let a = compare(&batch, &decoded, n_vocab);
    println!("qwen35 decode with snapshots and a replay vs one row-consistent batch: {a:?}");
    assert!(batch == decoded, "{a:?}");
}

/// A prompt run again after a reply reuses the state saved at its end: a
/// session that rewinds to a snapshot and runs a new suffix gives the
/// logits of a fresh session fed the same tokens in the same pieces.
#[test]
fn a_rewound_sequence_continues_as_a_fresh_one() {
    let model = Model::load(qwen35_f32(), &LoadOptions::default()).unwrap();
    let opts = SessionOptions {
        n_ctx: 64,
        ..SessionOptions::default()
    };
    let p = prompt();
    let mut s = model.session(&opts).unwrap();
    s.forward(&p, LogitsMode::Last).unwrap();
    s.forward(&[5, 6, 7], LogitsMode::Last).unwrap();
    s.forward(&[8], LogitsMode::Last).unwrap();
    // Saved: the prompt less its last token, the prompt, and the end of the
    // three-token call (and the one before it); never single decoded tokens.
    assert_eq!(s.snapshot_positions(0), [15, 16, 18, 19]);
    assert_eq!(s.rewind_point(0, 17), 16);
    assert_eq!(s.rewind_point(0, 15), 15);
    assert_eq!(s.rewind_point(0, 14), 0);
    assert_eq!(s.rewind_point(0, 20), 20);
    assert!(s.truncate(17).is_err());
    s.truncate(16).unwrap();
    assert_eq!(s.snapshot_positions(0), [15, 16]);
    let suffix = [40, 41, 42, 43];
    let ours = s.forward(&suffix, LogitsMode::All).unwrap().to_vec();
    let mut fresh = model.session(&opts).unwrap();
    fresh.forward(&p, LogitsMode::Last).unwrap();
    let want = fresh.forward(&suffix, LogitsMode::All).unwrap();
    assert!(ours == want, "a restored state continues differently");
    // Without snapshots, only the end or the start.
    let mut none = model
        .session(&SessionOptions {
            state_snapshots: 0,
            ..opts
        })
        .unwrap();
    none.forward(&p, LogitsMode::Last).unwrap();
    none.forward(&suffix, LogitsMode::Last).unwrap();
    assert_eq!(none.rewind_point(0, 17), 0);
    assert!(none.snapshot_positions(0).is_empty());
    assert!(s.recurrent_state_bytes() > 0);
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
