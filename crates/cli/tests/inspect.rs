//! `strata inspect` on fixtures and on broken files.

use std::process::{Command, Output};

fn fixture(rel: &str) -> String {
    format!("{}/../../tests/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"))
}

fn strata(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[test]
fn prints_metadata_and_tensor_table() {
    let out = strata(&["inspect", &fixture("synth/synth-Q4_K_M.gguf")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("GGUF v3, 21 metadata keys, 21 tensors, alignment 32, data at byte 10336")
    );
    assert!(
        stdout.contains("u32                    1  llama.block_count = 2"),
        "{stdout}"
    );
    assert!(stdout.contains(
        "array<string>        384  tokenizer.ggml.tokens = [\"<unk>\", \"<s>\", \"</s>\", \"<0x00>\", \"<0x01>\", \"<0x02>\", ...]"
    ));
    assert!(stdout.contains("f32                    1  llama.rope.freq_base = 10000.0"));
    // One table row per tensor, with type, shape, absolute offset and size:
    // the first tensor starts the data section.
    let rows: Vec<&str> = stdout
        .lines()
        .skip_while(|l| *l != "tensors:")
        .skip(2)
        .collect();
    assert_eq!(rows.len(), 21);
    let first: Vec<&str> = rows[0].split_whitespace().collect();
    assert_eq!(
        first,
        [
            "1",
            "output.weight",
            "Q6_K",
            "[256,",
            "384]",
            "10336",
            "80640"
        ]
    );
    assert!(rows
        .iter()
        .any(|r| r.contains("blk.0.attn_q.weight") && r.contains("Q4_K")));
}

#[test]
fn json_output() {
    let out = strata(&["inspect", "--json", &fixture("synth/synth-F32.gguf")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["version"], 3);
    assert_eq!(v["data_offset"], 10304);
    let tensors = v["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 21);
    assert_eq!(tensors[0]["name"], "token_embd.weight");
    assert_eq!(tensors[0]["shape"], serde_json::json!([256, 384]));
    assert_eq!(tensors[0]["bytes"], 256 * 384 * 4);
    assert_eq!(tensors[1]["offset"], 256 * 384 * 4);
    let metadata = v["metadata"].as_array().unwrap();
    let entry = |key: &str| metadata.iter().find(|e| e["key"] == key).unwrap().clone();
    assert_eq!(entry("llama.block_count")["value"], 2);
    let tokens = entry("tokenizer.ggml.tokens");
    assert_eq!(
        (tokens["len"].as_u64(), tokens["truncated"].as_bool()),
        (Some(384), Some(true))
    );
    assert_eq!(tokens["value"].as_array().unwrap().len(), 6);
}

#[test]
fn vocab_only_file() {
    let out = strata(&["inspect", &fixture("vocab/ggml-vocab-gpt-2.gguf")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("0 tensors"));
    assert!(stdout.contains("array<string>      50000  tokenizer.ggml.merges = [\"Ġ t\""));
}

#[track_caller]
fn fails_with_one_line(args: &[&str], needle: &str) {
    let out = strata(args);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("strata: error: "), "{stderr}");
    assert!(stderr.contains(needle), "{stderr}");
}

#[test]
fn corrupt_file_is_one_line_and_exit_1() {
    let dir = std::env::temp_dir().join(format!("strata-cli-inspect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A real file cut short: its tensors run past the end.
    let bytes = std::fs::read(fixture("synth/synth-Q8_0.gguf")).unwrap();
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    // And one whose magic is wrong.
    let bad = dir.join("bad.gguf");
    std::fs::write(&bad, b"GGML\x03\0\0\0").unwrap();
    fails_with_one_line(
        &["inspect", cut.to_str().unwrap()],
        "runs past the end of the file",
    );
    fails_with_one_line(&["inspect", bad.to_str().unwrap()], "bad magic");
    fails_with_one_line(
        &["inspect", "--json", bad.to_str().unwrap()],
        "not a GGUF file",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_file_is_one_line_and_exit_1() {
    fails_with_one_line(
        &["inspect", "/nonexistent/model.gguf"],
        "/nonexistent/model.gguf",
    );
}
