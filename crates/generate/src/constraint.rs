//! Constrained sampling: grammars (JSON Schema, Lark, GBNF) that restrict
//! which tokens may come next, through the llguidance library.
//!
//! [`Grammars`] is made once per vocabulary: it builds llguidance's token
//! trie from strata's vocabulary — every token's bytes as
//! [`Tokenizer::token_to_piece`] gives them (GPT-2 byte decoding and byte
//! fallback applied), control tokens marked special — and compiles
//! [`Grammar`]s into [`Constraint`]s, one per generation. A constraint gives
//! the mask of allowed tokens before each draw
//! ([`Sampler::sample_allowed`](crate::Sampler::sample_allowed)) and is told
//! each token drawn.
//!
//! ```no_run
//! use std::sync::Arc;
//! use generate::constraint::{Grammar, Grammars};
//! # fn f(tokenizer: Arc<tokenizer::Tokenizer>, logits: &[f32]) -> Result<(), generate::GenerateError> {
//! let grammars = Grammars::new(tokenizer)?;
//! let mut constraint = grammars.compile(&Grammar::JsonObject)?;
//! let mut sampler = generate::Sampler::new(generate::SamplerConfig::greedy())?;
//! let mask = constraint.mask()?;
//! let token = sampler.sample_allowed(logits, &[], |t| mask.allows(t)).expect("a token");
//! constraint.accept(token)?;
//! # Ok(()) }
//! ```
//!
//! Design decisions:
//! - llguidance, not a hand-written matcher: its Earley parser and lexer
//!   compute a whole-vocabulary mask in well under a millisecond, JSON
//!   Schema support is the field's reference, and every grammar is bounded
//!   by its parser limits (a hostile schema fails to compile, it cannot hang).
//! - JSON is constrained to a fixed layout (`", "` between items, `": "`
//!   after keys, no other whitespace): a small model given free whitespace
//!   can emit newlines forever and never close the object.
//! - GBNF (llama.cpp's grammar format) is translated to llguidance's Lark
//!   dialect by [`gbnf_to_lark`], a syntax translation only.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{self, SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;
use tokenizer::{TokenType, Tokenizer};

use crate::GenerateError;

/// A grammar the output must follow.
#[derive(Clone, Debug, PartialEq)]
pub enum Grammar {
    /// Any JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    JsonObject,
    /// JSON matching a JSON Schema.
    JsonSchema {
        /// The schema.
        schema: Value,
        /// OpenAI's `strict`: objects without `additionalProperties` get
        /// `false` (no keys besides those listed).
        strict: bool,
    },
    /// A grammar in llguidance's Lark dialect (`start: ...`).
    Lark(String),
    /// A grammar in llama.cpp's GBNF (`root ::= ...`).
    Gbnf(String),
}

impl Grammar {
    /// A grammar given as text: GBNF when it defines a rule with `::=`, Lark otherwise.
    pub fn from_text(text: &str) -> Grammar {
        if gbnf_defines_rules(text) {
            Grammar::Gbnf(text.to_string())
        } else {
            Grammar::Lark(text.to_string())
        }
    }

    /// llguidance's form of the grammar.
    fn to_llguidance(&self) -> Result<TopLevelGrammar, GenerateError> {
        Ok(match self {
            Grammar::JsonObject => TopLevelGrammar::from_json_schema(json_layout(
                serde_json::json!({"type": "object"}),
            )),
            Grammar::JsonSchema { schema, strict } => {
                let mut schema = schema.clone();
                if *strict {
                    close_objects(&mut schema, 0);
                }
                TopLevelGrammar::from_json_schema(json_layout(schema))
            }
            Grammar::Lark(text) => TopLevelGrammar::from_lark(text.clone()),
            Grammar::Gbnf(text) => TopLevelGrammar::from_lark(gbnf_to_lark(text)?),
        })
    }
}

/// The JSON layout every schema is compiled with (see the module docs).
pub fn json_layout_options() -> Value {
    serde_json::json!({
        "whitespace_flexible": false,
        "item_separator": ", ",
        "key_separator": ": ",
    })
}

/// `schema` with [`json_layout_options`] as its `x-guidance` options, unless it sets its own.
fn json_layout(mut schema: Value) -> Value {
    if let Value::Object(map) = &mut schema {
        map.entry("x-guidance").or_insert_with(json_layout_options);
    }
    schema
}

/// Sets `additionalProperties: false` on every object schema that lists
/// `properties` and does not say (OpenAI's strict mode). Stops at depth 64.
fn close_objects(schema: &mut Value, depth: usize) {
    if depth > 64 {
        return;
    }
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            for (key, v) in map.iter_mut() {
                // `const`, `enum` and `default` hold values, not schemas.
                if !matches!(key.as_str(), "const" | "enum" | "default" | "examples") {
                    close_objects(v, depth + 1);
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                close_objects(v, depth + 1);
            }
        }
        _ => {}
    }
}

/// strata's vocabulary as llguidance sees it.
struct StrataTokEnv {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for StrataTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<toktrie::TokenId> {
        // Text is tokenized as text (no special tokens). llguidance needs
        // tokens whose bytes are exactly `s`: where the tokenizer's are not
        // (SentencePiece's space prefix, bytes that are not UTF-8), the
        // trie's greedy tokenization is used instead.
        let exact = |ids: &[u32]| {
            let mut at = 0;
            ids.iter().all(|&id| {
                let piece = self.trie.token(id);
                let ok = s[at..].starts_with(piece);
                at += piece.len();
                ok
            }) && at == s.len()
        };
        match std::str::from_utf8(s)
            .ok()
            .and_then(|text| self.tokenizer.encode(text, false, false).ok())
        {
            Some(ids) if exact(&ids) => ids,
            _ => self.trie.greedy_tokenize(s),
        }
    }
}

/// Each token's bytes for the trie: the text it stands for, or for control
/// and unknown tokens `0xFF` followed by their text (llguidance's marker of
/// a special token, which grammars reach only by name). Unused tokens are empty.
fn token_bytes(tok: &Tokenizer, id: u32) -> Vec<u8> {
    let special = tok.is_control(id) || tok.token_type(id) == Some(TokenType::Unknown);
    if special {
        let mut bytes = vec![TokTrie::SPECIAL_TOKEN_MARKER];
        bytes.extend_from_slice(tok.token_text(id).unwrap_or_default().as_bytes());
        bytes
    } else if tok.token_type(id) == Some(TokenType::Unused) {
        Vec::new()
    } else {
        tok.token_to_piece(id)
    }
}

/// Compiles grammars for one vocabulary. Made once (building the token trie
/// and llguidance's lexer slices takes a moment), shared by every request.
pub struct Grammars {
    factory: ParserFactory,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars")
            .field("n_vocab", &self.factory.tok_env().tok_trie().vocab_size())
            .finish_non_exhaustive()
    }
}

impl Grammars {
    /// llguidance's token trie and parser factory for `tokenizer`'s vocabulary.
    /// Fails for a vocabulary with no end-of-generation token.
    pub fn new(tokenizer: Arc<Tokenizer>) -> Result<Grammars, GenerateError> {
        let n_vocab = tokenizer.vocab_size();
        let eog: Vec<u32> = tokenizer
            .eog_tokens()
            .filter(|&t| (t as usize) < n_vocab)
            .collect();
        let Some(&first_eog) = eog.first() else {
            return Err(GenerateError::Grammar(
                "the vocabulary has no end-of-generation token to end a constrained output".into(),
            ));
        };
        let n = u32::try_from(n_vocab)
            .map_err(|_| GenerateError::Grammar("the vocabulary is too large".into()))?;
        let words: Vec<Vec<u8>> = (0..n).map(|id| token_bytes(&tokenizer, id)).collect();
        let info = TokRxInfo {
            tok_bos: tokenizer.bos().filter(|&t| t < n),
            tok_end_of_turn: tokenizer.eot().filter(|&t| t < n),
            tok_unk: tokenizer.special_tokens().unk.filter(|&t| t < n),
            tok_pad: tokenizer.special_tokens().pad.filter(|&t| t < n),
            ..TokRxInfo::new(n, first_eog)
        };
        // toktrie asserts on vocabularies it cannot represent; a hostile
        // file is an error here, never a crash.
        let trie = std::panic::catch_unwind(|| TokTrie::from(&info, &words).with_eos_tokens(&eog))
            .map_err(|_| GenerateError::Grammar("cannot build the token trie".into()))?;
        let env: TokEnv = Arc::new(StrataTokEnv { trie, tokenizer });
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| GenerateError::Grammar(format!("cannot set up llguidance: {e}")))?;
        factory.quiet();
        Ok(Grammars { factory })
    }

    /// Compiles `grammar` into a fresh constraint (a bad grammar or schema is
    /// [`GenerateError::Grammar`] naming the problem).
    pub fn compile(&self, grammar: &Grammar) -> Result<Constraint, GenerateError> {
        let parser = self
            .factory
            .create_parser(grammar.to_llguidance()?)
            .map_err(|e| GenerateError::Grammar(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(GenerateError::Grammar(e));
        }
        Ok(Constraint {
            matcher,
            mask: None,
        })
    }
}

/// One generation's grammar state: which tokens may come next.
pub struct Constraint {
    matcher: Matcher,
    mask: Option<TokenMask>,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("finished", &self.matcher.is_stopped())
            .finish_non_exhaustive()
    }
}

/// The tokens a [`Constraint`] allows next.
#[derive(Clone, Debug)]
pub struct TokenMask(SimpleVob);

impl TokenMask {
    /// Whether `token` is allowed (ids past the vocabulary never are).
    pub fn allows(&self, token: u32) -> bool {
        (token as usize) < self.0.len() && self.0.is_allowed(token)
    }

    /// How many tokens are allowed.
    pub fn count(&self) -> usize {
        self.0.num_set()
    }
}

impl Constraint {
    /// The tokens allowed next: once the grammar is complete and nothing can
    /// follow, only the end-of-generation tokens.
    pub fn mask(&mut self) -> Result<&TokenMask, GenerateError> {
        if self.mask.is_none() {
            let vob = self.matcher.compute_mask_or_eos().map_err(|e| {
                GenerateError::Grammar(format!("computing the grammar's mask: {e}"))
            })?;
            self.mask = Some(TokenMask(vob));
        }
        Ok(self.mask.as_ref().expect("just set"))
    }

    /// Advances past `token`, which must be allowed.
    pub fn accept(&mut self, token: u32) -> Result<(), GenerateError> {
        self.mask = None;
        self.matcher
            .consume_token(token)
            .map_err(|e| GenerateError::Grammar(format!("token {token} breaks the grammar: {e}")))
    }

    /// Whether the output so far is a complete match (ending here is allowed).
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }

    /// Whether the grammar is complete and nothing more can be generated.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}

/// Whether `text` looks like GBNF: some line defines a rule with `::=`.
fn gbnf_defines_rules(text: &str) -> bool {
    text.lines().any(|line| {
        let line = line.trim_start();
        !line.starts_with('#')
            && line.split_once("::=").is_some_and(|(name, _)| {
                let name = name.trim();
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
    })
}

/// One lexical item of GBNF.
#[derive(Debug, PartialEq)]
enum GbnfItem {
    Name(String),
    Define,
    Literal(String),
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    Any,
    Op(char),
    Repeat(String),
}

/// Translates llama.cpp's GBNF into llguidance's Lark dialect: `root` is the
/// start rule; rule names are mapped one-to-one into Lark's lowercase names,
/// literals and character classes keep their meaning, `.` is any character,
/// `*` `+` `?` `{m,n}` repeat. Token references (`<[id]>`) are not supported.
pub fn gbnf_to_lark(src: &str) -> Result<String, GenerateError> {
    let err = |msg: String| GenerateError::Grammar(format!("GBNF: {msg}"));
    let items = gbnf_lex(src).map_err(err)?;
    // Rules: a name followed by `::=` starts one.
    let mut rules: Vec<(String, Vec<&GbnfItem>)> = Vec::new();
    let mut i = 0;
    while i < items.len() {
        if let (GbnfItem::Name(name), Some(GbnfItem::Define)) = (&items[i], items.get(i + 1)) {
            rules.push((name.clone(), Vec::new()));
            i += 2;
            continue;
        }
        match rules.last_mut() {
            Some((_, body)) => body.push(&items[i]),
            None => {
                return Err(err(
                    "the grammar must start with a rule (`name ::= ...`)".into()
                ))
            }
        }
        i += 1;
    }
    if !rules.iter().any(|(name, _)| name == "root") {
        return Err(err("no `root` rule".into()));
    }
    let defined: std::collections::HashSet<&str> = rules.iter().map(|(n, _)| n.as_str()).collect();
    let mut out = format!("start: {}\n", lark_name("root"));
    for (name, body) in &rules {
        if body.is_empty() {
            return Err(err(format!("rule `{name}` is empty")));
        }
        out.push_str(&lark_name(name));
        out.push(':');
        for item in body {
            out.push(' ');
            match item {
                GbnfItem::Name(n) => {
                    if !defined.contains(n.as_str()) {
                        return Err(err(format!("rule `{n}` is used but not defined")));
                    }
                    out.push_str(&lark_name(n));
                }
                GbnfItem::Literal(s) => {
                    out.push_str(&serde_json::to_string(s).expect("strings serialize"))
                }
                GbnfItem::Class { negated, ranges } => {
                    out.push_str("/[");
                    if *negated {
                        out.push('^');
                    }
                    for &(lo, hi) in ranges {
                        push_regex_char(&mut out, lo);
                        if hi != lo {
                            out.push('-');
                            push_regex_char(&mut out, hi);
                        }
                    }
                    out.push_str("]/");
                }
                GbnfItem::Any => out.push_str("/(?s:.)/"),
                GbnfItem::Op(c) => out.push(*c),
                GbnfItem::Repeat(r) => {
                    out.pop(); // `x{m,n}`: no space before the braces
                    out.push_str(r);
                }
                GbnfItem::Define => return Err(err("misplaced `::=`".into())),
            }
        }
        out.push('\n');
    }
    Ok(out)
}

/// A GBNF rule name in Lark: `r_` then the name with `-` as `__` and each
/// capital as `_` and its lowercase (GBNF names have no `_`, so this is one-to-one).
fn lark_name(name: &str) -> String {
    let mut out = String::from("r_");
    for c in name.chars() {
        match c {
            '-' => out.push_str("__"),
            c if c.is_ascii_uppercase() => {
                out.push('_');
                out.push(c.to_ascii_lowercase());
            }
            c => out.push(c),
        }
    }
    out
}

/// `c` inside a regex character class, escaped unless alphanumeric.
fn push_regex_char(out: &mut String, c: char) {
    if c.is_ascii_alphanumeric() {
        out.push(c);
    } else {
        out.push_str(&format!("\\x{{{:x}}}", c as u32));
    }
}

fn gbnf_lex(src: &str) -> Result<Vec<GbnfItem>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut items = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            ':' if chars.get(i + 1) == Some(&':') && chars.get(i + 2) == Some(&'=') => {
                items.push(GbnfItem::Define);
                i += 3;
            }
            '"' => {
                i += 1;
                let mut s = String::new();
                loop {
                    match chars.get(i) {
                        None => return Err("unterminated string literal".into()),
                        Some('"') => break,
                        Some('\\') => {
                            let (ch, next) = gbnf_escape(&chars, i)?;
                            s.push(ch);
                            i = next;
                        }
                        Some(&ch) => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                i += 1;
                items.push(GbnfItem::Literal(s));
            }
            '[' => {
                i += 1;
                let negated = chars.get(i) == Some(&'^');
                if negated {
                    i += 1;
                }
                let mut ranges = Vec::new();
                loop {
                    let lo = match chars.get(i) {
                        None => return Err("unterminated character class".into()),
                        Some(']') => break,
                        Some('\\') => {
                            let (ch, next) = gbnf_escape(&chars, i)?;
                            i = next;
                            ch
                        }
                        Some(&ch) => {
                            i += 1;
                            ch
                        }
                    };
                    let mut hi = lo;
                    if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|&c| c != ']') {
                        i += 1;
                        hi = if chars[i] == '\\' {
                            let (ch, next) = gbnf_escape(&chars, i)?;
                            i = next;
                            ch
                        } else {
                            i += 1;
                            chars[i - 1]
                        };
                        if hi < lo {
                            return Err(format!("character range {lo:?}-{hi:?} is reversed"));
                        }
                    }
                    ranges.push((lo, hi));
                }
                i += 1;
                if ranges.is_empty() {
                    return Err("empty character class".into());
                }
                items.push(GbnfItem::Class { negated, ranges });
            }
            '.' => {
                items.push(GbnfItem::Any);
                i += 1;
            }
            '|' | '(' | ')' | '*' | '+' | '?' => {
                items.push(GbnfItem::Op(c));
                i += 1;
            }
            '{' => {
                let end = chars[i..]
                    .iter()
                    .position(|&c| c == '}')
                    .ok_or("unterminated `{`")?;
                let inner: String = chars[i + 1..i + end]
                    .iter()
                    .filter(|c| !c.is_whitespace())
                    .collect();
                let ok = !inner.is_empty()
                    && inner.chars().all(|c| c.is_ascii_digit() || c == ',')
                    && inner.matches(',').count() <= 1
                    && !inner.starts_with(',');
                if !ok {
                    return Err(format!("bad repetition {{{inner}}}"));
                }
                if !matches!(
                    items.last(),
                    Some(
                        GbnfItem::Name(_)
                            | GbnfItem::Literal(_)
                            | GbnfItem::Class { .. }
                            | GbnfItem::Any
                            | GbnfItem::Op(')')
                    )
                ) {
                    return Err(format!("repetition {{{inner}}} follows nothing"));
                }
                items.push(GbnfItem::Repeat(format!("{{{inner}}}")));
                i += end + 1;
            }
            '<' => return Err("token references (`<[id]>`) are not supported".into()),
            c if c.is_ascii_alphanumeric() || c == '-' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '-') {
                    i += 1;
                }
                items.push(GbnfItem::Name(chars[start..i].iter().collect()));
            }
            c => return Err(format!("unexpected character {c:?}")),
        }
    }
    Ok(items)
}

/// The escape at `chars[i]` (a backslash): the character and the index after it.
fn gbnf_escape(chars: &[char], i: usize) -> Result<(char, usize), String> {
    let Some(&e) = chars.get(i + 1) else {
        return Err("a backslash at the end".into());
    };
    let hex = |n: usize| -> Result<(char, usize), String> {
        let digits: String = chars
            .get(i + 2..i + 2 + n)
            .ok_or("short escape")?
            .iter()
            .collect();
        let v =
            u32::from_str_radix(&digits, 16).map_err(|_| format!("bad escape \\{e}{digits}"))?;
        let ch =
            char::from_u32(v).ok_or_else(|| format!("escape \\{e}{digits} is not a character"))?;
        Ok((ch, i + 2 + n))
    };
    match e {
        'x' => hex(2),
        'u' => hex(4),
        'U' => hex(8),
        'n' => Ok(('\n', i + 2)),
        'r' => Ok(('\r', i + 2)),
        't' => Ok(('\t', i + 2)),
        '\\' | '"' | '[' | ']' | '-' | '^' => Ok((e, i + 2)),
        _ => Err(format!("unknown escape \\{e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gbnf_becomes_lark() {
        let lark = gbnf_to_lark(
            "# yes or no\nroot ::= answer \"!\"?\nanswer ::= (\"yes\" | \"no\") [ \\t]* ws-End{0,2}\nws-End ::= [^\"a-z]",
        )
        .unwrap();
        assert_eq!(
            lark,
            "start: r_root\nr_root: r_answer \"!\" ?\nr_answer: ( \"yes\" | \"no\" ) /[\\x{20}\\x{9}]/ * r_ws___end{0,2}\nr_ws___end: /[^\\x{22}a-z]/\n"
        );
        assert!(gbnf_to_lark("x ::= \"a\"").is_err(), "no root");
        assert!(gbnf_to_lark("root ::= y").is_err(), "undefined rule");
        assert!(gbnf_to_lark("root ::= \"a").is_err(), "unterminated");
        assert!(gbnf_to_lark("root ::= <[12]>").is_err());
        assert!(Grammar::from_text("root ::= \"a\"") == Grammar::Gbnf("root ::= \"a\"".into()));
        assert!(matches!(
            Grammar::from_text("start: \"a\""),
            Grammar::Lark(_)
        ));
    }

    #[test]
    fn strict_closes_objects() {
        let mut s = serde_json::json!({"type":"object","properties":{"a":{"type":"object","properties":{}}},
            "enum":[{"properties":{}}]});
        close_objects(&mut s, 0);
        assert_eq!(s["additionalProperties"], false);
        assert_eq!(s["properties"]["a"]["additionalProperties"], false);
        assert!(s["enum"][0].get("additionalProperties").is_none());
    }
}
