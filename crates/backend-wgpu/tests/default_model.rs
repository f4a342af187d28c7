//! The default model (SmolLM2-135M-Instruct Q4_1) on the GPU against the
//! CPU backend: a prompt as one batch, then a few decoding steps.

use llama_model::{LoadOptions, LogitsMode, Model, SessionOptions};

use crate::common::{cpu_decode, fixture, gpu_decode};
use crate::model::kld_top1;

/// Tokens of the prompt batch; the next `DECODE` passage tokens are decoded one at a time.
const PROMPT: usize = 24;
const DECODE: usize = 4;

fn passage() -> Vec<u32> {
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("smollm2/golden.json")).unwrap())
            .unwrap();
    g["passage"]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect()
}

/// Every position's logits, GPU vs CPU, to issue #8's bound (mean KLD
/// ≤ 1e-4, top-1 ≥ 98%), for the prompt batch and for the decoding steps
/// separately. Every kernel this model uses (Q4_1 and Q8_0 products as
/// ggml's integer block sums in its float order, RMSNorm, RoPE, attention,
/// SwiGLU) computes the CPU's bits, so on llvmpipe the logits are
/// identical. The CPU's own batch-vs-decode divergence (llama.cpp's batch
/// and single-token kernels sum in different orders) is printed for scale:
/// SmolLM2 amplifies any last-bit difference to a KLD of ~2.4e-3.
#[test]
fn default_model_gpu_matches_cpu() {
    let path = model_cache::default_model().expect("default model (SmolLM2-135M-Instruct Q4_1)");
    let toks = passage();
    assert!(toks.len() >= PROMPT + DECODE);
    let (prompt, decode) = (&toks[..PROMPT], &toks[PROMPT..PROMPT + DECODE]);
    let want = cpu_decode(&path, prompt, decode, true);
    let got = gpu_decode(&path, prompt, decode, true);
    let n = want.len() / (PROMPT + DECODE);
    assert_eq!(got.len(), want.len());
    // The CPU's own sensitivity to summation order: the decoded tokens' rows
    // of one batch of all tokens (llama.cpp's batch kernels) against the
    // decoding steps (its single-token kernels).
    let cpu = Model::load(&path, &LoadOptions::default()).unwrap();
    let whole = cpu
        .session(&SessionOptions {
            n_ctx: PROMPT + DECODE,
            ..Default::default()
        })
        .unwrap()
        .forward(&toks[..PROMPT + DECODE], LogitsMode::All)
        .unwrap()
        .to_vec();
    let (kld_cpu, _) = kld_top1(&whole[PROMPT * n..], &want[PROMPT * n..], n);

    let (kld_b, top1_b) = kld_top1(&want[..PROMPT * n], &got[..PROMPT * n], n);
    let (kld_d, top1_d) = kld_top1(&want[PROMPT * n..], &got[PROMPT * n..], n);
    let (kld, top1) = kld_top1(&want, &got, n);
    eprintln!(
        "default model GPU vs CPU: batch of {PROMPT}: KLD {kld_b:.3e} top-1 {:.1}%; \
         {DECODE} decode steps: KLD {kld_d:.3e} top-1 {:.1}%; all: KLD {kld:.3e} top-1 {:.1}%; \
         CPU batch vs CPU decode on the decoded rows: KLD {kld_cpu:.3e}",
        top1_b * 100.0,
        top1_d * 100.0,
        top1 * 100.0
    );
    assert!(
        kld <= 1e-4 && kld_b <= 1e-4 && kld_d <= 1e-4 && top1 >= 0.98,
        "mean KLD {kld:.3e} (batch {kld_b:.3e}, decoded rows {kld_d:.3e}), top-1 {top1}"
    );
}
