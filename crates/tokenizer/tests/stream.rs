//! The streaming decoder hands out only complete UTF-8, on the LLaMA
//! SentencePiece vocabulary whose byte-fallback tokens split characters.

use gguf_format::GgufFile;
use tokenizer::{StreamDecoder, Tokenizer, VocabKind};

use crate::fixture;

fn spm() -> Tokenizer {
    let file = GgufFile::open(fixture("vocab/ggml-vocab-llama-spm.gguf")).unwrap();
    Tokenizer::from_gguf(file.header()).unwrap()
}

#[test]
fn multibyte_characters_wait_until_complete() {
    let tok = spm();
    assert_eq!(tok.kind(), VocabKind::SentencePiece);
    // 🦙 has no token: it is four byte-fallback tokens.
    let text = "a 🦙 b";
    let ids = tok.encode(text, false, false).unwrap();
    let mut stream = StreamDecoder::new();
    let pieces: Vec<String> = ids.iter().map(|&id| stream.push(&tok, id)).collect();
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    assert!(
        pieces.iter().any(|p| p.is_empty()),
        "some bytes were held back: {pieces:?}"
    );
    let joined: String = pieces.concat() + &stream.finish();
    assert_eq!(joined, format!(" {text}"));
    // The whole-sequence decode drops the SentencePiece space prefix.
    assert_eq!(tok.decode(&ids), text);
}

#[test]
fn invalid_and_unfinished_bytes_become_replacement_characters() {
    let tok = spm();
    let byte = |b: u8| tok.token_id(&format!("<0x{b:02X}>")).unwrap();
    let mut stream = StreamDecoder::new();
    assert_eq!(stream.push(&tok, byte(0xFF)), "\u{FFFD}");
    assert_eq!(stream.push(&tok, byte(0xE2)), "");
    assert_eq!(stream.push(&tok, byte(0x82)), "");
    assert_eq!(stream.finish(), "\u{FFFD}");
    assert_eq!(stream.push(&tok, byte(0xE2)), "");
    assert_eq!(stream.push(&tok, byte(0x82)), "");
    assert_eq!(stream.push(&tok, byte(0xAC)), "€");
}

#[test]
fn bos_eos_and_special_parsing_follow_the_file() {
    let tok = spm();
    assert_eq!(tok.bos(), Some(1));
    assert_eq!(tok.eos(), Some(2));
    assert!(tok.adds_bos());
    assert!(tok.is_eog(2));
    let plain = tok.encode("Hello", true, false).unwrap();
    assert_eq!(plain[0], 1);
    // As llama_detokenize: the space prefix is dropped from the first token,
    // which here is BOS, so the word keeps its space.
    assert_eq!(tok.decode(&plain), " Hello");
    assert_eq!(tok.decode(&plain[1..]), "Hello");
    // `</s>` in the text is a control token only with special parsing.
    let with = tok.encode("a</s>", false, true).unwrap();
    assert_eq!(*with.last().unwrap(), 2);
    let without = tok.encode("a</s>", false, false).unwrap();
    assert!(!without.contains(&2));
    assert_eq!(tok.decode(&without), "a</s>");
}
