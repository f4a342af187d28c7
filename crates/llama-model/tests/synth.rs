//! Every synth-<FTYPE>.gguf: 64 tokens as one batch against llama.cpp's logits, bit for bit.

use llama_model::{LoadOptions, LogitsMode, Model, SessionOptions};

use crate::common::{compare, fixture, read_f32};

fn tokens() -> Vec<u32> {
    let text = std::fs::read_to_string(fixture("synth/tokens.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Runs one file and checks it against its target.
fn check(ftype: &str) {
    let model = Model::load(
        fixture(&format!("synth/synth-{ftype}.gguf")),
        &LoadOptions::default(),
    )
    .unwrap_or_else(|e| panic!("synth-{ftype}: {e}"));
    let n_vocab = model.config().n_vocab;
    let toks = tokens();
    let mut s = model
        .session(&SessionOptions {
            n_ctx: 128,
            ..SessionOptions::default()
        })
        .unwrap();
    let ours = s.forward(&toks, LogitsMode::All).unwrap().to_vec();
    let reference = read_f32(&fixture(&format!("synth/synth-{ftype}.logits.f32")));
    let a = compare(&reference, &ours, n_vocab);
    println!(
        "synth-{ftype:<7} mean KLD {:.3e}  top-1 {:6.2}%  max |Δlogit| {:.3e}",
        a.mean_kld,
        a.top1 * 100.0,
        a.max_abs
    );
    // Every kernel mirrors the summation order of llama.cpp's x86 build, so
    // the logits are not merely close but bit-identical; any difference is
    // a regression in some kernel's order.
    assert!(
        a.max_abs == 0.0,
        "synth-{ftype}: logits differ from llama.cpp's (max |Δ| {:e}); they were bit-identical",
        a.max_abs
    );
    assert!(
        a.mean_kld <= 1e-4,
        "synth-{ftype}: mean KLD {} > 1e-4",
        a.mean_kld
    );
    assert!(
        a.top1 >= 0.98,
        "synth-{ftype}: top-1 agreement {} < 98%",
        a.top1
    );
}

macro_rules! synth_tests {
    ($($name:ident => $ftype:literal),* $(,)?) => {
        $(#[test] fn $name() { check($ftype); })*
    };
}

synth_tests! {
    f32 => "F32",
    f16 => "F16",
    bf16 => "BF16",
    q8_0 => "Q8_0",
    q6_k => "Q6_K",
    q5_k_m => "Q5_K_M",
    q5_0 => "Q5_0",
    q5_1 => "Q5_1",
    q4_k_m => "Q4_K_M",
    q4_0 => "Q4_0",
    q4_1 => "Q4_1",
    q3_k_m => "Q3_K_M",
    q2_k => "Q2_K",
    iq4_nl => "IQ4_NL",
    iq4_xs => "IQ4_XS",
    q2_0 => "Q2_0",
    q1_0 => "Q1_0",
    // No llama-quantize file type makes NVFP4: this file is llama-quantize's
    // Q8_0 with `--tensor-type blk=nvfp4` (every block matrix NVFP4).
    nvfp4 => "NVFP4",
}
