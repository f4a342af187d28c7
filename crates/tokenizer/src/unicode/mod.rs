//! Codepoint classes and the pre-tokenizer split, ported from llama.cpp's `src/unicode.cpp`.
//!
//! Byte-level BPE vocabularies are trained on text first cut into words by a
//! regular expression. llama.cpp does not run those expressions as written:
//! two of them (GPT-2's and LLaMA-3's) are hand-written scanners, and the
//! others run on a "collapsed" copy of the text in which every non-ASCII
//! codepoint is replaced by one marker per general category, with `\p{..}`
//! rewritten to match that marker. Token ids depend on those details, so this
//! module reproduces them rather than using a Unicode-aware regex directly.

mod data;

use std::sync::OnceLock;

use crate::TokenizerError;

/// General-category and helper flags of a codepoint (`unicode_cpt_flags`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CptFlags(u16);

impl CptFlags {
    pub(crate) const UNDEFINED: u16 = 0x0001;
    pub(crate) const NUMBER: u16 = 0x0002;
    pub(crate) const LETTER: u16 = 0x0004;
    pub(crate) const ACCENT_MARK: u16 = 0x0010;
    pub(crate) const PUNCTUATION: u16 = 0x0020;
    pub(crate) const SYMBOL: u16 = 0x0040;
    const MASK_CATEGORIES: u16 = 0x00FF;
    const WHITESPACE: u16 = 0x0100;

    pub(crate) fn is_number(self) -> bool {
        self.0 & Self::NUMBER != 0
    }
    pub(crate) fn is_letter(self) -> bool {
        self.0 & Self::LETTER != 0
    }
    pub(crate) fn is_whitespace(self) -> bool {
        self.0 & Self::WHITESPACE != 0
    }
    pub(crate) fn is_accent_mark(self) -> bool {
        self.0 & Self::ACCENT_MARK != 0
    }
    /// Any flag at all; out-of-range positions have none.
    pub(crate) fn any(self) -> bool {
        self.0 != 0
    }
    pub(crate) fn category(self) -> u16 {
        self.0 & Self::MASK_CATEGORIES
    }
}

/// The dense codepoint → flags table, built once (2.2 MB, as in llama.cpp).
fn flags_table() -> &'static [u16] {
    static TABLE: OnceLock<Box<[u16]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = vec![CptFlags::UNDEFINED; MAX_CODEPOINTS as usize];
        let ranges = data::CATEGORY_RANGES;
        for (i, &(start, flags)) in ranges.iter().enumerate() {
            let end = ranges.get(i + 1).map_or(MAX_CODEPOINTS, |r| r.0);
            table[start as usize..end as usize].fill(flags);
        }
        for &cpt in data::WHITESPACE {
            table[cpt as usize] |= CptFlags::WHITESPACE;
        }
        table.into_boxed_slice()
    })
}

const MAX_CODEPOINTS: u32 = 0x11_0000;

/// The flags of codepoint `cpt`.
pub(crate) fn cpt_flags(cpt: u32) -> CptFlags {
    CptFlags(
        flags_table()
            .get(cpt as usize)
            .copied()
            .unwrap_or(CptFlags::UNDEFINED),
    )
}

/// GPT-2's byte → printable character map (`bytes_to_unicode`).
fn byte_to_char_table() -> &'static [char; 256] {
    static TABLE: OnceLock<[char; 256]> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = ['\0'; 256];
        let mut next = 256u32;
        for (b, slot) in table.iter_mut().enumerate() {
            let printable = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
            let cpt = if printable {
                b as u32
            } else {
                next += 1;
                next - 1
            };
            *slot = char::from_u32(cpt).expect("below U+0200");
        }
        table
    })
}

/// The printable character that stands for byte `b` in a byte-level vocabulary.
pub(crate) fn byte_to_char(b: u8) -> char {
    byte_to_char_table()[b as usize]
}

/// The byte that printable character `c` stands for, if any (`unicode_utf8_to_byte`).
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let cpt = c as u32;
    match cpt {
        0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF => Some(cpt as u8),
        0x100..=0x143 => {
            // The 68 non-printable bytes, in increasing order, took U+0100.. .
            let n = (cpt - 0x100) as usize;
            (0u16..256)
                .filter(|&b| !matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF))
                .nth(n)
                .map(|b| b as u8)
        }
        _ => None,
    }
}

/// `(?i)`-style lower-casing for the contraction letters of the LLaMA-3 scanner.
///
/// llama.cpp uses Unicode's simple lower-case mapping there, but only the result
/// matters when it is one of `s t m d r e v l`, and no non-ASCII codepoint maps
/// to those (checked by `scripts/gen_unicode_data.py`), so ASCII is exact.
fn to_lower_ascii(cpt: u32) -> u32 {
    if (b'A' as u32..=b'Z' as u32).contains(&cpt) {
        cpt + 32
    } else {
        cpt
    }
}

/// The pre-tokenizer expressions llama.cpp's GPT-2 scanner replaces.
const GPT2_PATTERN: &str =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
/// The expressions llama.cpp's LLaMA-3-style scanners replace
/// (`unicode_regex_split_custom`), each with the variant that runs it.
const SCANNED_PATTERNS: [(&str, Llama3Variant); 4] = [
    (
        "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
        Llama3Variant::LLAMA3,
    ),
    (
        "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
        Llama3Variant::LLAMA3,
    ),
    (
        "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
        Llama3Variant::QWEN2,
    ),
    (
        "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
        Llama3Variant::QWEN35,
    ),
];

/// What tells llama.cpp's three LLaMA-3-shaped scanners apart
/// (`unicode_regex_split_custom_llama3`, `_qwen2`, `_qwen35`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Llama3Variant {
    /// The most digits in one word: 3 for `\p{N}{1,3}`, 1 for `\p{N}`.
    max_digits: usize,
    /// Combining marks count as letters: `[\p{L}\p{M}]+` for words, and
    /// `[^\s\p{L}\p{M}\p{N}]` for punctuation runs (Qwen3.5).
    marks_are_letters: bool,
}

impl Llama3Variant {
    const LLAMA3: Self = Self {
        max_digits: 3,
        marks_are_letters: false,
    };
    const QWEN2: Self = Self {
        max_digits: 1,
        marks_are_letters: false,
    };
    const QWEN35: Self = Self {
        max_digits: 1,
        marks_are_letters: true,
    };

    /// A codepoint a word's letter run takes.
    fn is_word(self, f: CptFlags) -> bool {
        f.is_letter() || (self.marks_are_letters && f.is_accent_mark())
    }
}

/// One step of the split: a hand-written scanner or a compiled expression.
#[derive(Debug)]
enum SplitStep {
    Gpt2,
    Llama3(Llama3Variant),
    /// Runs on the collapsed text (the expression uses `\p{..}`).
    Collapsed(fancy_regex::Regex),
    /// Runs on the codepoints, with non-ASCII whitespace replaced by `\x0B`.
    Plain(fancy_regex::Regex),
}

/// A compiled pre-tokenizer: the ordered expressions of one `tokenizer.ggml.pre` type.
#[derive(Debug)]
pub(crate) struct PreTokenizer {
    steps: Vec<SplitStep>,
    needs_collapse: bool,
}

/// The unicode categories llama.cpp rewrites, and the marker each collapses to.
const CATEGORIES: [(&str, u16); 10] = [
    ("\\p{N}", CptFlags::NUMBER),
    ("\\p{L}", CptFlags::LETTER),
    ("\\p{P}", CptFlags::PUNCTUATION),
    ("\\p{M}", CptFlags::ACCENT_MARK),
    ("\\p{S}", CptFlags::SYMBOL),
    ("\\p{Lu}", CptFlags::LETTER),
    ("\\p{Ll}", CptFlags::LETTER),
    ("\\p{Lt}", CptFlags::LETTER),
    ("\\p{Lm}", CptFlags::LETTER),
    ("\\p{Lo}", CptFlags::LETTER),
];

/// The marker a codepoint of category `flag` collapses to (llama.cpp uses bytes
/// 0xD0..0xD5; here they are the codepoints U+00D0..U+00D5, which no ASCII
/// character of the collapsed text can be confused with).
fn category_marker(flag: u16) -> Option<char> {
    Some(match flag {
        CptFlags::NUMBER => '\u{D1}',
        CptFlags::LETTER => '\u{D2}',
        CptFlags::PUNCTUATION => '\u{D3}',
        CptFlags::ACCENT_MARK => '\u{D4}',
        CptFlags::SYMBOL => '\u{D5}',
        _ => return None,
    })
}
const OTHER_MARKER: char = '\u{D0}';

/// The ASCII members of each category, as llama.cpp adds them next to the marker.
fn category_ascii(flag: u16) -> &'static str {
    match flag {
        CptFlags::NUMBER => "0-9",
        CptFlags::LETTER => "A-Za-z",
        CptFlags::PUNCTUATION => "!-#%-*,-/:-;?-@\\[-\\]_\\{\\}",
        CptFlags::SYMBOL => "\\$\\+<->^`\\|",
        _ => "",
    }
}

/// Rewrites `\p{..}` in `expr` to match collapsed text (llama.cpp's `regex_expr_collapsed`).
fn collapse_expression(expr: &str) -> Result<String, TokenizerError> {
    if !expr.is_ascii() {
        return Err(TokenizerError::Regex {
            pattern: expr.to_string(),
            message: "uses both unicode categories and non-ASCII characters".into(),
        });
    }
    let bytes = expr.as_bytes();
    let mut out = String::with_capacity(expr.len() + 16);
    let mut inside = false;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'[' && (i == 0 || bytes[i - 1] != b'\\') {
            out.push('[');
            inside = true;
            i += 1;
            continue;
        }
        if inside && c == b']' && bytes[i - 1] != b'\\' {
            out.push(']');
            inside = false;
            i += 1;
            continue;
        }
        if c == b'\\' && i + 3 < bytes.len() && bytes[i + 1] == b'p' && bytes[i + 2] == b'{' {
            if let Some(close) = expr[i + 3..].find('}').map(|p| p + i + 3) {
                if close <= i + 10 {
                    let pat = &expr[i..=close];
                    if let Some(&(_, flag)) = CATEGORIES.iter().find(|(name, _)| *name == pat) {
                        if !inside {
                            out.push('[');
                        }
                        out.push(category_marker(flag).unwrap_or(OTHER_MARKER));
                        out.push_str(category_ascii(flag));
                        if !inside {
                            out.push(']');
                        }
                        i = close + 1;
                        continue;
                    }
                }
            }
        }
        out.push(c as char);
        i += 1;
    }
    Ok(out)
}

fn compile(pattern: &str, original: &str) -> Result<fancy_regex::Regex, TokenizerError> {
    fancy_regex::Regex::new(pattern).map_err(|e| TokenizerError::Regex {
        pattern: original.to_string(),
        message: e.to_string(),
    })
}

impl PreTokenizer {
    /// Compiles the expressions of one pre-tokenizer type, in order.
    pub(crate) fn new(exprs: &[&str]) -> Result<PreTokenizer, TokenizerError> {
        let mut steps = Vec::with_capacity(exprs.len());
        let mut needs_collapse = false;
        for &expr in exprs {
            let uses_category = CATEGORIES.iter().any(|(name, _)| expr.contains(name));
            needs_collapse |= uses_category;
            let step = if expr == GPT2_PATTERN {
                SplitStep::Gpt2
            } else if let Some(&(_, variant)) = SCANNED_PATTERNS.iter().find(|(p, _)| *p == expr) {
                SplitStep::Llama3(variant)
            } else if uses_category {
                SplitStep::Collapsed(compile(&collapse_expression(expr)?, expr)?)
            } else {
                SplitStep::Plain(compile(expr, expr)?)
            };
            steps.push(step);
        }
        Ok(PreTokenizer {
            steps,
            needs_collapse,
        })
    }

    /// What runs each expression: `gpt2`, `llama3`, `qwen2` or `qwen35` for
    /// llama.cpp's hand-written scanners, `collapsed` or `plain` for a regex.
    #[cfg(test)]
    pub(crate) fn step_kinds(&self) -> Vec<&'static str> {
        self.steps
            .iter()
            .map(|step| match step {
                SplitStep::Gpt2 => "gpt2",
                SplitStep::Llama3(Llama3Variant::LLAMA3) => "llama3",
                SplitStep::Llama3(Llama3Variant::QWEN2) => "qwen2",
                SplitStep::Llama3(Llama3Variant::QWEN35) => "qwen35",
                SplitStep::Llama3(_) => unreachable!("only the three variants exist"),
                SplitStep::Collapsed(_) => "collapsed",
                SplitStep::Plain(_) => "plain",
            })
            .collect()
    }

    /// Splits `text` into words (`unicode_regex_split`), appended to `out` as byte ranges.
    pub(crate) fn split(
        &self,
        text: &str,
        out: &mut Vec<std::ops::Range<usize>>,
    ) -> Result<(), TokenizerError> {
        let cpts: Vec<u32> = text.chars().map(|c| c as u32).collect();
        let mut offsets = vec![cpts.len()];
        // Collapsed and plain views of the text, each with the byte offset of
        // every codepoint so that matches map back to codepoint counts.
        let mut collapsed: Option<IndexedText> = None;
        let mut plain: Option<IndexedText> = None;
        for step in &self.steps {
            offsets = match step {
                SplitStep::Gpt2 => split_gpt2(&cpts, &offsets),
                SplitStep::Llama3(variant) => split_llama3(&cpts, &offsets, *variant),
                SplitStep::Collapsed(re) => {
                    debug_assert!(self.needs_collapse);
                    let view = collapsed.get_or_insert_with(|| IndexedText::collapsed(&cpts));
                    view.split(re, &offsets)?
                }
                SplitStep::Plain(re) => {
                    let view = plain.get_or_insert_with(|| IndexedText::plain(&cpts));
                    view.split(re, &offsets)?
                }
            };
        }
        // Cut the original text at the codepoint offsets.
        let mut chars = text.char_indices().map(|(i, _)| i).chain([text.len()]);
        let mut start_byte = chars.next().unwrap_or(0);
        for len in offsets {
            if len == 0 {
                continue;
            }
            let mut end_byte = start_byte;
            for _ in 0..len {
                end_byte = chars.next().unwrap_or(text.len());
            }
            out.push(start_byte..end_byte);
            start_byte = end_byte;
        }
        Ok(())
    }
}

/// Text as a `str` for the regex engine plus the byte offset of every codepoint.
struct IndexedText {
    text: String,
    /// `byte_of[i]` is where codepoint `i` starts; one extra entry for the end.
    byte_of: Vec<usize>,
}

impl IndexedText {
    fn from_chars(chars: impl Iterator<Item = char>, n: usize) -> IndexedText {
        let mut text = String::with_capacity(n);
        let mut byte_of = Vec::with_capacity(n + 1);
        for c in chars {
            byte_of.push(text.len());
            text.push(c);
        }
        byte_of.push(text.len());
        IndexedText { text, byte_of }
    }

    /// ASCII as is; other codepoints as one marker per category, whitespace as `\x0B`.
    fn collapsed(cpts: &[u32]) -> IndexedText {
        let chars = cpts.iter().map(|&cpt| {
            if cpt < 128 {
                return char::from_u32(cpt).unwrap_or(OTHER_MARKER);
            }
            let flags = cpt_flags(cpt);
            if flags.is_whitespace() {
                '\x0B'
            } else {
                category_marker(flags.category()).unwrap_or(OTHER_MARKER)
            }
        });
        Self::from_chars(chars, cpts.len())
    }

    /// The codepoints, with non-ASCII whitespace as `\x0B` (what `std::wregex` sees).
    fn plain(cpts: &[u32]) -> IndexedText {
        let chars = cpts.iter().map(|&cpt| {
            if cpt > 0x7F && cpt_flags(cpt).is_whitespace() {
                '\x0B'
            } else {
                char::from_u32(cpt).unwrap_or('\u{FFFD}')
            }
        });
        Self::from_chars(chars, cpts.len())
    }

    /// Splits each chunk further at the matches of `re` (`unicode_regex_split_stl`):
    /// every match and every gap between matches becomes a chunk.
    fn split(
        &self,
        re: &fancy_regex::Regex,
        offsets: &[usize],
    ) -> Result<Vec<usize>, TokenizerError> {
        let mut result = Vec::with_capacity(offsets.len());
        let mut start = 0usize;
        for &len in offsets {
            let (b0, b1) = (self.byte_of[start], self.byte_of[start + len]);
            let chunk = &self.text[b0..b1];
            let mut prev = start;
            for m in re.find_iter(chunk) {
                let m = m.map_err(|e| TokenizerError::Regex {
                    pattern: re.as_str().to_string(),
                    message: e.to_string(),
                })?;
                if m.start() == m.end() {
                    continue;
                }
                let ms = self.cpt_index(b0 + m.start());
                let me = self.cpt_index(b0 + m.end());
                if ms > prev {
                    result.push(ms - prev);
                }
                result.push(me - ms);
                prev = me;
            }
            if prev < start + len {
                result.push(start + len - prev);
            }
            start += len;
        }
        Ok(result)
    }

    fn cpt_index(&self, byte: usize) -> usize {
        self.byte_of.partition_point(|&b| b < byte)
    }
}

/// A view of one chunk of codepoints for the hand-written scanners.
struct Chunk<'a> {
    cpts: &'a [u32],
    ini: usize,
    end: usize,
}

const OUT_OF_RANGE: u32 = 0xFFFF_FFFF;

impl Chunk<'_> {
    fn cpt(&self, pos: usize) -> u32 {
        if self.ini <= pos && pos < self.end {
            self.cpts[pos]
        } else {
            OUT_OF_RANGE
        }
    }
    fn flags(&self, pos: usize) -> CptFlags {
        if self.ini <= pos && pos < self.end {
            cpt_flags(self.cpts[pos])
        } else {
            CptFlags::default()
        }
    }
}

/// Emits the lengths of consecutive tokens of one chunk (`_add_token`).
struct Emitter<'a> {
    out: &'a mut Vec<usize>,
    prev_end: usize,
}

impl Emitter<'_> {
    fn add(&mut self, end: usize) -> usize {
        let len = end - self.prev_end;
        if len > 0 {
            self.out.push(len);
        }
        self.prev_end = end;
        len
    }
}

fn is_rn(cpt: u32) -> bool {
    cpt == '\r' as u32 || cpt == '\n' as u32
}

/// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
/// (`unicode_regex_split_custom_gpt2`).
fn split_gpt2(cpts: &[u32], offsets: &[usize]) -> Vec<usize> {
    let mut out = Vec::with_capacity(offsets.len());
    let mut start = 0;
    for &offset in offsets {
        let c = Chunk {
            cpts,
            ini: start,
            end: start + offset,
        };
        start += offset;
        let mut t = Emitter {
            out: &mut out,
            prev_end: c.ini,
        };
        let mut pos = c.ini;
        while pos < c.end {
            let cpt = c.cpt(pos);
            let flags = c.flags(pos);
            if cpt == '\'' as u32 && pos + 1 < c.end {
                let next = c.cpt(pos + 1);
                if [b's', b't', b'm', b'd'].iter().any(|&x| next == x as u32) {
                    pos += t.add(pos + 2);
                    continue;
                }
                if pos + 2 < c.end {
                    let next2 = c.cpt(pos + 2);
                    if ((next == 'r' as u32 || next == 'v' as u32) && next2 == 'e' as u32)
                        || (next == 'l' as u32 && next2 == 'l' as u32)
                    {
                        pos += t.add(pos + 3);
                        continue;
                    }
                }
            }
            let space = cpt == ' ' as u32;
            let mut flags2 = if space { c.flags(pos + 1) } else { flags };
            if flags2.is_letter() {
                pos += space as usize;
                while flags2.is_letter() {
                    pos += 1;
                    flags2 = c.flags(pos);
                }
                t.add(pos);
                continue;
            }
            if flags2.is_number() {
                pos += space as usize;
                while flags2.is_number() {
                    pos += 1;
                    flags2 = c.flags(pos);
                }
                t.add(pos);
                continue;
            }
            let other =
                |f: CptFlags| !(f.is_whitespace() || f.is_letter() || f.is_number()) && f.any();
            if other(flags2) {
                pos += space as usize;
                while other(flags2) {
                    pos += 1;
                    flags2 = c.flags(pos);
                }
                t.add(pos);
                continue;
            }
            let mut num_ws = 0;
            while c.flags(pos + num_ws).is_whitespace() {
                num_ws += 1;
            }
            if num_ws > 1 && c.cpt(pos + num_ws) != OUT_OF_RANGE {
                pos += num_ws - 1;
                t.add(pos);
                continue;
            }
            if num_ws > 0 {
                pos += num_ws;
                t.add(pos);
                continue;
            }
            pos += 1;
            t.add(pos);
        }
    }
    out
}

/// LLaMA-3: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
/// (`unicode_regex_split_custom_llama3`); with `\p{N}` for `\p{N}{1,3}`
/// Qwen2's (`_qwen2`), and with `[\p{L}\p{M}]` for `\p{L}` in the word and
/// punctuation runs too Qwen3.5's (`_qwen35`). The three C++ functions differ
/// only there, as [`Llama3Variant`] says.
fn split_llama3(cpts: &[u32], offsets: &[usize], variant: Llama3Variant) -> Vec<usize> {
    let mut out = Vec::with_capacity(offsets.len());
    let mut start = 0;
    for &offset in offsets {
        let c = Chunk {
            cpts,
            ini: start,
            end: start + offset,
        };
        start += offset;
        let mut t = Emitter {
            out: &mut out,
            prev_end: c.ini,
        };
        let mut pos = c.ini;
        while pos < c.end {
            let cpt = c.cpt(pos);
            let flags = c.flags(pos);
            if cpt == '\'' as u32 && pos + 1 < c.end {
                let next = to_lower_ascii(c.cpt(pos + 1));
                if [b's', b't', b'm', b'd'].iter().any(|&x| next == x as u32) {
                    pos += t.add(pos + 2);
                    continue;
                }
                if pos + 2 < c.end {
                    let next2 = to_lower_ascii(c.cpt(pos + 2));
                    if ((next == 'r' as u32 || next == 'v' as u32) && next2 == 'e' as u32)
                        || (next == 'l' as u32 && next2 == 'l' as u32)
                    {
                        pos += t.add(pos + 3);
                        continue;
                    }
                }
            }
            // [^\r\n\p{L}\p{N}]?\p{L}+ (Qwen3.5: [^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+)
            if !(is_rn(cpt) || flags.is_number())
                && (variant.is_word(flags) || variant.is_word(c.flags(pos + 1)))
            {
                pos += 1;
                while variant.is_word(c.flags(pos)) {
                    pos += 1;
                }
                t.add(pos);
                continue;
            }
            // \p{N}{1,3} (Qwen: \p{N})
            if flags.is_number() {
                let mut ini = pos;
                while c.flags(pos).is_number() {
                    pos += 1;
                    if pos - ini >= variant.max_digits {
                        t.add(pos);
                        ini = pos;
                    }
                }
                t.add(pos);
                continue;
            }
            // <space>?[^\s\p{L}\p{N}]+[\r\n]* (Qwen3.5: [^\s\p{L}\p{M}\p{N}])
            let space = cpt == ' ' as u32;
            let mut flags2 = if space { c.flags(pos + 1) } else { flags };
            let other = |f: CptFlags| !(f.is_whitespace() || variant.is_word(f) || f.is_number());
            // llama.cpp tests the flags of the first codepoint for "any" here.
            if other(flags2) && flags.any() {
                pos += space as usize;
                while other(flags2) && flags2.any() {
                    pos += 1;
                    flags2 = c.flags(pos);
                }
                let mut cpt2 = c.cpt(pos);
                while is_rn(cpt2) {
                    pos += 1;
                    cpt2 = c.cpt(pos);
                }
                t.add(pos);
                continue;
            }
            let mut num_ws = 0;
            let mut last_end_rn = 0;
            while c.flags(pos + num_ws).is_whitespace() {
                if is_rn(c.cpt(pos + num_ws)) {
                    last_end_rn = pos + num_ws + 1;
                }
                num_ws += 1;
            }
            // \s*[\r\n]+
            if last_end_rn > 0 {
                pos = last_end_rn;
                t.add(pos);
                continue;
            }
            // \s+(?!\S)
            if num_ws > 1 && c.cpt(pos + num_ws) != OUT_OF_RANGE {
                pos += num_ws - 1;
                t.add(pos);
                continue;
            }
            if num_ws > 0 {
                pos += num_ws;
                t.add(pos);
                continue;
            }
            pos += 1;
            t.add(pos);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_round_trips() {
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(byte_to_char(b' '), '\u{120}');
        assert_eq!(byte_to_char(b'\n'), '\u{10A}');
    }

    #[test]
    fn flags_match_llama_cpp_table() {
        assert!(cpt_flags('a' as u32).is_letter());
        assert!(cpt_flags('7' as u32).is_number());
        assert!(cpt_flags(' ' as u32).is_whitespace());
        assert!(cpt_flags(0x3000).is_whitespace());
        assert_eq!(cpt_flags(0x1C89).category(), CptFlags::UNDEFINED);
        assert!(cpt_flags(0x2EBF0).is_letter());
    }

    #[test]
    fn collapses_categories_like_llama_cpp() {
        assert_eq!(collapse_expression("\\p{N}").unwrap(), "[\u{D1}0-9]");
        assert_eq!(
            collapse_expression("[^\\s\\p{L}]").unwrap(),
            "[^\\s\u{D2}A-Za-z]"
        );
    }
}
