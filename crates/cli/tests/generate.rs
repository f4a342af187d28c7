//! `strata generate`, `chat`, `embedding` and `bench` on the default model:
//! llama.cpp's greedy continuations, seeded sampling, chat cache reuse, and
//! exit code 2 for every bad argument.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn strata(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .output()
        .unwrap()
}

fn strata_with_stdin(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

fn golden() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/smollm2/golden.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Greedy generation reproduces llama.cpp's tokens for every golden prompt,
/// up to the first step where llama.cpp's top-1 margin is under 0.05.
#[test]
fn greedy_reproduces_llama_cpp() {
    for case in golden()["greedy"].as_array().unwrap() {
        let expected = ids(&case["generated"]);
        let n = case["top1_margin"]
            .as_array()
            .unwrap()
            .iter()
            .position(|m| m.as_f64().unwrap() < 0.05)
            .unwrap_or(expected.len());
        let prompt = case["prompt_tokens"].to_string();
        let n_arg = n.to_string();
        let v = json_of(&strata(&[
            "generate",
            "--json",
            "--temperature",
            "0",
            "--ignore-eos",
            "--max-tokens",
            &n_arg,
            "--prompt-tokens",
            &prompt,
        ]));
        assert_eq!(ids(&v["prompt_tokens"]), ids(&case["prompt_tokens"]));
        assert_eq!(
            ids(&v["tokens"]),
            expected[..n],
            "prompt {}",
            case["prompt"]
        );
        assert_eq!(
            v["timings"]["prompt_tokens"],
            case["prompt_tokens"].as_array().unwrap().len()
        );
    }
}

/// A text prompt is tokenized as llama.cpp tokenized the golden prompts, and
/// the streamed text is the golden text.
#[test]
fn text_prompt_streams_the_golden_text() {
    let case = &golden()["greedy"][0];
    let v = json_of(&strata(&[
        "generate",
        "--json",
        "--temperature",
        "0",
        "-n",
        "8",
        case["prompt"].as_str().unwrap(),
    ]));
    assert_eq!(v["prompt_tokens"], case["prompt_tokens"]);
    let out = strata(&[
        "generate",
        "--temperature",
        "0",
        "-n",
        "8",
        case["prompt"].as_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.trim_end_matches('\n'), v["text"].as_str().unwrap());
    assert!(
        case["text"]
            .as_str()
            .unwrap()
            .starts_with(v["text"].as_str().unwrap()),
        "{stdout:?}"
    );
    // Timings go to stderr, as llama.cpp prints them.
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("prompt eval time") && stderr.contains("eval time"),
        "{stderr}"
    );
}

#[test]
fn same_seed_same_text() {
    let run = |seed: &str| {
        json_of(&strata(&[
            "generate",
            "--json",
            "-n",
            "20",
            "--temperature",
            "1.0",
            "--seed",
            seed,
            "Once upon a time",
        ]))["text"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let a = run("42");
    assert!(!a.is_empty());
    assert_eq!(run("42"), a);
    assert!(["1", "2", "3"].iter().any(|s| run(s) != a));
}

/// Two turns of `chat`: the second computes only what the cache lacks.
#[test]
fn chat_reuses_the_cache_between_turns() {
    let out = strata_with_stdin(
        &["chat", "--json", "--temperature", "0", "-n", "24"],
        "What is the capital of France?\nAnd of Germany?\n",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let turns: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(turns.len(), 2);
    assert_eq!(turns[1]["user"], "And of Germany?");
    let (first, second) = (&turns[0], &turns[1]);
    assert_eq!(first["timings"]["reused_tokens"], 0);
    let n_first = first["prompt_tokens"].as_array().unwrap().len() as u64;
    let n_second = second["prompt_tokens"].as_array().unwrap().len() as u64;
    let reused = second["timings"]["reused_tokens"].as_u64().unwrap();
    let computed = second["timings"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(reused + computed, n_second);
    // Everything up to the first reply is reused: only the end of the reply
    // and the new message (a dozen tokens) are computed.
    assert!(reused > n_first, "{second}");
    assert!(computed < 20, "{second}");
    assert!(!first["text"].as_str().unwrap().is_empty());
}

#[test]
fn embedding_row_and_rms() {
    let v = json_of(&strata(&["embedding", "--token", "504", "--json"]));
    let values: Vec<f64> = v["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(values.len(), 576);
    let rms = (values.iter().map(|x| x * x).sum::<f64>() / values.len() as f64).sqrt();
    assert!((rms - v["rms"].as_f64().unwrap()).abs() < 1e-6);
    assert!(rms > 0.0);
    assert_eq!(v["piece"], "The");
    // The GPU's row decoder (Q4_1 here) gives the CPU's values, bit for bit.
    let g = json_of(&strata(&[
        "embedding",
        "--token",
        "504",
        "--json",
        "--backend",
        "wgpu",
    ]));
    assert_eq!(g, v);
}

#[test]
fn bench_reports_both_figures() {
    let v = json_of(&strata(&[
        "bench",
        "-p",
        "16",
        "-n",
        "4",
        "-r",
        "1",
        "--threads",
        "1",
        "--json",
    ]));
    let tests = v["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 2);
    assert_eq!(
        (tests[0]["test"].as_str(), tests[1]["test"].as_str()),
        (Some("pp16"), Some("tg4"))
    );
    for t in tests {
        assert!(t["best_tokens_per_second"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(v["threads"], 1);
    assert!(v["peak_rss_kib"].as_u64().unwrap() > 10_000);
}

/// Every bad argument: one `strata: error:` line (or clap's usage error) and exit code 2.
#[test]
fn bad_arguments_exit_with_code_2() {
    let cases: &[(&[&str], &str)] = &[
        (&["generate", "--temperature", "-1", "hi"], "--temperature"),
        (&["generate", "--temperature", "abc", "hi"], "not a number"),
        (&["generate", "--temperature", "inf", "hi"], "finite"),
        (&["generate", "--top-p", "0", "hi"], "(0, 1]"),
        (&["generate", "--top-p", "1.5", "hi"], "(0, 1]"),
        (&["generate", "--min-p", "2", "hi"], "[0, 1]"),
        (
            &["generate", "--repeat-penalty", "-0.5", "hi"],
            "--repeat-penalty",
        ),
        (&["generate", "--max-tokens", "0", "hi"], "--max-tokens"),
        (&["generate", "--threads", "0", "hi"], "--threads"),
        (&["generate", "--ctx", "0", "hi"], "--ctx"),
        (&["generate", "--top-k", "-3", "hi"], "-3"),
        (&["generate", "--backend", "tpu", "hi"], "--backend"),
        (&["generate", "--system", "x", "hi"], "--chat"),
        (
            &["generate", "--prompt-tokens", "[1, 2", "--json"],
            "--prompt-tokens",
        ),
        (
            &["generate", "--prompt-tokens", "[99999999]"],
            "outside the vocabulary",
        ),
        (&["generate", "--prompt-tokens", "[]"], "empty"),
        (&["generate", ""], "empty"),
        (
            &["generate", "--ctx", "4", "The capital of France is"],
            "context holds 4",
        ),
        (&["chat", "--top-p", "2"], "(0, 1]"),
        (&["bench", "--repetitions", "0"], "--repetitions"),
        (
            &["embedding", "--token", "99999999"],
            "outside the vocabulary",
        ),
        (&["embedding"], "--token"),
    ];
    for (args, expected) in cases {
        let out = strata(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?}: {stderr:?} lacks {expected:?}"
        );
        assert!(stderr.contains("error"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

/// The GPU backend (wgpu; llvmpipe where there is no GPU) through the same
/// generator: the first greedy tokens of the first golden prompt, in the
/// default fast mode and in exact mode.
#[test]
fn wgpu_backend_generates_the_golden_tokens() {
    let case = &golden()["greedy"][0];
    let prompt = case["prompt_tokens"].to_string();
    for mode in [None, Some("--exact")] {
        let mut args = vec![
            "generate",
            "--backend",
            "wgpu",
            "--json",
            "--temperature",
            "0",
            "-n",
            "4",
            "--prompt-tokens",
            &prompt,
        ];
        args.extend(mode);
        let v = json_of(&strata(&args));
        assert_eq!(ids(&v["tokens"]), ids(&case["generated"])[..4], "{mode:?}");
    }
}
