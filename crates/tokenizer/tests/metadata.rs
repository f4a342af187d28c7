//! Bad or unusual `tokenizer.ggml.*` metadata gives a clear error or
//! llama.cpp's documented default, never a panic.

use gguf_format::{Gguf, GgufWriter, Value};
use tokenizer::{Tokenizer, TokenizerError};

/// Parses a header holding `kv`.
fn build(kv: Vec<(&str, Value)>) -> Result<Tokenizer, TokenizerError> {
    let mut w = GgufWriter::new();
    for (k, v) in kv {
        w.add_metadata(k, v).unwrap();
    }
    let file = Gguf::from_data(w.to_bytes().unwrap()).unwrap();
    Tokenizer::from_gguf(file.header())
}

/// A tiny SentencePiece vocabulary: <unk> <s> </s> ▁ a b ▁a ab.
fn spm(extra: Vec<(&'static str, Value)>) -> Vec<(&'static str, Value)> {
    let mut kv = vec![
        ("tokenizer.ggml.model", Value::from("llama")),
        (
            "tokenizer.ggml.tokens",
            vec!["<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "ab"].into(),
        ),
        (
            "tokenizer.ggml.scores",
            vec![0.0f32, 0.0, 0.0, -1.0, -2.0, -2.0, -0.5, -0.6].into(),
        ),
        (
            "tokenizer.ggml.token_type",
            vec![2i32, 3, 3, 1, 1, 1, 1, 1].into(),
        ),
    ];
    kv.extend(extra);
    kv
}

/// A tiny byte-level BPE vocabulary.
fn gpt2(pre: &'static str) -> Vec<(&'static str, Value)> {
    vec![
        ("tokenizer.ggml.model", Value::from("gpt2")),
        ("tokenizer.ggml.pre", Value::from(pre)),
        (
            "tokenizer.ggml.tokens",
            vec!["a", "b", "Ġ", "ab", "Ġab", "<|end|>"].into(),
        ),
        (
            "tokenizer.ggml.token_type",
            vec![1i32, 1, 1, 1, 1, 3].into(),
        ),
        ("tokenizer.ggml.merges", vec!["a b", "Ġ ab"].into()),
        ("tokenizer.ggml.eos_token_id", Value::from(5u32)),
    ]
}

#[test]
fn tiny_vocabularies_work() {
    let tok = build(spm(vec![])).unwrap();
    // "▁a" outscores "ab", so SentencePiece takes both "▁a" and leaves "b".
    assert_eq!(tok.encode("a ab", true, false).unwrap(), [1, 6, 6, 5]);
    assert_eq!(tok.decode(&[6, 6, 5]), "a ab");
    let tok = build(gpt2("gpt-2")).unwrap();
    assert_eq!(tok.encode("ab ab<|end|>", false, true).unwrap(), [3, 4, 5]);
    assert!(tok.is_eog(5));
    assert_eq!(tok.decode(&[3, 4, 99]), "ab ab");
    assert!(tok.token_to_piece(99).is_empty());
}

#[test]
fn missing_or_unknown_model_is_an_error() {
    assert!(matches!(build(vec![]), Err(TokenizerError::Metadata(_))));
    let mut kv = spm(vec![]);
    kv[0].1 = Value::from("bert");
    assert!(matches!(build(kv), Err(TokenizerError::UnsupportedModel(m)) if m == "bert"));
    assert!(
        matches!(build(gpt2("no-such-pre")), Err(TokenizerError::UnknownPreTokenizer(p)) if p == "no-such-pre")
    );
}

/// The error names the value and lists every name strata knows, so a user can
/// see at once whether it is a typo or a pre-tokenizer strata lacks.
#[test]
fn unknown_pre_tokenizer_lists_the_known_ones() {
    let message = build(gpt2("qwen99")).unwrap_err().to_string();
    assert!(
        message.starts_with(
            "unknown pre-tokenizer type `qwen99` in tokenizer.ggml.pre (known: default, llama3, "
        ),
        "{message}"
    );
    for name in [
        "llama-bpe",
        "gpt-2",
        "qwen2",
        "qwen35",
        "deepseek-coder",
        "command-r",
        "tekken",
    ] {
        assert!(
            message.contains(&format!(" {name},")),
            "{name} missing from: {message}"
        );
    }
    for name in ["qwen35", "glm5"] {
        assert!(build(gpt2(name)).is_ok(), "{name}");
    }
}

#[test]
fn absent_pre_tokenizer_means_default() {
    let mut kv = gpt2("");
    kv.remove(1);
    let tok = build(kv).unwrap();
    assert_eq!(tok.pre_tokenizer_name(), "");
    assert_eq!(tok.encode("ab ab", false, false).unwrap(), [3, 4]);
}

#[test]
fn malformed_arrays_are_errors() {
    let mut kv = gpt2("gpt-2");
    kv.retain(|(k, _)| *k != "tokenizer.ggml.merges");
    assert!(
        matches!(build(kv), Err(TokenizerError::InvalidMetadata { key, .. }) if key == "tokenizer.ggml.merges")
    );

    let mut kv = spm(vec![]);
    kv[1].1 = vec!["a", "a"].into();
    assert!(
        matches!(build(kv), Err(TokenizerError::InvalidMetadata { message, .. }) if message.contains("duplicate"))
    );

    let mut kv = spm(vec![]);
    kv[2].1 = vec![0.0f32].into();
    assert!(
        matches!(build(kv), Err(TokenizerError::InvalidMetadata { key, .. }) if key == "tokenizer.ggml.scores")
    );

    let mut kv = spm(vec![]);
    kv[1].1 = vec![1u32, 2].into();
    assert!(
        matches!(build(kv), Err(TokenizerError::InvalidMetadata { key, .. }) if key == "tokenizer.ggml.tokens")
    );

    assert!(build(spm(vec![(
        "tokenizer.ggml.add_bos_token",
        Value::from("yes")
    )]))
    .is_err());
    assert!(build(spm(vec![(
        "tokenizer.ggml.bos_token_id",
        Value::from(-1i32)
    )]))
    .is_err());
}

#[test]
fn special_token_ids_follow_llama_cpp() {
    // An out-of-range id in the file keeps the default.
    let tok = build(spm(vec![(
        "tokenizer.ggml.eos_token_id",
        Value::from(1000u32),
    )]))
    .unwrap();
    assert_eq!(tok.eos(), Some(2));
    // A default out of range is dropped; asking to add it is an error.
    let kv = vec![
        ("tokenizer.ggml.model", Value::from("llama")),
        ("tokenizer.ggml.tokens", vec!["<unk>"].into()),
    ];
    assert!(matches!(
        build(kv),
        Err(TokenizerError::MissingSpecialToken { token: "BOS", .. })
    ));
    let tok = build(spm(vec![(
        "tokenizer.ggml.add_bos_token",
        Value::from(false),
    )]))
    .unwrap();
    assert_eq!(tok.encode("a", true, false).unwrap(), [6]);
    // Unknown token-type values read as undefined.
    let tok = build(spm(vec![])).unwrap();
    assert_eq!(tok.token_type(0), Some(tokenizer::TokenType::Unknown));
}

#[test]
fn unrepresentable_bytes_are_an_error() {
    // No `<0xNN>` tokens: a character with no token cannot be encoded.
    let tok = build(spm(vec![])).unwrap();
    assert!(matches!(
        tok.encode("c", false, false),
        Err(TokenizerError::NoByteToken(b'c'))
    ));
}
