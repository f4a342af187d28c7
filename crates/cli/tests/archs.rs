//! Every architecture against llama.cpp: random-weight models of twelve
//! architectures (`tests/fixtures/archs`), each in F32, F16, Q8_0 and Q4_K_M
//! (gpt-oss also in MXFP4_MOE),
//! scored by `strata perplexity --kl-base` against llama.cpp's own KL-base
//! files (CPU, flash attention off): one command per file.
//!
//! The F32 models are not committed (48 MB): `tools/make_arch_fixtures.py`
//! writes them deterministically (numpy's seeded PCG64, gguf-py 0.19.0) and
//! the test checks each against the SHA-256 llama.cpp's run recorded in
//! `manifest.json`; the quantized files are made by `strata quantize` and
//! must be byte-identical to llama-quantize's (the manifest's SHA-256 again).
//! The GPU runs the same graph and is held to the CPU backend's logits.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::Value;
use sha2::{Digest, Sha256};

const TYPES: [&str; 4] = ["F32", "F16", "Q8_0", "Q4_K_M"];

/// The file types of `arch`: [`TYPES`], then any other the manifest lists
/// for it (gpt-oss's `MXFP4_MOE`).
fn types(arch: &str) -> Vec<String> {
    let m = manifest();
    let mut out: Vec<String> = TYPES.iter().map(|t| t.to_string()).collect();
    if let Some(files) = m["archs"][arch]["files"].as_object() {
        let mut extra: Vec<String> = files
            .keys()
            .filter(|k| !TYPES.contains(&k.as_str()))
            .cloned()
            .collect();
        extra.sort();
        out.extend(extra);
    }
    out
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/archs")
}

fn manifest() -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("manifest.json")).unwrap()).unwrap()
}

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    format!("{:x}", Sha256::digest(&bytes))
}

fn strata(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .output()
        .unwrap()
}

/// Generation and quantization run once per file, whatever the test threads.
static MAKE: Mutex<()> = Mutex::new(());

/// The fixture `arch` in file type `ty`, made (and checked) on first use.
fn model(arch: &str, ty: &str) -> PathBuf {
    let _guard = MAKE.lock().unwrap_or_else(|e| e.into_inner());
    let m = manifest();
    let files = &m["archs"][arch]["files"];
    let dir = root().join(arch);
    let f32_path = dir.join(format!("{arch}-F32.gguf"));
    let want = |t: &str| files[t]["gguf_sha256"].as_str().unwrap().to_string();
    if !f32_path.exists() || sha256(&f32_path) != want("F32") {
        let out = Command::new("python3")
            .arg(root().join("../../../tools/make_arch_fixtures.py"))
            .arg(root())
            .args(["--arch", arch])
            .output()
            .expect("python3 runs tools/make_arch_fixtures.py (needs numpy and gguf==0.19.0)");
        assert!(
            out.status.success(),
            "tools/make_arch_fixtures.py failed (pip install numpy gguf==0.19.0): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            sha256(&f32_path),
            want("F32"),
            "{arch}-F32.gguf is not the file llama.cpp scored"
        );
    }
    if ty == "F32" {
        return f32_path;
    }
    let path = dir.join(format!("{arch}-{ty}.gguf"));
    if !path.exists() || sha256(&path) != want(ty) {
        let out = strata(&[
            "quantize",
            f32_path.to_str().unwrap(),
            path.to_str().unwrap(),
            ty,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            sha256(&path),
            want(ty),
            "strata quantize {arch} {ty} differs from llama-quantize's file"
        );
    }
    path
}

/// `strata perplexity` of the fixture text against `base`, as JSON
/// (`backend` "wgpu": the GPU's exact mode, "wgpu-fast": its fast mode).
fn perplexity(model: &Path, backend: &str, base_flag: &str, base: &Path) -> Value {
    let text = root().join("text.txt");
    let (backend, mode) = match backend {
        "wgpu" => ("wgpu", Some("--exact")),
        "wgpu-fast" => ("wgpu", None),
        b => (b, None),
    };
    let mut args = vec![
        "perplexity",
        "--model",
        model.to_str().unwrap(),
        "--file",
        text.to_str().unwrap(),
        "--ctx",
        "64",
        "--backend",
        backend,
        base_flag,
        base.to_str().unwrap(),
        "--json",
    ];
    args.extend(mode);
    let out = strata(&args);
    assert!(
        out.status.success(),
        "{}: {}",
        model.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Mean KLD and same-top share of a perplexity report.
fn kl(v: &Value) -> (f64, f64) {
    (
        v["kld_mean"].as_f64().unwrap(),
        v["same_top_p"].as_f64().unwrap(),
    )
}

/// The CPU against llama.cpp for every file type of `arch`: mean KLD ≤ 1e-4,
/// same top-1 ≥ 98%.
fn cpu_matches_llama_cpp(arch: &str) {
    for ty in &types(arch) {
        let ty = ty.as_str();
        let path = model(arch, ty);
        let base = root().join(arch).join(format!("{arch}-{ty}.kld"));
        let r = perplexity(&path, "cpu", "--kl-base", &base);
        let (kld, same) = kl(&r);
        println!("{arch} {ty} cpu vs llama.cpp: mean KLD {kld:.3e}, same top {same:.4}");
        assert!(
            kld <= 1e-4 && same >= 0.98,
            "{arch} {ty}: mean KLD {kld:.3e}, same top {same:.4}"
        );
    }
}

/// The GPU (the same graph through the wgpu backend, in its exact mode)
/// against the CPU backend: mean KLD ≤ 1e-3, same top-1 ≥ 97%. (The fast
/// mode's float batches are further from the CPU on these random-weight
/// files: on llvmpipe up to 3.3e-3 (olmo2 Q4_K_M), same top-1 ≥ 92%, where
/// the CPU's own decoding is 7.1e-4 from its batch; its bound is tested on
/// SmolLM2 in backend-wgpu's tests/fast.rs.)
fn gpu_matches_cpu(arch: &str) {
    let tmp = std::env::temp_dir().join(format!("strata-archs-{}-{arch}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    for ty in &types(arch) {
        let ty = ty.as_str();
        let path = model(arch, ty);
        let base = tmp.join(format!("{ty}.kld"));
        perplexity(&path, "cpu", "--save-logits", &base);
        let r = perplexity(&path, "wgpu", "--kl-base", &base);
        let (kld, same) = kl(&r);
        println!("{arch} {ty} wgpu vs cpu: mean KLD {kld:.3e}, same top {same:.4}");
        assert!(
            kld <= 1e-3 && same >= 0.97,
            "{arch} {ty}: mean KLD {kld:.3e}, same top {same:.4}"
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

macro_rules! arch_tests {
    ($($arch:ident),*) => {$(
        arch_tests!($arch = stringify!($arch));
    )*};
    ($module:ident = $arch:expr) => {
        mod $module {
            #[test]
            fn cpu_matches_llama_cpp() {
                super::cpu_matches_llama_cpp($arch);
            }
            #[test]
            fn gpu_matches_cpu() {
                super::gpu_matches_cpu($arch);
            }
        }
    };
}

arch_tests!(llama, qwen2, qwen3, qwen3moe, gemma2, gemma3, phi3, smollm3, olmo2, qwen35, qwen35moe);
arch_tests!(gpt_oss = "gpt-oss");

/// One HTTP/1.1 request to `port`; the status code and the body.
fn http(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |b| b.1).to_string();
    (code, body)
}

/// `strata serve` on a model with recurrent layers: a request that shares
/// only part of a slot's cached tokens (its prompt, not the reply after
/// it) rewinds the recurrent states to the longest saved prefix (the
/// session's snapshots after a prompt and the token before its end)
/// instead of failing, and the greedy reply of a prompt run again from a
/// snapshot is the first run's.
#[test]
fn serve_reuses_what_a_recurrent_model_can() {
    let model = model("qwen35", "F32");
    let port = 20000 + (std::process::id() % 20000) as u16;
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--model", model.to_str().unwrap()])
        .args([
            "--port",
            &port.to_string(),
            "--parallel",
            "1",
            "--ctx",
            "256",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        || http(port, "GET", "/health", "").0 != 200
    {
        assert!(start.elapsed().as_secs() < 60, "the server did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let ask = |prompt: &str| {
        let body = serde_json::json!({"prompt": prompt, "max_tokens": 8, "temperature": 0});
        http(port, "POST", "/v1/completions", &body.to_string())
    };
    let first = ask("one two three four");
    // Shares the first prompt, not the eight generated tokens after it.
    let second = ask("one two three four five");
    let again = ask("one two three four");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(first.0, 200, "{}", first.1);
    assert_eq!(second.0, 200, "{}", second.1);
    assert_eq!(again.0, 200, "{}", again.1);
    let text = |b: &str| serde_json::from_str::<Value>(b).unwrap()["choices"][0]["text"].clone();
    assert_eq!(
        text(&first.1),
        text(&again.1),
        "greedy replies of one prompt differ"
    );
    let usage = |b: &str| {
        let u = serde_json::from_str::<Value>(b).unwrap()["usage"].clone();
        let n = |v: &Value| v.as_u64().unwrap();
        (
            n(&u["prompt_tokens"]),
            n(&u["prompt_tokens_details"]["cached_tokens"]),
        )
    };
    let (n_first, _) = usage(&first.1);
    // The second request reuses the first prompt (saved at its end), the
    // third all of its prompt but the last token, run again for its logits
    // (saved before the first prompt's end).
    assert_eq!(usage(&second.1).1, n_first, "{}", second.1);
    assert_eq!(usage(&again.1), (n_first, n_first - 1), "{}", again.1);
}

/// `strata chat --json` on the qwen35 fixture, eight turns of greedy
/// replies: each turn's prompt continues the tokens the model saw (the
/// previous prompt and its reply's generated tokens, not the reply
/// tokenized again), so the whole cache — recurrent states included — is
/// reused and only the turn's new tokens are computed: the reply's last
/// token (sampled, not yet run) and the new user message as rendered. Each
/// reply equals a fresh `strata generate` of the same prompt tokens.
#[test]
fn chat_on_a_recurrent_model_computes_only_new_tokens() {
    use std::io::Write;
    let model = model("qwen35", "F32");
    let m = model.to_str().unwrap();
    let opts = ["--json", "--temperature", "0", "-n", "12", "--ctx", "1024"];
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["chat", "--model", m])
        .args(opts)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lines = "hello there\nhow are you\nwhat is two plus two\ntell me a story\n\
                 why is the sky blue\nname a color\ncount to five\ngoodbye now\n";
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "strata chat failed");
    let turns: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(turns.len(), 8);
    let ids = |v: &Value| -> Vec<u64> {
        let ids = v.as_array().unwrap().iter();
        ids.map(|x| x.as_u64().unwrap()).collect()
    };
    // The tokens in the cache: every prompt token and every generated token
    // run through the model.
    let mut cached: Vec<u64> = Vec::new();
    let mut figures = Vec::new();
    for (i, t) in turns.iter().enumerate() {
        let (prompt, tokens) = (ids(&t["prompt_tokens"]), ids(&t["tokens"]));
        let reused = t["timings"]["reused_tokens"].as_u64().unwrap() as usize;
        let computed = t["timings"]["prompt_tokens"].as_u64().unwrap() as usize;
        assert!(
            prompt.starts_with(&cached),
            "turn {i}: the prompt drops cached tokens"
        );
        assert_eq!(
            (reused, computed),
            (cached.len(), prompt.len() - cached.len()),
            "turn {i}: reused and computed prompt tokens"
        );
        figures.push((prompt.len(), reused, computed));
        let prompt_json = serde_json::to_string(&prompt).unwrap();
        let mut args = vec!["generate", "--model", m, "--prompt-tokens", &prompt_json];
        args.extend(opts);
        let fresh = strata(&args);
        assert!(fresh.status.success(), "turn {i}: strata generate failed");
        let fresh: Value = serde_json::from_slice(&fresh.stdout).unwrap();
        assert_eq!(fresh["timings"]["reused_tokens"], 0);
        assert_eq!(fresh["tokens"], t["tokens"], "turn {i}: the reply differs");
        cached = prompt;
        // The last token sampled at max_tokens is not run; an end of
        // generation is not kept.
        let ran = tokens.len() - usize::from(t["stop_reason"] == "length");
        cached.extend_from_slice(&tokens[..ran]);
    }
    println!("qwen35 chat, per turn (prompt, reused, computed): {figures:?}");
    assert!(figures[1..].iter().all(|f| f.1 > 0));
}
