//! Text → token ids: special-token partitioning, then SentencePiece or
//! byte-level BPE on each stretch of plain text (llama.cpp's `impl::tokenize`).

use std::collections::BinaryHeap;

use crate::unicode::byte_to_char;
use crate::vocab::{attr, BpeState, FxMap, Tokenizer, VocabKind};
use crate::TokenizerError;

/// A piece of the input after special-token partitioning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fragment {
    Token(u32),
    /// Byte range `start..end` of the input.
    Text(usize, usize),
}

/// C's `isspace` in the "C" locale, which llama.cpp uses to strip around special tokens.
fn c_isspace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

/// Texts longer than this are checked against the memory available.
const TEXT_CHECKED_FROM: usize = 1 << 20;
/// The memory tokenizing takes per byte of text, at most (measured: 19 for
/// words, 63 for one 3 MB word, on byte-level BPE).
const BYTES_PER_TEXT_BYTE: u64 = 64;

impl Tokenizer {
    /// Tokenizes `text` like `llama_tokenize`.
    ///
    /// `add_special` adds BOS/EOS as the file's `add_bos_token`/`add_eos_token`
    /// (or llama.cpp's defaults) say. `parse_special` turns control tokens
    /// written in the text (`<|im_start|>`) into their ids; user-defined tokens
    /// are always matched, as in llama.cpp.
    pub fn encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        self.encode_with_text_ranges(text, add_special, parse_special, &[])
    }

    /// [`Tokenizer::encode`], where the byte ranges `as_text` (sorted, not
    /// overlapping) are text whatever they hold: no special token, control or
    /// user-defined, is matched over any byte of them. Outside them special
    /// tokens are matched as `parse_special` says. Text on both sides of a
    /// range boundary is tokenized as one stretch, so where `as_text` holds
    /// no special token's text the result is exactly [`Tokenizer::encode`]'s.
    ///
    /// This is how a chat keeps message content as text while the template
    /// writes control tokens ([`Tokenizer::encode_chat`]).
    pub fn encode_with_text_ranges(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
        as_text: &[std::ops::Range<usize>],
    ) -> Result<Vec<u32>, TokenizerError> {
        self.encode_ranges(text, add_special, parse_special, as_text, false)
    }

    /// [`Tokenizer::encode_with_text_ranges`] for text that continues
    /// tokens already made (the next turn of a chat after the reply the
    /// model generated): no BOS, and no SentencePiece space prefix before
    /// its first stretch of text, which continues the text before it.
    pub fn encode_continuation(
        &self,
        text: &str,
        parse_special: bool,
        as_text: &[std::ops::Range<usize>],
    ) -> Result<Vec<u32>, TokenizerError> {
        self.encode_ranges(text, false, parse_special, as_text, true)
    }

    fn encode_ranges(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
        as_text: &[std::ops::Range<usize>],
        continues: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        // Tokenizing takes up to ~20 bytes of memory a byte of text
        // (fragments, symbols, merge queues, ids); a text beyond what the
        // machine holds is an error, not an allocation abort.
        if text.len() > TEXT_CHECKED_FROM {
            let needed = (text.len() as u64).saturating_mul(BYTES_PER_TEXT_BYTE);
            if let Some(available) = gguf_format::available_memory() {
                if needed > available {
                    return Err(TokenizerError::TextTooLarge {
                        bytes: text.len(),
                        needed,
                        available,
                    });
                }
            }
        }
        let fragments = self.partition(text, parse_special, as_text);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.push(
                self.special
                    .bos
                    .ok_or(TokenizerError::MissingSpecialToken {
                        flag: "tokenizer.ggml.add_bos_token",
                        token: "BOS",
                    })?,
            );
        }
        match self.kind {
            VocabKind::SentencePiece => {
                // A space is prefixed to the first stretch of text (unless
                // it continues earlier text) and to every stretch that
                // follows a special token.
                let mut prev_special = !continues;
                let mut buf = String::new();
                for f in fragments {
                    match f {
                        Fragment::Text(a, b) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push('▁');
                            }
                            for c in text[a..b].chars() {
                                if c == ' ' {
                                    buf.push('▁');
                                } else {
                                    buf.push(c);
                                }
                            }
                            self.spm_tokenize(&buf, &mut out)?;
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
            VocabKind::BytePairEncoding => {
                let bpe = self.bpe.as_ref().expect("BPE vocabularies have merges");
                let mut cache = FxMap::default();
                for f in fragments {
                    match f {
                        Fragment::Text(a, b) => {
                            self.bpe_tokenize(bpe, &text[a..b], &mut cache, &mut out)?
                        }
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.push(
                self.special
                    .eos
                    .ok_or(TokenizerError::MissingSpecialToken {
                        flag: "tokenizer.ggml.add_eos_token",
                        token: "EOS",
                    })?,
            );
        }
        Ok(out)
    }

    /// The text of the first special token (control or user-defined) in
    /// `text`, as [`Tokenizer::encode`] would match them, if any.
    pub fn special_token_in(&self, text: &str) -> Option<&str> {
        self.partition(text, true, &[])
            .into_iter()
            .find_map(|f| match f {
                Fragment::Token(id) => self.token_text(id),
                Fragment::Text(..) => None,
            })
    }

    /// Splits `text` at the special tokens it contains, longest token first
    /// (`tokenizer_st_partition`). Without `parse_special` only user-defined
    /// tokens are split out.
    fn partition(
        &self,
        text: &str,
        parse_special: bool,
        as_text: &[std::ops::Range<usize>],
    ) -> Vec<Fragment> {
        // Whether bytes m..m+len touch a range that must stay text.
        let protected = |m: usize, len: usize| {
            let i = as_text.partition_point(|r| r.end <= m);
            as_text.get(i).is_some_and(|r| r.start < m + len)
        };
        let mut fragments = Vec::new();
        if text.is_empty() {
            return fragments;
        }
        fragments.push(Fragment::Text(0, text.len()));
        let bytes = text.as_bytes();
        let mut next = Vec::new();
        for &id in &self.special_cache {
            let data = &self.tokens[id as usize];
            if !parse_special && data.attr & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue;
            }
            let needle = data.text.as_str();
            if !fragments
                .iter()
                .any(|f| matches!(*f, Fragment::Text(a, b) if text[a..b].contains(needle)))
            {
                continue;
            }
            next.clear();
            for &f in &fragments {
                let Fragment::Text(mut start, end) = f else {
                    next.push(f);
                    continue;
                };
                let mut from = start;
                while let Some(pos) = text[from..end].find(needle) {
                    let m = from + pos;
                    if protected(m, needle.len()) {
                        // Not a token here: look again one character on.
                        from = m + text[m..].chars().next().map_or(1, char::len_utf8);
                        continue;
                    }
                    let mut left_end = m;
                    if data.attr & attr::LSTRIP != 0 {
                        while left_end > start && c_isspace(bytes[left_end - 1]) {
                            left_end -= 1;
                        }
                    }
                    if left_end > start {
                        next.push(Fragment::Text(start, left_end));
                    }
                    next.push(Fragment::Token(id));
                    start = m + needle.len();
                    if data.attr & attr::RSTRIP != 0 {
                        while start < end && c_isspace(bytes[start]) {
                            start += 1;
                        }
                    }
                    from = start;
                }
                if start < end {
                    next.push(Fragment::Text(start, end));
                }
            }
            std::mem::swap(&mut fragments, &mut next);
        }
        fragments
    }

    /// SentencePiece BPE by score on `text` (spaces already `▁`), with byte
    /// fallback for what no token covers (`llm_tokenizer_spm_session`).
    ///
    /// llama.cpp merges over the whole text with one priority queue. Where no
    /// vocabulary token contains two adjacent characters, no merge can ever
    /// join them, and merges on either side never interact; the queue's order
    /// restricted to one side is the same as that side's own order. So the
    /// text is cut at such places and each piece merged alone, which gives
    /// the same tokens with a far smaller queue.
    fn spm_tokenize(&self, text: &str, out: &mut Vec<u32>) -> Result<(), TokenizerError> {
        let mut session = SpmSession::default();
        let mut start = 0;
        let mut prev: Option<char> = None;
        for (i, c) in text.char_indices() {
            if let Some(p) = prev {
                if !self.spm_pairs.contains(&pair_key(p, c)) {
                    session.tokenize(self, &text[start..i], out)?;
                    start = i;
                }
            }
            prev = Some(c);
        }
        session.tokenize(self, &text[start..], out)
    }

    /// Byte-level BPE by merge rank on each pre-tokenized word (`llm_tokenizer_bpe_session`).
    fn bpe_tokenize(
        &self,
        bpe: &BpeState,
        text: &str,
        cache: &mut FxMap<String, Vec<u32>>,
        out: &mut Vec<u32>,
    ) -> Result<(), TokenizerError> {
        let mut words = Vec::new();
        bpe.pre.split(text, &mut words)?;
        let mut encoded = String::new();
        let mut symbols: Vec<Symbol> = Vec::new();
        let mut queue: BinaryHeap<BpeBigram> = BinaryHeap::new();
        let mut key = String::new();
        for range in words {
            // A word always tokenizes the same way: remember each one.
            let word = &text[range];
            if let Some(ids) = cache.get(word) {
                out.extend_from_slice(ids);
                continue;
            }
            encoded.clear();
            encoded.extend(word.bytes().map(byte_to_char));
            let first = out.len();
            if bpe.ignore_merges {
                if let Some(id) = self.token_id(&encoded) {
                    out.push(id);
                    cache.insert(word.to_string(), vec![id]);
                    continue;
                }
            }
            symbols.clear();
            queue.clear();
            let n_chars = encoded.chars().count();
            for (i, (start, c)) in encoded.char_indices().enumerate() {
                symbols.push(Symbol {
                    prev: i as i32 - 1,
                    next: if i + 1 == n_chars { -1 } else { i as i32 + 1 },
                    start,
                    n: c.len_utf8(),
                });
            }
            let add = |symbols: &[Symbol],
                       queue: &mut BinaryHeap<BpeBigram>,
                       key: &mut String,
                       left: i32,
                       right: i32| {
                if left < 0 || right < 0 {
                    return;
                }
                let (l, r) = (&symbols[left as usize], &symbols[right as usize]);
                key.clear();
                key.push_str(&encoded[l.start..l.start + l.n]);
                key.push(' ');
                key.push_str(&encoded[r.start..r.start + r.n]);
                if let Some(&rank) = bpe.ranks.get(key.as_str()) {
                    queue.push(BpeBigram {
                        left,
                        right,
                        rank,
                        size: l.n + r.n,
                    });
                }
            };
            for i in 1..symbols.len() as i32 {
                add(&symbols, &mut queue, &mut key, i - 1, i);
            }
            while let Some(bigram) = queue.pop() {
                let (li, ri) = (bigram.left as usize, bigram.right as usize);
                let (ln, rn) = (symbols[li].n, symbols[ri].n);
                // Outdated: one side was merged away or has grown since.
                if ln == 0 || rn == 0 || ln + rn != bigram.size {
                    continue;
                }
                symbols[li].n += rn;
                symbols[ri].n = 0;
                let right_next = symbols[ri].next;
                symbols[li].next = right_next;
                if right_next >= 0 {
                    symbols[right_next as usize].prev = bigram.left;
                }
                let left_prev = symbols[li].prev;
                add(&symbols, &mut queue, &mut key, left_prev, bigram.left);
                add(&symbols, &mut queue, &mut key, bigram.left, right_next);
            }
            for sym in symbols.iter().filter(|s| s.n > 0) {
                let s = &encoded[sym.start..sym.start + sym.n];
                match self.token_id(s) {
                    Some(id) => out.push(id),
                    None => {
                        // llama.cpp looks each byte of the encoded text up as a
                        // one-byte string: only ASCII bytes can match.
                        for &b in s.as_bytes() {
                            if b.is_ascii() {
                                if let Some(id) =
                                    self.token_id(std::str::from_utf8(&[b]).unwrap_or_default())
                                {
                                    out.push(id);
                                }
                            }
                        }
                    }
                }
            }
            cache.insert(word.to_string(), out[first..].to_vec());
        }
        Ok(())
    }
}

/// The key of an adjacent character pair in [`Tokenizer::spm_pairs`].
pub(crate) fn pair_key(a: char, b: char) -> u64 {
    (a as u64) << 32 | b as u64
}

/// Reusable buffers of the SentencePiece merge loop.
#[derive(Default)]
struct SpmSession {
    symbols: Vec<Symbol>,
    queue: BinaryHeap<SpmBigram>,
}

impl SpmSession {
    fn tokenize(
        &mut self,
        tok: &Tokenizer,
        text: &str,
        out: &mut Vec<u32>,
    ) -> Result<(), TokenizerError> {
        let symbols = &mut self.symbols;
        let queue = &mut self.queue;
        symbols.clear();
        queue.clear();
        for (i, (start, c)) in text.char_indices().enumerate() {
            let n = c.len_utf8();
            let next = if start + n == text.len() {
                -1
            } else {
                i as i32 + 1
            };
            symbols.push(Symbol {
                prev: i as i32 - 1,
                next,
                start,
                n,
            });
        }
        for i in 1..symbols.len() as i32 {
            spm_try_add(tok, text, symbols, queue, i - 1, i);
        }
        while let Some(bigram) = queue.pop() {
            let (li, ri) = (bigram.left as usize, bigram.right as usize);
            let (ln, rn) = (symbols[li].n, symbols[ri].n);
            // Outdated: one side was merged away or has grown since.
            if ln == 0 || rn == 0 || ln + rn != bigram.size {
                continue;
            }
            symbols[li].n += rn;
            symbols[ri].n = 0;
            let right_next = symbols[ri].next;
            symbols[li].next = right_next;
            if right_next >= 0 {
                symbols[right_next as usize].prev = bigram.left;
            }
            let left_prev = symbols[li].prev;
            spm_try_add(tok, text, symbols, queue, left_prev, bigram.left);
            spm_try_add(tok, text, symbols, queue, bigram.left, right_next);
        }
        if symbols.is_empty() {
            return Ok(());
        }
        // Every merged symbol is a token (a merge is queued only then), so a
        // symbol that is no token is a single character: it becomes byte
        // tokens. (llama.cpp's `resegment` also consults a map of merged
        // pairs, which can only hold texts of two or more characters.)
        let mut i = 0i32;
        while i != -1 {
            let sym = symbols[i as usize];
            let s = &text[sym.start..sym.start + sym.n];
            match tok.token_id(s) {
                Some(id) => out.push(id),
                None => {
                    for &b in s.as_bytes() {
                        out.push(
                            tok.byte_tokens[b as usize].ok_or(TokenizerError::NoByteToken(b))?,
                        );
                    }
                }
            }
            i = sym.next;
        }
        Ok(())
    }
}

/// Queues the merge of symbols `left` and `right` if their concatenation is a token.
fn spm_try_add(
    tok: &Tokenizer,
    text: &str,
    symbols: &[Symbol],
    queue: &mut BinaryHeap<SpmBigram>,
    left: i32,
    right: i32,
) {
    if left < 0 || right < 0 {
        return;
    }
    let (l, r) = (&symbols[left as usize], &symbols[right as usize]);
    let s = &text[l.start..l.start + l.n + r.n];
    let Some(id) = tok.token_id(s) else { return };
    queue.push(SpmBigram {
        left,
        right,
        score: tok.tokens[id as usize].score,
        size: s.len(),
    });
}

/// A symbol of the merge loop: a byte range of the text, linked to its neighbours.
#[derive(Clone, Copy, Debug)]
struct Symbol {
    prev: i32,
    next: i32,
    start: usize,
    n: usize,
}

/// A candidate SentencePiece merge; the queue pops the highest score, then the leftmost.
#[derive(Debug)]
struct SpmBigram {
    left: i32,
    right: i32,
    score: f32,
    size: usize,
}

impl PartialEq for SpmBigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for SpmBigram {}
impl PartialOrd for SpmBigram {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for SpmBigram {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score
            .partial_cmp(&other.score)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// A candidate BPE merge; the queue pops the lowest rank, then the leftmost.
#[derive(Debug, PartialEq, Eq)]
struct BpeBigram {
    left: i32,
    right: i32,
    rank: u32,
    size: usize,
}

impl PartialOrd for BpeBigram {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for BpeBigram {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.left.cmp(&self.left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cutting the text where no token spans gives exactly llama.cpp's
    /// whole-text merge.
    #[test]
    fn segmented_sentencepiece_equals_whole_text_merge() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/vocab/");
        let file = gguf_format::GgufFile::open(format!("{dir}ggml-vocab-llama-spm.gguf")).unwrap();
        let tok = Tokenizer::from_gguf(file.header()).unwrap();
        let mut text =
            std::fs::read_to_string(format!("{dir}ggml-vocab-llama-spm.gguf.inp")).unwrap();
        text.push_str(include_str!("encode.rs"));
        let text = format!("▁{}", text.replace(' ', "▁"));
        let mut whole = Vec::new();
        SpmSession::default()
            .tokenize(&tok, &text, &mut whole)
            .unwrap();
        let mut segmented = Vec::new();
        tok.spm_tokenize(&text, &mut segmented).unwrap();
        assert!(whole.len() > 1000);
        assert_eq!(whole, segmented);
    }
}
