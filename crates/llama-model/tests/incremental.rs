//! Prefill then token-by-token decoding against one batch of all tokens.
//!
//! With [`BatchKernels::LlamaCpp`] (the default) a batch takes llama.cpp's
//! batch kernels — tinyBLAS attention, the repacked gemm or tiled kernel for
//! quantized weights — and a lone token its `ggml_vec_dot_*` / gemv, as in
//! llama.cpp. Prefilling 16 tokens then decoding the rest one at a time,
//! against one batch (`row_consistent_decode_matches_batch_synth`,
//! `decode_matches_batch_smollm2`, run with `--nocapture`), max |Δlogit| is
//! 5.9e-5 for synth-F32, 0 for BF16, ~4e-6 for Q5_0 and IQ4_NL, 5.7e-3 for
//! F16, 0.12–0.29 for the other quantized synthetic files, and 0.91 for
//! SmolLM2-135M Q4_1 (KLD 1.7e-3, top-1 36/37). The layer trace shows why:
//! the decoded token's values equal its batch row to float rounding (the
//! embedding and norms exactly, the projections and attention ≤ 1e-6
//! relative), and the difference grows only where a rounding to `f16` or to
//! quantized activations sits on a boundary and jumps — which random weights
//! with outliers, or 30 layers, then amplify.
//!
//! With [`BatchKernels::RowConsistent`] every row of a batch takes the
//! single-token kernels, and incremental decoding reproduces the batch's
//! logits exactly, for every synthetic file and for SmolLM2.

use llama_model::{BatchKernels, LoadOptions, LogitsMode, Model, SessionOptions, Trace};

use crate::common::{compare, fixture};

fn tokens() -> Vec<u32> {
    serde_json::from_str(&std::fs::read_to_string(fixture("synth/tokens.json")).unwrap()).unwrap()
}

/// Max |batch − incremental| over all positions' logits for one file.
fn incremental_vs_batch(ftype: &str, prefill: usize, n_batch: usize) -> f32 {
    let model = Model::load(
        fixture(&format!("synth/synth-{ftype}.gguf")),
        &LoadOptions::default(),
    )
    .unwrap();
    let n_vocab = model.config().n_vocab;
    let toks = tokens();
    let opts = SessionOptions {
        n_ctx: 64,
        ..SessionOptions::default()
    };
    let mut s = model.session(&opts).unwrap();
    let batch = s.forward(&toks, LogitsMode::All).unwrap().to_vec();

    let mut s = model.session(&SessionOptions { n_batch, ..opts }).unwrap();
    let mut inc = s
        .forward(&toks[..prefill], LogitsMode::All)
        .unwrap()
        .to_vec();
    for &t in &toks[prefill..] {
        inc.extend_from_slice(s.forward(&[t], LogitsMode::Last).unwrap());
    }
    assert_eq!(s.n_past(), toks.len());
    assert_eq!(inc.len(), toks.len() * n_vocab);
    let d = batch
        .iter()
        .zip(&inc)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!(
        "synth-{ftype}: prefill {prefill} (ubatch {n_batch}) + {} single tokens vs one batch: max |Δlogit| {d:.3e}",
        toks.len() - prefill
    );
    d
}

/// Ubatches of 16 rows take the kernels of the whole batch (repacked gemm,
/// tiled), so all 64 positions match one batch exactly.
#[test]
fn k_quant_ubatches_match_one_batch() {
    let model = Model::load(fixture("synth/synth-Q4_K_M.gguf"), &LoadOptions::default()).unwrap();
    let toks = tokens();
    let opts = SessionOptions {
        n_ctx: 64,
        ..SessionOptions::default()
    };
    let batch = model
        .session(&opts)
        .unwrap()
        .forward(&toks, LogitsMode::All)
        .unwrap()
        .to_vec();
    let split = model
        .session(&SessionOptions {
            n_batch: 16,
            ..opts
        })
        .unwrap()
        .forward(&toks, LogitsMode::All)
        .unwrap()
        .to_vec();
    let d = batch
        .iter()
        .zip(&split)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    println!("synth-Q4_K_M: ubatches of 16 vs one batch: max |Δlogit| {d:.3e}");
    assert_eq!(d, 0.0);
}

#[test]
fn decode_matches_batch_f32() {
    assert!(incremental_vs_batch("F32", 20, 512) <= 1e-4);
}

#[test]
fn split_ubatches_match_one_batch() {
    assert!(incremental_vs_batch("Q8_0", 48, 7) <= 1e-4);
}

#[test]
fn truncate_and_reset_rewind_the_cache() {
    let model = Model::load(fixture("synth/synth-Q8_0.gguf"), &LoadOptions::default()).unwrap();
    let toks = tokens();
    let mut s = model
        .session(&SessionOptions {
            n_ctx: 64,
            ..Default::default()
        })
        .unwrap();
    let first = s.forward(&toks[..10], LogitsMode::Last).unwrap().to_vec();
    s.forward(&toks[10..30], LogitsMode::Last).unwrap();
    s.truncate(9).unwrap();
    assert_eq!(s.n_past(), 9);
    let again = s.forward(&toks[9..10], LogitsMode::Last).unwrap().to_vec();
    assert_eq!(first, again);
    s.reset();
    assert_eq!(s.n_past(), 0);
    let fresh = s.forward(&toks[..10], LogitsMode::Last).unwrap().to_vec();
    assert_eq!(first, fresh);
    assert!(s.truncate(11).is_err());
}

/// Every synthetic file.
const SYNTH: [&str; 15] = [
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_M", "Q4_K_M",
    "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS",
];

/// How incremental decoding's logits compare with one batch's.
struct IncVsBatch {
    /// Largest |Δlogit|.
    max_abs: f32,
    /// Largest |Δlogit| over the largest |logit| of the batch.
    max_rel: f32,
    /// Mean KL(batch || incremental) per position.
    mean_kld: f64,
    /// Fraction of positions whose argmax agrees.
    top1: f64,
}

/// One batch of `toks` vs `prefill` tokens as one batch then one token at a
/// time, both with `kernels`.
fn inc_vs_batch(model: &Model, toks: &[u32], prefill: usize, kernels: BatchKernels) -> IncVsBatch {
    let n_vocab = model.config().n_vocab;
    let opts = SessionOptions {
        n_ctx: toks.len(),
        batch_kernels: kernels,
        ..SessionOptions::default()
    };
    let mut s = model.session(&opts).unwrap();
    let batch = s.forward(toks, LogitsMode::All).unwrap().to_vec();
    let mut s = model.session(&opts).unwrap();
    let mut inc = s
        .forward(&toks[..prefill], LogitsMode::All)
        .unwrap()
        .to_vec();
    for &t in &toks[prefill..] {
        inc.extend_from_slice(s.forward(&[t], LogitsMode::Last).unwrap());
    }
    let a = compare(&batch, &inc, n_vocab);
    let scale = batch.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    IncVsBatch {
        max_abs: a.max_abs,
        max_rel: a.max_abs / scale,
        mean_kld: a.mean_kld,
        top1: a.top1,
    }
}

fn print_row(name: &str, kernels: BatchKernels, m: &IncVsBatch) {
    println!(
        "{name:<16} {kernels:<14?} max|Δ| {:.3e}  max rel {:.3e}  KLD {:.3e}  top-1 {:.1}%",
        m.max_abs,
        m.max_rel,
        m.mean_kld,
        m.top1 * 100.0
    );
}

fn smollm2() -> (Model, Vec<u32>) {
    let path = model_cache::default_model().expect("default model (SmolLM2-135M-Instruct Q4_1)");
    let model = Model::load(path, &LoadOptions::default()).unwrap();
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("smollm2/golden.json")).unwrap())
            .unwrap();
    let toks = g["passage"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    (model, toks)
}

/// Row-consistent kernels: prefill + decoding gives the batch's logits
/// exactly for every synthetic file (llama.cpp's kernels' figures printed
/// alongside, asserted where they hold: float weights).
#[test]
fn row_consistent_decode_matches_batch_synth() {
    let toks = tokens();
    for ftype in SYNTH {
        let model = Model::load(
            fixture(&format!("synth/synth-{ftype}.gguf")),
            &LoadOptions::default(),
        )
        .unwrap();
        let name = format!("synth-{ftype}");
        let llama = inc_vs_batch(&model, &toks, 16, BatchKernels::LlamaCpp);
        print_row(&name, BatchKernels::LlamaCpp, &llama);
        let rc = inc_vs_batch(&model, &toks, 16, BatchKernels::RowConsistent);
        print_row(&name, BatchKernels::RowConsistent, &rc);
        assert!(rc.max_abs <= 1e-4, "{name}: {}", rc.max_abs);
        assert_eq!(rc.top1, 1.0, "{name}");
    }
}

/// The real model: prefill 16 passage tokens, decode the other 21.
#[test]
fn decode_matches_batch_smollm2() {
    let (model, toks) = smollm2();
    let llama = inc_vs_batch(&model, &toks, 16, BatchKernels::LlamaCpp);
    print_row("smollm2-Q4_1", BatchKernels::LlamaCpp, &llama);
    let rc = inc_vs_batch(&model, &toks, 16, BatchKernels::RowConsistent);
    print_row("smollm2-Q4_1", BatchKernels::RowConsistent, &rc);
    assert!(rc.max_abs <= 1e-4, "{}", rc.max_abs);
    assert_eq!(rc.top1, 1.0);
}

/// SmolLM2 Q4_1, token 15 decoded after 15 vs its row of a 16-token batch.
/// Q4_1's matrix products take the same `vec_dot` for one row and a batch,
/// so only attention sums in another order (ggml_vec_dot_f16 vs tinyBLAS):
/// every matrix product agrees exactly and every attention output to float
/// rounding (≤ 1e-6 relative) until, in layer 22, the attention output jumps
/// by less than one `f16` ulp (2⁻¹⁰ relative) — what a last-bit difference of
/// a score makes of a probability that sits on an `f16` rounding boundary
/// when it is rounded to the cache type — and the later layers (activations
/// quantized to Q8_1 before each product) carry that jump to the logits.
/// With row-consistent kernels nothing differs.
#[test]
fn trace_smollm2_divergence_is_attention_rounding() {
    let (model, toks) = smollm2();
    let steps = decoded_vs_batch_row(&model, &toks[..16], BatchKernels::LlamaCpp);
    let first = steps
        .iter()
        .position(|&(_, _, _, rel)| rel > 1e-6)
        .expect("the decoded token differs from its batch row");
    for (layer, step, abs, rel) in &steps[..=first] {
        if *abs > 0.0 {
            println!("smollm2 token 15: {layer:?} {step:<12} max|Δ| {abs:.3e}  rel {rel:.3e}");
        }
    }
    for (layer, step, abs, rel) in &steps[..first] {
        let (abs, rel) = (*abs, *rel);
        if step == "kqv_out" {
            assert!(rel <= 1e-6, "{layer:?} {step}: rel {rel:.3e}");
        } else {
            assert_eq!(abs, 0.0, "{layer:?} {step}");
        }
    }
    let (layer, step, _, rel) = &steps[first];
    assert_eq!(step, "kqv_out", "first divergence at {layer:?} {step}");
    assert!(*rel < 1.0 / 1024.0, "{layer:?} {step}: rel {rel:.3e}");
    for (layer, step, abs, _) in
        decoded_vs_batch_row(&model, &toks[..16], BatchKernels::RowConsistent)
    {
        assert_eq!(abs, 0.0, "{layer:?} {step}");
    }
}

/// A row-consistent batch gives the logits of llama.cpp's kernels decoding
/// the tokens one at a time (both take the single-token kernels).
#[test]
fn row_consistent_batch_is_llama_cpp_decoding() {
    let model = Model::load(fixture("synth/synth-Q4_K_M.gguf"), &LoadOptions::default()).unwrap();
    let toks = &tokens()[..24];
    let opts = |batch_kernels| SessionOptions {
        n_ctx: 24,
        batch_kernels,
        ..SessionOptions::default()
    };
    let mut s = model.session(&opts(BatchKernels::RowConsistent)).unwrap();
    assert_eq!(s.batch_kernels(), BatchKernels::RowConsistent);
    let batch = s.forward(toks, LogitsMode::All).unwrap().to_vec();
    let mut s = model.session(&opts(BatchKernels::LlamaCpp)).unwrap();
    let mut dec = Vec::new();
    for &t in toks {
        dec.extend_from_slice(s.forward(&[t], LogitsMode::Last).unwrap());
    }
    assert_eq!(batch, dec);
}

/// The decoded token's values against its row of the batch, step by step
/// (`rel` = max |Δ| over the row's largest |value|).
fn decoded_vs_batch_row(
    model: &Model,
    toks: &[u32],
    kernels: BatchKernels,
) -> Vec<(Option<usize>, String, f32, f32)> {
    let p = toks.len() - 1;
    let opts = SessionOptions {
        n_ctx: toks.len(),
        batch_kernels: kernels,
        ..SessionOptions::default()
    };
    let mut batch = Trace::new();
    model
        .session(&opts)
        .unwrap()
        .forward_traced(toks, LogitsMode::Last, &mut batch)
        .unwrap();
    let mut s = model.session(&opts).unwrap();
    s.forward(&toks[..p], LogitsMode::Last).unwrap();
    let mut dec = Trace::new();
    s.forward_traced(&toks[p..], LogitsMode::Last, &mut dec)
        .unwrap();
    assert_eq!(batch.entries.len(), dec.entries.len());
    batch
        .entries
        .iter()
        .zip(&dec.entries)
        .map(|(b, d)| {
            assert_eq!((b.layer, &b.name, d.n_rows), (d.layer, &d.name, 1));
            // The batch's output steps hold only its last row already.
            let row = if b.n_rows == 1 { 0 } else { p };
            let brow = &b.values[row * b.width..(row + 1) * b.width];
            let abs = brow
                .iter()
                .zip(&d.values)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            let scale = brow.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            (
                b.layer,
                base_name(&b.name),
                abs,
                if scale > 0.0 { abs / scale } else { 0.0 },
            )
        })
        .collect()
}

/// The decode path computes what the batch computes for that row: with
/// llama.cpp's kernels the first layer's projections agree to float rounding
/// (the embedding and norm exactly) and the difference grows from there; with
/// row-consistent kernels every step is identical.
#[test]
fn trace_decoded_token_matches_its_batch_row() {
    let model = Model::load(fixture("synth/synth-Q4_K_M.gguf"), &LoadOptions::default()).unwrap();
    let all = tokens();
    for n in [9, 16, 24, 40, 64] {
        let toks = &all[..n];
        let steps = decoded_vs_batch_row(&model, toks, BatchKernels::LlamaCpp);
        for (layer, step, abs, rel) in &steps {
            if *layer != Some(1) {
                println!(
                    "synth-Q4_K_M, llama.cpp kernels, token {} after a batch of {}: {layer:?} {step:<12} max|Δ| {abs:.3e}  rel {rel:.3e}",
                    n - 1,
                    n - 1
                );
            }
        }
        for (layer, step, abs, rel) in &steps {
            match (layer, step.as_str()) {
                (None, "inp_embd") | (Some(0), "attn_norm") => {
                    assert_eq!(*abs, 0.0, "{n}: {step}")
                }
                (Some(0), "Qcur" | "Kcur" | "Vcur" | "kqv_out" | "attn_out") => {
                    assert!(*rel <= 1e-6, "{n}: {step}: rel {rel:.3e}")
                }
                _ => {}
            }
        }
        for (layer, step, abs, _) in decoded_vs_batch_row(&model, toks, BatchKernels::RowConsistent)
        {
            assert_eq!(abs, 0.0, "{n}: {layer:?} {step}");
        }
    }
}

/// A node's name without its block suffix (`Qcur-3` → `Qcur`).
fn base_name(name: &str) -> String {
    match name.rsplit_once('-') {
        Some((base, l)) if l.chars().all(|c| c.is_ascii_digit()) => base.to_string(),
        _ => name.to_string(),
    }
}

/// Several sequences in one batch (llama.cpp's `llama_batch` with a position
/// and a sequence id per token): interleaved prompts, then both decoded in
/// one batch of two rows, give each sequence exactly the logits it gets
/// alone (row-consistent kernels, so the batch's size does not change a
/// row's summation order).
#[test]
fn sequences_batched_together_match_each_alone() {
    use llama_model::Batch;
    let model = Model::load(fixture("synth/synth-Q4_K_M.gguf"), &LoadOptions::default()).unwrap();
    let a: Vec<u32> = (1..13).collect();
    let b: Vec<u32> = (40..49).collect();
    let opts = |n_seq| SessionOptions {
        n_ctx: 32,
        n_seq,
        batch_kernels: BatchKernels::RowConsistent,
        ..SessionOptions::default()
    };
    let nv = model.config().n_vocab;
    // Each alone: the prompt's last logits, then two decoded tokens.
    let alone = |toks: &[u32], next: [u32; 2]| {
        let mut s = model.session(&opts(1)).unwrap();
        let mut out = s.forward(toks, LogitsMode::Last).unwrap().to_vec();
        for t in next {
            out.extend_from_slice(s.forward(&[t], LogitsMode::Last).unwrap());
        }
        out
    };
    let (want_a, want_b) = (alone(&a, [7, 8]), alone(&b, [9, 10]));
    // Together: the prompts interleaved where both have tokens.
    let mut s = model.session(&opts(2)).unwrap();
    let (mut toks, mut pos, mut seq) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..a.len().max(b.len()) {
        for (sid, p) in [(0usize, &a), (1, &b)] {
            if i < p.len() {
                toks.push(p[i]);
                pos.push(i);
                seq.push(sid);
            }
        }
    }
    let last_a = seq.iter().rposition(|&x| x == 0).unwrap();
    let last_b = seq.iter().rposition(|&x| x == 1).unwrap();
    let output: Vec<bool> = (0..toks.len())
        .map(|i| i == last_a || i == last_b)
        .collect();
    let l = s
        .forward_batch(&Batch {
            tokens: &toks,
            pos: &pos,
            seq: &seq,
            output: &output,
        })
        .unwrap()
        .to_vec();
    // Output rows come in batch order: b's last prompt token precedes a's.
    let (mut got_a, mut got_b) = if last_a < last_b {
        (l[..nv].to_vec(), l[nv..].to_vec())
    } else {
        (l[nv..].to_vec(), l[..nv].to_vec())
    };
    for step in 0..2 {
        let toks = [[7u32, 8][step], [9u32, 10][step]];
        let pos = [a.len() + step, b.len() + step];
        let l = s
            .forward_batch(&Batch {
                tokens: &toks,
                pos: &pos,
                seq: &[0, 1],
                output: &[true, true],
            })
            .unwrap();
        got_a.extend_from_slice(&l[..nv]);
        got_b.extend_from_slice(&l[nv..]);
    }
    assert_eq!(got_a, want_a, "sequence 0");
    assert_eq!(got_b, want_b, "sequence 1");
    assert_eq!(
        (s.n_past_seq(0), s.n_past_seq(1)),
        (a.len() + 2, b.len() + 2)
    );
    // A token that does not continue its sequence is refused.
    let e = s
        .forward_batch(&Batch {
            tokens: &[1],
            pos: &[3],
            seq: &[1],
            output: &[true],
        })
        .unwrap_err();
    assert!(
        e.to_string().contains("does not continue sequence 1"),
        "{e}"
    );
}
