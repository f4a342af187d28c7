//! Tokenizers and chat templates built from a GGUF file's `tokenizer.ggml.*` metadata,
//! agreeing token for token with llama.cpp.
//!
//! [`Tokenizer::from_gguf`] reads the vocabulary, scores, token types, merges
//! and special-token ids a GGUF file carries and builds one of llama.cpp's two
//! common tokenizers: SentencePiece BPE by token score (`tokenizer.ggml.model =
//! "llama"`: LLaMA 1/2, TinyLlama, Mistral) or byte-level BPE by merge rank
//! (`"gpt2"`: GPT-2, LLaMA 3, Qwen 2, SmolLM, StarCoder, ...), with the
//! pre-tokenizer `tokenizer.ggml.pre` selects. [`chat::ChatTemplate`] renders
//! the file's `tokenizer.chat_template` as Hugging Face's `apply_chat_template`
//! does, in a sandbox that bounds its time and memory; [`Tokenizer::encode_chat`]
//! tokenizes a conversation with special tokens only where the template writes
//! them, message text kept as text.
//!
//! ```no_run
//! use gguf_format::GgufFile;
//! use tokenizer::{StreamDecoder, Tokenizer};
//!
//! let file = GgufFile::open("model.gguf")?;
//! let tok = Tokenizer::from_gguf(file.header())?;
//! let ids = tok.encode("<|im_start|>user\nHello!<|im_end|>\n", true, true)?;
//! assert_eq!(tok.decode(&ids), "user\nHello!\n"); // control tokens omitted
//! let mut stream = StreamDecoder::new();
//! let text: String = ids.iter().map(|&id| stream.push(&tok, id)).collect();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Design
//!
//! The goal is exact agreement with llama.cpp, so the code is a port of
//! `src/llama-vocab.cpp` and `src/unicode.cpp` rather than a general tokenizer
//! library: the merge loops keep llama.cpp's priority-queue order and tie
//! breaks, text is split at special tokens longest-first before tokenizing,
//! and the pre-tokenizer regexes run the way llama.cpp runs them — its
//! hand-written GPT-2 and LLaMA-3 scanners, and the other expressions on a
//! "collapsed" text where each non-ASCII codepoint is one marker per Unicode
//! category (see `unicode`). Codepoint categories come from a table generated
//! from Unicode 15.1, the version of llama.cpp's table
//! (`scripts/gen_unicode_data.py`).
//!
//! Where llama.cpp's result depends on the order of an unordered container,
//! this crate decides deterministically: of several end-of-turn candidates
//! the first in llama.cpp's list of names becomes `eot` (`<|eot_id|>` before
//! `<|end_of_text|>`), and special tokens of equal length are matched in id
//! order.
//!
//! Metadata is validated where it enters: wrong types, missing arrays,
//! duplicate tokens or unknown pre-tokenizers are a [`TokenizerError`], never a
//! panic. An absent `tokenizer.ggml.pre` means llama.cpp's `default`
//! pre-tokenizer (llama.cpp warns that quality will be degraded).
#![deny(missing_docs)]

pub mod chat;
mod decode;
mod encode;
mod error;
mod pre;
mod unicode;
mod vocab;

pub use decode::StreamDecoder;
pub use error::TokenizerError;
pub use vocab::{SpecialTokens, TokenType, Tokenizer, VocabKind};

// Tokenizers and templates are shared between threads (a server, parallel
// tokenization): keep them Send + Sync.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Tokenizer>();
    send_sync::<chat::ChatTemplate>();
};
