//! Recurrent states on the GPU (qwen35): the session's snapshots of them
//! are GPU buffers copied with the backend's own copy, and a sequence
//! rewound to one continues exactly as it did the first time.

use std::path::PathBuf;
use std::process::Command;

use llama_model::{LogitsMode, SessionOptions};

use crate::common::{cpu_decode, gpu_model};

/// `tests/fixtures/archs/qwen35/qwen35-F32.gguf`, written on first use.
fn qwen35_f32() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/archs");
    let path = root.join("qwen35/qwen35-F32.gguf");
    static MAKE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = MAKE.lock().unwrap_or_else(|e| e.into_inner());
    if !path.exists() {
        let out = Command::new("python3")
            .arg(root.join("../../../tools/make_arch_fixtures.py"))
            .arg(&root)
            .args(["--arch", "qwen35"])
            .output()
            .expect("python3 runs tools/make_arch_fixtures.py (needs numpy and gguf==0.19.0)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    path
}

#[test]
fn qwen35_rewinds_to_a_snapshot_on_the_gpu() {
    let path = qwen35_f32();
    let model = gpu_model(&path);
    let n_vocab = model.config().n_vocab;
    let mut s = model
        .session(&SessionOptions {
            n_ctx: 64,
            ..SessionOptions::default()
        })
        .unwrap();
    let prompt: Vec<u32> = (0..16).map(|i| 3 + (i * 37 + 11) % 380).collect();
    let decode = [5u32, 77, 200, 31, 9, 150];
    let run = |s: &mut llama_model::Session<'_, _>| {
        let mut out = Vec::new();
        for &t in &decode {
            out.extend_from_slice(s.forward(&[t], LogitsMode::Last).unwrap());
        }
        out
    };
    s.forward(&prompt, LogitsMode::Last).unwrap();
    let first = run(&mut s);
    assert_eq!(s.snapshot_positions(0), [15, 16]);
    assert_eq!(s.rewind_point(0, 20), 16);
    s.truncate(16).unwrap();
    let again = run(&mut s);
    assert!(
        first == again,
        "the GPU continued differently after a rewind"
    );
    // And what the CPU computes.
    let cpu = cpu_decode(&path, &prompt, &decode, false);
    let max = cpu[n_vocab..]
        .iter()
        .zip(&first)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(max < 1e-3, "GPU vs CPU: max |Δlogit| {max}");
}
