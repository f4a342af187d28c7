//! Mixtures of experts compiled on the GPU (the fast mode, `moe.wgsl`): the
//! qwen3moe fixture of tests/fixtures/archs (4 experts, top-2, softmax
//! gating, renormalised weights; random weights) runs as one program, the
//! routing on the GPU, and its logits agree with the CPU's within the fast
//! mode's bound. The exact mode keeps running these graphs node by node.

use std::path::Path;

use backend_wgpu::GpuOptions;
use llama_model::SessionOptions;

use crate::common::{
    arch_file, cpu_decode, gpu_batch, gpu_model_with, gpu_program, gpu_steps, n_vocab, tokens,
};
use crate::model::kld_top1;

/// Tokens of each check.
const TOKENS: usize = 40;

/// The logits of `toks` decoded one token a step in the fast mode (the
/// graph compiled), the CPU's decoding, and the dispatches of a step.
fn fast_decode(path: &Path, toks: &[u32]) -> (Vec<f32>, Vec<f32>, usize) {
    let want = cpu_decode(path, &toks[..1], &toks[1..], false);
    let (got, dispatches) = gpu_steps(path, toks, GpuOptions { exact: false });
    (want, got, dispatches)
}

/// The ops of a fast decoding step of `path` by label
/// ([`backend_wgpu::GpuProgram::step_ops`]).
fn fast_step_ops(path: &Path) -> Vec<(&'static str, usize, bool)> {
    let gpu = gpu_model_with(path, GpuOptions { exact: false });
    let mut s = gpu
        .session(&SessionOptions {
            n_ctx: 8,
            ..Default::default()
        })
        .unwrap();
    gpu_program(&mut s).step_ops()
}

/// A decoding step routes each layer's tokens in one `moe_route` and sums
/// the experts into the residual in `moe_sum` (no `add` dispatch after it).
#[test]
fn qwen3moe_step_sums_experts_into_the_residual() {
    let ops = fast_step_ops(&arch_file("qwen3moe", "F32"));
    eprintln!("qwen3moe F32 fast decoding step: {ops:?}");
    let count = |l: &str| ops.iter().find(|o| o.0 == l).map_or(0, |o| o.1);
    let layers = count("moe_route");
    assert!(layers > 0, "{ops:?}");
    assert_eq!(count("moe_sum"), layers, "{ops:?}");
    assert_eq!(count("add"), 0, "{ops:?}");
}

/// The fast mode compiles the graph (the exact mode does not) and decodes
/// token by token, and runs batches (40 tokens: the dense products through
/// mm_fast, the experts grouped; steps of 5: the exact kernels, a product a
/// pair), near the CPU's logits: F32
/// files within mean KLD 1e-5, quantized ones (whose activations the CPU
/// rounds to Q8 and the fast mode does not) within 1e-2, same top-1 ≥ 90%.
/// Measured on llvmpipe (decoding; batches of 40; steps of 5): F32 1.7e-7,
/// 1.8e-7, 2.8e-10; Q8_0 6.8e-4, 6.8e-4, 8.4e-4; Q4_K_M 5.8e-3, 5.3e-3,
/// 1.4e-3 (top-1 ≥ 97.5%; with a product a pair in the batches of 40
/// too, before the experts were grouped: F32 1.3e-8, the others the same). The dense qwen3 fixture's fast decoding, printed
/// beside them, is of the same order (F32 4.4e-7, Q8_0 1.1e-3, Q4_K_M
/// 3.4e-3): the unrounded activations, not the experts.
#[test]
fn qwen3moe_compiles_and_agrees_in_fast_mode() {
    for ftype in ["F32", "Q8_0", "Q4_K_M"] {
        let path = arch_file("qwen3moe", ftype);
        let toks = tokens(n_vocab(&path), TOKENS);
        {
            let exact = gpu_model_with(&path, GpuOptions { exact: true });
            let s = exact
                .session(&SessionOptions {
                    n_ctx: toks.len(),
                    ..Default::default()
                })
                .unwrap();
            assert!(
                !s.is_compiled(),
                "the exact mode runs mixtures of experts node by node"
            );
        }
        let bound = if ftype == "F32" { 1e-5 } else { 1e-2 };
        let (decoded, got, dispatches) = fast_decode(&path, &toks);
        eprintln!("qwen3moe {ftype}: {dispatches} dispatches a decoding step");
        let n = decoded.len() / toks.len();
        let (kld, top1) = kld_top1(&decoded, &got, n);
        let dense = arch_file("qwen3", ftype);
        let dense_toks = tokens(n_vocab(&dense), TOKENS);
        let (dw, dg, _) = fast_decode(&dense, &dense_toks);
        let (kld_dense, top1_dense) = kld_top1(&dw, &dg, dw.len() / dense_toks.len());
        eprintln!(
            "qwen3moe {ftype}, {} tokens decoded: fast mode vs CPU mean KLD {kld:.3e}, \
             same top-1 {:.1}% (dense qwen3: {kld_dense:.3e}, {:.1}%)",
            toks.len(),
            top1 * 100.0,
            top1_dense * 100.0
        );
        assert!(
            kld <= bound && top1 >= 0.9,
            "{ftype} decode: mean KLD {kld:.3e}, top-1 {top1}"
        );
        // Batches: every position's logits.
        let want = cpu_decode(&path, &toks, &[], true);
        for n_batch in [toks.len(), 5] {
            let got = gpu_batch(&path, &toks, false, Some(n_batch));
            let (kld, top1) = kld_top1(&want, &got, n);
            eprintln!(
                "qwen3moe {ftype}, {} tokens in steps of {n_batch}: fast mode vs CPU batch \
                 mean KLD {kld:.3e}, same top-1 {:.1}%",
                toks.len(),
                top1 * 100.0
            );
            assert!(
                kld <= bound && top1 >= 0.9,
                "{ftype} batch {n_batch}: mean KLD {kld:.3e}, top-1 {top1}"
            );
        }
    }
}

/// Prompts of `MOE_MM_MIN_TOKENS` tokens or more group each expert's
/// (token, slot) pairs (`moe_bucket`, then `mm_fast`/`mm_coop` gathered:
/// llama.cpp's mul_mat_id) instead of a product per pair (`moe_mv`, which
/// smaller batches keep), and agree with the CPU's logits within the fast
/// mode's bounds (F32 1e-5, quantized 1e-2, same top-1 ≥ 90%). 150 tokens
/// in one batch give each of the fixture's 4 experts ~75 of the 300 pairs:
/// more than one tile of 64; 16, the fewest that group, one tile each (and
/// a last step of 6 a product a pair). Measured on llvmpipe (one batch;
/// steps of 16): F32 9.4e-8, 9.2e-8; Q8_0 7.7e-4, 6.5e-4; Q4_K_M 2.4e-3,
/// 2.5e-3 (top-1 ≥ 98.7%).
#[test]
fn qwen3moe_prompt_batches_group_experts() {
    let min = backend_wgpu::ops::MOE_MM_MIN_TOKENS as usize;
    for ftype in ["F32", "Q8_0", "Q4_K_M"] {
        let path = arch_file("qwen3moe", ftype);
        let toks = tokens(n_vocab(&path), 150);
        {
            let gpu = gpu_model_with(&path, GpuOptions { exact: false });
            let mut s = gpu
                .session(&SessionOptions {
                    n_ctx: toks.len(),
                    n_batch: toks.len(),
                    ..Default::default()
                })
                .unwrap();
            let program = gpu_program(&mut s);
            let count = |ops: &[(&str, usize, bool)], l: &str| {
                ops.iter().find(|o| o.0 == l).map_or(0, |o| o.1)
            };
            for n in [min, toks.len()] {
                let ops = program.batch_ops(n as u32);
                let layers = count(&ops, "moe_route");
                assert!(layers > 0, "{ops:?}");
                assert_eq!(count(&ops, "moe_bucket"), layers, "{n}: {ops:?}");
                assert_eq!(count(&ops, "ffn_down_exps_grouped"), layers, "{n}: {ops:?}");
                assert!(
                    count(&ops, "ffn_gate_up_exps_grouped") >= layers,
                    "{n}: {ops:?}"
                );
                assert_eq!(count(&ops, "ffn_down_exps"), 0, "{n}: {ops:?}");
                assert_eq!(count(&ops, "ffn_gate_up_exps"), 0, "{n}: {ops:?}");
            }
            let ops = program.batch_ops(min as u32 - 1);
            assert_eq!(count(&ops, "moe_bucket"), 0, "{ops:?}");
            assert_eq!(count(&ops, "ffn_down_exps_grouped"), 0, "{ops:?}");
            assert!(count(&ops, "ffn_down_exps") > 0, "{ops:?}");
        }
        let bound = if ftype == "F32" { 1e-5 } else { 1e-2 };
        let want = cpu_decode(&path, &toks, &[], true);
        let n_vocab = want.len() / toks.len();
        for n_batch in [toks.len(), min] {
            let got = gpu_batch(&path, &toks, false, Some(n_batch));
            let (kld, top1) = kld_top1(&want, &got, n_vocab);
            eprintln!(
                "qwen3moe {ftype}, {} tokens in batches of {n_batch} (experts grouped): fast \
                 mode vs CPU mean KLD {kld:.3e}, same top-1 {:.1}%",
                toks.len(),
                top1 * 100.0
            );
            assert!(
                kld <= bound && top1 >= 0.9,
                "{ftype} batch {n_batch}: mean KLD {kld:.3e}, top-1 {top1}"
            );
        }
    }
}
