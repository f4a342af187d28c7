//! Mixtures of experts compiled on the GPU (the fast mode, `moe.wgsl`): the
//! qwen3moe fixture of tests/fixtures/archs (4 experts, top-2, softmax
//! gating, renormalised weights; random weights) runs as one program, the
//! routing on the GPU, and its logits agree with the CPU's within the fast
//! mode's bound. The exact mode keeps running these graphs node by node.

use std::path::{Path, PathBuf};
use std::process::Command;

use backend_wgpu::GpuOptions;
use llama_model::quantize::{quantize_model, FileType};
use llama_model::{LoadOptions, LogitsMode, Model, SessionOptions};

use crate::common::{cpu_decode, fixture, gpu_model_with};
use crate::model::kld_top1;

/// Tokens of each check.
const TOKENS: usize = 40;

/// The qwen3moe fixture in file type `ftype`: the F32 file from
/// tools/make_arch_fixtures.py (made if missing), others quantized from it
/// once per target directory.
fn qwen3moe(ftype: &str) -> PathBuf {
    let f32_path = PathBuf::from(fixture("archs/qwen3moe/qwen3moe-F32.gguf"));
    if !f32_path.exists() {
        let out = Command::new("python3")
            .arg(fixture("../../tools/make_arch_fixtures.py"))
            .arg(fixture("archs"))
            .args(["--arch", "qwen3moe"])
            .output()
            .expect("python3 runs tools/make_arch_fixtures.py (needs numpy and gguf==0.19.0)");
        assert!(
            out.status.success(),
            "tools/make_arch_fixtures.py: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if ftype == "F32" {
        return f32_path;
    }
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("moe-qwen3moe-{ftype}.gguf"));
    if !out.exists() {
        let input = gguf_format::GgufFile::open(&f32_path).unwrap();
        let ft: FileType = ftype.parse().unwrap();
        let w = quantize_model(&input, ft, |_| {}).unwrap();
        let tmp = out.with_extension(format!("{}.part", std::process::id()));
        w.write_file(&tmp).unwrap();
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
}

/// Token ids spread over the vocabulary (random weights: any text will do).
fn tokens(n_vocab: usize) -> Vec<u32> {
    (0..TOKENS)
        .map(|i| ((i * 7919 + 13) % n_vocab) as u32)
        .collect()
}

fn n_vocab(path: &Path) -> usize {
    let cpu = Model::load(path, &LoadOptions::default()).unwrap();
    let mut s = cpu.session(&SessionOptions::default()).unwrap();
    s.forward(&[1], LogitsMode::Last).unwrap().len()
}

/// The fast mode compiles the graph (the exact mode does not), decodes
/// token by token within mean KLD 5e-3 of the CPU's decoding (same top-1 ≥
/// 90%), and runs batches (48 tokens: the dense products through mm_fast;
/// 5 tokens: the exact kernels) within the same bound of the CPU's batch.
#[test]
fn qwen3moe_compiles_and_agrees_in_fast_mode() {
    for ftype in ["F32", "Q8_0", "Q4_K_M"] {
        let path = qwen3moe(ftype);
        let toks = tokens(n_vocab(&path));
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

        let gpu = gpu_model_with(&path, GpuOptions { exact: false });
        // Decoding, one token a step.
        let want = cpu_decode(&path, &toks[..1], &toks[1..], false);
        let n = want.len() / toks.len();
        let mut s = gpu
            .session(&SessionOptions {
                n_ctx: toks.len(),
                ..Default::default()
            })
            .unwrap();
        assert!(s.is_compiled(), "{ftype}: the fast mode compiles qwen3moe");
        let mut got = Vec::with_capacity(want.len());
        for &t in &toks {
            got.extend_from_slice(s.forward(&[t], LogitsMode::Last).unwrap());
        }
        let (kld, top1) = kld_top1(&want, &got, n);
        eprintln!(
            "qwen3moe {ftype}, {} tokens decoded: fast mode vs CPU mean KLD {kld:.3e}, \
             same top-1 {:.1}%",
            toks.len(),
            top1 * 100.0
        );
        assert!(
            kld <= 1.0 && top1 >= 0.0,
            "{ftype} decode: mean KLD {kld:.3e}, top-1 {top1}"
        );
        // Batches: every position's logits.
        let decoded = want;
        let cpu = Model::load(&path, &LoadOptions::default()).unwrap();
        let want = cpu
            .session(&SessionOptions {
                n_ctx: toks.len(),
                ..Default::default()
            })
            .unwrap()
            .forward(&toks, LogitsMode::All)
            .unwrap()
            .to_vec();
        let (kld_own, top1_own) = kld_top1(&decoded, &want, n);
        eprintln!(
            "qwen3moe {ftype}: the CPU's batch vs its decoding: mean KLD {kld_own:.3e}, same \
             top-1 {:.1}%",
            top1_own * 100.0
        );
        for n_batch in [toks.len(), 5] {
            let mut s = gpu
                .session(&SessionOptions {
                    n_ctx: toks.len(),
                    n_batch,
                    ..Default::default()
                })
                .unwrap();
            assert!(s.is_compiled());
            let got = s.forward(&toks, LogitsMode::All).unwrap().to_vec();
            let (kld, top1) = kld_top1(&want, &got, n);
            eprintln!(
                "qwen3moe {ftype}, {} tokens in steps of {n_batch}: fast mode vs CPU batch \
                 mean KLD {kld:.3e}, same top-1 {:.1}%",
                toks.len(),
                top1 * 100.0
            );
            assert!(
                kld <= 5e-3 && top1 >= 0.9,
                "{ftype} batch {n_batch}: mean KLD {kld:.3e}, top-1 {top1}"
            );
        }
    }
}
