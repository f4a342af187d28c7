//! Shared helpers: the device and the fixtures.

use std::sync::{Arc, OnceLock};

use backend_wgpu::{DeviceOptions, GpuContext};

/// The GPU, opened once per test binary. Panics (fails the test) when no
/// adapter exists: a GPU test must never pass without running.
pub fn ctx() -> Arc<GpuContext> {
    static CTX: OnceLock<Arc<GpuContext>> = OnceLock::new();
    CTX.get_or_init(|| {
        let ctx = GpuContext::new(&DeviceOptions::default())
            .unwrap_or_else(|e| panic!("GPU tests need an adapter (CI installs llvmpipe): {e}"));
        eprintln!("GPU tests on {:?}", ctx.caps());
        ctx
    })
    .clone()
}

/// Path of a file under tests/fixtures.
pub fn fixture(rel: &str) -> String {
    format!("{}/../../tests/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"))
}

/// A fixture file's bytes.
pub fn read(rel: &str) -> Vec<u8> {
    let path = fixture(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The CPU backend's logits for `prompt` as one batch (every position's
/// when `all`, else the last one's), then for each of `decode` token by
/// token: llama-model's batch and single-token kernels.
pub fn cpu_decode(path: &std::path::Path, prompt: &[u32], decode: &[u32], all: bool) -> Vec<f32> {
    use llama_model::{LoadOptions, LogitsMode, Model, SessionOptions};
    let cpu = Model::load(path, &LoadOptions::default()).unwrap();
    let mut s = cpu
        .session(&SessionOptions {
            n_ctx: prompt.len() + decode.len(),
            ..Default::default()
        })
        .unwrap();
    let mode = if all {
        LogitsMode::All
    } else {
        LogitsMode::Last
    };
    let mut out = s.forward(prompt, mode).unwrap().to_vec();
    for &t in decode {
        out.extend_from_slice(s.forward(&[t], LogitsMode::Last).unwrap());
    }
    out
}

/// A model file loaded on the GPU in exact mode (its graph as the backend
/// rewrites it).
pub fn gpu_model(path: &std::path::Path) -> llama_model::Model<backend_wgpu::WgpuBackend> {
    gpu_model_with(path, backend_wgpu::GpuOptions { exact: true })
}

/// A model file loaded on the GPU, computing as `opts` says.
pub fn gpu_model_with(
    path: &std::path::Path,
    opts: backend_wgpu::GpuOptions,
) -> llama_model::Model<backend_wgpu::WgpuBackend> {
    let file = Arc::new(gguf_format::GgufFile::open(path).unwrap());
    let backend = backend_wgpu::WgpuBackend::with_options(ctx(), opts);
    llama_model::Model::load_with(&file, backend, &llama_model::LoadOptions::default()).unwrap()
}

/// [`cpu_decode`] on the GPU, compiled: the prompt as one step, then one
/// step per decoded token.
pub fn gpu_decode(path: &std::path::Path, prompt: &[u32], decode: &[u32], all: bool) -> Vec<f32> {
    use llama_model::{LogitsMode, SessionOptions};
    let gpu = gpu_model(path);
    let mut s = gpu
        .session(&SessionOptions {
            n_ctx: prompt.len() + decode.len(),
            n_batch: prompt.len(),
            ..Default::default()
        })
        .unwrap();
    assert!(s.is_compiled(), "the GPU compiles this graph");
    let mode = if all {
        LogitsMode::All
    } else {
        LogitsMode::Last
    };
    let mut out = s.forward(prompt, mode).unwrap().to_vec();
    for &t in decode {
        out.extend_from_slice(s.forward(&[t], LogitsMode::Last).unwrap());
    }
    out
}

/// `toks` decoded one step a token on the GPU with `opts`, compiled: every
/// step's logits, and the program's dispatches in a decoding step.
pub fn gpu_steps(
    path: &std::path::Path,
    toks: &[u32],
    opts: backend_wgpu::GpuOptions,
) -> (Vec<f32>, usize) {
    use llama_model::{LogitsMode, SessionOptions};
    let gpu = gpu_model_with(path, opts);
    let mut s = gpu
        .session(&SessionOptions {
            n_ctx: toks.len(),
            ..Default::default()
        })
        .unwrap();
    assert!(s.is_compiled(), "{}: the GPU compiles it", path.display());
    let mut got = Vec::new();
    for &t in toks {
        got.extend_from_slice(s.forward(&[t], LogitsMode::Last).unwrap());
    }
    (got, gpu_program(&mut s).dispatches_per_step())
}

/// The GPU program a compiled session runs.
pub fn gpu_program<'a>(
    s: &'a mut llama_model::Session<'_, backend_wgpu::WgpuBackend>,
) -> &'a mut backend_wgpu::GpuProgram {
    s.program_mut()
        .and_then(|p| p.as_any_mut().downcast_mut::<backend_wgpu::GpuProgram>())
        .expect("a compiled GPU program")
}

/// The logits of every position of `toks` run as one batch on the GPU (or
/// steps of `n_batch` tokens), in exact (`exact`) or fast mode.
pub fn gpu_batch(
    path: &std::path::Path,
    toks: &[u32],
    exact: bool,
    n_batch: Option<usize>,
) -> Vec<f32> {
    use llama_model::{LogitsMode, SessionOptions};
    let gpu = gpu_model_with(path, backend_wgpu::GpuOptions { exact });
    let mut s = gpu
        .session(&SessionOptions {
            n_ctx: toks.len(),
            n_batch: n_batch.unwrap_or(toks.len()),
            ..Default::default()
        })
        .unwrap();
    assert!(s.is_compiled());
    s.forward(toks, LogitsMode::All).unwrap().to_vec()
}

/// The `arch` fixture in file type `ftype`: the F32 file from
/// tools/make_arch_fixtures.py (made if missing), others quantized from it
/// once per target directory.
pub fn arch_file(arch: &str, ftype: &str) -> std::path::PathBuf {
    use std::path::{Path, PathBuf};
    let f32_path = PathBuf::from(fixture(&format!("archs/{arch}/{arch}-F32.gguf")));
    if !f32_path.exists() {
        let out = std::process::Command::new("python3")
            .arg(fixture("../../tools/make_arch_fixtures.py"))
            .arg(fixture("archs"))
            .args(["--arch", arch])
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
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("arch-{arch}-{ftype}.gguf"));
    if !out.exists() {
        let input = gguf_format::GgufFile::open(&f32_path).unwrap();
        let ft: llama_model::quantize::FileType = ftype.parse().unwrap();
        let w = llama_model::quantize::quantize_model(&input, ft, |_| {}).unwrap();
        let tmp = out.with_extension(format!("{}.part", std::process::id()));
        w.write_file(&tmp).unwrap();
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
}

/// `n` token ids spread over a vocabulary of `n_vocab` (random weights: any
/// text will do).
pub fn tokens(n_vocab: usize, n: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 7919 + 13) % n_vocab) as u32).collect()
}

/// The vocabulary size of the model at `path` (its logits' length).
pub fn n_vocab(path: &std::path::Path) -> usize {
    use llama_model::{LoadOptions, LogitsMode, Model, SessionOptions};
    let cpu = Model::load(path, &LoadOptions::default()).unwrap();
    let mut s = cpu.session(&SessionOptions::default()).unwrap();
    s.forward(&[1], LogitsMode::Last).unwrap().len()
}

/// The variable naming the test a child run of this binary is for
/// ([`run_child`]).
const CHILD_ENV: &str = "STRATA_TEST_CHILD";

/// Whether this process is [`run_child`]'s run of `test`.
pub fn is_child(test: &str) -> bool {
    std::env::var(CHILD_ENV).is_ok_and(|v| v == test)
}

/// Runs test `test` (its path, `module::name`) alone in a child process of
/// this test binary, with `env` set (variables that must be set before the
/// driver loads or any program is compiled) and [`is_child`] true for it;
/// returns what it printed and how it ended.
pub fn run_child(test: &str, env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(std::env::current_exe().expect("the test binary's path"))
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, test)
        .envs(env.iter().copied())
        .output()
        .expect("the test binary runs again")
}
