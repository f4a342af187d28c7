//! llama-model's forward pass (the one written against tensor-core's
//! `Backend` seam) on the GPU, against the same forward pass on the CPU.

use std::sync::Arc;

use backend_wgpu::WgpuBackend;
use llama_model::{CpuBackend, LoadOptions, LogitsMode, Model, SessionOptions};

use crate::common::{ctx, fixture, read};
use crate::model::kld_top1;

/// The backend in exact mode (the CPU's bits).
fn exact_backend() -> WgpuBackend {
    WgpuBackend::with_options(ctx(), backend_wgpu::GpuOptions { exact: true })
}

fn logits<B: llama_model::Backend>(
    model: &Model<B>,
    toks: &[u32],
    n_batch: usize,
    compile: bool,
) -> Vec<f32> {
    let mut s = model
        .session(&SessionOptions {
            n_ctx: 128,
            n_batch,
            compile,
            ..SessionOptions::default()
        })
        .unwrap();
    s.forward(toks, LogitsMode::All).unwrap().to_vec()
}

#[test]
fn seam_forward_matches_cpu() {
    let toks: Vec<u32> = serde_json::from_slice(&read("synth/tokens.json")).unwrap();
    for ftype in ["F16", "Q8_0", "Q4_K_M"] {
        let file = Arc::new(
            gguf_format::GgufFile::open(fixture(&format!("synth/synth-{ftype}.gguf"))).unwrap(),
        );
        let gpu = Model::load_with(&file, exact_backend(), &LoadOptions::default()).unwrap();
        let cpu = Model::load_with(&file, CpuBackend::default(), &LoadOptions::default()).unwrap();
        let n = cpu.config().n_vocab;
        // One batch, then batches of 7 (prompt chunks and a growing cache),
        // each against the CPU in the same batches (whose size picks
        // llama.cpp's kernel, and so the float order).
        // Node by node through the seam, and compiled.
        for (n_batch, compile) in [(64, false), (7, false), (64, true), (7, true)] {
            let want = logits(&cpu, &toks, n_batch, false);
            let got = logits(&gpu, &toks, n_batch, compile);
            let (kld, top1) = kld_top1(&want, &got, n);
            eprintln!(
                "synth-{ftype} n_batch {n_batch}, compiled {compile}: GPU vs CPU mean KLD {kld:.3e}, top-1 {:.1}%",
                top1 * 100.0
            );
            // The quantized products are exact, and so are F16's batches
            // above four tokens; F16 with one to four tokens (the last
            // chunk of 7s) sums in the matrix-vector kernel's own order.
            let bound = if ftype == "F16" { 1e-4 } else { 1e-9 };
            assert!(
                kld <= bound && top1 >= 0.95,
                "synth-{ftype}: mean KLD {kld:.3e}, top-1 {top1}"
            );
        }
    }
}
