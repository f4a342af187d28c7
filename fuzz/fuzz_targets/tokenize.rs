//! Tokenizer encode and decode on arbitrary text and ids (SentencePiece and
//! byte-level BPE): never a panic, ids inside the vocabulary, whole and
//! streamed decoding agree. See `src/checks.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strata_fuzz::checks::tokenize(strata_fuzz::ROOT, data));
