//! What each fuzz target checks, shared by the libFuzzer targets
//! (`fuzz/fuzz_targets/`, nightly, `cargo fuzz run <target>`) and the
//! stable runner in the workspace's tests (`crates/tokenizer/tests/fuzz.rs`),
//! which replays the committed seeds (`fuzz/seeds/<target>/`) and mutations
//! of them for a bounded time.
//!
//! Every check must return, never panic, and use memory bounded by its
//! input; the tokenizers are built once, from the committed vocabularies.

use std::sync::{Arc, OnceLock};

use gguf_format::{Gguf, GgufFile, GgufHeader};
use tokenizer::chat::{ChatContext, ChatTemplate, Limits};
use tokenizer::{StreamDecoder, Tokenizer};

/// The GGUF reader: a file parses or is an error, and a parsed file's
/// tensors and metadata are all readable.
pub fn parse(data: &[u8]) {
    let header = GgufHeader::parse(data);
    let file = Gguf::from_data(data);
    assert_eq!(header.is_ok(), file.is_ok());
    if let Ok(file) = file {
        for t in file.tensors() {
            let bytes = file.tensor_data(t);
            assert_eq!(bytes.len() as u64, t.n_bytes());
            assert!(file.tensor(&t.name).is_some());
        }
        for (key, value) in file.metadata() {
            if let Some(a) = value.as_array() {
                assert_eq!(a.iter().count(), a.len());
            }
            assert!(file.get(key).is_some());
        }
    }
}

fn vocab(dir: &str, name: &str) -> Tokenizer {
    let path = format!("{dir}/tests/fixtures/vocab/ggml-vocab-{name}.gguf");
    let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Tokenizer::from_gguf(file.header()).unwrap()
}

/// The two tokenizer families: SentencePiece (LLaMA) and byte-level BPE (GPT-2).
fn tokenizers(root: &str) -> &'static [Tokenizer; 2] {
    static TOKS: OnceLock<[Tokenizer; 2]> = OnceLock::new();
    TOKS.get_or_init(|| [vocab(root, "llama-spm"), vocab(root, "gpt-2")])
}

/// Encoding and decoding: any text encodes to ids inside the vocabulary,
/// with or without special tokens and protected ranges; decoding them
/// whole and piece by piece agree; any ids decode.
pub fn tokenize(root: &str, data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    for tok in tokenizers(root) {
        let n = tok.vocab_size() as u32;
        // A protected range over the middle of the text, on char boundaries.
        let mid = text
            .char_indices()
            .map(|(i, _)| i)
            .nth(text.chars().count() / 3);
        let end = text
            .char_indices()
            .map(|(i, _)| i)
            .nth(2 * text.chars().count() / 3);
        let ranges: Vec<std::ops::Range<usize>> = match (mid, end) {
            // One range of the text, on purpose.
            #[allow(clippy::single_range_in_vec_init)]
            (Some(a), Some(b)) if flags & 4 != 0 => vec![a..b],
            _ => Vec::new(),
        };
        let ids = tok
            .encode_with_text_ranges(&text, flags & 1 != 0, flags & 2 != 0, &ranges)
            .unwrap_or_default();
        assert!(ids.iter().all(|&id| id < n));
        // Whole and streamed decoding both run (they differ by design: the
        // stream keeps SentencePiece's leading space and skips clean-up).
        let _ = tok.decode(&ids);
        let mut stream = StreamDecoder::new();
        for &id in &ids {
            let _ = stream.push(tok, id);
        }
        let _ = stream.finish();
        // Text that must stay text never becomes a special token.
        #[allow(clippy::single_range_in_vec_init)]
        let whole = [0..text.len()];
        let plain = tok
            .encode_with_text_ranges(&text, false, true, &whole)
            .unwrap_or_default();
        assert!(
            plain.iter().all(|&id| !tok.is_control(id)
                && tok.token_type(id) != Some(tokenizer::TokenType::UserDefined)),
            "{text:?}: {plain:?}"
        );
        // Arbitrary ids (in range or not) decode without panicking.
        let raw: Vec<u32> = rest
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) % (n + 8))
            .collect();
        let _ = tok.decode(&raw);
    }
}

/// Template rendering: the input is a template, a NUL, then a JSON
/// context (or none); rendering under small limits returns, whatever the
/// template does, and the output stays within the cap.
pub fn template(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (source, context) = text.split_once('\0').unwrap_or((&text, ""));
    let limits = Limits {
        fuel: 50_000,
        max_output: 64 << 10,
        max_work: 16 << 20,
        max_items: 4096,
        max_depth: 32,
    };
    let clock: tokenizer::chat::Clock = Arc::new(chrono_epoch);
    let Ok(t) = ChatTemplate::with_limits(source, clock, limits) else {
        return;
    };
    let ctx = ChatContext::from_json(context).unwrap_or_else(|_| ChatContext {
        messages: vec![tokenizer::chat::Message::new("user", "hi <|im_end|>")],
        add_generation_prompt: true,
        ..ChatContext::default()
    });
    if let Ok(out) = t.render(&ctx) {
        assert!(out.len() <= limits.max_output);
    }
    if let Ok(located) = t.render_located(&ctx) {
        if let Some(ranges) = located.content {
            let mut last = 0;
            for r in ranges {
                assert!(r.start >= last && r.end <= located.text.len());
                assert!(
                    located.text.is_char_boundary(r.start) && located.text.is_char_boundary(r.end)
                );
                last = r.end;
            }
        }
    }
}

fn chrono_epoch() -> chrono::NaiveDateTime {
    chrono::NaiveDateTime::default()
}
