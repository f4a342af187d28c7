//! SmolLM2-135M-Instruct (GPT-2-style BPE, pre-tokenizer `smollm`) against
//! llama.cpp's results in tests/fixtures/smollm2/golden.json.

use std::sync::OnceLock;

use gguf_format::GgufFile;
use serde_json::Value;
use tokenizer::{StreamDecoder, Tokenizer};

use crate::fixture;

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = model_cache::default_model().expect("the default model (SmolLM2) is available");
        let file = GgufFile::open(path).unwrap();
        Tokenizer::from_gguf(file.header()).unwrap()
    })
}

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("smollm2/golden.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn tokenize_with_and_without_special_parsing() {
    let tok = tokenizer();
    let golden = golden();
    let cases = golden["tokenize"].as_array().unwrap();
    assert_eq!(cases.len(), 14);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, false, false).unwrap(),
            ids(&case["tokens"]),
            "{text:?}"
        );
        assert_eq!(
            tok.encode(text, false, true).unwrap(),
            ids(&case["tokens_special"]),
            "{text:?} with special parsing"
        );
    }
}

#[test]
fn decode_round_trips() {
    let tok = tokenizer();
    for case in golden()["tokenize"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = tok.encode(text, false, false).unwrap();
        assert_eq!(tok.decode(&ids), text);
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| tok.token_to_piece(id)).collect();
        assert_eq!(bytes, text.as_bytes());
        // Control tokens parsed from the text render only when asked for.
        let special = tok.encode(text, false, true).unwrap();
        assert_eq!(tok.detokenize(&special, false, true), text.as_bytes());
    }
}

#[test]
fn greedy_prompts_and_generations() {
    let tok = tokenizer();
    let golden = golden();
    for case in golden["greedy"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        // The golden prompts were tokenized with add_bos and special parsing;
        // this vocabulary's add_bos_token is false.
        assert_eq!(
            tok.encode(prompt, true, true).unwrap(),
            ids(&case["prompt_tokens"]),
            "{prompt:?}"
        );
        let generated = ids(&case["generated"]);
        let text = case["text"].as_str().unwrap();
        assert_eq!(tok.decode(&generated), text);
        let mut stream = StreamDecoder::new();
        let mut streamed: String = generated.iter().map(|&id| stream.push(tok, id)).collect();
        streamed.push_str(&stream.finish());
        assert_eq!(streamed, text);
    }
    let passage = &golden["passage"];
    assert_eq!(
        tok.encode(passage["text"].as_str().unwrap(), true, false)
            .unwrap(),
        ids(&passage["tokens"])
    );
}

#[test]
fn special_tokens_and_end_of_generation() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.pre_tokenizer_name(), "smollm");
    assert!(!tok.adds_bos());
    let im_end = tok.token_id("<|im_end|>").unwrap();
    let endoftext = tok.token_id("<|endoftext|>").unwrap();
    assert!(tok.is_eog(im_end));
    assert!(tok.is_eog(endoftext));
    assert!(tok.eos().is_some_and(|e| tok.is_eog(e)));
    assert!(!tok.is_eog(tok.token_id("Hello").unwrap()));
    assert_eq!(tok.token_to_piece(im_end), b"<|im_end|>");
    assert_eq!(tok.decode(&[im_end]), "");
}

/// Random strings (letters, digits, punctuation, whitespace of all kinds,
/// emoji, CJK, combining marks, special-token fragments) always encode, and
/// decode back to themselves: this vocabulary does no clean-up.
#[test]
fn random_strings_round_trip() {
    let tok = tokenizer();
    const POOL: &[&str] = &[
        "a",
        "Z",
        "the",
        " ",
        "  ",
        "\n",
        "\r\n",
        "\t",
        "\u{a0}",
        "\u{3000}",
        "\u{85}",
        "0",
        "42",
        "3.14",
        "'s",
        "'LL",
        ".",
        "!?",
        "$",
        "<",
        "|",
        ">",
        "<|im_end|>",
        "<|im_start|>",
        "<|endoftext|>",
        "é",
        "e\u{301}",
        "日本",
        "🙂",
        "🦙",
        "\u{200d}",
        "\u{0}",
        "\u{7f}",
        "\u{fffd}",
        "ß",
        "İ",
        "Ⅻ",
        "½",
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
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
        assert_eq!(tok.decode(&ids), s);
        let special = tok.encode(&s, true, true).unwrap();
        assert_eq!(tok.detokenize(&special, false, true), s.as_bytes());
    }
}
