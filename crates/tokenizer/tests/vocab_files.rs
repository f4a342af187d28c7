//! llama.cpp's `test-tokenizer-0` vectors: every string of each `.inp` file
//! must tokenize (no BOS, no special parsing) to the ids on its `.out` line.

use gguf_format::GgufFile;
use tokenizer::Tokenizer;

use crate::fixture;

/// Reads `.inp`/`.out` exactly as `test-tokenizer-0.cpp` does: inputs are
/// separated by `"\n__ggml_vocab_test__\n"`, outputs are one line each.
fn read_tests(name: &str) -> Vec<(String, Vec<u32>)> {
    let base = fixture(&format!("vocab/ggml-vocab-{name}.gguf"));
    let raw = std::fs::read_to_string(base.with_extension("gguf.inp")).unwrap();
    let out = std::fs::read_to_string(base.with_extension("gguf.out")).unwrap();
    let sep = "\n__ggml_vocab_test__\n";
    let mut inputs = Vec::new();
    let mut pos = 0;
    while pos < raw.len() {
        match raw[pos..].find(sep) {
            Some(next) => {
                inputs.push(raw[pos..pos + next].to_string());
                pos += next + sep.len();
            }
            None => {
                inputs.push(raw[pos..].to_string());
                break;
            }
        }
    }
    let outputs: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    assert_eq!(
        inputs.len(),
        outputs.len(),
        "{name}: .inp and .out disagree on the count"
    );
    inputs.into_iter().zip(outputs).collect()
}

fn check(name: &str) {
    let file = GgufFile::open(fixture(&format!("vocab/ggml-vocab-{name}.gguf"))).unwrap();
    let tok = Tokenizer::from_gguf(file.header()).unwrap();
    let tests = read_tests(name);
    assert!(!tests.is_empty());
    let mut failures = Vec::new();
    for (text, expected) in &tests {
        let got = tok.encode(text, false, false).unwrap();
        if &got != expected {
            failures.push(format!(
                "{text:?}\n  expected {expected:?}\n  got      {got:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} strings differ:\n{}",
        failures.len(),
        tests.len(),
        failures.join("\n")
    );
    eprintln!("{name}: {} of {} strings exact", tests.len(), tests.len());
}

#[test]
fn llama_spm() {
    check("llama-spm");
}

#[test]
fn llama_bpe() {
    check("llama-bpe");
}

#[test]
fn gpt_2() {
    check("gpt-2");
}

/// decode(encode(s)) == s for every test string, except where Hugging Face's
/// `clean_up_tokenization_spaces` (on for these BPE vocabularies, as in
/// llama.cpp) rewrites `" ,"`, `" '"` and the like by design.
#[test]
fn decode_round_trips() {
    for name in ["llama-spm", "llama-bpe", "gpt-2"] {
        let file = GgufFile::open(fixture(&format!("vocab/ggml-vocab-{name}.gguf"))).unwrap();
        let tok = Tokenizer::from_gguf(file.header()).unwrap();
        let mut checked = 0;
        for (text, _) in read_tests(name) {
            let cleaned = [" ?", " !", " .", " ,", " '"]
                .iter()
                .any(|p| text.contains(p));
            if name != "llama-spm" && cleaned {
                continue;
            }
            let ids = tok.encode(&text, false, false).unwrap();
            assert_eq!(tok.decode(&ids), text, "{name}");
            checked += 1;
        }
        assert!(checked >= 35, "{name}: only {checked} strings checked");
        eprintln!("{name}: {checked} strings round-trip");
    }
}

/// LLaMA-3: BOS added by default, `<|eot_id|>` and `<|end_of_text|>` end generation.
#[test]
fn llama_bpe_special_tokens() {
    let file = GgufFile::open(fixture("vocab/ggml-vocab-llama-bpe.gguf")).unwrap();
    let tok = Tokenizer::from_gguf(file.header()).unwrap();
    assert!(tok.adds_bos());
    assert_eq!(tok.bos(), Some(128000));
    let eot = tok.token_id("<|eot_id|>").unwrap();
    assert_eq!(tok.eot(), Some(eot));
    assert!(tok.is_eog(eot) && tok.is_eog(128001));
    assert!(!tok.is_eog(128000));
    let ids = tok
        .encode(
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
            true,
            true,
        )
        .unwrap();
    assert_eq!(ids[..2], [128000, 128006]);
    assert_eq!(*ids.last().unwrap(), eot);
    assert_eq!(tok.decode(&ids), "user\n\nHi");
}

/// SentencePiece with byte fallback represents any string: random ones
/// decode back to themselves.
#[test]
fn spm_random_strings_round_trip() {
    let file = GgufFile::open(fixture("vocab/ggml-vocab-llama-spm.gguf")).unwrap();
    let tok = Tokenizer::from_gguf(file.header()).unwrap();
    const POOL: &[&str] = &[
        "a", "Z", "the", " ", "  ", "\n", "\t", "\u{a0}", "0", "42", ".", "<s>", "</s>", "<unk>",
        "é", "日本", "🙂", "🦙", "\u{200d}", "\u{0}", "ß", "▁", "<0x41>",
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..2000 {
        let n = next() % 16;
        let s: String = (0..n)
            .map(|_| POOL[(next() % POOL.len() as u64) as usize])
            .collect();
        let ids = tok.encode(&s, false, false).unwrap();
        // "▁" in the text decodes to a space: SentencePiece cannot tell them apart.
        assert_eq!(tok.decode(&ids), s.replace('▁', " "), "{s:?}");
    }
}
