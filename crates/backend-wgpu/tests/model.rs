//! Whole-model logits on the synthetic fixtures against llama.cpp's logits.

use backend_wgpu::{GpuModel, GpuModelOptions};
use gguf_format::GgufFile;

use crate::common::{ctx, fixture, read};

/// Mean KL divergence KL(ref ‖ got) over rows of `n` logits, and the
/// fraction of rows whose argmax agrees.
pub fn kld_top1(reference: &[f32], got: &[f32], n: usize) -> (f64, f64) {
    assert_eq!(reference.len(), got.len());
    let rows = reference.len() / n;
    let (mut kld, mut agree) = (0f64, 0usize);
    fn logp(r: &[f32]) -> Vec<f64> {
        let mx = r.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let lse = r.iter().map(|&v| (v as f64 - mx).exp()).sum::<f64>().ln() + mx;
        r.iter().map(|&v| v as f64 - lse).collect()
    }
    let argmax = |r: &[f32]| {
        r.iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
            .0
    };
    for (a, b) in reference.chunks(n).zip(got.chunks(n)) {
        kld += logp(a)
            .into_iter()
            .zip(logp(b))
            .map(|(p, q)| p.exp() * (p - q))
            .sum::<f64>();
        agree += (argmax(a) == argmax(b)) as usize;
    }
    (kld / rows as f64, agree as f64 / rows as f64)
}

const FTYPES: [&str; 14] = [
    "F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q5_1", "Q4_K_M", "Q4_0", "Q4_1",
    "Q3_K_M", "Q2_K", "IQ4_NL",
];

fn tokens() -> Vec<u32> {
    serde_json::from_slice(&read("synth/tokens.json")).unwrap()
}

/// Every position's logits of the 64-token batch against llama.cpp's.
#[test]
fn synth_logits_match_llama_cpp() {
    let ctx = ctx();
    let toks = tokens();
    let mut report = Vec::new();
    for ftype in FTYPES.iter().chain(&["IQ4_XS"]) {
        let file = GgufFile::open(fixture(&format!("synth/synth-{ftype}.gguf"))).unwrap();
        let mut model = GpuModel::load(ctx.clone(), &file, &GpuModelOptions::default()).unwrap();
        let n = model.config().n_vocab as usize;
        let got = model.forward_all(&toks, 0).unwrap();
        let want: Vec<f32> =
            bytemuck::pod_collect_to_vec(&read(&format!("synth/synth-{ftype}.logits.f32")));
        let (kld, top1) = kld_top1(&want, &got, n);
        eprintln!(
            "synth-{ftype}: mean KLD {kld:.3e}, top-1 {:.1}%",
            top1 * 100.0
        );
        report.push((ftype, kld, top1));
    }
    for (ftype, kld, top1) in report {
        assert!(
            kld <= 1e-4 && top1 >= 0.98,
            "synth-{ftype}: mean KLD {kld:.3e}, top-1 {top1}"
        );
    }
}

/// Token by token (matvec path, growing KV cache) agrees with the batch.
#[test]
fn synth_incremental_matches_batch() {
    let ctx = ctx();
    let toks = tokens();
    let file = GgufFile::open(fixture("synth/synth-Q4_K_M.gguf")).unwrap();
    let mut model = GpuModel::load(
        ctx,
        &file,
        &GpuModelOptions {
            n_ctx: Some(128),
            max_batch: 16,
            ..Default::default()
        },
    )
    .unwrap();
    let n = model.config().n_vocab as usize;
    let want: Vec<f32> = bytemuck::pod_collect_to_vec(&read("synth/synth-Q4_K_M.logits.f32"));
    // A 20-token prompt (two steps of ≤16), then one token at a time.
    let mut got = Vec::new();
    let first = model.forward(&toks[..20], 0).unwrap();
    assert_eq!(first.len(), n);
    for (i, &t) in toks.iter().enumerate().skip(20) {
        got.extend(model.forward(&[t], i as u32).unwrap());
    }
    let (kld, top1) = kld_top1(&want[20 * n..], &got, n);
    eprintln!(
        "incremental synth-Q4_K_M: mean KLD {kld:.3e}, top-1 {:.1}%",
        top1 * 100.0
    );
    assert!(kld <= 1e-4 && top1 >= 0.98);
    // Greedy argmax on the GPU agrees with the read-back logits.
    let g = model.forward_greedy(&toks[..10], 0).unwrap();
    let l = model.forward(&toks[..10], 0).unwrap();
    let best = l
        .iter()
        .enumerate()
        .fold((0, f32::MIN), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
        .0;
    assert_eq!(g as usize, best);
    // Chained greedy decoding equals step-by-step greedy decoding.
    let chained = model.generate_greedy(&toks[..10], 0, 8).unwrap();
    let mut stepwise = vec![model.forward_greedy(&toks[..10], 0).unwrap()];
    for i in 1..8 {
        let t = *stepwise.last().unwrap();
        stepwise.push(model.forward_greedy(&[t], 10 + i - 1).unwrap());
    }
    assert_eq!(chained, stepwise);
}
