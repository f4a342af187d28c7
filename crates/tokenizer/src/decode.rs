//! Token ids → text (llama.cpp's `token_to_piece` and `detokenize`), and a
//! streaming decoder that only hands out complete UTF-8.

use crate::unicode::char_to_byte;
use crate::vocab::{attr, Tokenizer, VocabKind};

impl Tokenizer {
    /// The bytes token `id` stands for (`token_to_piece` without the cache).
    ///
    /// Control and unknown tokens give their text only when `special`.
    pub(crate) fn piece_uncached(&self, id: u32, special: bool) -> Vec<u8> {
        let Some(t) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        let a = t.attr;
        if !special && a & (attr::UNKNOWN | attr::CONTROL) != 0 {
            return Vec::new();
        }
        if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
            return t.text.as_bytes().to_vec();
        }
        if a & attr::NORMAL != 0 {
            return match self.kind {
                VocabKind::SentencePiece => t.text.replace('▁', " ").into_bytes(),
                VocabKind::BytePairEncoding => decode_byte_level(&t.text),
            };
        }
        if a & attr::BYTE != 0 {
            // `<0xNN>`; llama.cpp reads the two hex digits at 3..5.
            let byte = t
                .text
                .get(3..5)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .unwrap_or(0);
            return vec![byte];
        }
        Vec::new()
    }

    /// The bytes token `id` stands for, with control tokens rendered as their
    /// text (llama.cpp's piece cache, `common_token_to_piece(.., special = true)`).
    /// Empty for an id outside the vocabulary.
    pub fn token_to_piece(&self, id: u32) -> Vec<u8> {
        self.piece(id).to_vec()
    }

    /// [`token_to_piece`](Self::token_to_piece) without copying.
    pub fn piece(&self, id: u32) -> &[u8] {
        self.piece_cache
            .get(id as usize)
            .map_or(&[], |p| p.as_slice())
    }

    /// The bytes of `ids`, exactly as `llama_detokenize(remove_special, unparse_special)`:
    /// the SentencePiece space prefix is dropped from the first token, control
    /// tokens appear only with `unparse_special`, and vocabularies whose
    /// pre-tokenizer asks for it get `clean_up_tokenization_spaces`.
    pub fn detokenize(&self, ids: &[u32], remove_special: bool, unparse_special: bool) -> Vec<u8> {
        let mut ids = ids;
        let mut remove_space = self.add_space_prefix;
        if remove_special && self.add_bos {
            if let (Some(&first), Some(bos)) = (ids.first(), self.special.bos) {
                if first == bos {
                    remove_space = false;
                    ids = &ids[1..];
                }
            }
        }
        if remove_special && self.add_eos {
            if let (Some(&last), Some(eos)) = (ids.last(), self.special.eos) {
                if last == eos {
                    ids = &ids[..ids.len() - 1];
                }
            }
        }
        let mut text = Vec::new();
        for &id in ids {
            let piece: &[u8] = if !unparse_special
                && self
                    .tokens
                    .get(id as usize)
                    .is_some_and(|t| t.attr & (attr::UNKNOWN | attr::CONTROL) != 0)
            {
                &[]
            } else {
                self.piece(id)
            };
            let piece = if remove_space {
                piece.strip_prefix(b" ").unwrap_or(piece)
            } else {
                piece
            };
            remove_space = false;
            text.extend_from_slice(piece);
        }
        if self.clean_spaces {
            clean_up_tokenization_spaces(&mut text);
        }
        text
    }

    /// The text of `ids` (control tokens omitted), invalid UTF-8 replaced by U+FFFD.
    ///
    /// Equivalent to `llama_detokenize(ids, remove_special = false, unparse_special = false)`.
    pub fn decode(&self, ids: &[u32]) -> String {
        String::from_utf8_lossy(&self.detokenize(ids, false, false)).into_owned()
    }
}

/// GPT-2's byte decoder: each character of a byte-level token is one byte
/// (`llama_decode_text`, including its `[UNK_BYTE_0x..]` for characters that are not).
fn decode_byte_level(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
    out
}

/// Hugging Face's `clean_up_tokenization_spaces`, llama.cpp's three passes.
fn clean_up_tokenization_spaces(text: &mut Vec<u8>) {
    // " ?", " !", " .", " ,": drop the space.
    let mut out: Vec<u8> = Vec::with_capacity(text.len());
    for (i, &x) in text.iter().enumerate() {
        if i > 0 && text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            out.pop();
        }
        out.push(x);
    }
    // " ' ": drop both spaces. llama.cpp overwrites the skipped space with NUL
    // in place, so it no longer counts as a space for the next apostrophe.
    let mut t = std::mem::take(&mut out);
    let mut i = 0;
    while i < t.len() {
        let x = t[i];
        if i > 0 && x == b'\'' && i + 1 < t.len() && t[i - 1] == b' ' && t[i + 1] == b' ' {
            out.pop();
            out.push(x);
            t[i + 1] = 0;
            i += 2;
            continue;
        }
        out.push(x);
        i += 1;
    }
    // " 's", " 'm", " 're", " 've": drop the space.
    let t = std::mem::take(&mut out);
    for (i, &x) in t.iter().enumerate() {
        if i > 0 && t[i - 1] == b' ' && x == b'\'' && i + 1 < t.len() {
            let x1 = t[i + 1];
            let x2 = t.get(i + 2).copied();
            if matches!(x1, b's' | b'm')
                || (x2.is_some()
                    && ((x1 == b'r' && x2 == Some(b'e')) || (x1 == b'v' && x2 == Some(b'e'))))
            {
                out.pop();
            }
        }
        out.push(x);
    }
    *text = out;
}

/// Turns a stream of token ids into text, holding back a UTF-8 character split
/// across tokens until it is complete.
///
/// Pieces are those of [`Tokenizer::token_to_piece`] with no space stripping
/// or clean-up, as llama.cpp's examples print tokens while generating; control
/// tokens are rendered only if the decoder was made [`with_special`](Self::with_special).
///
/// ```no_run
/// # fn f(tok: &tokenizer::Tokenizer, ids: &[u32]) {
/// let mut stream = tokenizer::StreamDecoder::new();
/// for &id in ids {
///     print!("{}", stream.push(tok, id));
/// }
/// print!("{}", stream.finish());
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
    special: bool,
}

impl StreamDecoder {
    /// A decoder that omits control tokens.
    pub fn new() -> StreamDecoder {
        StreamDecoder::default()
    }

    /// A decoder that renders control tokens as their text when `special`.
    pub fn with_special(special: bool) -> StreamDecoder {
        StreamDecoder {
            pending: Vec::new(),
            special,
        }
    }

    /// Adds token `id` and returns the text that is now complete.
    ///
    /// Bytes that can never become valid UTF-8 come out as U+FFFD at once; an
    /// incomplete character at the end waits for the next token.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        if self.special
            || !tok.is_control(id) && tok.token_type(id) != Some(crate::TokenType::Unknown)
        {
            self.pending.extend_from_slice(tok.piece(id));
        }
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..valid]).expect("validated"));
                    match e.error_len() {
                        // Incomplete at the end: keep it for the next token.
                        None => {
                            self.pending.drain(..valid);
                            break;
                        }
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
        out
    }

    /// Flushes what is left (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}
